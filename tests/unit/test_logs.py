"""Log lines that client input cannot forge or fill with secrets."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator

import pytest

from router.logs import install_safe_logging, redact_secrets, safe_log_text


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    install_safe_logging("info", stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


def test_control_characters_are_escaped() -> None:
    text = safe_log_text("a\r\nb\x1b[31mc\x00d\te\x7f\x85\u2028")
    assert text == "a\\r\\nb\\x1b[31mc\\x00d\\te\\x7f\\x85\\u2028"


@pytest.mark.parametrize(
    ("raw", "secret"),
    [
        ("/api/v3/ws/stream?client_id=a&api_key=secret123", "secret123"),
        ("/api/v3/ws/stream?%61pi_key=secret123", "secret123"),
        ("GET /x?access_token=tok42abc HTTP/1.1", "tok42abc"),
        ("headers: {'authorization': 'Bearer abc.def.ghi'}", "abc.def.ghi"),
        ("X-API-Key: k3y-value", "k3y-value"),
        ("api_key=plain1 in text", "plain1"),
    ],
)
def test_secrets_are_redacted(raw: str, secret: str) -> None:
    redacted = redact_secrets(raw)
    assert secret not in redacted
    assert "[redacted]" in redacted


def test_other_query_parameters_stay(captured: io.StringIO) -> None:
    assert redact_secrets("/x?client_id=me&quality=high") == "/x?client_id=me&quality=high"


def test_an_access_line_with_a_forged_line_stays_one_line(captured: io.StringIO) -> None:
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d',
        "127.0.0.1:5000",
        "GET",
        "/api/v3/voices/x\r\n2030-01-01 INFO forged\x1b[2J?api_key=secret123",
        "1.1",
        404,
    )
    lines = captured.getvalue().splitlines()
    assert len(lines) == 1
    assert "secret123" not in lines[0] and "\x1b" not in lines[0]
    assert "forged" in lines[0]


def test_a_traceback_is_indented_and_escaped(captured: io.StringIO) -> None:
    try:
        raise ValueError("bad\n2030-01-01 INFO forged\x1b")
    except ValueError:
        logging.getLogger("router").exception("failed")
    first, *rest = captured.getvalue().splitlines()
    assert first.endswith("router: failed")
    assert rest and all(line.startswith("    ") for line in rest)
    assert "\x1b" not in captured.getvalue()


def test_python_warnings_take_the_same_format(captured: io.StringIO) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # pytest swaps `showwarning` for each test: install again inside the test itself.
        logging.captureWarnings(False)
        install_safe_logging("info", captured)
        try:
            warnings.warn("a library's warning\x1b[31m", UserWarning, stacklevel=1)
        finally:
            logging.captureWarnings(False)
    line = captured.getvalue()
    assert "a library's warning\\x1b[31m" in line  # through the formatter: escaped
    assert "\x1b" not in line

"""Libraries with console handlers of their own log through the process's handler."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import pytest

from core import library_logs


@pytest.fixture
def root_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("ROOT %(name)s %(message)s"))
    for old in saved[0]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        for old in saved[0]:
            root.addHandler(old)
        root.setLevel(saved[1])


def library_logger(name: str, *, propagate: bool) -> logging.Logger:
    """What transformers and ModelScope do on import."""
    logger = logging.getLogger(name)
    logger.addHandler(logging.StreamHandler(sys.stderr))
    logger.propagate = propagate
    logger.setLevel(logging.INFO)
    return logger


@pytest.mark.parametrize("propagate", [False, True], ids=["own handler only", "propagating"])
def test_a_library_logs_once_through_the_root_handler(
    root_stream: io.StringIO, capsys: pytest.CaptureFixture[str], propagate: bool
) -> None:
    name = f"tests.lib.propagate_{propagate}"
    before = library_logs.logger_names()
    logger = library_logger(name, propagate=propagate)
    library_logs.adopt(library_logs.logger_names() - before)
    logger.info("downloading")
    logger.propagate = propagate  # ModelScope sets it again on every get_logger
    logger.info("again")
    assert root_stream.getvalue().splitlines() == [f"ROOT {name} downloading", f"ROOT {name} again"]
    assert capsys.readouterr().err == ""


def test_loggers_that_existed_before_are_left_alone(root_stream: io.StringIO) -> None:
    own = library_logger("tests.lib.own", propagate=False)
    handlers = list(own.handlers)
    before = library_logs.logger_names()
    library_logs.adopt(library_logs.logger_names() - before)
    assert own.handlers == handlers


def test_what_is_printed_meanwhile_becomes_log_lines(
    root_stream: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    with library_logs.prints_logged(logging.getLogger("tests.engine")):
        print("Downloading Model to directory: /cache")
        print("half a ", end="")
        print("line\r")
        print("unfinished", end="")
    print("after")
    assert root_stream.getvalue().splitlines() == [
        "ROOT tests.engine Downloading Model to directory: /cache",
        "ROOT tests.engine half a line",
        "ROOT tests.engine unfinished",
    ]
    assert capsys.readouterr().out == "after\n"

"""Libraries with console handlers of their own log through the process's handler, and
upstream CosyVoice's lines leave the users' texts out."""

from __future__ import annotations

import importlib.util
import io
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from core import library_logs


@pytest.fixture
def root_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, list(root.filters))
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
        root.filters[:] = saved[2]


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


# What upstream's cosyvoice/cli/cosyvoice.py logs for each sentence and chunk (root logger).
UPSTREAM_LIKE = """
import logging


def speak(text, prompt_text):
    if len(text) < 0.5 * len(prompt_text):
        logging.warning('synthesis text {} too short than prompt text {}, this may lead to '
                        'bad performance'.format(text, prompt_text))
    logging.info('synthesis text {}'.format(text))
    logging.info('yield speech len {}, rtf {}'.format(1.36, 0.5))
    logging.info('use wetext frontend')
"""


def upstream_module(folder: Path) -> ModuleType:
    path = folder / "cosyvoice" / "cli" / "cosyvoice.py"
    path.parent.mkdir(parents=True)
    path.write_text(UPSTREAM_LIKE)
    spec = importlib.util.spec_from_file_location("tests_upstream_like", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG], ids=["info", "debug"])
def test_upstream_lines_leave_the_users_texts_out(
    root_stream: io.StringIO, tmp_path: Path, level: int
) -> None:
    upstream = upstream_module(tmp_path)
    library_logs.UpstreamTexts.install(tmp_path / "cosyvoice")
    library_logs.UpstreamTexts.install(tmp_path / "cosyvoice")  # once per package folder
    logging.getLogger().setLevel(level)
    upstream.speak("Meet me at 5.", "A long secret prompt transcript of the voice's owner")
    logging.info("synthesis text of the server itself stays")
    lines = root_stream.getvalue().splitlines()
    assert not any("Meet me" in line or "secret" in line for line in lines)
    chunk_lines = ["ROOT root yield speech len 1.36, rtf 0.5"] if level == logging.DEBUG else []
    assert lines == [
        f"ROOT root {library_logs.UpstreamTexts.SHORT_TEXT_WARNING}",
        *chunk_lines,
        "ROOT root use wetext frontend",
        "ROOT root synthesis text of the server itself stays",
    ]
    ours = [
        f
        for f in logging.getLogger().filters
        if isinstance(f, library_logs.UpstreamTexts) and f.package.startswith(str(tmp_path))
    ]
    assert len(ours) == 1

"""The log lines of libraries an engine imports, in the process's own format.

Some libraries install a console handler of their own when they are imported (transformers,
ModelScope) and stop their records from reaching the root logger. Their lines then bypass
the one handler the process configured: a plain-text line in a LOG_FORMAT=json log, with
nothing escaped. `adopt` takes such loggers' console handlers away and gives their records
to the root logger's handlers; loggers that existed before the import are left alone (the
server's own, uvicorn's, KServe's). Others print: `prints_logged` turns what is printed
meanwhile into log lines. `UpstreamTexts` keeps the texts users send out of the log.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path


def logger_names() -> set[str]:
    """Every logger created so far."""
    manager = logging.Logger.manager
    return {name for name, item in manager.loggerDict.items() if isinstance(item, logging.Logger)}


def adopt(names: Iterable[str]) -> None:
    """Send what these loggers write to the console through the root logger's handlers."""
    root_handlers = logging.getLogger().handlers
    if not root_handlers:
        return  # the process configured no logging: nothing to be consistent with
    for name in names:
        logger = logging.getLogger(name)
        console = [h for h in logger.handlers if h not in root_handlers and _on_console(h)]
        if not console:
            continue
        for handler in console:
            logger.removeHandler(handler)
        if not logger.propagate:
            # Libraries may set propagate back to False later (ModelScope does on every
            # `get_logger`): the root's handlers on the logger itself survive that.
            for handler in root_handlers:
                logger.addHandler(handler)


def _on_console(handler: logging.Handler) -> bool:
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    consoles = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    return any(handler.stream is console for console in consoles)


@contextlib.contextmanager
def prints_logged(logger: logging.Logger) -> Iterator[None]:
    """What is printed to stdout meanwhile becomes INFO lines of `logger`.

    Swaps `sys.stdout` for the whole process: for code that runs once, at start-up.
    """
    lines = _LineLog(logger)
    try:
        with contextlib.redirect_stdout(lines):
            yield
    finally:
        lines.close()


class _LineLog(io.TextIOBase):
    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *complete, self._partial = (self._partial + text).split("\n")
        for line in complete:
            self._log(line)
        return len(text)

    def close(self) -> None:
        if self._partial:
            self._log(self._partial)
            self._partial = ""
        super().close()

    def _log(self, line: str) -> None:
        if line.strip():
            self._logger.info("%s", line.rstrip("\r"))


class UpstreamTexts(logging.Filter):
    """Upstream CosyVoice's synthesis lines, without the users' texts.

    Upstream logs through the root logger, at INFO, the text of every sentence it speaks
    ("synthesis text ..."), and warns with that text and the voice's prompt text when the
    first is the shorter; it also logs a line for every chunk ("yield speech len ...,
    rtf ..."). On the root logger, for records from files of upstream's package: the
    INFO text lines are dropped, the warning keeps its advice without the texts, and the
    chunk lines are DEBUG lines (shown only when the root logger is at DEBUG).
    """

    SHORT_TEXT_WARNING = (
        "the text to speak is shorter than the voice's prompt text; the audio may suffer"
    )

    def __init__(self, package_dir: Path) -> None:
        super().__init__()
        # As the module's own path gives it: records carry that path, links unresolved.
        self.package = str(package_dir) + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.pathname.startswith(self.package):
            return True
        message = record.getMessage()
        if message.startswith("synthesis text"):
            if record.levelno < logging.WARNING:
                return False
            record.msg, record.args = self.SHORT_TEXT_WARNING, None
        elif message.startswith("yield speech len"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True

    @classmethod
    def install(cls, package_dir: Path) -> None:
        """On the root logger (upstream logs through it), once per package folder."""
        root = logging.getLogger()
        wanted = cls(package_dir)
        if not any(
            isinstance(existing, cls) and existing.package == wanted.package
            for existing in root.filters
        ):
            root.addFilter(wanted)

"""Log lines that untrusted input cannot forge: escaped control characters, no secrets.

Paths, query strings, ids and exception messages come from clients. Written as they are,
`%0d%0a` in a path starts a forged log line, `%1b[31m` drives the reader's terminal and
`?api_key=...` puts a credential in the log. `SafeLogFormatter` is the one formatter of
every handler the server installs (the uvicorn access and error logs included):

- in the message, every control character (C0, DEL, C1, the Unicode line and paragraph
  separators) is written the way `repr` writes it (`\\r`, `\\n`, `\\x1b`, `\\x00`,
  `\\u2028`), so one record is one line;
- a traceback keeps its lines, but each is escaped the same way and indented, so a line
  that starts at column 0 always starts a record;
- `api_key=`/`access_token=`-style parameters (also percent-encoded names), `Authorization`
  and `X-API-Key` values and `Bearer` tokens are replaced by `[redacted]`.

`safe_log_text` and `redact_secrets` are the same rules for code that builds a log
message itself.

`LOG_FORMAT=json` writes each record as one JSON object per line with the same
redaction (JSON's own escaping, completed for DEL, C1 and the Unicode separators, keeps
it one line). Both formats carry the id of the request being served (`request_id`,
`core.request_id`), whichever module wrote the line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import unquote

from core.request_id import current_request_id

REDACTED = "[redacted]"
SECRET_PARAMETERS = frozenset(
    {"api_key", "apikey", "api-key", "key", "access_token", "token", "secret", "password"}
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# name=value pairs of a query string (or a form body): the name may be percent-encoded.
_PARAMETER = re.compile(r"(?<=[?&;])([^=&;\s\"']+)=([^&;\s\"']*)")
# A secret parameter outside a query string ("api_key=..." in free text).
_BARE_SECRET = re.compile(
    r"(?i)\b(api[_-]?key|access_token)([\"']?\s*[=:]\s*[\"']?)([^&;\s\"',}]+)"
)
_CREDENTIAL_HEADER = re.compile(
    r"(?i)\b(authorization|x-api-key|proxy-authorization)([\"']?\s*[:=]\s*[\"']?)"
    r"((?:bearer|basic|token)\s+)?([^\s\"',}]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)([A-Za-z0-9._~+/=-]{4,})")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """Every control character written as its escape: the text stays one plain line."""
    return _CONTROL.sub(_escape, text)


def _redact_parameter(match: re.Match[str]) -> str:
    name = unquote(match.group(1)).strip().lower()
    if name in SECRET_PARAMETERS:
        return f"{match.group(1)}={REDACTED}"
    return match.group()


def redact_secrets(text: str) -> str:
    """API keys, tokens and credential headers replaced by `[redacted]`."""
    text = _PARAMETER.sub(_redact_parameter, text)
    text = _BARE_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _CREDENTIAL_HEADER.sub(
        lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}{REDACTED}", text
    )
    return _BEARER.sub(lambda m: f"{m.group(1)}{REDACTED}", text)


def safe_log_text(value: object) -> str:
    """A client-supplied value made fit for a log line: redacted, then escaped."""
    return escape_controls(redact_secrets(str(value)))


class SafeLogFormatter(logging.Formatter):
    """A formatter whose every record is one line, plus an indented traceback."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = safe_log_text(record.message)
        if not hasattr(record, "request_tag"):  # a handler without RequestIdFilter
            record.request_tag = ""
        return super().formatMessage(record)

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(block: str) -> str:
    return "\n".join("    " + safe_log_text(line) for line in block.splitlines())


class RedactSecrets(logging.Filter):
    """Redacts keys in a record before any handler sees it, whatever its formatter.

    `SafeLogFormatter` already does this for `serve`; the filter covers apps built with
    `create_app` under another server's logging (uvicorn's own dictConfig keeps a
    logger's filters)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_secrets(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_secrets(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                k: redact_secrets(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        return True


# uvicorn logs request lines (with the query string) on these two loggers.
REDACTED_LOGGERS = ("uvicorn.access", "uvicorn.error")


def install_log_redaction(logger_names: tuple[str, ...] = REDACTED_LOGGERS) -> None:
    """Add the filter once per logger."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"
# Fields a record may carry in `extra={"fields": {...}}`: the JSON format writes them as
# keys of the line, the text format leaves them to the message.
FIELDS = "fields"


class RequestIdFilter(logging.Filter):
    """Puts the id of the request being served on every record (`request_id`, and
    `request_tag`: " [id]" or nothing, for the text format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = current_request_id()
        record.request_id = request_id
        record.request_tag = f" [{request_id}]" if request_id else ""
        return True


_JSON_UNSAFE = re.compile(r"[\x7f-\x9f\u2028\u2029]")  # what json.dumps leaves raw


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request id, the
    record's `fields`, and a traceback as one escaped string."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_secrets(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None) or current_request_id()
        if request_id:
            line["request_id"] = request_id
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            line.update({k: _redacted(v) for k, v in fields.items() if k not in line})
        if record.exc_info:
            line["exception"] = redact_secrets(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = redact_secrets(self.formatStack(record.stack_info))
        text = json.dumps(line, ensure_ascii=False, default=str)
        return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _redacted(value: object) -> object:
    return redact_secrets(value) if isinstance(value, str) else value


def install_safe_logging(
    level: str, stream: TextIO | None = None, log_format: str = "text"
) -> None:
    """One handler on the root logger, with `SafeLogFormatter` (or `JsonLogFormatter`
    for `log_format="json"`), for every logger.

    uvicorn's loggers lose their own handlers and propagate here (start uvicorn with
    `log_config=None`), so its access and error lines are escaped and redacted too, and
    carry no colour codes. In JSON, the router writes its own line per request (with the
    route, the duration and the key's name: `router.metrics`), so uvicorn's access line
    is left out.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        JsonLogFormatter() if log_format == "json" else SafeLogFormatter(LOG_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)  # the root's level decides (an earlier config may linger)
    logging.getLogger("uvicorn.access").disabled = log_format == "json"
    # Python's warnings (torch's, numpy's) would go to stderr as they are: log them.
    logging.captureWarnings(True)

"""The id of the request being served, carried across awaits, log lines and processes.

The router takes it from an incoming `X-Request-ID` when that is a short token of safe
characters (anything else could forge log lines or fill them), otherwise makes one. It
lives in a context variable, so every log line written while the request is served, in
any module, can carry it without being handed it; the KServe client sends it to the
predictor as `X-Request-ID`, and events published meanwhile carry it as the CloudEvents
extension attribute `requestid`.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar, Token

HEADER = "X-Request-ID"
CLOUDEVENT_ATTRIBUTE = "requestid"  # CloudEvents extension names: lowercase a-z0-9 only
MAX_LENGTH = 64
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")

_current: ContextVar[str | None] = ContextVar("request_id", default=None)


def valid_request_id(value: str | None) -> str | None:
    """`value` when it is a usable id (1-64 of letters, digits and `._:-`), else None."""
    if value and len(value) <= MAX_LENGTH and _SAFE.fullmatch(value):
        return value
    return None


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return _current.get()


def set_request_id(value: str | None) -> Token[str | None]:
    """Make `value` the id of what runs in this context from now on (and in the tasks it
    starts, which copy the context); `reset_request_id(token)` restores the previous."""
    return _current.set(value)


def reset_request_id(token: Token[str | None]) -> None:
    _current.reset(token)

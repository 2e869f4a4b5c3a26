"""Every request gets an id, and every answer says which: `X-Request-ID`.

The id comes from the request's own `X-Request-ID` when that is usable (1-64 letters,
digits and `._:-`: a longer or stranger value is replaced, never echoed into logs and
headers), otherwise it is made here. It is set in `core.request_id`'s context variable
for the whole request, so log lines, the predictor call and published events carry it,
and it is added to the answer's headers: errors included, since this middleware sits
outside the one that turns exceptions into 500s. WebSocket handshakes get it as well.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.request_id import (
    HEADER,
    new_request_id,
    reset_request_id,
    set_request_id,
    valid_request_id,
)

_HEADER_NAME = HEADER.lower().encode("latin-1")
# Where the id is kept on the scope for code that has the scope but not the context.
STATE_KEY = "request_id"


def incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == _HEADER_NAME:
            return valid_request_id(value.decode("latin-1"))
    return None


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope) or new_request_id()
        scope.setdefault("state", {})[STATE_KEY] = request_id
        header = (_HEADER_NAME, request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = set_request_id(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            reset_request_id(token)

"""Answers that middleware sends before the application sees a request.

An HTTP request gets `{"detail": ...}` with its status and headers, as every route's error
does (and CORS headers, since CORSMiddleware wraps everything). A WebSocket handshake gets
the same answer as an HTTP denial response where the server supports one (uvicorn does),
otherwise a close before accepting, which the server answers with 403.
"""

from __future__ import annotations

import json

from starlette.types import Scope, Send

from core.schemas.openai import OPENAI_PATH_PREFIX, openai_error_body

# Policy violation: what RFC 6455 offers for "not allowed here".
WS_POLICY_VIOLATION = 1008


async def refuse(
    scope: Scope,
    send: Send,
    status: int,
    detail: str,
    headers: dict[str, str] | None = None,
) -> None:
    if scope["path"].startswith(OPENAI_PATH_PREFIX):
        body = json.dumps(openai_error_body(status, detail)).encode()  # what OpenAI SDKs read
    else:
        body = json.dumps({"detail": detail}).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in (headers or {}).items()
        ),
    ]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})
    elif "websocket.http.response" in scope.get("extensions", {}):
        await send(
            {"type": "websocket.http.response.start", "status": status, "headers": raw_headers}
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": detail})

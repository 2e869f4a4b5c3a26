"""MAX_JSON_DEPTH: JSON nested deeper than the limit is refused before it is parsed.

Python's parser recurses once per level: a body of a thousand `[` raises RecursionError
(and costs a deep C stack) before any schema sees it. The depth is measured without
parsing, in linear time and at C speed (numpy, a block at a time, so no input, however
hostile, costs per-token Python work): a quote preceded by an odd run of backslashes is
escaped, the other quotes toggle "inside a string", and the running sum of +1/-1 over
the brackets outside strings gives the deepest level. For valid JSON this is exact; for
invalid JSON it is some number, and the parser then rejects the text anyway.

`JsonDepthMiddleware` applies the limit to every HTTP body the application would parse
as JSON (a JSON content type, or none: FastAPI parses those too), answering 400 with
`{"detail"}`; the WebSocket connection checks each text frame with `checked_json_loads`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import InvalidInput

_BLOCK = 256 * 1024  # bytes measured at once: bounds the temporary arrays (~10 MB)
_BACKSLASH, _QUOTE = ord("\\"), ord('"')
_STEP = np.zeros(256, dtype=np.int64)
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def json_depth(data: bytes | bytearray | memoryview | str) -> int:
    """The deepest nesting of arrays and objects in a JSON text."""
    raw = memoryview(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    escape_next = False  # the block before ended in an odd run of backslashes
    in_string = 0
    depth = deepest = 0
    for start in range(0, len(raw), _BLOCK):
        block = np.frombuffer(raw[start : start + _BLOCK], dtype=np.uint8)
        positions = np.arange(len(block))
        is_backslash = block == _BACKSLASH
        # Length of the backslash run ending at each byte (0 where there is none) ...
        last_other = np.maximum.accumulate(np.where(is_backslash, -1, positions))
        run = positions - last_other
        # ... whose parity continues the previous block's run while no other byte came.
        odd_run = (run + ((last_other < 0) & escape_next)) & 1
        escaped = np.empty(len(block), dtype=bool)
        escaped[0] = escape_next
        escaped[1:] = odd_run[:-1].astype(bool)
        quotes = np.cumsum((block == _QUOTE) & ~escaped, dtype=np.int64) + in_string
        outside = (quotes & 1) == 0
        levels = np.cumsum(_STEP[block] * outside) + depth
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
        in_string = int(quotes[-1] & 1)
        escape_next = bool(odd_run[-1])
    return deepest


def nests_deeper_than(data: bytes | bytearray | str, max_depth: int) -> bool:
    """Whether a JSON text nests beyond `max_depth`.

    Nesting never exceeds the number of opening brackets, so almost every real body is
    settled by two counts at C speed; only one with more brackets than the limit is
    scanned (`json_depth`)."""
    if isinstance(data, str):
        opening = data.count("{") + data.count("[")
    else:
        opening = data.count(b"{") + data.count(b"[")
    return opening > max_depth and json_depth(data) > max_depth


def too_deep_detail(max_depth: int) -> str:
    return f"JSON nested deeper than {max_depth} levels"


def checked_json_loads(text: str | bytes, max_depth: int) -> Any:
    """`json.loads` that refuses nesting beyond `max_depth` (InvalidInput) first.

    Malformed JSON still raises `json.JSONDecodeError`, as `json.loads` does.
    """
    if nests_deeper_than(text, max_depth):
        raise InvalidInput(too_deep_detail(max_depth))
    return json.loads(text)


def _parsed_as_json(scope: Scope) -> bool:
    content_type = Headers(scope=scope).get("content-type")
    if content_type is None:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class JsonDepthMiddleware:
    """Refuses (400) an HTTP body that would be parsed as JSON and nests too deeply.

    The body is passed on chunk by chunk as it arrives and checked once complete, before
    the application's last read returns, so nothing parses it first. The copy kept for
    the check is what the application buffers anyway to parse JSON.
    """

    def __init__(self, app: ASGIApp, max_depth: int) -> None:
        self.app = app
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _parsed_as_json(scope):
            await self.app(scope, receive, send)
            return
        body = bytearray()

        async def checked_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
                if not message.get("more_body", False) and body:
                    depth_exceeded = nests_deeper_than(body, self.max_depth)
                    body.clear()
                    if depth_exceeded:
                        # Raised inside the application's own read, so its error
                        # handlers answer: `{"detail"}`, CORS headers, the usual log line.
                        raise HTTPException(400, too_deep_detail(self.max_depth))
            return message

        await self.app(scope, checked_receive, send)

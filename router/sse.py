"""The one Server-Sent Events encoder (the `text/event-stream` wire format).

Each event is `id:`, `event:` and one `data:` line per line of the payload, ended by a
blank line. Ids count up from 1 within a stream, so a client (or a log) can tell a lost
event from a late one. Payloads are pydantic models or JSON-able values, serialized
compactly; JSON never contains a raw newline, but text payloads may, and a bare newline
inside a `data:` line would end the event early, so every payload is split into lines.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import anyio
from pydantic import BaseModel

SSE_MEDIA_TYPE = "text/event-stream"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # the three line ends SSE recognizes
SSE_HEADERS = {
    "Cache-Control": "no-cache, no-store",
    "X-Accel-Buffering": "no",  # nginx and most ingresses: do not hold events back
}


def _data_text(data: BaseModel | dict[str, Any] | list[Any] | str) -> str:
    if isinstance(data, BaseModel):
        return data.model_dump_json()
    if isinstance(data, str):
        return data
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _field_value(name: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"SSE {name} must be one line: {value!r}")
    return value


class SseEncoder:
    """Encodes the events of one stream, numbering them."""

    def __init__(self, first_id: int = 1) -> None:
        self._next_id = first_id

    @property
    def last_id(self) -> int:
        return self._next_id - 1

    def event(self, name: str, data: BaseModel | dict[str, Any] | list[Any] | str) -> bytes:
        lines = [f"id: {self._next_id}", f"event: {_field_value('event name', name)}"]
        self._next_id += 1
        text = _data_text(data)
        lines.extend(f"data: {line}" for line in _LINE_BREAK.split(text))
        return ("\n".join(lines) + "\n\n").encode("utf-8")


KEEPALIVE_COMMENT = b": keep-alive\n\n"


async def with_keepalive(events: AsyncIterator[bytes], every: float) -> AsyncGenerator[bytes, None]:
    """`events`, with a comment line whenever none has left for `every` seconds.

    A stream waiting for an engine slot, or for a slow phrase, sends nothing; proxies and
    ingresses close a response idle for their time-out (often 60 s). A comment keeps it
    open and is ignored by every SSE client. The next event is awaited in a task of its
    own so the wait can be given up on without cancelling the work behind it; when this
    generator is closed (the client went away), that task is cancelled and `events`
    closed, which stops the synthesis.
    """
    iterator = aiter(events)
    pending: asyncio.Task[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield KEEPALIVE_COMMENT
                continue
            finished, pending = pending, None
            try:
                event = finished.result()
            except StopAsyncIteration:
                return
            yield event
    finally:
        with anyio.CancelScope(shield=True):
            if pending is not None:
                pending.cancel()
                await asyncio.wait({pending})
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()

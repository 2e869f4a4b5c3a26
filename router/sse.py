"""The one Server-Sent Events encoder (the `text/event-stream` wire format).

Each event is `id:`, `event:` and one `data:` line per line of the payload, ended by a
blank line. Ids count up from 1 within a stream, so a client (or a log) can tell a lost
event from a late one. Payloads are pydantic models or JSON-able values, serialized
compactly; JSON never contains a raw newline, but text payloads may, and a bare newline
inside a `data:` line would end the event early, so every payload is split into lines.
"""

from __future__ import annotations

import json
import re
from typing import Any

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

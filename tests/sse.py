"""Reading a text/event-stream as a browser's EventSource does (WHATWG framing)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator


def sse_frames(lines: Iterable[str]) -> Iterator[dict[str, str]]:
    """The events of a stream, given line by line: each event's fields, its `data` lines
    joined with newlines (no `data` key when it had none); comments are skipped and a
    blank line with nothing before it makes no event."""
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield {**fields, "data": "\n".join(data)}
            elif fields:
                yield fields
            fields, data = {}, []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value


def sse_events(lines: Iterable[str]) -> Iterator[dict[str, object]]:
    """The events that carry data, their data decoded as JSON, as they arrive."""
    for frame in sse_frames(lines):
        if "data" in frame:
            yield {**frame, "data": json.loads(frame["data"])}

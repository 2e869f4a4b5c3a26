"""The SSE encoder: what an EventSource (or any SSE parser) reads back."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from router.sse import SseEncoder
from tests.sse import sse_frames


def parse(stream: bytes) -> list[dict[str, str]]:
    """The encoder's bytes as an SSE client reads them; `data` is "" in an event without."""
    text = stream.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    return [{"data": "", **frame} for frame in sse_frames(text.split("\n"))]


class Payload(BaseModel):
    chunk_index: int
    audio_data: str


def test_events_have_counting_ids_names_and_json_data() -> None:
    encoder = SseEncoder()
    stream = (
        encoder.event("start", {"message": "go"})
        + encoder.event("audio_chunk", Payload(chunk_index=1, audio_data="AAAA"))
        + encoder.event("complete", {"total_chunks": 1})
    )
    events = parse(stream)
    assert [e["event"] for e in events] == ["start", "audio_chunk", "complete"]
    assert [e["id"] for e in events] == ["1", "2", "3"]
    assert json.loads(events[1]["data"]) == {"chunk_index": 1, "audio_data": "AAAA"}
    assert encoder.last_id == 3


def test_each_event_ends_with_a_blank_line() -> None:
    chunk = SseEncoder().event("start", {"a": 1})
    assert chunk.endswith(b"\n\n")
    assert chunk.count(b"\n\n") == 1


@pytest.mark.parametrize("text", ["one\ntwo", "one\r\ntwo", "one\rtwo", "one\n\ntwo\n"])
def test_text_with_line_breaks_survives_as_one_event(text: str) -> None:
    events = parse(SseEncoder().event("note", text))
    assert len(events) == 1
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    assert events[0]["data"] == expected


def test_non_ascii_json_stays_readable() -> None:
    events = parse(SseEncoder().event("start", {"text": "希望你以后"}))
    assert json.loads(events[0]["data"]) == {"text": "希望你以后"}


def test_event_name_must_be_one_line() -> None:
    with pytest.raises(ValueError, match="one line"):
        SseEncoder().event("bad\nname", {})


def test_ids_can_start_elsewhere() -> None:
    assert parse(SseEncoder(first_id=41).event("x", {}))[0]["id"] == "41"

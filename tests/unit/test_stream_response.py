"""AudioStreamResponse: a client that leaves ends the response and closes its stream; any
other cancellation still cancels; chunk_bytes bounds every message without the server's
framing extension."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from starlette.types import Message

from router.streaming import AudioStream, AudioStreamResponse


class ClosableStream:
    def __init__(self) -> None:
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


def response_for(
    body: AsyncIterator[bytes], chunk_bytes: int | None = None
) -> tuple[AudioStreamResponse, ClosableStream]:
    stream = ClosableStream()
    response = AudioStreamResponse(
        cast(AudioStream, stream),
        body,
        media_type="audio/wav",
        headers={},
        chunk_bytes=chunk_bytes,
    )
    return response, stream


async def first_then_forever() -> AsyncIterator[bytes]:
    yield b"RIFF"
    await asyncio.Event().wait()  # an engine that never produces the next chunk
    yield b""


SCOPE: dict[str, Any] = {"type": "http", "method": "POST", "headers": []}


async def test_a_client_that_leaves_while_the_engine_is_silent_ends_the_response() -> None:
    response, stream = response_for(first_then_forever())
    sent: list[Message] = []
    left = asyncio.Event()

    async def receive() -> Message:
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    serving = asyncio.create_task(response(SCOPE, receive, send))
    await asyncio.sleep(0.05)
    assert not serving.done() and [m.get("body") for m in sent[1:]] == [b"RIFF"]
    left.set()
    await asyncio.wait_for(serving, 5)  # returns normally: nobody is left to answer
    assert stream.closed


async def test_a_cancellation_from_elsewhere_is_not_swallowed() -> None:
    response, stream = response_for(first_then_forever())

    async def receive() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        pass

    serving = asyncio.create_task(response(SCOPE, receive, send))
    await asyncio.sleep(0.05)
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert stream.closed


async def test_without_server_framing_every_message_is_within_chunk_bytes() -> None:
    async def pieces() -> AsyncIterator[bytes]:
        yield bytes(2500)
        yield bytes(300)

    response, stream = response_for(pieces(), chunk_bytes=1024)
    sent: list[Message] = []

    async def receive() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await response(SCOPE, receive, send)
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body"]
    assert [len(b) for b in bodies] == [1024, 1024, 452, 300, 0]
    assert sent[-1]["more_body"] is False
    assert stream.closed

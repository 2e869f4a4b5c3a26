"""SSE keep-alive comments while a stream waits, and a clean close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from router.sse import KEEPALIVE_COMMENT, with_keepalive


async def test_comments_fill_the_silence_and_events_pass_through() -> None:
    async def slow() -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.sleep(0.35)
        yield b"second"

    received = [item async for item in with_keepalive(slow(), 0.1)]
    assert received[0] == b"first" and received[-1] == b"second"
    assert received.count(KEEPALIVE_COMMENT) >= 2
    assert set(received[1:-1]) == {KEEPALIVE_COMMENT}


async def test_closing_stops_the_events_behind_it() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            yield b"one"
            await asyncio.sleep(3600)
            yield b"never"
        finally:
            closed.set()

    stream = with_keepalive(endless(), 0.05)
    assert await anext(stream) == b"one"
    assert await anext(stream) == KEEPALIVE_COMMENT
    await stream.aclose()
    assert closed.is_set()

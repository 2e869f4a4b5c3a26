"""Many HTTP chunks per write: the bytes a client reads, from uvicorn with the platform's
protocol over a real socket, and from a server without the extension."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import h11
import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from core.settings import Settings
from router import chunk_framing
from router.http_limits import uvicorn_options

BODY = bytes(range(256)) * 40  # 10,240 bytes, no two neighbouring chunks alike
LIMIT = 1000


def http_chunks(raw: bytes) -> tuple[h11.Response, list[bytes]]:
    """The response head and each chunk's data, as a client's HTTP parser sees them."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.receive_data(raw)
    head: h11.Response | None = None
    chunks: list[bytes] = []
    current = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            current += event.data
            if event.chunk_end:
                chunks.append(current)
                current = b""
        elif isinstance(event, h11.EndOfMessage):
            break
        else:
            raise AssertionError(f"the response ended early: {event!r}")
    assert head is not None
    return head, chunks


@pytest.mark.parametrize("size", [1, LIMIT - 1, LIMIT, LIMIT + 1, 5 * LIMIT, 5 * LIMIT + 7])
def test_framing_is_chunks_of_at_most_the_limit(size: int) -> None:
    body = BODY[:size]
    raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    raw += chunk_framing.framed(body, LIMIT) + b"0\r\n\r\n"
    _, chunks = http_chunks(raw)
    assert b"".join(chunks) == body
    assert all(0 < len(chunk) <= LIMIT for chunk in chunks)
    assert len(chunks) == -(-size // LIMIT)


OFFERED: list[bool] = []  # per request: did the server offer the extension


async def pieces_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Three pieces, each as one message with the limit where the server offers it."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    framing = chunk_framing.offered(scope)
    OFFERED.append(framing)
    for piece in (BODY[:2500], BODY[2500:2600], BODY[2600:]):
        if framing:
            await send(chunk_framing.message(piece, LIMIT))
        else:
            for start in range(0, len(piece), LIMIT):
                part = piece[start : start + LIMIT]
                await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    config = uvicorn.Config(pieces_app, log_level="warning", **uvicorn_options(Settings()))
    instance = uvicorn.Server(config)
    listener = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield listener.getsockname()[1]
    instance.should_exit = True
    thread.join(10)


def raw_request(port: int, method: str = "GET") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(f"{method} / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        received = b""
        while data := connection.recv(65536):
            received += data
    return received


def test_the_server_frames_each_piece_as_chunks_within_the_limit(server: int) -> None:
    OFFERED.clear()
    head, chunks = http_chunks(raw_request(server))
    assert OFFERED == [True]
    assert head.status_code == 200
    assert b"".join(chunks) == BODY
    assert [len(chunk) for chunk in chunks] == [1000, 1000, 500, 100] + [1000] * 7 + [640]


def test_a_head_request_gets_no_body(server: int) -> None:
    received = raw_request(server, "HEAD")
    assert received.startswith(b"HTTP/1.1 200")
    assert received.endswith(b"\r\n\r\n") and b"\r\n\r\n" not in received[:-4]


async def test_without_the_extension_a_response_sends_chunk_by_chunk() -> None:
    OFFERED.clear()
    transport = httpx.ASGITransport(app=pieces_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/")
    assert response.content == BODY
    assert OFFERED == [False]

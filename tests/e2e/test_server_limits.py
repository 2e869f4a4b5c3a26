"""The HTTP server's own limits, as a hostile or careless client meets them.

Each attack runs against a real `cosyvoice-api serve` process while `ServerWatch`
records its peak memory and how fast /health keeps answering.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
import uuid
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.e2e.conftest import ApiServer, ServerFactory, embedded_only
from tests.e2e.watch import ServerWatch

pytestmark = [
    pytest.mark.quiet,
    embedded_only("limits of the HTTP server itself, before any backend is reached"),
]

API_KEY = "secret123"
HEAD_TIMEOUT = 2.0
LONG_TEXT = "This sentence keeps the only engine slot busy for a while. " * 30


@pytest.fixture(scope="module")
def limited(server_factory: ServerFactory) -> ApiServer:
    """A server with short time-outs, one engine slot and frequent SSE keep-alives."""
    return server_factory(
        REQUEST_HEAD_TIMEOUT=str(HEAD_TIMEOUT),
        SYNTHESIS_CONCURRENCY="1",
        SSE_KEEPALIVE_SECONDS="0.5",
    )


@pytest.fixture(scope="module")
def keyed(server_factory: ServerFactory) -> ApiServer:
    """A server that wants an API key on every /api route."""
    return server_factory(API_KEY=API_KEY)


def raw_connection(server: ApiServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=10)


def read_answer(conn: socket.socket, timeout: float = 5.0) -> bytes:
    """What the server sent before it closed (b"" when it only closed or reset)."""
    conn.settimeout(timeout)
    data = b""
    try:
        while chunk := conn.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


# --- request head -----------------------------------------------------------------------


def test_a_128_mb_header_line_is_refused_before_it_is_read(keyed: ApiServer) -> None:
    chunk = b"a" * 65536
    total = 128 * 1024 * 1024
    sent = 0
    with ServerWatch(keyed) as watch, raw_connection(keyed) as conn:
        started = time.monotonic()
        conn.sendall(b"GET /api/v3/voices/ HTTP/1.1\r\nHost: x\r\nX-Filler: ")
        conn.settimeout(2)
        try:
            while sent < total:
                conn.sendall(chunk)
                sent += len(chunk)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            pass  # refused: the server stopped reading
        answer = read_answer(conn)
        elapsed = time.monotonic() - started
    watch.assert_healthy(max_rss_mb=400, max_health_s=1.0)
    assert sent < 32 * 1024 * 1024, f"the server read {sent} bytes of one header"
    assert elapsed < 10
    if answer:  # the answer can be lost to a reset; the refusal itself cannot
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert "detail" in body


def test_a_header_just_over_the_limit_gets_431_with_a_json_body(keyed: ApiServer) -> None:
    with raw_connection(keyed) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n")
        answer = read_answer(conn)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), head
    assert b"application/json" in head
    assert "65536" in json.loads(body)["detail"]


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            b"POST /api/v3/cross-lingual/with-cache HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            id="content-length-and-chunked",
        ),
        pytest.param(
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-ID: a\x1b[31mred\r\n\r\n",
            id="control-character-in-a-header",
        ),
        pytest.param(
            b"POST /api/v3/cross-lingual/with-cache HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"ffffffffffffffffffff\r\nabc",
            id="chunk-size-overflow",
        ),
        pytest.param(
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nBREW /health HTTP/1.1\r\nHost: x\r\n\r\n",
            id="unknown-method-after-a-good-request",
        ),
    ],
)
def test_a_request_that_is_not_http_gets_400_with_a_json_body(
    keyed: ApiServer, request_bytes: bytes
) -> None:
    with ServerWatch(keyed) as watch, raw_connection(keyed) as conn:
        conn.sendall(request_bytes)
        answer = read_answer(conn)
    watch.assert_healthy(max_rss_mb=400, max_health_s=1.0)
    # A good request before the bad one on the same connection is answered first.
    last = answer[answer.rfind(b"HTTP/1.1 ") :]
    head, _, body = last.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b"content-type: application/json" in head.lower()
    assert b"connection: close" in head.lower()
    assert "not valid HTTP/1.1" in json.loads(body)["detail"]
    if answer.count(b"HTTP/1.1 ") > 1:
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


def test_ordinary_headers_still_pass(keyed: ApiServer) -> None:
    reply = httpx.get(f"{keyed.url}/health", headers={"X-Some": "v" * 8000})
    assert reply.status_code == 200


def test_slow_connections_are_timed_out_while_health_answers(limited: ApiServer) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    conns = [raw_connection(limited) for _ in range(200)]
    try:
        with ServerWatch(limited) as watch:
            started = time.monotonic()
            open_ = list(conns)
            for second in range(int(HEAD_TIMEOUT) + 6):
                still = []
                for conn in open_:
                    try:
                        conn.send(request[second : second + 1])
                        still.append(conn)
                    except OSError:
                        pass
                open_ = still
                time.sleep(1)
            closed = 0
            answers = []
            for conn in conns:
                answer = read_answer(conn, timeout=0.5)
                answers.append(answer)
                try:
                    conn.send(b"x")
                    conn.send(b"x")
                    closed += bool(answer) or conn.recv(1) == b""
                except OSError:
                    closed += 1
            elapsed = time.monotonic() - started
        watch.assert_healthy(max_rss_mb=400, max_health_s=1.0)
    finally:
        for conn in conns:
            conn.close()
    assert closed == len(conns), f"{len(conns) - closed} slow connections still open"
    assert elapsed < HEAD_TIMEOUT + 15
    timed_out = [a for a in answers if a]
    assert timed_out and all(a.startswith(b"HTTP/1.1 408") for a in timed_out), timed_out[:1]


def test_an_idle_connection_is_closed_after_the_head_timeout(limited: ApiServer) -> None:
    with raw_connection(limited) as conn:
        started = time.monotonic()
        assert read_answer(conn, timeout=HEAD_TIMEOUT + 5) == b""
        assert time.monotonic() - started < HEAD_TIMEOUT + 3


# --- WebSocket --------------------------------------------------------------------------


def ws_handshake(server: ApiServer, path: str) -> socket.socket:
    conn = raw_connection(server)
    key = base64.b64encode(os.urandom(16)).decode()
    conn.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += conn.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return conn


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + masked


def test_a_ping_flood_that_never_reads_is_closed(limited: ApiServer) -> None:
    pings = client_frame(0x9, b"p") * 10_000
    sent = 0
    with ServerWatch(limited) as watch:
        conn = ws_handshake(limited, "/api/v3/ws/stream")
        conn.settimeout(3)
        started = time.monotonic()
        try:
            while sent < 1_500_000:
                conn.sendall(pings)
                sent += 10_000
        except OSError:
            pass
        elapsed = time.monotonic() - started
        conn.close()
    watch.assert_healthy(max_rss_mb=400, max_health_s=1.0)
    assert sent < 1_500_000, "the server kept taking pings without their pongs being read"
    assert elapsed < 10


async def test_a_message_over_the_size_limit_closes_with_1009(limited: ApiServer) -> None:
    url = limited.url.replace("http://", "ws://") + "/api/v3/ws/stream"
    async with connect(url, max_size=None, close_timeout=2) as ws:
        await ws.recv()
        # The server closes as soon as the frame's header declares its size, often while
        # the client is still sending the rest: the send may be what sees the close.
        with pytest.raises(ConnectionClosed):
            await ws.send("x" * (2 * 1024 * 1024))
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1009


# --- JSON depth -------------------------------------------------------------------------

DEEP = "[" * 1000 + "]" * 1000
DEEP_OBJECT = '{"a":' * 1000 + "1" + "}" * 1000


@pytest.mark.parametrize("content_type", ["application/json", None])
def test_deep_json_in_a_voice_update_is_a_400(limited: ApiServer, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    with ServerWatch(limited) as watch:
        reply = httpx.put(
            f"{limited.url}/api/v3/voices/some_voice", content=DEEP_OBJECT, headers=headers
        )
    watch.assert_healthy()
    assert reply.status_code == 400, reply.text
    assert reply.json()["detail"]


def test_deep_json_in_a_task_is_a_400(limited: ApiServer) -> None:
    body = '{"text": "hello", "voice_id": ' + DEEP + "}"
    reply = httpx.post(
        f"{limited.url}/api/v3/cross-lingual/task",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert reply.status_code == 400, reply.text
    assert "32" in reply.json()["detail"]


def test_json_within_the_depth_limit_is_parsed_as_usual(limited: ApiServer) -> None:
    body = '{"text": "hello", "voice_id": ' + "[" * 20 + "]" * 20 + "}"
    reply = httpx.post(
        f"{limited.url}/api/v3/cross-lingual/task",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert reply.status_code == 400  # a schema error now, not a depth error
    assert "nested" not in reply.json()["detail"]


async def test_a_deep_websocket_message_gets_an_error_and_the_socket_stays_open(
    limited: ApiServer,
) -> None:
    url = limited.url.replace("http://", "ws://") + "/api/v3/ws/stream"
    async with connect(url, max_size=None, close_timeout=2) as ws:
        await ws.recv()
        for deep in (DEEP, DEEP_OBJECT):
            await ws.send(deep)
            error = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert error["message_type"] == "error"
            assert error["error_code"] in ("INVALID_JSON", "INVALID_REQUEST")
        await ws.send(json.dumps({"message_type": "ping", "request_id": "after"}))
        pong = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert pong["message_type"] == "pong" and pong["request_id"] == "after"


# --- logs -------------------------------------------------------------------------------


def log_text(server: ApiServer) -> str:
    return Path(server.log_path).read_bytes().decode("utf-8", errors="replace")


def test_control_characters_in_a_path_cannot_forge_log_lines(limited: ApiServer) -> None:
    marker = uuid.uuid4().hex[:8]
    for path in (
        f"/api/v3/voices/{marker}%0d%0a2030-01-01%20INFO%20forged{marker}",
        f"/api/v3/voices/{marker}%1b[31mred",
        f"/api/v3/voices/{marker}%00nul",
    ):
        reply = httpx.get(limited.url + path)
        assert reply.status_code in (400, 404)
    time.sleep(0.5)
    log = log_text(limited)
    assert marker in log
    assert not any(line.startswith("2030-01-01") for line in log.splitlines())
    assert f"forged{marker}" in log  # written, escaped, inside its own line
    assert "\x1b" not in log
    assert "\x00" not in log


async def test_an_api_key_in_a_websocket_url_never_reaches_the_log(keyed: ApiServer) -> None:
    url = keyed.url.replace("http://", "ws://") + f"/api/v3/ws/stream?api_key={API_KEY}"
    async with connect(url, close_timeout=2) as ws:
        assert json.loads(await ws.recv())["message_type"] == "status"
    wrong = keyed.url.replace("http://", "ws://") + "/api/v3/ws/stream?api_key=secret123x"
    with pytest.raises((ConnectionClosed, InvalidStatus)):
        async with connect(wrong, close_timeout=2) as ws:
            await asyncio.wait_for(ws.recv(), 5)
    async with httpx.AsyncClient() as http:
        await http.get(f"{keyed.url}/api/v3/voices/?api_key={API_KEY}")
    await asyncio.sleep(0.5)
    log = log_text(keyed)
    assert "ws/stream" in log
    assert API_KEY not in log


# --- SSE keep-alive ---------------------------------------------------------------------


async def test_sse_sends_keepalives_while_the_only_engine_slot_is_busy(
    limited: ApiServer, english_clip: bytes
) -> None:
    voice_id = f"voice_{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=limited.url, timeout=60) as http:
        created = await http.post(
            "/api/v3/voices/",
            data={"voice_id": voice_id, "name": "Keep-alive", "voice_type": "cross_lingual"},
            files={"audio_file": ("clip.wav", english_clip, "audio/wav")},
        )
        assert created.status_code == 201, created.text
        ws_url = limited.url.replace("http://", "ws://") + "/api/v3/ws/stream"
        # A long stream whose client reads nothing holds the only slot.
        async with connect(ws_url, max_size=None, close_timeout=2) as holder:
            await holder.recv()
            await holder.send(
                json.dumps(
                    {
                        "message_type": "text_request",
                        "request_id": "holder",
                        "text": LONG_TEXT,
                        "voice_id": voice_id,
                        "quality": "high",
                        "speed": 0.5,
                    }
                )
            )
            await asyncio.sleep(0.5)
            params = {"text": "Waiting for a slot.", "voice_id": voice_id}
            lines: list[str] = []
            async with http.stream(
                "GET", "/api/v3/streaming/cross-lingual/sse", params=params
            ) as events:
                assert events.status_code == 200
                deadline = time.monotonic() + 20
                async for line in events.aiter_lines():
                    lines.append(line)
                    if line == ": keep-alive" or time.monotonic() > deadline:
                        break
    assert ": keep-alive" in lines, lines[:10]

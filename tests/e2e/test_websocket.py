"""WebSocket streaming, as a client speaking API.md's messages sees it."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.audio_checks import hear
from tests.conftest import TESTDATA
from tests.e2e.conftest import ApiServer, ServerFactory, create_voice

TEXT = "Hello there. This is a streaming test of the voice, read aloud in three sentences."
LONG_TEXT = "This sentence keeps the stream busy for a while. " * 40
TIMEOUT = 30


@asynccontextmanager
async def socket(
    server: ApiServer, version: str = "v3", client_id: str | None = None
) -> AsyncIterator[ClientConnection]:
    url = server.url.replace("http://", "ws://") + f"/api/{version}/ws/stream"
    if client_id:
        url += f"?client_id={client_id}"
    async with connect(url, max_size=None, close_timeout=2) as ws:
        status = await receive(ws)
        assert status["message_type"] == "status" and status["status"] == "connected"
        assert status["session_id"] and status["timestamp"] > 0
        yield ws


async def receive(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def send(ws: ClientConnection, **message: Any) -> None:
    await ws.send(json.dumps(message))


async def send_long_request(ws: ClientConnection, request_id: str, voice_id: str) -> None:
    """A request that keeps its stream busy for seconds (long text, high quality, slow)."""
    await send(
        ws,
        message_type="text_request",
        request_id=request_id,
        text=LONG_TEXT,
        voice_id=voice_id,
        quality="high",
        speed=0.5,
    )


async def collect(ws: ClientConnection, request_ids: set[str]) -> dict[str, list[dict[str, Any]]]:
    """Every frame of the given requests, until each has ended (complete, error, cancelled)."""
    frames: dict[str, list[dict[str, Any]]] = {rid: [] for rid in request_ids}
    open_ids = set(request_ids)
    while open_ids:
        message = await receive(ws)
        rid = message.get("request_id")
        if rid not in frames:
            continue
        frames[rid].append(message)
        if message["message_type"] in ("synthesis_complete", "error", "synthesis_cancelled"):
            open_ids.discard(rid)
    return frames


def decoded_samples(frames: list[dict[str, Any]], sample_rate: int) -> np.ndarray:
    """Samples of a request's wav chunks, each chunk decoded as the file it is."""
    pieces = []
    for frame in frames:
        if frame["message_type"] != "audio_chunk":
            continue
        heard = hear(base64.b64decode(frame["audio_data"]))
        assert heard.format == "wav" and heard.sample_rate == sample_rate
        assert heard.channels == 1
        assert frame["metadata"]["sample_rate"] == sample_rate
        assert frame["metadata"]["channels"] == 1
        pieces.append(heard.samples)
    return np.concatenate(pieces)


def sync_duration(server: ApiServer, voice_id: str, text: str) -> float:
    response = httpx.post(
        f"{server.url}/api/v3/cross-lingual/with-cache",
        json={"text": text, "voice_id": voice_id},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()["duration"]


def streaming_health(server: ApiServer) -> dict[str, Any]:
    return httpx.get(f"{server.url}/api/v3/streaming/health").json()


def sessions(server: ApiServer, version: str = "v3") -> list[dict[str, Any]]:
    body = httpx.get(f"{server.url}/api/{version}/ws/sessions").json()
    assert body["total"] == len(body["sessions"])
    return body["sessions"]


async def eventually(check: Any) -> None:
    """Wait (10 s at most) until `check()`, a blocking call, is true."""
    async with asyncio.timeout(10):
        while True:  # the server's state, polled: there is nothing to await instead
            if await asyncio.to_thread(check):
                return
            await asyncio.sleep(0.05)


# --- the protocol --------------------------------------------------------------------------


async def test_ping_is_answered_with_pong(server: ApiServer) -> None:
    async with socket(server) as ws:
        await send(ws, message_type="ping", request_id="ping_1")
        pong = await receive(ws)
        assert pong["message_type"] == "pong"
        assert pong["request_id"] == "ping_1"
        assert pong["timestamp"] > 0


@pytest.mark.parametrize(("quality", "rate"), [("low", 16000), ("medium", 22050), ("high", 44100)])
async def test_a_request_streams_start_chunks_and_complete(
    server: ApiServer, voice_id: str, quality: str, rate: int
) -> None:
    async with socket(server) as ws:
        await send(
            ws,
            message_type="text_request",
            request_id="unique_id",
            text=TEXT,
            voice_id=voice_id,
            format="wav",
            speed=1.0,
            quality=quality,
        )
        frames = (await collect(ws, {"unique_id"}))["unique_id"]
    kinds = [frame["message_type"] for frame in frames]
    assert kinds[0] == "synthesis_start" and kinds[-1] == "synthesis_complete"
    assert set(kinds[1:-1]) == {"audio_chunk"}
    chunks = [frame["metadata"] for frame in frames[1:-1]]
    assert len(chunks) >= 2
    assert [c["chunk_index"] for c in chunks] == list(range(1, len(chunks) + 1))
    assert [c["is_final"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    for frame in frames[1:-1]:
        assert frame["metadata"]["chunk_size"] == len(base64.b64decode(frame["audio_data"]))
    start, complete = frames[0], frames[-1]
    assert start["voice_id"] == voice_id and start["text"] == TEXT
    samples = decoded_samples(frames, rate)
    assert np.sqrt(np.mean(samples**2)) > 0.005
    assert complete["total_chunks"] == len(chunks)
    duration = len(samples) / rate
    assert abs(duration - complete["total_duration"]) < 0.01
    expected = sync_duration(server, voice_id, TEXT)
    assert abs(duration - expected) <= 0.05 + 0.02 * expected
    assert complete["synthesis_time"] > 0


async def test_mp3_and_pcm_chunks(server: ApiServer, voice_id: str) -> None:
    async with socket(server) as ws:
        await send(
            ws,
            message_type="text_request",
            request_id="m",
            text=TEXT,
            voice_id=voice_id,
            format="mp3",
        )
        await send(
            ws,
            message_type="text_request",
            request_id="p",
            text=TEXT,
            voice_id=voice_id,
            format="pcm",
            quality="low",
        )
        frames = await collect(ws, {"m", "p"})
    for frame in frames["m"]:
        if frame["message_type"] == "audio_chunk" and frame["metadata"]["chunk_size"]:
            assert hear(base64.b64decode(frame["audio_data"])).format == "mp3"
    raw = b"".join(
        base64.b64decode(f["audio_data"]) for f in frames["p"] if f["message_type"] == "audio_chunk"
    )
    samples = np.frombuffer(raw, dtype="<i2")
    assert frames["p"][-1]["message_type"] == "synthesis_complete"
    assert abs(len(samples) / 16000 - frames["p"][-1]["total_duration"]) < 0.01


async def test_two_requests_in_flight_on_one_socket(server: ApiServer, voice_id: str) -> None:
    async with socket(server) as ws:
        await send(
            ws, message_type="text_request", request_id="first", text=TEXT * 2, voice_id=voice_id
        )
        await send(
            ws,
            message_type="text_request",
            request_id="second",
            text="A short one.",
            voice_id=voice_id,
            quality="low",
        )
        frames = await collect(ws, {"first", "second"})
    for rid, rate in (("first", 22050), ("second", 16000)):
        kinds = [frame["message_type"] for frame in frames[rid]]
        assert kinds[0] == "synthesis_start" and kinds[-1] == "synthesis_complete", kinds
        assert all(frame["request_id"] == rid for frame in frames[rid])
        samples = decoded_samples(frames[rid], rate)
        assert abs(len(samples) / rate - frames[rid][-1]["total_duration"]) < 0.01
    assert frames["first"][-1]["total_duration"] > 2 * frames["second"][-1]["total_duration"]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("this is not json", "INVALID_JSON"),
        ("[1, 2]", "INVALID_JSON"),
        (json.dumps({"message_type": "sing", "request_id": "x"}), "UNKNOWN_MESSAGE_TYPE"),
        (json.dumps({"request_id": "x"}), "UNKNOWN_MESSAGE_TYPE"),
        (json.dumps({"message_type": "text_request", "request_id": "x"}), "INVALID_REQUEST"),
        (
            json.dumps(
                {
                    "message_type": "text_request",
                    "request_id": "x",
                    "text": "Hi.",
                    "voice_id": "v",
                    "speed": 9,
                }
            ),
            "INVALID_REQUEST",
        ),
        (
            json.dumps({"message_type": "cancel", "request_id": "nothing_running"}),
            "INVALID_REQUEST",
        ),
    ],
)
async def test_a_bad_message_gets_an_error_and_the_socket_stays_open(
    server: ApiServer, voice_id: str, frame: str, code: str
) -> None:
    async with socket(server) as ws:
        await ws.send(frame)
        error = await receive(ws)
        assert error["message_type"] == "error"
        assert error["error_code"] == code
        assert error["error_message"] and error["timestamp"] > 0
        await send(
            ws,
            message_type="text_request",
            request_id="after",
            text="Still here.",
            voice_id=voice_id,
        )
        frames = (await collect(ws, {"after"}))["after"]
        assert frames[-1]["message_type"] == "synthesis_complete"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"voice_id": "nobody_here"}, "VOICE_NOT_FOUND"),
        ({"format": "ogg"}, "INVALID_REQUEST"),
        ({"text": "   "}, "INVALID_REQUEST"),
        ({"text": "..."}, "INVALID_REQUEST"),
        ({"text": "half a pair \ud800 of UTF-16"}, "INVALID_REQUEST"),  # json.dumps escapes it
    ],
)
async def test_a_request_that_cannot_be_served_gets_an_error_with_its_id(
    server: ApiServer, voice_id: str, fields: dict[str, str], code: str
) -> None:
    async with socket(server) as ws:
        await send(
            ws,
            **{
                "message_type": "text_request",
                "request_id": "r1",
                "text": TEXT,
                "voice_id": voice_id,
                **fields,
            },
        )
        frames = (await collect(ws, {"r1"}))["r1"]
        assert frames[-1]["message_type"] == "error"
        assert frames[-1]["error_code"] == code
        await send(ws, message_type="ping", request_id="still_open")
        assert (await receive(ws))["message_type"] == "pong"


async def test_cancel_stops_a_request(server: ApiServer, voice_id: str) -> None:
    async with socket(server) as ws:
        await send_long_request(ws, "long", voice_id)
        first = await receive(ws)
        assert first["message_type"] == "synthesis_start"
        assert (await receive(ws))["message_type"] == "audio_chunk"
        await send(ws, message_type="cancel", request_id="long")
        frames = (await collect(ws, {"long"}))["long"]
        cancelled = frames[-1]
        assert cancelled["message_type"] == "synthesis_cancelled"
        received = 1 + sum(frame["message_type"] == "audio_chunk" for frame in frames)
        assert cancelled["chunks_sent"] == received
        # The whole text is over a thousand 0.2 s chunks: it stopped early.
        assert received < 800, received
        assert all(frame["message_type"] != "synthesis_complete" for frame in frames)
        await send(ws, message_type="ping", request_id="after_cancel")
        pong = await receive(ws)
        assert pong == {**pong, "message_type": "pong", "request_id": "after_cancel"}
        assert streaming_health(server)["active_streams"] == 0


# --- sessions and resources ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_id", "says"),
    [("two%0Alines", "control characters"), ("x" * 129, "at most 128 characters")],
)
async def test_a_bad_client_id_is_refused_at_the_handshake_with_a_reason(
    server: ApiServer, client_id: str, says: str
) -> None:
    url = server.url.replace("http", "ws", 1) + f"/api/v3/ws/stream?client_id={client_id}"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url):
            pass
    assert refused.value.response.status_code == 400
    detail = json.loads(bytes(refused.value.response.body or b""))["detail"]
    assert detail.startswith("client_id: ") and says in detail, detail
    assert "without completing handshake" not in server.log(), "a refusal is no server error"


async def test_sessions_are_listed_while_open_and_gone_after_close(
    server: ApiServer, voice_id: str
) -> None:
    async with socket(server, client_id="listed_client") as ws:
        listed = [s for s in sessions(server) if s["client_id"] == "listed_client"]
        assert len(listed) == 1
        assert listed[0]["connected_at"] and listed[0]["requests_served"] == 0
        assert listed[0]["active_requests"] == []
        assert streaming_health(server)["active_websocket_sessions"] >= 1

        await send_long_request(ws, "held", voice_id)
        assert (await receive(ws))["message_type"] == "synthesis_start"
        # Not reading: the request stays in flight, held back by this slow reader.
        await asyncio.sleep(0.3)
        listed = [s for s in sessions(server) if s["client_id"] == "listed_client"]
        assert listed[0]["active_requests"] == ["held"]
        await send(ws, message_type="cancel", request_id="held")
        await collect(ws, {"held"})

        await send(
            ws, message_type="text_request", request_id="done", text="Short.", voice_id=voice_id
        )
        await collect(ws, {"done"})
        listed = [s for s in sessions(server) if s["client_id"] == "listed_client"]
        assert listed[0]["requests_served"] == 1
        assert listed[0]["active_requests"] == []
        assert not [s for s in sessions(server, "v2") if s["client_id"] == "listed_client"]

    await eventually(lambda: not [s for s in sessions(server) if s["client_id"] == "listed_client"])


async def test_closing_mid_request_stops_the_stream(server: ApiServer, voice_id: str) -> None:
    async with socket(server) as ws:
        await send_long_request(ws, "abandoned", voice_id)
        assert (await receive(ws))["message_type"] == "synthesis_start"
        await asyncio.sleep(0.3)
        assert streaming_health(server)["active_streams"] >= 1
        ws.transport.abort()  # gone without a goodbye, like a dropped network
    await eventually(lambda: streaming_health(server)["active_streams"] == 0)


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_older_versions_have_the_socket_too(
    server: ApiServer, voice_id: str, version: str
) -> None:
    async with socket(server, version=version) as ws:
        await send(ws, message_type="text_request", request_id="old", text=TEXT, voice_id=voice_id)
        frames = (await collect(ws, {"old"}))["old"]
    assert frames[-1]["message_type"] == "synthesis_complete"
    assert len(decoded_samples(frames, 22050)) > 22050


async def test_requests_beyond_the_cap_are_busy(server_factory: ServerFactory) -> None:
    capped = await asyncio.to_thread(server_factory, MAX_CONCURRENT_STREAMS="1")
    with httpx.Client(base_url=capped.url, timeout=60) as http:
        voice = create_voice(http, TESTDATA / "cross_lingual_prompt.wav", language="en")
    async with socket(capped) as ws:
        await send_long_request(ws, "holder", voice)
        assert (await receive(ws))["message_type"] == "synthesis_start"
        await send(ws, message_type="text_request", request_id="extra", text=TEXT, voice_id=voice)
        refused = (await collect(ws, {"extra"}))["extra"]
        assert [frame["message_type"] for frame in refused] == ["error"]
        assert refused[0]["error_code"] == "BUSY"
        await send(ws, message_type="cancel", request_id="holder")
        await collect(ws, {"holder"})
        await send(ws, message_type="text_request", request_id="later", text=TEXT, voice_id=voice)
        later = (await collect(ws, {"later"}))["later"]
        assert later[-1]["message_type"] == "synthesis_complete"

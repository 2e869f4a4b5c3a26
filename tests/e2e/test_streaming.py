"""Streaming over HTTP: chunked audio and Server-Sent Events, read as a client reads them."""

from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.audio_checks import assert_speech, hear
from tests.conftest import TESTDATA
from tests.e2e.conftest import ApiServer, ServerFactory, create_voice
from tests.sse import sse_events

TEXT = "Hello there. This is a streaming test of the voice, read aloud in three sentences."
# Long enough (minutes of audio at speed 0.5) that a client who stops reading holds
# the stream open: the server must wait for it rather than finish into memory.
LONG_TEXT = "This sentence keeps the stream busy for a while. " * 40
QUALITY_RATES = {"low": 16000, "medium": 22050, "high": 44100}
STREAM = "/api/v3/streaming/cross-lingual"
SSE = "/api/v3/streaming/cross-lingual/sse"


def sync_duration(client: httpx.Client, voice_id: str, text: str, version: str = "v3") -> float:
    """What the synchronous route renders for the same text: the length to expect."""
    response = client.post(
        f"/api/{version}/cross-lingual/with-cache", json={"text": text, "voice_id": voice_id}
    )
    assert response.status_code == 200, response.text
    return response.json()["duration"]


def assert_same_length(heard: float, expected: float) -> None:
    assert abs(heard - expected) <= 0.05 + 0.02 * expected, f"{heard:.3f}s vs {expected:.3f}s"


def read_chunked(
    client: httpx.Client, path: str, data: dict[str, str]
) -> tuple[httpx.Response, list[bytes]]:
    """POST and read the body piece by piece, as it arrives."""
    with client.stream("POST", path, data=data) as response:
        assert response.status_code == 200, response.read()
        pieces = [piece for piece in response.iter_raw() if piece]
    return response, pieces


def read_sse(client: httpx.Client, params: dict[str, str], path: str = SSE) -> list[dict]:
    with client.stream("GET", path, params=params) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(sse_events(response.iter_lines()))


def active_streams(client: httpx.Client) -> int:
    return client.get("/api/v3/streaming/health").json()["active_streams"]


def wait_for_active_streams(client: httpx.Client, expected: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (count := active_streams(client)) != expected:
        assert time.monotonic() < deadline, f"{count} streams still active, expected {expected}"
        time.sleep(0.05)


# --- HTTP chunked ------------------------------------------------------------------------


@pytest.mark.parametrize("quality", ["low", "medium", "high"])
def test_chunked_wav_arrives_in_pieces_and_is_the_quality_rate(
    client: httpx.Client, voice_id: str, quality: str
) -> None:
    response, pieces = read_chunked(
        client,
        STREAM,
        {"text": TEXT, "voice_id": voice_id, "quality": quality, "chunk_size": "1024"},
    )
    assert response.headers["content-type"] == "audio/wav"
    assert response.headers.get("transfer-encoding") == "chunked"
    assert len(pieces) >= 2
    assert max(len(piece) for piece in pieces) <= 1024
    heard = assert_speech(b"".join(pieces), fmt="wav", sample_rate=QUALITY_RATES[quality])
    assert_same_length(heard.duration, sync_duration(client, voice_id, TEXT))


def test_chunk_size_bounds_every_http_chunk(client: httpx.Client, voice_id: str) -> None:
    _, small = read_chunked(
        client, STREAM, {"text": TEXT, "voice_id": voice_id, "chunk_size": "256"}
    )
    _, large = read_chunked(
        client, STREAM, {"text": TEXT, "voice_id": voice_id, "chunk_size": "8192"}
    )
    assert max(map(len, small)) <= 256
    assert max(map(len, large)) <= 8192
    assert len(small) > len(large)
    assert_same_length(hear(b"".join(small)).duration, hear(b"".join(large)).duration)


def test_chunked_mp3_streams_frames(client: httpx.Client, voice_id: str) -> None:
    response, pieces = read_chunked(
        client, STREAM, {"text": TEXT, "voice_id": voice_id, "format": "mp3", "quality": "low"}
    )
    assert response.headers["content-type"] == "audio/mpeg"
    assert len(pieces) >= 2
    assert pieces[0][0] == 0xFF and pieces[0][1] & 0xE0 == 0xE0  # starts on a frame sync
    heard = assert_speech(b"".join(pieces), fmt="mp3", sample_rate=16000)
    # A live MP3 stream keeps the encoder's delay and last-frame padding (< 0.15 s).
    expected = sync_duration(client, voice_id, TEXT)
    assert expected - 0.05 <= heard.duration <= expected + 0.15, heard.duration


def test_chunked_pcm_is_raw_samples(client: httpx.Client, voice_id: str) -> None:
    response, pieces = read_chunked(
        client, STREAM, {"text": TEXT, "voice_id": voice_id, "format": "pcm", "quality": "high"}
    )
    assert response.headers["content-type"].startswith("audio/L16")
    assert "rate=44100" in response.headers["content-type"]
    samples = np.frombuffer(b"".join(pieces), dtype="<i2").astype(np.float32) / 32768
    assert np.sqrt(np.mean(samples**2)) > 0.005
    assert_same_length(len(samples) / 44100, sync_duration(client, voice_id, TEXT))


def test_an_unknown_format_is_refused_with_the_formats_that_stream(
    client: httpx.Client, voice_id: str
) -> None:
    response = client.post(STREAM, data={"text": TEXT, "voice_id": voice_id, "format": "ogg"})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert all(fmt in detail for fmt in ("wav", "mp3", "flac", "pcm"))


def test_chunked_alias_is_the_same_stream(client: httpx.Client, voice_id: str) -> None:
    _, direct = read_chunked(client, STREAM, {"text": TEXT, "voice_id": voice_id})
    _, alias = read_chunked(client, f"{STREAM}/chunked", {"text": TEXT, "voice_id": voice_id})
    assert len(alias) >= 2
    assert_same_length(hear(b"".join(alias)).duration, hear(b"".join(direct)).duration)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_older_versions_stream_too(client: httpx.Client, voice_id: str, version: str) -> None:
    _, pieces = read_chunked(
        client,
        f"/api/{version}/streaming/cross-lingual",
        {"text": TEXT, "voice_id": voice_id, "quality": "low"},
    )
    assert len(pieces) >= 2
    heard = assert_speech(b"".join(pieces), fmt="wav", sample_rate=16000)
    assert_same_length(heard.duration, sync_duration(client, voice_id, TEXT, version))
    events = read_sse(
        client, {"text": TEXT, "voice_id": voice_id}, f"/api/{version}/streaming/cross-lingual/sse"
    )
    assert events[0]["data"]["version"] == version


def test_stream_true_on_the_synchronous_route_is_one_continuous_file(
    client: httpx.Client, voice_id: str
) -> None:
    with client.stream(
        "POST",
        "/api/v3/cross-lingual/with-cache",
        json={"text": TEXT, "voice_id": voice_id, "stream": True},
    ) as response:
        assert response.status_code == 200
        pieces = [piece for piece in response.iter_raw() if piece]
    data = b"".join(pieces)
    assert len(pieces) >= 2
    assert data.count(b"RIFF") == 1
    heard = assert_speech(data, fmt="wav", sample_rate=22050)
    assert_same_length(heard.duration, sync_duration(client, voice_id, TEXT))


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"voice_id": "no_such_voice"}, 404),
        ({"text": "   "}, 400),
        ({"quality": "ultra"}, 400),
        ({"speed": "3"}, 400),
        ({"chunk_size": "100"}, 400),
        ({"chunk_size": "9000"}, 400),
        ({"format": "ogg"}, 400),
        ({"text": "..."}, 400),  # nothing speakable: known before any audio exists
    ],
)
def test_errors_before_the_stream_are_status_codes(
    client: httpx.Client, voice_id: str, fields: dict[str, str], status: int
) -> None:
    response = client.post(STREAM, data={"text": TEXT, "voice_id": voice_id, **fields})
    assert response.status_code == status, response.text
    assert "detail" in response.json()


# --- Server-Sent Events ----------------------------------------------------------------------


@pytest.mark.parametrize("quality", ["low", "high"])
def test_sse_events_carry_self_contained_wav_chunks(
    client: httpx.Client, voice_id: str, quality: str
) -> None:
    events = read_sse(client, {"text": TEXT, "voice_id": voice_id, "quality": quality})
    names = [event["event"] for event in events]
    assert names[0] == "start"
    assert names[-1] == "complete"
    assert set(names[1:-1]) == {"audio_chunk"}
    assert [event["id"] for event in events] == [str(i) for i in range(1, len(events) + 1)]
    chunks = [event["data"] for event in events[1:-1]]
    assert len(chunks) >= 2
    assert [chunk["chunk_index"] for chunk in chunks] == list(range(1, len(chunks) + 1))
    assert [chunk["is_final"] for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
    rate = QUALITY_RATES[quality]
    samples = []
    total = 0
    for chunk in chunks:
        audio = base64.b64decode(chunk["audio_data"])
        total += len(audio)
        assert chunk["chunk_size"] == len(audio)
        assert chunk["total_bytes"] == total
        assert chunk["sample_rate"] == rate and chunk["channels"] == 1
        piece = hear(audio)  # each chunk is a WAV file of its own
        assert piece.format == "wav" and piece.sample_rate == rate and piece.channels == 1
        samples.append(piece.samples)
    joined = np.concatenate(samples)
    assert np.sqrt(np.mean(joined**2)) > 0.005
    complete = events[-1]["data"]
    assert complete["total_chunks"] == len(chunks)
    assert complete["total_bytes"] == total
    assert complete["synthesis_time"] > 0
    assert_same_length(len(joined) / rate, complete["duration"])
    assert_same_length(len(joined) / rate, sync_duration(client, voice_id, TEXT))


def test_sse_mp3_and_pcm_chunks(client: httpx.Client, voice_id: str) -> None:
    mp3 = read_sse(client, {"text": TEXT, "voice_id": voice_id, "format": "mp3"})
    for event in mp3[1:-1]:
        audio = base64.b64decode(event["data"]["audio_data"])
        if event["data"]["is_final"] and not audio:
            continue
        assert hear(audio).format == "mp3"
    pcm = read_sse(client, {"text": TEXT, "voice_id": voice_id, "format": "pcm"})
    raw = b"".join(base64.b64decode(event["data"]["audio_data"]) for event in pcm[1:-1])
    samples = np.frombuffer(raw, dtype="<i2")
    assert_same_length(len(samples) / 22050, sync_duration(client, voice_id, TEXT))


def test_sse_failure_after_start_is_an_error_event(client: httpx.Client, voice_id: str) -> None:
    events = read_sse(client, {"text": "...", "voice_id": voice_id})
    assert events[0]["event"] == "start"
    assert events[-1]["event"] == "error"
    error = events[-1]["data"]
    assert error["error"] and error["version"] == "v3" and error["timestamp"] > 0


def test_sse_refusals_before_start_are_status_codes(client: httpx.Client, voice_id: str) -> None:
    assert client.get(SSE, params={"text": TEXT, "voice_id": "nobody_here"}).status_code == 404
    assert (
        client.get(SSE, params={"text": TEXT, "voice_id": voice_id, "format": "ogg"}).status_code
        == 400
    )


# --- health, disconnects, the cap -------------------------------------------------------------


def test_streaming_health_reports_engine_counts_and_measured_latency(
    client: httpx.Client, voice_id: str
) -> None:
    read_chunked(client, STREAM, {"text": TEXT, "voice_id": voice_id})
    health = client.get("/api/v3/streaming/health").json()
    assert health["status"] == "healthy" and health["engine_ready"] is True
    assert health["version"] == "v3" and health["streaming_engine"] in ("espeak", "cosyvoice")
    assert set(health["supported_formats"]) == {"wav", "mp3", "flac", "pcm"}
    assert health["supported_qualities"] == ["low", "medium", "high"]
    assert health["latency_ms"] is not None and 0 < health["latency_ms"] < 10_000
    assert health["active_streams"] >= 0 and health["active_websocket_sessions"] >= 0


@pytest.mark.parametrize("protocol", ["http", "sse"])
def test_a_client_that_leaves_mid_stream_stops_the_stream(
    server: ApiServer, voice_id: str, protocol: str
) -> None:
    params = {"text": LONG_TEXT, "voice_id": voice_id, "quality": "high", "speed": "0.5"}
    with httpx.Client(base_url=server.url, timeout=60) as watcher:
        wait_for_active_streams(watcher, 0)
        with httpx.Client(base_url=server.url, timeout=60) as listener:
            request = (
                listener.build_request("POST", STREAM, data=params)
                if protocol == "http"
                else listener.build_request("GET", SSE, params=params)
            )
            response = listener.send(request, stream=True)
            assert response.status_code == 200
            body = response.iter_raw()  # kept: dropping it would close the connection
            next(body)
            time.sleep(0.5)
            # Minutes of audio, rendered in about a second: still open only because
            # the server waits for this slow reader instead of buffering everything.
            assert active_streams(watcher) == 1
            response.close()
        wait_for_active_streams(watcher, 0)


def test_streams_beyond_the_cap_are_refused(server_factory: ServerFactory) -> None:
    capped = server_factory(MAX_CONCURRENT_STREAMS="1")
    with httpx.Client(base_url=capped.url, timeout=60) as http:
        voice = create_voice(http, TESTDATA / "cross_lingual_prompt.wav", language="en")
        held = http.send(
            http.build_request(
                "POST",
                STREAM,
                data={"text": LONG_TEXT, "voice_id": voice, "quality": "high", "speed": "0.5"},
            ),
            stream=True,
        )
        try:
            assert held.status_code == 200
            body = held.iter_raw()  # kept: dropping it would close the connection
            next(body)
            refused = http.post(STREAM, data={"text": TEXT, "voice_id": voice})
            assert refused.status_code == 503
            assert "MAX_CONCURRENT_STREAMS" in refused.json()["detail"]
            assert http.get(SSE, params={"text": TEXT, "voice_id": voice}).status_code == 503
        finally:
            held.close()
        wait_for_active_streams(http, 0)
        _, pieces = read_chunked(http, STREAM, {"text": TEXT, "voice_id": voice})
        assert_speech(b"".join(pieces), fmt="wav")


def test_sse_timestamps_and_ids_follow_the_compatibility_shape(
    client: httpx.Client, voice_id: str
) -> None:
    events = read_sse(client, {"text": "Short one.", "voice_id": voice_id})
    start, chunk, complete = events[0]["data"], events[1]["data"], events[-1]["data"]
    assert {"message", "version", "timestamp"} <= set(start)
    assert {
        "chunk_index",
        "chunk_size",
        "total_bytes",
        "audio_data",
        "is_final",
        "timestamp",
        "sample_rate",
        "channels",
        "version",
    } <= set(chunk)
    assert {
        "total_chunks",
        "total_bytes",
        "duration",
        "synthesis_time",
        "message",
        "version",
    } <= set(complete)
    assert sf.info(io.BytesIO(base64.b64decode(chunk["audio_data"]))).samplerate == 22050

"""Four promises of the contract, checked the way a client of the API sees them.

- streaming latency is a measured number from the first request, not null;
- scheduled-task counts list exactly the statuses a scheduled task can have;
- FLAC streams over chunked HTTP, `stream=true`, SSE and the WebSocket;
- with ENGINE=cosyvoice and one model's weights missing, the other model serves, the
  missing one's routes answer 503 with the reason, and /health says degraded.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import uvicorn
from websockets.asyncio.client import connect

from core.errors import EngineNotReady
from core.settings import Settings
from router.app import create_app
from tests.cosyvoice_standin import STANDIN, fill_model_dir
from tests.e2e.conftest import ApiServer, ServerFactory, create_voice
from tests.sse import sse_events

TEXT = "Hello there. This is a streaming test of the voice, read aloud in three sentences."
STREAM = "/api/v3/streaming/cross-lingual"
SSE = "/api/v3/streaming/cross-lingual/sse"
SCHEDULED_STATUSES = {"pending", "scheduled", "processing", "completed", "failed", "cancelled"}


# --- helpers ---------------------------------------------------------------------------


def new_voice(http: httpx.Client, clip: bytes, prefix: str = "contract") -> str:
    return create_voice(http, clip, prefix=prefix, language="en")


def decode_flac_stream(data: bytes) -> tuple[np.ndarray, int]:
    """Decode a streamed FLAC with soundfile, block by block.

    A stream's STREAMINFO leaves the total length open; libsndfile decodes every frame
    of such a file but cannot seek to its (unknown) end, which `SoundFile.read` does after
    each read of a seekable source, so the blocks are read as from a stream.
    """
    assert data[:4] == b"fLaC", data[:16]
    with sf.SoundFile(io.BytesIO(data)) as flac:
        assert flac.format == "FLAC" and flac.channels == 1
        flac.seekable = lambda: False
        blocks = []
        while len(block := flac.read(65536, dtype="float32")):
            blocks.append(block)
        return np.concatenate(blocks), flac.samplerate


def rendered_duration(http: httpx.Client, voice_id: str, fmt: str = "wav") -> float:
    """The length of the same text rendered synchronously: what a stream should match."""
    response = http.post(
        "/api/v3/cross-lingual/with-cache", json={"text": TEXT, "voice_id": voice_id, "format": fmt}
    )
    assert response.status_code == 200, response.text
    return response.json()["duration"]


def assert_same_length(heard: float, expected: float) -> None:
    assert abs(heard - expected) <= 0.05 + 0.02 * expected, f"{heard:.3f}s vs {expected:.3f}s"


def assert_not_silent(samples: np.ndarray) -> None:
    rms = float(np.sqrt(np.mean(np.square(samples))))
    assert rms > 0.005, f"silent (rms {rms:.4f})"


@pytest.fixture(scope="module")
def fresh_server(server_factory: ServerFactory) -> ApiServer:
    """A server nobody has streamed from yet."""
    return server_factory()


@pytest.fixture(scope="module")
def voice(server: ApiServer, english_clip: bytes) -> str:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        return new_voice(http, english_clip)


@pytest.fixture
def http(server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


# --- 1. latency is measured from the start ---------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_latency_is_a_measured_number_before_any_stream(
    fresh_server: ApiServer, version: str
) -> None:
    with httpx.Client(base_url=fresh_server.url, timeout=60) as client:
        health = client.get(f"/api/{version}/streaming/health").json()
        capabilities = client.get(f"/api/{version}/cross-lingual/capabilities").json()
    assert health["active_streams"] == 0
    for latency in (health["latency_ms"], capabilities["features"]["streaming"]["latency_ms"]):
        assert isinstance(latency, int | float) and 0 < latency < 10_000, latency


def test_after_streams_latency_is_the_median_of_recent_streams(
    fresh_server: ApiServer, english_clip: bytes
) -> None:
    with httpx.Client(base_url=fresh_server.url, timeout=60) as client:
        voice_id = new_voice(client, english_clip)
        for _ in range(2):
            with client.stream("POST", STREAM, data={"text": TEXT, "voice_id": voice_id}) as r:
                assert r.status_code == 200
                r.read()
        latency = client.get("/api/v3/streaming/health").json()["latency_ms"]
        capability = client.get("/api/v3/cross-lingual/capabilities").json()
    assert 0 < latency < 10_000
    assert capability["features"]["streaming"]["latency_ms"] == latency


# --- 2. queue-stats lists a scheduled task's statuses only -------------------------------


def test_queue_stats_counts_only_the_statuses_of_scheduled_tasks(
    http: httpx.Client, voice: str
) -> None:
    ids = []
    for priority in ("low", "urgent", "normal"):
        response = http.post(
            "/api/v3/schedule/register",
            json={"text": "A scheduled sentence.", "voice_id": voice, "priority": priority},
        )
        assert response.status_code == 200, response.text
        ids.append(response.json()["task_id"])
    assert http.post(f"/api/v3/schedule/render/{ids[1]}").status_code == 200
    assert http.delete(f"/api/v3/schedule/task/{ids[2]}").status_code == 200

    stats = http.get("/api/v3/schedule/queue-stats").json()
    assert set(stats["status_counts"]) == SCHEDULED_STATUSES
    assert sum(stats["status_counts"].values()) == stats["total_tasks"] >= 3
    assert sum(stats["priority_counts"].values()) == stats["total_tasks"]
    assert stats["status_counts"]["pending"] >= 1 and stats["status_counts"]["cancelled"] >= 1
    assert stats["completed_tasks"] == stats["status_counts"]["completed"]

    listing = http.get("/api/v3/schedule/tasks").json()
    assert set(listing["status_counts"]) == SCHEDULED_STATUSES


# --- 3. FLAC streams -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "quality", "rate"),
    [(STREAM, "medium", 22050), (STREAM, "high", 44100), (f"{STREAM}/chunked", "low", 16000)],
)
def test_flac_streams_as_one_file_over_chunked_http(
    http: httpx.Client, voice: str, path: str, quality: str, rate: int
) -> None:
    data = {"text": TEXT, "voice_id": voice, "format": "flac", "quality": quality}
    with http.stream("POST", path, data=data) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("audio/flac")
        pieces = [piece for piece in response.iter_raw() if piece]
    assert len(pieces) >= 2  # it arrived as it was produced, not in one piece at the end
    samples, sample_rate = decode_flac_stream(b"".join(pieces))
    assert sample_rate == rate
    assert_same_length(len(samples) / rate, rendered_duration(http, voice))
    assert_not_silent(samples)


def test_stream_true_with_flac_sends_the_audio_itself(http: httpx.Client, voice: str) -> None:
    body = {"text": TEXT, "voice_id": voice, "format": "flac", "stream": True}
    with http.stream("POST", "/api/v3/cross-lingual/with-cache", json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("audio/flac")
        data = response.read()
    samples, rate = decode_flac_stream(data)
    assert rate == int(response.headers["x-sample-rate"])
    assert_same_length(len(samples) / rate, rendered_duration(http, voice, "flac"))
    assert_not_silent(samples)


def test_flac_over_sse_is_a_small_flac_file_per_event(http: httpx.Client, voice: str) -> None:
    params = {"text": TEXT, "voice_id": voice, "format": "flac", "quality": "medium"}
    with http.stream("GET", SSE, params=params) as response:
        assert response.status_code == 200, response.read()
        events = list(sse_events(response.iter_lines()))
    assert events[0]["event"] == "start" and events[-1]["event"] == "complete"
    chunks = [e["data"] for e in events if e["event"] == "audio_chunk"]
    decoded = []
    for chunk in chunks:
        audio = base64.b64decode(chunk["audio_data"])  # type: ignore[index]
        if not audio:
            continue  # a final event that only marks the end
        samples, rate = sf.read(io.BytesIO(audio), dtype="float32")  # a complete file
        assert rate == 22050 and sf.info(io.BytesIO(audio)).format == "FLAC"
        decoded.append(samples)
    assert len(decoded) >= 2
    joined = np.concatenate(decoded)
    assert_same_length(len(joined) / 22050, rendered_duration(http, voice))
    assert_not_silent(joined)


async def test_flac_over_the_websocket_is_a_small_flac_file_per_chunk(
    server: ApiServer, voice: str
) -> None:
    url = server.url.replace("http://", "ws://") + "/api/v3/ws/stream"
    async with connect(url, max_size=None, close_timeout=2) as ws:
        assert json.loads(await ws.recv())["message_type"] == "status"
        request = {"message_type": "text_request", "request_id": "f1", "text": TEXT}
        await ws.send(json.dumps({**request, "voice_id": voice, "format": "flac"}))
        decoded = []
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert frame["message_type"] != "error", frame
            if frame["message_type"] == "synthesis_complete":
                break
            if frame["message_type"] == "audio_chunk" and frame["audio_data"]:
                audio = base64.b64decode(frame["audio_data"])
                samples, rate = sf.read(io.BytesIO(audio), dtype="float32")
                assert rate == frame["metadata"]["sample_rate"] == 22050
                decoded.append(samples)
    assert len(decoded) >= 2
    assert_not_silent(np.concatenate(decoded))


# --- 4. one model missing under ENGINE=cosyvoice ------------------------------------------------


class InProcessServer:
    """create_app over the real runtime, served by uvicorn on a real socket."""

    def __init__(self, settings: Settings) -> None:
        self._server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
        # Bound on port 0 here and handed to uvicorn: the port is known before the server
        # starts, and no other process can take it in between.
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> InProcessServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        try:
            while not self._server.started:
                assert self._thread.is_alive() and time.monotonic() < deadline, "did not start"
                time.sleep(0.05)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(30)
        self._socket.close()


def cosyvoice_settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(
        **{
            "engine": "cosyvoice",
            "cosyvoice_home": STANDIN,
            "model_dir": tmp_path / "CosyVoice2-0.5B",  # not there
            "model_dir_v3": fill_model_dir(tmp_path / "Fun-CosyVoice3-0.5B", "cosyvoice3"),
            "auto_download_models": False,
            "database_url": f"sqlite:///{tmp_path / 'db.sqlite'}",
            "blob_store_url": "",
            "event_bus_url": "memory://",
            "voice_cache_dir": tmp_path / "voices",
            "output_dir": tmp_path / "outputs",
            **values,
        }
    )


def test_with_one_model_missing_the_other_serves_and_the_missing_one_says_why(
    tmp_path: Path, cosyvoice_standin: None, english_clip: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with InProcessServer(cosyvoice_settings(tmp_path)) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            health = client.get("/health")
            voice_id = new_voice(client, english_clip)
            v3 = client.post(
                "/api/v3/cross-lingual/with-cache", json={"text": TEXT, "voice_id": voice_id}
            )
            refusals = [
                client.post(
                    f"/api/{version}/cross-lingual/with-cache",
                    json={"text": TEXT, "voice_id": voice_id},
                )
                for version in ("v1", "v2")
            ]
            refusals.append(
                client.post(
                    "/api/v2/streaming/cross-lingual", data={"text": TEXT, "voice_id": voice_id}
                )
            )
            for path in ("/api/v2/cross-lingual/task", "/api/v1/cross-lingual/async"):
                # a task for the missing model could only fail later: refused now
                refusals.append(client.post(path, json={"text": TEXT, "voice_id": voice_id}))
            task_v3 = client.post(
                "/api/v3/cross-lingual/task", json={"text": TEXT, "voice_id": voice_id}
            )
            streaming_health = client.get("/api/v2/streaming/health").json()

    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "degraded"
    assert body["v3"]["ready"] is True and body["v3"]["engine"] == "cosyvoice"
    assert body["v2"]["ready"] is False and body["v2"]["model"] == "CosyVoice2-0.5B"
    assert "CosyVoice2-0.5B" in body["v2"]["warning"]
    assert "no model directory" in body["v2"]["warning"]

    assert v3.status_code == 200, v3.text
    assert v3.json()["engine"] == "cosyvoice" and v3.json()["duration"] > 0
    for refusal in refusals:
        assert refusal.status_code == 503, refusal.text
        detail = refusal.json()["detail"]
        assert "CosyVoice2-0.5B" in detail and "no model directory" in detail
    assert task_v3.status_code == 200, task_v3.text
    assert streaming_health["status"] == "unavailable"

    at_start = [  # the start-up's own record; each refused request is logged by the router
        r for r in caplog.records if r.name == "core.wiring" and "CosyVoice2-0.5B" in r.getMessage()
    ]
    assert len(at_start) == 1 and at_start[0].levelno == logging.ERROR


def test_with_every_model_missing_the_service_refuses_to_start(
    tmp_path: Path, cosyvoice_standin: None
) -> None:
    settings = cosyvoice_settings(tmp_path, model_dir_v3=tmp_path / "nothing-here")
    with pytest.raises(EngineNotReady, match=r"CosyVoice3.*CosyVoice2-0\.5B"):
        create_app(settings)

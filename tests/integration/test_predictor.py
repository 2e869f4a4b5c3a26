"""The KServe predictor as a real `kserve.ModelServer` process with the development engine.

Readiness and metadata, V1 predict (JSON and streamed frames), refusals, the concurrency
limit with its fair queue, cancellation when a client leaves, and the voice-feature cache
(in memory, then from the blob store in a freshly started predictor).
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from core.adapters.embedded.file_blobs import FileBlobStore
from core.audio.decode import sha256_hex
from core.schemas.predictor import AUDIO, END, Frame, FrameReader, pcm_to_samples
from tests.conftest import MANDARIN_TRANSCRIPT
from tests.e2e.profiles import BIN, PredictorProcess

pytestmark = pytest.mark.slow

MODEL = "cosyvoice3"
TEXT = "Hello there. This is the predictor speaking, in three short sentences. Goodbye."
# Minutes of speech at half speed: at 48 kHz far more audio (~50 MB) than socket buffers
# hold, so a client that stops reading keeps its synthesis (and its slot) busy.
OMIT = "<omit>"
LONG_TEXT = ("A client that stops reading holds its stream open for a long while. " * 29).strip()


# --- fixtures -----------------------------------------------------------------------------


def blob_store(root: Path) -> FileBlobStore:
    return FileBlobStore({"voices": root / "voices", "outputs": root / "outputs"})


def store_voice(root: Path, clip: bytes) -> dict[str, Any]:
    """A stored voice as the router files it: the sample in the shared blob store."""
    voice_id = f"voice_{uuid.uuid4().hex[:8]}"
    key = f"voices/{voice_id}/sample.wav"
    asyncio.run(blob_store(root).put(key, clip, "audio/wav"))
    return {"sha256": sha256_hex(clip), "voice_id": voice_id, "sample_key": key}


@pytest.fixture(scope="module")
def blob_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("blobs")


@pytest.fixture(scope="module")
def predictor(blob_root: Path) -> Iterator[PredictorProcess]:
    process = PredictorProcess(
        MODEL,
        blob_root.parent / "predictor",
        {"BLOB_STORE_URL": f"file://{blob_root}", "SYNTHESIS_CONCURRENCY": "1"},
    ).start()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture
def http(predictor: PredictorProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=predictor.url, timeout=60) as client:
        yield client


@pytest.fixture
def voice(blob_root: Path, english_clip: bytes) -> dict[str, Any]:
    return store_voice(blob_root, english_clip)


def predict(http: httpx.Client, **instance: Any) -> httpx.Response:
    return http.post(f"/v1/models/{MODEL}:predict", json={"instances": [instance]})


def metadata(http: httpx.Client) -> dict[str, Any]:
    response = http.get(f"/v1/models/{MODEL}/metadata")
    assert response.status_code == 200, response.text[:300]
    return response.json()


def frames_of(body: bytes) -> list[Frame]:
    reader = FrameReader()
    frames = reader.feed(body)
    assert reader.pending == 0, "the stream ends inside a frame"
    return frames


def fresh_clip(clip: bytes, gain: float) -> bytes:
    """The same speech at another level: a clip (and content hash) no cache has seen."""
    samples, rate = sf.read(io.BytesIO(clip), dtype="float32")
    out = io.BytesIO()
    sf.write(out, samples * gain, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples)))) if samples.size else 0.0


# --- readiness and description ------------------------------------------------------------


def test_ready_on_kserve_routes(http: httpx.Client) -> None:
    assert http.get(f"/v1/models/{MODEL}").json() == {"name": MODEL, "ready": True}
    assert http.get("/v1/models").json() == {"models": [MODEL]}
    assert http.get("/v2/health/live").status_code == 200
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get(f"/v2/models/{MODEL}/ready").json()["ready"] is True
    v2 = http.get(f"/v2/models/{MODEL}").json()
    assert v2["name"] == MODEL and v2["outputs"][0]["name"] == "audio"
    assert http.get("/v1/models/nobody").status_code == 404
    assert http.get("/v1/models/nobody/metadata").status_code == 404


def test_metadata_names_the_engine(http: httpx.Client) -> None:
    meta = metadata(http)
    assert meta["ready"] is True and meta["load_error"] is None
    engine = meta["engine"]
    assert engine["engine"] == "espeak" and engine["real_model"] is False
    assert engine["sample_rate"] == 22050 and "en" in engine["languages"]
    assert meta["synthesis"]["concurrency"] == 1
    assert "cosyvoice_synthesis_slots" in http.get("/metrics").text


# --- V1 predict ---------------------------------------------------------------------------


def test_predict_answers_audio_and_its_metadata(http: httpx.Client, voice: dict) -> None:
    response = predict(http, text=TEXT, voice=voice, sample_rate=16000)
    assert response.status_code == 200, response.text[:300]
    (prediction,) = response.json()["predictions"]
    samples = pcm_to_samples(base64.b64decode(prediction["audio"]))
    assert prediction["encoding"] == "pcm_f32le"
    assert prediction["sample_rate"] == 16000
    assert prediction["num_samples"] == samples.size
    assert prediction["duration"] == pytest.approx(samples.size / 16000, abs=1e-3)
    assert 2.0 < prediction["duration"] < 15.0
    assert rms(samples) > 0.005, "silent"
    assert prediction["engine"] == "espeak"


def test_predict_streams_pcm_frames(http: httpx.Client, voice: dict) -> None:
    response = predict(http, text=TEXT, voice=voice, sample_rate=24000, stream=True)
    assert response.status_code == 200, response.text[:300]
    frames = frames_of(response.content)
    audio = [f for f in frames if f.kind == AUDIO]
    assert frames[-1].kind == END and len(audio) == len(frames) - 1
    assert len(audio) >= 2, "one frame per sentence, as the engine produces them"
    assert {f.sample_rate for f in audio} == {24000}
    samples = np.concatenate([f.samples() for f in audio])
    summary = frames[-1].summary()
    assert summary.num_samples == samples.size and summary.chunks == len(audio)
    assert summary.duration > 2.0 and rms(samples) > 0.005


def test_inline_clip_in_zero_shot_mode(http: httpx.Client, mandarin_clip: bytes) -> None:
    voice = {
        "sha256": sha256_hex(mandarin_clip),
        "audio": base64.b64encode(mandarin_clip).decode(),
        "prompt_text": MANDARIN_TRANSCRIPT,
        "language": "zh",
    }
    response = predict(http, text="你好,欢迎使用语音合成。", mode="zero_shot", voice=voice)
    assert response.status_code == 200, response.text[:300]
    (prediction,) = response.json()["predictions"]
    assert prediction["sample_rate"] == 22050 and prediction["duration"] > 0.5


@pytest.mark.parametrize(
    ("instance", "expected"),
    [
        ({"text": TEXT, "voice": OMIT}, "voice"),
        ({"text": "   "}, "text is empty"),
        ({"text": TEXT, "speed": 3.0}, "speed"),
        ({"text": TEXT, "mode": "singing"}, "mode"),
        ({"text": TEXT, "sample_rate": 1000}, "sample_rate"),
        ({"text": "x" * 2001}, "limit is 2000"),
        ({"text": TEXT, "mode": "zero_shot"}, "prompt_text"),
        ({"text": TEXT, "voice": {"sha256": "0" * 64}}, "exactly one"),
        ({"text": TEXT, "voice": {"sha256": "0" * 64, "sample_key": "voices/a/s.wav"}}, "voice_id"),
        ({"text": TEXT, "voice": {"sha256": "0" * 64, "audio": "%%%"}}, "base64"),
        ({"text": TEXT, "voice": {"sha256": "xyz", "audio": "AAAA"}}, "sha256"),
        ({"text": TEXT, "unknown_field": 1}, "unknown_field"),
    ],
)
def test_bad_input_is_400_with_a_clear_message(
    http: httpx.Client, voice: dict, instance: dict, expected: str
) -> None:
    fields = {key: value for key, value in {"voice": voice, **instance}.items() if value != OMIT}
    response = predict(http, **fields)
    assert response.status_code == 400, response.text[:300]
    assert expected in response.json()["error"]


def test_bad_bodies(http: httpx.Client, voice: dict) -> None:
    url = f"/v1/models/{MODEL}:predict"
    two = {"instances": [{"text": TEXT, "voice": voice}] * 2}
    assert "instances" in http.post(url, json=two).json()["error"]
    assert (
        http.post(
            url, content=b"{not json", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )
    assert (
        http.post(url, content=b"text", headers={"content-type": "text/plain"}).status_code == 400
    )


def test_unusable_clip_and_missing_sample(http: httpx.Client, voice: dict) -> None:
    garbage = {"sha256": "1" * 64, "audio": base64.b64encode(b"not audio at all").decode()}
    response = predict(http, text=TEXT, voice=garbage)
    assert response.status_code == 422, response.text[:300]
    assert response.json()["type"] == "AudioRejected"
    missing = {"sha256": "2" * 64, "voice_id": "gone", "sample_key": "voices/gone/sample.wav"}
    response = predict(http, text=TEXT, voice=missing)
    assert response.status_code == 500 and "missing" in response.json()["error"]
    assert http.get(f"/v1/models/{MODEL}").json()["ready"] is True


# --- voice features -----------------------------------------------------------------------


def test_features_are_extracted_once_then_loaded_by_a_fresh_predictor(
    http: httpx.Client, blob_root: Path, english_clip: bytes, predictor: PredictorProcess
) -> None:
    voice = store_voice(blob_root, fresh_clip(english_clip, 0.8))
    before = metadata(http)["feature_cache"]
    assert predict(http, text="First call.", voice=voice).status_code == 200
    after_first = metadata(http)["feature_cache"]
    assert after_first["extractions"] == before["extractions"] + 1
    assert predict(http, text="Second call.", voice=voice).status_code == 200
    after_second = metadata(http)["feature_cache"]
    assert after_second["extractions"] == after_first["extractions"], "recomputed"
    assert after_second["hits"] == after_first["hits"] + 1

    persisted = list((blob_root / "voices" / voice["voice_id"] / "features").iterdir())
    assert len(persisted) == 1 and persisted[0].stat().st_size > 0

    # A predictor that scaled from zero: a new process, the same blob store.
    fresh = PredictorProcess(MODEL, predictor.work_dir, predictor.env).start()
    try:
        with httpx.Client(base_url=fresh.url, timeout=60) as other:
            assert predict(other, text="After a cold start.", voice=voice).status_code == 200
            cache = metadata(other)["feature_cache"]
            assert cache["blob_hits"] == 1 and cache["extractions"] == 0
    finally:
        fresh.stop()


# --- concurrency and cancellation ----------------------------------------------------------


async def wait_for_stats(http: httpx.AsyncClient, **expected: int) -> dict[str, Any]:
    """Poll the metadata until the queue counters read `expected` (10 s at most)."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        stats = (await http.get(f"/v1/models/{MODEL}/metadata")).json()["synthesis"]
        if all(stats[key] == value for key, value in expected.items()):
            return stats
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"expected {expected}, metadata says {stats}")
        await asyncio.sleep(0.05)


async def test_one_slot_queue_and_cancellation_on_disconnect(
    predictor: PredictorProcess, voice: dict
) -> None:
    url = f"/v1/models/{MODEL}:predict"
    long_stream = {
        "text": LONG_TEXT,
        "voice": voice,
        "speed": 0.5,
        "sample_rate": 48000,
        "stream": True,
    }
    short = {"text": "Waiting my turn.", "voice": voice}
    async with (
        httpx.AsyncClient(base_url=predictor.url, timeout=60) as watcher,
        httpx.AsyncClient(base_url=predictor.url, timeout=60) as client,
    ):
        baseline = (await watcher.get(f"/v1/models/{MODEL}/metadata")).json()["synthesis"]

        # A reader that stops after the first frame keeps the only slot busy.
        holder = client.stream("POST", url, json={"instances": [long_stream]})
        response = await holder.__aenter__()
        assert response.status_code == 200
        body = response.aiter_raw()  # kept: dropping it would close the connection
        first = await anext(body)
        assert first[:1] == AUDIO
        await wait_for_stats(watcher, active=1, queued=0)

        # The next request waits in the queue instead of running beside it.
        waiting = asyncio.create_task(client.post(url, json={"instances": [short]}))
        await wait_for_stats(watcher, active=1, queued=1)
        leaving = asyncio.create_task(client.post(url, json={"instances": [short]}))
        await wait_for_stats(watcher, active=1, queued=2)
        await asyncio.sleep(0.3)
        assert not waiting.done()

        # A queued client that disconnects leaves the queue.
        leaving.cancel()
        await asyncio.gather(leaving, return_exceptions=True)
        await wait_for_stats(watcher, active=1, queued=1)

        # The streaming client leaves too: its synthesis is cancelled, the slot passes on.
        await holder.__aexit__(None, None, None)
        answer = await asyncio.wait_for(waiting, 30)
        assert answer.status_code == 200, answer.text[:300]
        stats = await wait_for_stats(
            watcher, active=0, queued=0, completed=baseline["completed"] + 1
        )
        assert stats["cancelled"] >= baseline["cancelled"] + 1
        (prediction,) = answer.json()["predictions"]
        assert prediction["duration"] > 0.3


def test_unspeakable_text_is_refused_before_the_stream_starts(
    http: httpx.Client, voice: dict
) -> None:
    response = predict(http, text="...", voice=voice, stream=True)
    assert response.status_code == 400
    assert "spoken" in response.json()["error"]


def test_a_missing_engine_stops_the_predictor_with_the_reason(tmp_path: Path) -> None:
    env = {**os.environ, "COSYVOICE_HOME": str(tmp_path / "no-checkout")}
    result = subprocess.run(
        [str(BIN / "cosyvoice-api"), "predictor", "--engine", "cosyvoice", "--http_port", "0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "CosyVoice engine for v3 unavailable" in result.stderr

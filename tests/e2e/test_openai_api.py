"""The OpenAI-compatible API (/v1) through the official `openai` SDK, against real servers.

Every format is decoded and checked as a listener would (rate, duration, not silent); errors
are checked in OpenAI's shape, as the SDK's exceptions report them.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import av
import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from tests.audio_checks import assert_speech
from tests.conftest import REPO_ROOT, skip_missing_data
from tests.e2e.conftest import ApiServer, ServerFactory, embedded_only

pytestmark = embedded_only(
    "a thin layer over the synthesis service, which every profile checks via the original routes"
)

RATE = 24_000
TEXT = "The quick brown fox jumps over the lazy dog. It was a bright and sunny day."
API_KEY = "oa-test-key-3f9c"
SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]  # the SDK's response_format


def _voice_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _store_voice(server: ApiServer, voice_id: str, clip: bytes, key: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(
        f"{server.url}/api/v3/voices/",
        data={"voice_id": voice_id, "name": f"OpenAI {voice_id}", "voice_type": "cross_lingual"},
        files={"audio_file": ("clip.wav", clip, "audio/wav")},
        headers=headers,
        timeout=60,
    )
    assert response.status_code == 201, response.text


class Speaker:
    """A server whose OPENAI_VOICES maps `alloy` to a stored voice, at a SAMPLE_RATE that is
    not OpenAI's (the /v1 audio must be 24 kHz anyway)."""

    def __init__(self, server: ApiServer, voice: str) -> None:
        self.server = server
        self.voice = voice
        self.client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def speaker(server_factory: ServerFactory, english_clip: bytes) -> Speaker:
    voice = _voice_name("oa")
    server = server_factory(OPENAI_VOICES=f"alloy:{voice}", SAMPLE_RATE="16000")
    _store_voice(server, voice, english_clip)
    return Speaker(server, voice)


# --- decoding ----------------------------------------------------------------------------


def _decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """Mono float samples and the rate the file declares."""
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, RATE
    if fmt == "aac":
        with av.open(io.BytesIO(data), mode="r") as container:
            frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
            rate = container.streams.audio[0].codec_context.sample_rate
        return np.concatenate(frames).astype(np.float32), rate
    if fmt == "flac":
        # A streamed FLAC leaves its length open: libsndfile reads it block by block, as
        # from a stream (after each read of a seekable source it seeks to the unknown end).
        with sf.SoundFile(io.BytesIO(data)) as f:
            assert f.format == "FLAC"
            f.seekable = lambda: False
            blocks = []
            while len(block := f.read(65536, dtype="float32")):
                blocks.append(block)
            return np.concatenate(blocks).reshape(-1), f.samplerate
    with sf.SoundFile(io.BytesIO(data)) as f:  # wav, mp3, ogg/opus
        expected = {"wav": "WAV", "mp3": "MP3", "opus": "OGG"}[fmt]
        assert f.format == expected, f.format
        if fmt == "opus":
            assert f.subtype == "OPUS", f.subtype
        return f.read(dtype="float32", always_2d=True)[:, 0], f.samplerate


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples)))) if samples.size else 0.0


@pytest.fixture(scope="module")
def reference_seconds(speaker: Speaker) -> float:
    """Seconds of TEXT as raw PCM: every other format must last as long."""
    audio = speaker.client.audio.speech.create(
        model="cosyvoice3", voice=speaker.voice, input=TEXT, response_format="pcm"
    )
    return len(audio.content) / 2 / RATE


# --- speech ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_each_format_decodes_at_24_khz(
    speaker: Speaker, reference_seconds: float, fmt: SpeechFormat
) -> None:
    audio = speaker.client.audio.speech.create(
        model="cosyvoice3", voice=speaker.voice, input=TEXT, response_format=fmt
    )
    samples, rate = _decode(audio.content, fmt)
    assert rate == RATE, f"{fmt} declares {rate} Hz"
    seconds = len(samples) / rate
    assert reference_seconds > 2.0
    # Codec priming and the last frame's padding (MP3, AAC) add a few tens of ms at most.
    assert abs(seconds - reference_seconds) < 0.15, (fmt, seconds, reference_seconds)
    assert _rms(samples) > 0.01, f"{fmt} is silent"


def test_pcm_is_24_khz_whatever_sample_rate_says(speaker: Speaker) -> None:
    raw = httpx.post(
        f"{speaker.server.url}/v1/audio/speech",
        json={
            "model": "cosyvoice3",
            "voice": speaker.voice,
            "input": TEXT,
            "response_format": "pcm",
        },
        timeout=60,
    )
    assert raw.status_code == 200
    assert raw.headers["x-sample-rate"] == str(RATE)  # the server's SAMPLE_RATE is 16000
    assert raw.headers["content-type"].startswith("audio/L16;rate=24000")
    pcm = np.frombuffer(raw.content, dtype="<i2")
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float32)))
    freqs = np.fft.rfftfreq(len(pcm), 1 / RATE)
    # Audio made at 16 kHz and merely labelled 24 kHz would have nothing above 8 kHz; read
    # at the right rate, speech sits mostly below 4 kHz.
    assert spectrum[freqs < 4000].sum() > spectrum[freqs >= 4000].sum()


def test_streaming_response_arrives_in_pieces(speaker: Speaker) -> None:
    long_text = " ".join([TEXT] * 3)
    pieces: list[bytes] = []
    with speaker.client.audio.speech.with_streaming_response.create(
        model="tts-1", voice=speaker.voice, input=long_text, response_format="mp3"
    ) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        pieces.extend(response.iter_bytes(chunk_size=None))
    assert len(pieces) > 1, "the audio came in one piece, not as it was made"
    samples, rate = _decode(b"".join(pieces), "mp3")
    assert rate == RATE and len(samples) / rate > 6.0 and _rms(samples) > 0.01


def _sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
        )
        events.append((fields["event"], json.loads(fields["data"])))
    return events


@pytest.mark.parametrize("fmt", ["pcm", "opus"])
def test_sse_events_carry_the_audio(
    speaker: Speaker, reference_seconds: float, fmt: SpeechFormat
) -> None:
    with speaker.client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts",
        voice=speaker.voice,
        input=TEXT,
        response_format=fmt,
        stream_format="sse",
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _sse_events(response.read().decode())
    *deltas, done = events
    assert len(deltas) > 1
    for name, data in deltas:
        assert name == "speech.audio.delta" and set(data) == {"type", "audio"}
        assert data["type"] == "speech.audio.delta"
    assert done == (
        "speech.audio.done",
        {
            "type": "speech.audio.done",
            "usage": {"input_tokens": len(TEXT), "output_tokens": 0, "total_tokens": len(TEXT)},
        },
    )
    audio = b"".join(base64.b64decode(data["audio"]) for _, data in deltas)
    samples, rate = _decode(audio, fmt)
    assert rate == RATE
    assert abs(len(samples) / rate - reference_seconds) < 0.1
    assert _rms(samples) > 0.01


def test_mapped_openai_voice_and_voice_object(speaker: Speaker) -> None:
    by_alias = speaker.client.audio.speech.create(
        model="tts-1-hd", voice="alloy", input=TEXT, response_format="pcm"
    )
    by_object = speaker.client.audio.speech.create(
        model="cosyvoice3", voice={"id": speaker.voice}, input=TEXT, response_format="pcm"
    )
    # The same voice and text: the same length within a few ms, both speech.
    alias_pcm, object_pcm = (np.frombuffer(a.content, dtype="<i2") for a in (by_alias, by_object))
    assert len(alias_pcm) > RATE and abs(len(alias_pcm) - len(object_pcm)) < RATE * 0.01
    assert _rms(alias_pcm / 32768.0) > 0.01 and _rms(object_pcm / 32768.0) > 0.01


def test_instructions_switch_cosyvoice3_to_instruct_mode(speaker: Speaker) -> None:
    plain = speaker.client.audio.speech.create(
        model="cosyvoice3", voice=speaker.voice, input=TEXT, response_format="pcm"
    )
    slow = speaker.client.audio.speech.create(
        model="cosyvoice3",
        voice=speaker.voice,
        input=TEXT,
        response_format="pcm",
        instructions="Speak slowly",
    )
    assert len(slow.content) > len(plain.content) * 1.1  # the instruction was followed


def test_speed_within_the_engines_range(speaker: Speaker) -> None:
    normal = speaker.client.audio.speech.create(
        model="cosyvoice3", voice=speaker.voice, input=TEXT, response_format="pcm"
    )
    fast = speaker.client.audio.speech.create(
        model="cosyvoice3", voice=speaker.voice, input=TEXT, response_format="pcm", speed=2.0
    )
    assert len(fast.content) < len(normal.content) * 0.8


# --- listings ----------------------------------------------------------------------------


def test_models_and_voices(speaker: Speaker) -> None:
    ids = [model.id for model in speaker.client.models.list()]
    assert {"cosyvoice3", "cosyvoice2", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"} <= set(ids)
    assert speaker.client.models.retrieve("tts-1").id == "tts-1"

    voices = httpx.get(f"{speaker.server.url}/v1/audio/voices", timeout=30).json()
    assert voices["object"] == "list" and voices["has_more"] is False
    ours = next(v for v in voices["data"] if v["id"] == speaker.voice)
    assert ours["object"] == "audio.voice" and ours["type"] == "audio_sample"
    assert ours["aliases"] == ["alloy"] and isinstance(ours["created_at"], int)


# --- errors ------------------------------------------------------------------------------


def _fails(speaker: Speaker, error: type[openai.APIStatusError], **fields: object) -> dict:
    request = {"model": "cosyvoice3", "voice": speaker.voice, "input": TEXT, **fields}
    with pytest.raises(error) as caught:
        speaker.client.audio.speech.create(**request)  # type: ignore[arg-type]
    raw = httpx.post(f"{speaker.server.url}/v1/audio/speech", json=request, timeout=60).json()
    assert set(raw) == {"error"} and set(raw["error"]) == {"message", "type", "param", "code"}
    assert caught.value.param == raw["error"]["param"]
    return raw["error"]


def test_errors_in_openai_shape(speaker: Speaker) -> None:
    error = _fails(speaker, openai.BadRequestError, voice="nobody_here")
    assert error["param"] == "voice" and error["type"] == "invalid_request_error"
    assert "nobody_here" in error["message"]

    error = _fails(speaker, openai.BadRequestError, voice="nova")  # not in OPENAI_VOICES
    assert error["param"] == "voice" and error["code"] == "voice_not_configured"
    assert "OPENAI_VOICES" in error["message"]

    error = _fails(speaker, openai.BadRequestError, speed=3.0)  # OpenAI's range, not ours
    assert error["param"] == "speed" and "0.5 to 2" in error["message"]
    error = _fails(speaker, openai.BadRequestError, speed=5.0)  # not even OpenAI's
    assert error["param"] == "speed"

    error = _fails(speaker, openai.NotFoundError, model="tts-2")
    assert error["param"] == "model" and error["code"] == "model_not_found"

    error = _fails(speaker, openai.BadRequestError, model="cosyvoice2", instructions="Whisper")
    assert error["param"] == "instructions"

    error = _fails(speaker, openai.BadRequestError, response_format="ogg")
    assert error["param"] == "response_format"

    error = _fails(speaker, openai.BadRequestError, input="   ")
    assert error["param"] == "input"


def test_original_api_keeps_detail(speaker: Speaker) -> None:
    response = httpx.post(
        f"{speaker.server.url}/api/v3/cross-lingual/with-cache",
        json={"text": "Hello", "voice_id": "nobody_here"},
        timeout=30,
    )
    assert response.status_code == 404 and set(response.json()) == {"detail"}


# --- API keys ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(server_factory: ServerFactory, english_clip: bytes) -> Speaker:
    voice = _voice_name("oa_key")
    server = server_factory(API_KEY=API_KEY)
    _store_voice(server, voice, english_clip, key=API_KEY)
    return Speaker(server, voice)


def test_api_key_guards_v1(keyed: Speaker) -> None:
    url = f"{keyed.server.url}/v1"
    good = openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0)
    audio = good.audio.speech.create(
        model="cosyvoice3", voice=keyed.voice, input=TEXT, response_format="wav"
    )
    assert_speech(audio.content, fmt="wav", sample_rate=RATE, min_duration=2.0)
    assert next(m.id for m in good.models.list()) == "cosyvoice3"

    bad = openai.OpenAI(base_url=url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.audio.speech.create(model="cosyvoice3", voice=keyed.voice, input=TEXT)
    assert caught.value.code == "invalid_api_key"
    for path in ("/models", "/audio/voices"):
        denied = httpx.get(f"{url}{path}", timeout=30)
        assert denied.status_code == 401 and set(denied.json()["error"]) == {
            "message",
            "type",
            "param",
            "code",
        }
    assert set(httpx.get(f"{keyed.server.url}/api/v3/voices/", timeout=30).json()) == {"detail"}


# --- without the optional AAC encoder ------------------------------------------------------


@pytest.fixture(scope="module")
def without_pyav(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder whose `av` package fails to import, as on a default install."""
    folder = tmp_path_factory.mktemp("no_pyav")
    (folder / "av").mkdir()
    (folder / "av" / "__init__.py").write_text("raise ImportError('PyAV is not installed')\n")
    yield folder


def test_aac_without_pyav_is_a_clear_400(
    server_factory: ServerFactory, english_clip: bytes, without_pyav: Path
) -> None:
    voice = _voice_name("oa_noav")
    server = server_factory(PYTHONPATH=f"{without_pyav}:{REPO_ROOT}")
    _store_voice(server, voice, english_clip)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(model="tts-1", voice=voice, input=TEXT, response_format="aac")
    assert caught.value.param == "response_format"
    assert "cosyvoice-serving[aac]" in caught.value.message
    opus = client.audio.speech.create(
        model="tts-1", voice=voice, input=TEXT, response_format="opus"
    )
    assert _rms(_decode(opus.content, "opus")[0]) > 0.01  # everything else still works


# --- the README's example ------------------------------------------------------------------


def test_readme_openai_example(speaker: Speaker, tmp_path: Path) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    block = next(
        b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "from openai import" in b
    )
    code = block.replace("http://localhost:8012", speaker.server.url).replace(
        "my_voice", speaker.voice
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert_speech((tmp_path / "speech.mp3").read_bytes(), fmt="mp3", sample_rate=RATE)
    pcm = np.frombuffer((tmp_path / "speech.pcm").read_bytes(), dtype="<i2")
    assert len(pcm) / RATE > 0.5 and _rms(pcm / 32768.0) > 0.01

    if shutil.which("curl") is None:
        skip_missing_data("curl is not installed")
    curl = next(
        b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "/v1/audio/speech" in b
    )
    curl = curl.replace("http://localhost:8012", speaker.server.url).replace(
        "my_voice", speaker.voice
    )
    subprocess.run(["bash", "-c", curl], cwd=tmp_path, check=True, timeout=120)
    samples, rate = _decode((tmp_path / "speech.ogg").read_bytes(), "opus")
    assert rate == RATE and len(samples) / rate > 0.3 and _rms(samples) > 0.01

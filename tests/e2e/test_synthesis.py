"""Synchronous synthesis: what a listener gets back."""

from __future__ import annotations

import httpx
import pytest

from tests.audio_checks import assert_speech, hear
from tests.conftest import TESTDATA

EN = TESTDATA / "cross_lingual_prompt.wav"
ZH = TESTDATA / "zero_shot_prompt.wav"


def synthesize(client: httpx.Client, voice_id: str, **body: object) -> tuple[dict, bytes]:
    response = client.post("/api/v3/cross-lingual/with-cache", json={"voice_id": voice_id, **body})
    assert response.status_code == 200, response.text
    result = response.json()
    audio = client.get(result["audio_url"])
    assert audio.status_code == 200
    return result, audio.content


@pytest.mark.parametrize(
    ("fmt", "content_type"), [("wav", "audio/wav"), ("mp3", "audio/mpeg"), ("flac", "audio/flac")]
)
def test_with_cache_every_format(
    client: httpx.Client, voice_id: str, fmt: str, content_type: str
) -> None:
    response = client.post(
        "/api/v3/cross-lingual/with-cache",
        json={
            "text": "Hello world, this is a test of the voice.",
            "voice_id": voice_id,
            "format": fmt,
        },
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["success"] is True
    assert result["format"] == fmt
    assert result["audio_url"].startswith("/api/v3/audio/v3_cache_")
    assert result["file_path"] == "outputs/" + result["audio_url"].rsplit("/", 1)[1]
    audio = client.get(result["audio_url"])
    assert audio.headers["content-type"] == content_type
    heard = assert_speech(audio.content, fmt=fmt, sample_rate=22050)
    assert abs(heard.duration - result["duration"]) <= 0.05 * result["duration"] + 0.06


def test_speed_changes_duration(client: httpx.Client, voice_id: str) -> None:
    text = "The quick brown fox jumps over the lazy dog near the river bank."
    normal, _ = synthesize(client, voice_id, text=text, speed=1.0)
    fast, _ = synthesize(client, voice_id, text=text, speed=2.0)
    slow, _ = synthesize(client, voice_id, text=text, speed=0.5)
    assert 0.35 < fast["duration"] / normal["duration"] < 0.7
    assert slow["duration"] > normal["duration"] * 1.4


def test_longer_text_gives_longer_audio(client: httpx.Client, voice_id: str) -> None:
    short, _ = synthesize(client, voice_id, text="Hello there.")
    long, _ = synthesize(
        client, voice_id, text="Hello there. " * 8 + "This sentence is much longer."
    )
    assert long["duration"] > short["duration"] * 3


@pytest.mark.parametrize(
    ("language", "text"),
    [
        ("zh", "你好，欢迎使用语音合成服务。"),
        ("en", "Hello, welcome to the speech service."),
        ("ja", "こんにちは、音声合成へようこそ。"),
        ("ko", "안녕하세요, 음성 합성에 오신 것을 환영합니다."),
        ("de", "Guten Tag, willkommen beim Sprachdienst."),
        ("es", "Hola, bienvenido al servicio de voz."),
        ("fr", "Bonjour, bienvenue au service vocal."),
        ("it", "Ciao, benvenuto al servizio vocale."),
        ("ru", "Здравствуйте, добро пожаловать в голосовой сервис."),
    ],
)
def test_every_language_speaks(
    client: httpx.Client, voice_id: str, language: str, text: str
) -> None:
    _, audio = synthesize(client, voice_id, text=text)
    assert_speech(audio, fmt="wav", sample_rate=22050, min_duration=0.8)


def test_zero_shot_voice_and_instruction(client: httpx.Client, zh_voice_id: str) -> None:
    plain, plain_audio = synthesize(client, zh_voice_id, text="今天天气很好，我们去公园散步吧。")
    slow, _ = synthesize(
        client,
        zh_voice_id,
        text="今天天气很好，我们去公园散步吧。",
        instruct_text="Speak slowly with a happy tone",
    )
    assert_speech(plain_audio, sample_rate=22050)
    if plain["engine"] == "espeak":
        # The development engine reads the pace from the instruction itself; CosyVoice
        # hands the instruction to its model, whose pace is the model's own.
        assert slow["duration"] > plain["duration"] * 1.1
    else:
        assert slow["engine"] == "cosyvoice" and slow["duration"] > 0.5
    _, audio = synthesize(
        client, zh_voice_id, text="今天天气很好。", instruct_text="Use Cantonese dialect"
    )
    assert_speech(audio)


def test_with_audio_upload(client: httpx.Client) -> None:
    response = client.post(
        "/api/v3/cross-lingual/with-audio",
        data={"text": "Cloned from an upload.", "format": "mp3", "speed": "1.0"},
        files={"prompt_audio": ("prompt.wav", EN.read_bytes(), "audio/wav")},
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert "/v3_cross_lingual_" in result["audio_url"]
    assert_speech(client.get(result["audio_url"]).content, fmt="mp3", sample_rate=22050)


def test_instruct_route(client: httpx.Client) -> None:
    response = client.post(
        "/api/v3/cross-lingual/instruct",
        data={"text": "Please keep your voice down.", "instruct_text": "Whisper softly"},
        files={"prompt_audio": ("prompt.wav", EN.read_bytes(), "audio/wav")},
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert "/v3_instruct_" in result["audio_url"]
    assert_speech(client.get(result["audio_url"]).content, min_duration=0.5)


def test_stream_true_sends_chunked_audio(client: httpx.Client, voice_id: str) -> None:
    text = "First sentence here. Second sentence follows. And a third one to finish."
    with client.stream(
        "POST",
        "/api/v3/cross-lingual/with-cache",
        json={"text": text, "voice_id": voice_id, "stream": True},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("audio/wav")
        assert "content-length" not in response.headers
        pieces = [piece for piece in response.iter_bytes() if piece]
    assert len(pieces) >= 2
    assert_speech(b"".join(pieces), sample_rate=22050, min_duration=1.5)


def test_capabilities_name_the_engine(client: httpx.Client) -> None:
    caps = client.get("/api/v3/cross-lingual/capabilities").json()
    assert caps["version"] == "v3"
    assert caps["engine"] in ("espeak", "cosyvoice")
    assert set(caps["features"]["languages"]) >= {
        "zh",
        "en",
        "ja",
        "ko",
        "de",
        "es",
        "fr",
        "it",
        "ru",
    }
    assert caps["features"]["instruct_support"] is True
    assert caps["features"]["streaming"]["enabled"] is True
    v2 = client.get("/api/v2/cross-lingual/capabilities").json()
    assert v2["version"] == "v2" and v2["features"]["instruct_support"] is False


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_older_versions_synthesize(client: httpx.Client, voice_id: str, version: str) -> None:
    response = client.post(
        f"/api/{version}/cross-lingual/with-cache",
        json={"text": "Hello world", "voice_id": voice_id},
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["audio_url"].startswith(f"/api/{version}/audio/{version}_cache_")
    assert result["message"] == "CosyVoice2 synthesis completed"
    assert_speech(client.get(result["audio_url"]).content)
    refused = client.post(
        f"/api/{version}/cross-lingual/with-cache",
        json={"text": "Hello", "voice_id": voice_id, "instruct_text": "Whisper softly"},
    )
    assert refused.status_code == 400


def test_audio_download_supports_range(client: httpx.Client, voice_id: str) -> None:
    result, whole = synthesize(client, voice_id, text="Range requests let players seek.")
    partial = client.get(result["audio_url"], headers={"Range": "bytes=0-99"})
    assert partial.status_code == 206
    assert partial.content == whole[:100]
    assert partial.headers["content-range"] == f"bytes 0-99/{len(whole)}"
    alias = client.get(result["audio_url"].replace("/audio/", "/cross-lingual/audio/"))
    assert alias.content == whole
    assert hear(whole).sample_rate == 22050

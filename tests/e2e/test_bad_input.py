"""Every bad request gets its 4xx with a `detail`, and the service stays healthy."""

from __future__ import annotations

import io
import uuid

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.audio_checks import assert_speech
from tests.conftest import TESTDATA

EN = TESTDATA / "cross_lingual_prompt.wav"


def wav_bytes(seconds: float, rate: int = 16000, silent: bool = False) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    tone = np.zeros_like(t) if silent else 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(t * 3))
    buffer = io.BytesIO()
    sf.write(buffer, tone.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def new_voice(voice_id: str | None = None, **fields: str) -> dict[str, str]:
    return {
        "voice_id": voice_id or f"bad_{uuid.uuid4().hex[:8]}",
        "name": "n",
        "voice_type": "cross_lingual",
        **fields,
    }


def assert_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body.get("detail"), body
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"text": "hi", "voice_id": "no_such_voice"}, 404),
        ({"voice_id": "x"}, 400),
        ({"text": "hi"}, 400),
        ({"text": "hi", "voice_id": "x", "format": "ogg"}, 400),
        ({"text": "hi", "voice_id": "x", "speed": 0.1}, 400),
        ({"text": "hi", "voice_id": "x", "speed": 5.0}, 400),
        ({"text": "   ", "voice_id": "x"}, 400),
        ({"text": "a" * 2001, "voice_id": "x"}, 400),
    ],
)
def test_with_cache_rejects(client: httpx.Client, voice_id: str, body: dict, status: int) -> None:
    if status == 400 and "voice_id" in body and body["voice_id"] == "x":
        body = {**body, "voice_id": voice_id}
    assert_error(client.post("/api/v3/cross-lingual/with-cache", json=body), status)


def test_malformed_json(client: httpx.Client) -> None:
    response = client.post(
        "/api/v3/cross-lingual/with-cache",
        content=b'{"text": "hi", "voice_id": ',
        headers={"content-type": "application/json"},
    )
    assert_error(response, 400)


@pytest.mark.parametrize(
    ("content", "content_type", "says"),
    [
        (b'{"text": "hi", "voice_id": ', "application/json", "not valid JSON (at character 27)"),
        (b'{"text": "hi", "voice_id": "v"}', "text/plain", "Content-Type: application/json"),
        (b'{"text": "hi", "voice_id": "v"}', None, "Content-Type: none"),
        (b"[1, 2]", "application/json", "the body must be a JSON object"),
        (b"", "application/json", "the body is empty"),
        (b'{"text": "\xff"}', "application/json", "not valid UTF-8 (byte 10)"),
        (b'{"text": "hi", "speed": ' + b"1" * 5000 + b"}", "application/json", "more digits"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_named_as_such(
    client: httpx.Client, content: bytes, content_type: str | None, says: str
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/api/v3/cross-lingual/with-cache", content=content, headers=headers)
    assert_error(response, 400)
    assert says in response.json()["detail"]


def test_text_with_half_a_utf16_pair_is_a_400_not_a_failed_synthesis(
    client: httpx.Client, voice_id: str
) -> None:
    response = client.post(
        "/api/v3/cross-lingual/with-cache",
        content=b'{"text": "hi \\ud800 there", "voice_id": "%s"}' % voice_id.encode(),
        headers={"content-type": "application/json"},
    )
    assert_error(response, 400)
    assert "lone surrogate (U+D800) at character 3" in response.json()["detail"]
    # A field with a length limit is refused by its schema, in words of the same kind.
    renamed = client.put(
        f"/api/v3/voices/{voice_id}",
        content=b'{"name": "half \\udc00 a pair"}',
        headers={"content-type": "application/json"},
    )
    assert_error(renamed, 400)
    assert renamed.json()["detail"] == (
        "name: must be valid Unicode: it holds half of a UTF-16 surrogate pair"
    )


@pytest.mark.parametrize("text", ["\x00Hello there.", "Hello\x00 there.", "Hello\x1b[2J there."])
def test_text_with_a_control_character_is_refused_not_cut_short(
    client: httpx.Client, voice_id: str, text: str
) -> None:
    """NUL ends a C engine's input: "Hello\\0 there." was spoken as "Hello"."""
    at = next(i for i, c in enumerate(text) if c in "\x00\x1b")
    answers = [
        client.post("/api/v3/cross-lingual/with-cache", json={"text": text, "voice_id": voice_id}),
        client.post("/api/v3/streaming/cross-lingual", data={"text": text, "voice_id": voice_id}),
        client.post("/api/v3/cross-lingual/task", json={"text": text, "voice_id": voice_id}),
    ]
    for response in answers:
        assert_error(response, 400)
        assert (
            f"control character (U+{ord(text[at]):04X}) at character {at}"
            in (response.json()["detail"])
        ), response.json()
    instruct = client.post(
        "/api/v3/cross-lingual/with-cache",
        json={"text": "Hello.", "voice_id": voice_id, "instruct_text": text},
    )
    assert_error(instruct, 400)
    assert instruct.json()["detail"].startswith("instruct_text has a control character")
    with EN.open("rb") as clip:
        transcript = client.post(
            "/api/v3/cross-lingual/with-audio",
            data={"text": "Hello.", "prompt_text": text},
            files={"prompt_audio": ("clip.wav", clip)},
        )
    assert_error(transcript, 400)
    assert transcript.json()["detail"].startswith("prompt_text has a control character")
    speech = client.post(
        "/v1/audio/speech", json={"model": "tts-1", "input": text, "voice": voice_id}
    )
    assert speech.status_code == 400
    assert "control character" in speech.json()["error"]["message"]


@pytest.mark.parametrize(
    "path",
    ["/api/v3/streaming/cross-lingual", "/api/v3/voices/", "/api/v3/cross-lingual/with-audio"],
)
def test_json_sent_to_a_form_route_is_named_as_such(client: httpx.Client, path: str) -> None:
    response = client.post(path, json={"text": "hi", "voice_id": "v", "name": "n"})
    assert_error(response, 400)
    detail = response.json()["detail"]
    assert "takes form fields" in detail and "application/json" in detail, detail


@pytest.mark.parametrize(
    ("fields", "audio", "status"),
    [
        ({"voice_type": "robot"}, None, 400),
        ({"voice_id": "has/slash"}, None, 400),
        ({"voice_id": "../escape"}, None, 400),
        ({"voice_id": "x" * 65}, None, 400),
        ({"voice_type": "zero_shot"}, None, 400),  # zero_shot needs prompt_text
        ({}, b"", 422),
        ({}, b"this is not audio at all, just text pretending" * 10, 422),
        ({}, "silence", 422),
        ({}, "short", 422),
        ({}, "long", 422),
    ],
)
def test_create_voice_rejects(
    client: httpx.Client, fields: dict, audio: bytes | str | None, status: int
) -> None:
    payload = {"silence": wav_bytes(3, silent=True), "short": wav_bytes(0.5), "long": wav_bytes(60)}
    data = audio if isinstance(audio, bytes) else payload.get(audio or "", EN.read_bytes())
    response = client.post(
        "/api/v3/voices/",
        data=new_voice(**fields) if "voice_id" not in fields else {**new_voice(), **fields},
        files={"audio_file": ("sample.wav", data, "audio/wav")},
    )
    assert_error(response, status)


def test_missing_fields_and_duplicates(client: httpx.Client, voice_id: str) -> None:
    assert_error(client.post("/api/v3/voices/", data=new_voice()), 400)  # no file
    response = client.post(
        "/api/v3/voices/",
        data=new_voice(voice_id),
        files={"audio_file": ("s.wav", EN.read_bytes(), "audio/wav")},
    )
    assert_error(response, 409)


def test_huge_upload_is_refused_early(client: httpx.Client) -> None:
    big = b"\0" * (60 * 1024 * 1024)
    response = client.post(
        "/api/v3/voices/",
        data=new_voice(),
        files={"audio_file": ("big.wav", big, "audio/wav")},
    )
    assert_error(response, 413)


def test_page_size_over_limit(client: httpx.Client) -> None:
    assert_error(client.get("/api/v3/voices/", params={"page_size": 1000}), 400)
    assert_error(client.get("/api/v3/voices/", params={"page": 0}), 400)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v3/audio/..%2F..%2Fetc%2Fpasswd",
        "/api/v3/audio/%2e%2e%2fcosyvoice.db",
        "/api/v3/audio/v3_cache_zzzz.wav",
        "/api/v3/audio/passwd",
        "/api/v3/audio/..%5C..%5Cwindows.ini",
    ],
)
def test_audio_path_traversal(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (400, 404)
    assert response.json()["detail"]


def test_unknown_audio_is_404(client: httpx.Client) -> None:
    assert_error(client.get("/api/v3/audio/v3_cache_0123abcd.wav"), 404)


def test_unknown_voice_routes(client: httpx.Client) -> None:
    assert_error(client.get("/api/v3/voices/nobody_here"), 404)
    assert_error(client.put("/api/v3/voices/nobody_here", json={"name": "x"}), 404)
    assert_error(client.put("/api/v3/voices/nobody_here", json={"bogus": 1}), 400)


def test_service_still_healthy_after_abuse(client: httpx.Client, voice_id: str) -> None:
    test_huge_upload_is_refused_early(client)
    assert client.get("/health").json()["status"] == "healthy"
    response = client.post(
        "/api/v3/cross-lingual/with-cache", json={"text": "Still working.", "voice_id": voice_id}
    )
    assert response.status_code == 200
    assert_speech(client.get(response.json()["audio_url"]).content)

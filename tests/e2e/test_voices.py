"""The voice library over HTTP: create, list, get, update, delete, stats."""

from __future__ import annotations

import uuid

import httpx

from tests.conftest import MANDARIN_TRANSCRIPT, TESTDATA
from tests.e2e.conftest import create_voice

EN = TESTDATA / "cross_lingual_prompt.wav"
ZH = TESTDATA / "zero_shot_prompt.wav"


def test_create_returns_the_measured_voice(client: httpx.Client) -> None:
    voice_id = f"v_{uuid.uuid4().hex[:8]}"
    response = client.post(
        "/api/v3/voices/",
        data={
            "voice_id": voice_id,
            "name": "My Custom Voice",
            "description": "A custom voice for testing",
            "voice_type": "zero_shot",
            "language": "zh",
            "prompt_text": MANDARIN_TRANSCRIPT,
            "audio_format": "mp3",  # wrong on purpose: the bytes say wav
        },
        files={"audio_file": ("clip.wav", ZH.read_bytes(), "audio/wav")},
    )
    assert response.status_code == 201, response.text
    voice = response.json()
    assert voice["voice_id"] == voice_id
    assert voice["voice_type"] == "zero_shot"
    assert voice["audio_format"] == "wav"
    assert voice["sample_rate"] == 24000
    assert abs(voice["duration"] - 3.5) < 0.3
    assert voice["file_size"] == ZH.stat().st_size
    assert voice["is_active"] is True
    assert voice["created_at"].endswith("Z")


def test_get_with_and_without_trailing_slash(client: httpx.Client) -> None:
    voice_id = create_voice(client, EN)
    for path in (f"/api/v3/voices/{voice_id}", f"/api/v3/voices/{voice_id}/"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.json()["voice_id"] == voice_id
    assert client.get("/api/v3/voices").status_code == 200


def test_list_filters_and_paginates(client: httpx.Client) -> None:
    language = "it"  # used by no other test
    ids = [create_voice(client, EN, language=language, prefix="page") for _ in range(3)]
    first = client.get("/api/v3/voices/", params={"language": language, "page_size": 2}).json()
    second = client.get(
        "/api/v3/voices/", params={"language": language, "page_size": 2, "page": 2}
    ).json()
    assert first["total"] == 3 and second["total"] == 3
    assert len(first["voices"]) == 2 and len(second["voices"]) == 1
    listed = {v["voice_id"] for v in first["voices"] + second["voices"]}
    assert listed == set(ids)
    assert first["page"] == 1 and first["page_size"] == 2
    instruct = client.get("/api/v3/voices/", params={"voice_type": "instruct"}).json()
    assert all(v["voice_type"] == "instruct" for v in instruct["voices"])


def test_update_fields_and_replace_sample(client: httpx.Client) -> None:
    voice_id = create_voice(client, EN)
    response = client.put(
        f"/api/v3/voices/{voice_id}", json={"name": "Renamed", "is_active": False}
    )
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Renamed"
    assert response.json()["is_active"] is False

    response = client.put(
        f"/api/v3/voices/{voice_id}",
        data={"prompt_text": MANDARIN_TRANSCRIPT, "voice_type": "zero_shot"},
        files={"audio_file": ("new.wav", ZH.read_bytes(), "audio/wav")},
    )
    assert response.status_code == 200, response.text
    voice = response.json()
    assert voice["sample_rate"] == 24000 and voice["voice_type"] == "zero_shot"
    assert voice["name"] == "Renamed"


def test_delete_removes_the_voice(client: httpx.Client) -> None:
    voice_id = create_voice(client, EN)
    response = client.delete(f"/api/v3/voices/{voice_id}")
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert body["message"] == f"Voice '{voice_id}' deleted successfully"
    assert client.get(f"/api/v3/voices/{voice_id}").status_code == 404
    assert client.delete(f"/api/v3/voices/{voice_id}").status_code == 404
    # the id is free again: the sample went with the record
    create = client.post(
        "/api/v3/voices/",
        data={"voice_id": voice_id, "name": "again", "voice_type": "cross_lingual"},
        files={"audio_file": ("a.wav", EN.read_bytes(), "audio/wav")},
    )
    assert create.status_code == 201


def test_stats_and_pretrained(client: httpx.Client) -> None:
    create_voice(client, EN)
    stats = client.get("/api/v3/voices/stats/summary").json()
    assert stats["total_voices"] >= 1
    assert stats["total_duration"] > 10
    assert stats["total_size"] > 0
    assert sum(stats["voice_types"].values()) == stats["total_voices"]
    pretrained = client.get("/api/v3/voices/pretrained/list").json()
    assert pretrained["version"] == "v3"
    assert pretrained["total"] == len(pretrained["pretrained_voices"])


def test_one_library_across_versions(client: httpx.Client) -> None:
    voice_id = create_voice(client, EN)
    for version in ("v1", "v2"):
        assert client.get(f"/api/{version}/voices/{voice_id}").status_code == 200

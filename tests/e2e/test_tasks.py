"""Background tasks over HTTP: create, watch, download, list, delete; long text; v1/v2 async."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.audio_checks import assert_speech
from tests.e2e.texts import SENTENCE, long_text

FINISHED = ("completed", "failed", "cancelled")


def wait_for(
    client: httpx.Client, path: str, until: tuple[str, ...] = FINISHED, timeout: float = 60
) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(path)
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in until:
            return body
        assert time.monotonic() < deadline, f"still {body['status']} after {timeout}s: {body}"
        time.sleep(0.05)


def create_task(client: httpx.Client, version: str = "v3", **body: object) -> dict:
    response = client.post(f"/api/{version}/cross-lingual/task", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_task_completes_with_downloadable_audio(
    client: httpx.Client, voice_id: str, fmt: str
) -> None:
    created = create_task(
        client,
        text="Hello from a background task. It renders while you wait.",
        voice_id=voice_id,
        format=fmt,
        metadata={"order": 42},
    )
    uuid.UUID(created["task_id"])
    assert created["status"] == "registered"
    assert created["file_path"] == "outputs/" + created["audio_url"].rsplit("/", 1)[1]
    assert created["audio_url"].startswith("/api/v3/audio/v3_task_")
    assert created["audio_url"].endswith(f".{fmt}")
    assert created["estimated_duration"] > 0
    assert created["created_at"].endswith("Z")

    done = wait_for(client, f"/api/v3/cross-lingual/task/{created['task_id']}")
    assert done["status"] == "completed", done
    assert done["progress"] == 1.0
    assert done["audio_url"] == created["audio_url"]
    assert done["metadata"] == {"order": 42}
    assert done["completed_at"] >= done["created_at"]
    assert done["synthesis_time"] > 0
    audio = client.get(done["audio_url"])
    assert audio.status_code == 200
    heard = assert_speech(audio.content, fmt=fmt, sample_rate=22050, min_duration=1.5)
    assert abs(heard.duration - done["duration"]) <= 0.05 * done["duration"] + 0.06


def test_list_filter_and_delete(client: httpx.Client, voice_id: str) -> None:
    created = create_task(client, text="Listed, then deleted.", voice_id=voice_id)
    task_id = created["task_id"]
    wait_for(client, f"/api/v3/cross-lingual/task/{task_id}")

    listing = client.get("/api/v3/cross-lingual/tasks", params={"status": "completed"}).json()
    assert listing["version"] == "v3" and listing["status_filter"] == "completed"
    assert task_id in [t["task_id"] for t in listing["tasks"]]
    assert all(t["status"] == "completed" for t in listing["tasks"])
    assert listing["total"] >= len(listing["tasks"])
    limited = client.get("/api/v3/cross-lingual/tasks", params={"limit": 1}).json()
    assert len(limited["tasks"]) == 1

    deleted = client.delete(f"/api/v3/cross-lingual/task/{task_id}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["success"] is True
    assert deleted.json()["message"] == f"Task {task_id} deleted successfully"
    assert deleted.json()["version"] == "v3"
    assert client.get(f"/api/v3/cross-lingual/task/{task_id}").status_code == 404
    assert client.get(created["audio_url"]).status_code == 404
    assert client.delete(f"/api/v3/cross-lingual/task/{task_id}").status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"text": "Hi.", "voice_id": "no_such_voice"}, 404, "not found"),
        ({"text": "   ", "voice_id": "{voice}"}, 400, "empty"),
        ({"text": "x" * 100_001, "voice_id": "{voice}"}, 400, "MAX_TASK_TEXT_LENGTH"),
        ({"text": "Hi.", "voice_id": "{voice}", "speed": 2.5}, 400, "speed"),
        ({"text": "Hi.", "voice_id": "{voice}", "format": "ogg"}, 400, "format"),
        ({"text": "Hi.", "voice_id": "{voice}", "metadata": [1, 2]}, 400, "metadata"),
        ({"text": "Hi.", "voice_id": "{voice}", "callback_url": "ftp://x/y"}, 400, "http"),
    ],
)
def test_bad_tasks_are_refused_at_once(
    client: httpx.Client, voice_id: str, body: dict, status: int, detail: str
) -> None:
    body = {k: (voice_id if v == "{voice}" else v) for k, v in body.items()}
    before = client.get("/api/v3/cross-lingual/tasks").json()["total"]
    response = client.post("/api/v3/cross-lingual/task", json=body)
    assert response.status_code == status, response.text
    assert detail in str(response.json()["detail"])
    assert client.get("/api/v3/cross-lingual/tasks").json()["total"] == before


def test_instruct_text_is_v3_only(client: httpx.Client, voice_id: str) -> None:
    body = {"text": "Hi.", "voice_id": voice_id, "instruct_text": "Whisper softly"}
    assert client.post("/api/v2/cross-lingual/task", json=body).status_code == 400
    created = create_task(client, **body)
    assert wait_for(client, f"/api/v3/cross-lingual/task/{created['task_id']}")["status"] == (
        "completed"
    )


def test_unknown_task_is_404(client: httpx.Client) -> None:
    missing = str(uuid.uuid4())
    for path in (f"/api/v3/cross-lingual/task/{missing}", f"/api/v2/cross-lingual/task/{missing}"):
        response = client.get(path)
        assert response.status_code == 404
        assert missing in response.json()["detail"]


def test_long_text_progresses_per_segment(client: httpx.Client, voice_id: str) -> None:
    short = create_task(client, text=SENTENCE.strip(), voice_id=voice_id)
    text = long_text(5000)
    created = create_task(client, text=text, voice_id=voice_id)
    path = f"/api/v3/cross-lingual/task/{created['task_id']}"
    seen: list[float] = []
    deadline = time.monotonic() + 120
    while True:
        body = client.get(path).json()
        seen.append(body["progress"])
        if body["status"] in FINISHED:
            break
        assert time.monotonic() < deadline
    assert body["status"] == "completed", body
    assert seen == sorted(seen), "progress never goes back"
    assert any(0.0 < p < 1.0 for p in seen), f"no progress between 0 and 1 in {set(seen)}"

    audio = client.get(body["audio_url"])
    heard = assert_speech(audio.content, fmt="wav", sample_rate=22050)
    assert abs(heard.duration - body["duration"]) <= 0.01 * body["duration"] + 0.1
    # The same speech rate as one sentence alone: the file holds the whole text, once.
    one = wait_for(client, f"/api/v3/cross-lingual/task/{short['task_id']}")
    sentences = len(text) / len(SENTENCE)
    assert 0.7 < body["duration"] / (one["duration"] * sentences) < 1.3


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_async_routes(client: httpx.Client, voice_id: str, version: str) -> None:
    base = f"/api/{version}/cross-lingual/async"
    response = client.post(
        base, json={"text": "An asynchronous hello.", "voice_id": voice_id, "format": "wav"}
    )
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["success"] is True and created["status"] == "pending"
    assert created["estimated_time"] >= 0
    task_id = created["task_id"]

    done = wait_for(client, f"{base}/{task_id}")
    assert done["success"] is True and done["status"] == "completed"
    assert done["progress"] == 1.0 and done["message"]
    assert done["audio_url"].startswith(f"/api/{version}/audio/{version}_task_")
    assert done["file_path"].startswith("outputs/")
    assert_speech(client.get(done["audio_url"]).content, fmt="wav", sample_rate=22050)

    listing = client.get(base).json()
    assert listing["success"] is True and listing["tasks"][task_id] == "completed"
    assert listing["total"] >= 1

    removed = client.delete(f"{base}/{task_id}")
    assert removed.status_code == 200 and removed.json()["success"] is True
    assert client.get(f"{base}/{uuid.uuid4()}").status_code == 404
    refused = client.post(
        base, json={"text": "Hi.", "voice_id": voice_id, "instruct_text": "Whisper"}
    )
    assert refused.status_code == 400
    assert client.post(base, json={"text": "Hi.", "voice_id": "nobody"}).status_code == 404


def test_async_cancel_while_queued(client: httpx.Client, voice_id: str) -> None:
    base = "/api/v2/cross-lingual/async"
    task_id = client.post(base, json={"text": long_text(3000), "voice_id": voice_id}).json()[
        "task_id"
    ]
    cancelled = client.delete(f"{base}/{task_id}")
    assert cancelled.status_code == 200
    status = client.get(f"{base}/{task_id}").json()
    # Cancelled before it finished, or it finished first and was deleted.
    assert (cancelled.json()["action"], status.get("status")) in {
        ("cancelled", "cancelled"),
        ("deleted", None),
    }

"""Scheduled rendering over HTTP: register, render, cancel, delete, render-all, queue-stats."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.audio_checks import assert_speech
from tests.conftest import TESTDATA
from tests.e2e.conftest import ApiServer, ServerFactory, create_voice
from tests.e2e.test_tasks import FINISHED, wait_for
from tests.e2e.texts import long_text

S = "/api/v3/schedule"


def register(client: httpx.Client, voice_id: str, **body: object) -> dict:
    response = client.post(f"{S}/register", json={"voice_id": voice_id, **body})
    assert response.status_code == 200, response.text
    return response.json()


def render(client: httpx.Client, task_id: str) -> httpx.Response:
    return client.post(f"{S}/render/{task_id}")


@pytest.fixture
def own_server(server_factory: ServerFactory) -> ApiServer:
    """A server of this test alone, so counts and queue order are exactly its own."""
    return server_factory(WORKER_CONCURRENCY="1")


@pytest.fixture
def own_client(own_server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=own_server.url, timeout=60) as http:
        yield http


@pytest.fixture
def own_voice(own_client: httpx.Client) -> str:
    return create_voice(own_client, TESTDATA / "cross_lingual_prompt.wav", language="en")


def test_register_renders_nothing_until_asked(client: httpx.Client, voice_id: str) -> None:
    registered = register(
        client,
        voice_id,
        text="Scheduled for later.",
        format="flac",
        priority="high",
        metadata={"batch": "b1"},
    )
    uuid.UUID(registered["task_id"])
    assert registered["status"] == "pending"
    assert registered["priority"] == "high"
    assert registered["message"] == (
        "Task registered successfully. Call POST /schedule/render/{task_id} to start rendering."
    )
    assert registered["queue_position"] >= 1
    assert registered["estimated_wait_time"] >= 0
    task_id = registered["task_id"]

    time.sleep(0.3)
    status = client.get(f"{S}/status/{task_id}").json()
    assert status["status"] == "pending" and status["progress"] == 0.0
    assert status["started_at"] is None and status["duration"] is None
    assert status["metadata"] == {"batch": "b1"}
    assert client.get(status["audio_url"]).status_code == 404

    started = render(client, task_id)
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "scheduled"
    assert started.json()["message"] == (
        "Background rendering started. Use GET /schedule/status/{task_id} to check progress."
    )
    done = wait_for(client, f"{S}/status/{task_id}")
    assert done["status"] == "completed", done
    assert done["started_at"] is not None and done["completed_at"] >= done["started_at"]
    heard = assert_speech(client.get(done["audio_url"]).content, fmt="flac", sample_rate=22050)
    assert abs(heard.duration - done["duration"]) < 0.1

    again = render(client, task_id)
    assert again.status_code == 409
    assert "completed" in again.json()["detail"]


def test_cancel_pending_then_delete(client: httpx.Client, voice_id: str) -> None:
    task_id = register(client, voice_id, text="Never rendered.")["task_id"]
    cancelled = client.delete(f"{S}/task/{task_id}")
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert body["success"] is True and body["task_id"] == task_id
    assert body["message"] == "Task cancelled successfully" and body["version"] == "v3"
    status = client.get(f"{S}/status/{task_id}").json()
    assert status["status"] == "cancelled" and status["completed_at"] is not None
    assert render(client, task_id).status_code == 409

    deleted = client.delete(f"{S}/task/{task_id}")
    assert deleted.status_code == 200 and deleted.json()["message"] == "Task deleted successfully"
    assert client.get(f"{S}/status/{task_id}").status_code == 404
    assert client.delete(f"{S}/task/{task_id}").status_code == 404
    assert render(client, task_id).status_code == 404


def test_cancel_while_processing(client: httpx.Client, voice_id: str) -> None:
    task_id = register(client, voice_id, text=long_text(5000))["task_id"]
    assert render(client, task_id).status_code == 200
    deadline = time.monotonic() + 60
    while True:
        status = client.get(f"{S}/status/{task_id}").json()
        if status["status"] == "processing" and status["progress"] > 0:
            break
        assert status["status"] not in FINISHED, status
        assert time.monotonic() < deadline
        time.sleep(0.01)

    cancelled = client.delete(f"{S}/task/{task_id}")
    assert cancelled.status_code == 200
    assert cancelled.json()["action"] == "cancelled"
    time.sleep(1.0)  # the render notices at its next segment and stops
    final = client.get(f"{S}/status/{task_id}").json()
    assert final["status"] == "cancelled"
    assert final["progress"] < 1.0
    assert client.get(final["audio_url"]).status_code == 404


def test_delete_finished_removes_the_file(client: httpx.Client, voice_id: str) -> None:
    task_id = register(client, voice_id, text="Rendered, then removed.")["task_id"]
    render(client, task_id)
    done = wait_for(client, f"{S}/status/{task_id}")
    assert client.get(done["audio_url"]).status_code == 200
    deleted = client.delete(f"{S}/task/{task_id}")
    assert deleted.status_code == 200 and deleted.json()["action"] == "deleted"
    assert client.get(done["audio_url"]).status_code == 404
    assert client.get(f"{S}/status/{task_id}").status_code == 404


def test_bad_requests(client: httpx.Client, voice_id: str) -> None:
    bad_priority = client.post(
        f"{S}/register", json={"text": "Hi.", "voice_id": voice_id, "priority": "asap"}
    )
    assert bad_priority.status_code == 400
    assert "priority" in bad_priority.json()["detail"]
    unknown_voice = client.post(f"{S}/register", json={"text": "Hi.", "voice_id": "ghost"})
    assert unknown_voice.status_code == 404
    assert client.post(f"{S}/render/{uuid.uuid4()}").status_code == 404
    assert client.get(f"{S}/status/{uuid.uuid4()}").status_code == 404
    assert client.post(f"{S}/render-all", params={"max_tasks": 0}).status_code == 400
    assert client.get(f"{S}/tasks", params={"status": "sleeping"}).status_code == 400
    # scheduled rendering is v3-only
    assert client.post("/api/v2/schedule/register", json={"text": "Hi."}).status_code == 404


def test_render_all_respects_max_tasks_and_priority(
    own_client: httpx.Client, own_voice: str
) -> None:
    low = [register(own_client, own_voice, text=f"Low {n}.", priority="low") for n in range(3)]
    urgent = [
        register(own_client, own_voice, text=f"Urgent {n}.", priority="urgent") for n in range(2)
    ]
    assert urgent[0]["queue_position"] == 1 and urgent[1]["queue_position"] == 2
    assert low[2]["queue_position"] == 3

    result = own_client.post(f"{S}/render-all", params={"max_tasks": 2})
    assert result.status_code == 200, result.text
    body = result.json()
    assert body["tasks_started"] == 2 and body["tasks_remaining"] == 3
    assert body["task_ids"] == [t["task_id"] for t in urgent]
    assert body["version"] == "v3"
    for task in urgent:
        assert wait_for(own_client, f"{S}/status/{task['task_id']}")["status"] == "completed"
    for task in low:
        assert own_client.get(f"{S}/status/{task['task_id']}").json()["status"] == "pending"

    stats = own_client.get(f"{S}/queue-stats").json()
    assert stats["total_tasks"] == 5 and stats["completed_tasks"] == 2
    assert stats["status_counts"]["pending"] == 3 and stats["status_counts"]["completed"] == 2
    assert sum(stats["status_counts"].values()) == stats["total_tasks"]
    assert sum(stats["priority_counts"].values()) == stats["total_tasks"]
    assert stats["priority_counts"]["low"] == 3 and stats["priority_counts"]["urgent"] == 2
    assert stats["average_synthesis_time"] > 0
    listing = own_client.get(f"{S}/tasks").json()
    assert listing["total"] == stats["total_tasks"]
    assert listing["status_counts"] == stats["status_counts"]
    for status, count in stats["status_counts"].items():
        filtered = own_client.get(f"{S}/tasks", params={"status": status}).json()
        assert filtered["total"] == count and filtered["status_filter"] == status
    by_priority = own_client.get(f"{S}/tasks", params={"priority": "low"}).json()
    assert by_priority["total"] == 3 and by_priority["priority_filter"] == "low"

    rest = own_client.post(f"{S}/render-all").json()
    assert rest["tasks_started"] == 3 and rest["tasks_remaining"] == 0
    assert rest["task_ids"] == [t["task_id"] for t in low]  # oldest first
    for task in low:
        assert wait_for(own_client, f"{S}/status/{task['task_id']}")["status"] == "completed"
    assert own_client.get(f"{S}/queue-stats").json()["completed_tasks"] == 5


def test_urgent_work_overtakes_the_queue(own_client: httpx.Client, own_voice: str) -> None:
    """One worker: tasks queued later but more urgent are rendered before older ones."""
    blocker = register(own_client, own_voice, text=long_text(3000), priority="low")
    render(own_client, blocker["task_id"])
    wait_for(own_client, f"{S}/status/{blocker['task_id']}", until=("processing", *FINISHED))
    normal = [
        register(own_client, own_voice, text=long_text(1500), priority="normal") for _ in range(2)
    ]
    for task in normal:
        render(own_client, task["task_id"])
    urgent = register(own_client, own_voice, text="Me first.", priority="urgent")
    started = render(own_client, urgent["task_id"]).json()
    assert started["queue_position"] == 1  # ahead of both normal tasks
    wait_for(own_client, f"{S}/status/{urgent['task_id']}")
    later = own_client.get(f"{S}/status/{normal[1]['task_id']}").json()
    assert later["status"] in ("scheduled", "processing"), later

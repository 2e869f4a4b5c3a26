"""Crash safety: a server killed mid-render loses nothing and duplicates nothing; a server
asked to stop finishes what it runs and leaves nothing half-done."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.audio_checks import assert_speech
from tests.conftest import TESTDATA
from tests.e2e.conftest import PROFILE, ServerFactory, create_voice
from tests.e2e.test_webhooks import Receiver
from tests.e2e.texts import long_text

TASKS = 4


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def queue_renders(http: httpx.Client, voice: str, receiver: Receiver | None = None) -> list[dict]:
    created = []
    for n in range(TASKS):
        body: dict[str, object] = {"text": long_text(4000 + 100 * n), "voice_id": voice}
        if receiver is not None:
            body["callback_url"] = receiver.url("/crash")
        response = http.post("/api/v3/cross-lingual/task", json=body)
        assert response.status_code == 200, response.text
        created.append(response.json())
    return created


def statuses(http: httpx.Client, created: list[dict]) -> list[dict]:
    return [http.get(f"/api/v3/cross-lingual/task/{t['task_id']}").json() for t in created]


def wait_until_rendering(http: httpx.Client, created: list[dict]) -> dict:
    deadline = time.monotonic() + 60
    while True:
        for status in statuses(http, created):
            # Well under way and far from done: a render this close to its end could
            # finish between this answer and the kill.
            if status["status"] == "processing" and 0.1 < status["progress"] < 0.6:
                return status
        assert time.monotonic() < deadline, "no render started"
        time.sleep(0.02)


def output_names(data_dir: Path) -> list[str] | None:
    """Files in the embedded output folder (None in profiles that store outputs elsewhere)."""
    folder = data_dir / "outputs"
    if PROFILE != "embedded" or not folder.is_dir():
        return None
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_killed_mid_render_every_task_completes_once(
    server_factory: ServerFactory, receiver: Receiver
) -> None:
    server = server_factory(
        WORKER_CONCURRENCY="1", TASK_LEASE_SECONDS="2", WEBHOOK_ALLOW_PRIVATE="true"
    )
    with httpx.Client(base_url=server.url, timeout=60) as http:
        voice = create_voice(http, TESTDATA / "cross_lingual_prompt.wav", language="en")
        created = queue_renders(http, voice, receiver)
        interrupted = wait_until_rendering(http, created)

    server.stop(signal.SIGKILL)
    server.start()

    with httpx.Client(base_url=server.url, timeout=60) as http:
        deadline = time.monotonic() + 120
        while not all(s["status"] == "completed" for s in statuses(http, created)):
            current = statuses(http, created)
            assert not any(s["status"] == "failed" for s in current), current
            assert time.monotonic() < deadline, current
            time.sleep(0.2)
        final = {s["task_id"]: s for s in statuses(http, created)}
        assert final[interrupted["task_id"]]["attempts"] == 2  # rendered again, from scratch
        for status in final.values():
            assert status["progress"] == 1.0
            audio = http.get(status["audio_url"])
            assert audio.status_code == 200
        heard = assert_speech(audio.content, fmt="wav", sample_rate=22050)
        assert abs(heard.duration - status["duration"]) < 0.1

    names = output_names(server.data_dir)
    if names is not None:
        assert names == sorted(s["audio_url"].rsplit("/", 1)[1] for s in final.values())
    # One event per task, whatever was in flight at the kill (a resend keeps its key).
    deliveries = receiver.wait("/crash", TASKS)
    keys: dict[str, set[str]] = {}
    for delivery in deliveries:
        assert delivery.json["status"] == "completed"
        keys.setdefault(delivery.json["task_id"], set()).add(
            delivery.headers["x-cosyvoice-idempotency-key"]
        )
    assert set(keys) == set(final) and all(len(k) == 1 for k in keys.values())
    server.stop()


def test_sigterm_finishes_running_work_and_exits_cleanly(server_factory: ServerFactory) -> None:
    server = server_factory(WORKER_CONCURRENCY="1")
    with httpx.Client(base_url=server.url, timeout=60) as http:
        voice = create_voice(http, TESTDATA / "cross_lingual_prompt.wav", language="en")
        created = queue_renders(http, voice)
        running = wait_until_rendering(http, created)

    # uvicorn re-raises the signal once its shutdown is complete, so the exit status
    # is "terminated by SIGTERM"; the log says whether that shutdown was graceful.
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    log = server.log()
    assert "Application shutdown complete" in log, log
    assert "Traceback" not in log, log

    # Look at what it left behind with a server that renders nothing.
    inspector = server_factory(data_dir=server.data_dir, WORKER_CONCURRENCY="0")
    with httpx.Client(base_url=inspector.url, timeout=60) as http:
        left = {s["task_id"]: s for s in statuses(http, created)}
    inspector.stop()
    assert not any(s["status"] == "processing" for s in left.values()), left
    assert left[running["task_id"]]["status"] == "completed"
    assert {s["status"] for s in left.values()} <= {"completed", "registered"}

    # The next start takes the rest.
    resumed = server_factory(data_dir=server.data_dir, WORKER_CONCURRENCY="2")
    with httpx.Client(base_url=resumed.url, timeout=60) as http:
        deadline = time.monotonic() + 120
        while not all(s["status"] == "completed" for s in statuses(http, created)):
            assert time.monotonic() < deadline
            time.sleep(0.2)
    names = output_names(server.data_dir)
    if names is not None:
        assert len(names) == TASKS
    resumed.stop()

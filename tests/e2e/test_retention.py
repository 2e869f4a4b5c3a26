"""Retention end to end: a server with tiny OUTPUT_TTL and TASK_RETENTION forgets on time.

What a client sees: the audio_url of a synchronous call answers 404 once OUTPUT_TTL has
passed; a finished task disappears with its audio after TASK_RETENTION; a task that has
not finished is never swept, and neither is a task's audio by the synchronous-output rule.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import ApiServer, ServerFactory, create_voice
from tests.e2e.test_tasks import wait_for

OUTPUT_TTL = 3.0
TASK_RETENTION = 6.0
SWEEP = 0.5


@pytest.fixture(scope="module")
def retention_server(server_factory: ServerFactory) -> Iterator[ApiServer]:
    server = server_factory(
        OUTPUT_TTL=str(OUTPUT_TTL),
        TASK_RETENTION=str(TASK_RETENTION),
        RETENTION_SWEEP_SECONDS=str(SWEEP),
    )
    yield server
    # Its sweep forgets every output older than seconds in the store it is given; where
    # the profile shares one store between servers (the predictors read the same files),
    # it must not outlive this module.
    server.stop()


@pytest.fixture(scope="module")
def http(retention_server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=retention_server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def voice(http: httpx.Client, english_clip: bytes) -> str:
    return create_voice(http, english_clip, prefix="kept")


def wait_status(http: httpx.Client, path: str, status: int, timeout: float) -> float:
    """Seconds until `path` answers `status`."""
    started = time.monotonic()
    while (code := http.get(path).status_code) != status:
        assert time.monotonic() - started < timeout, f"{path} still answers {code}"
        time.sleep(0.2)
    return time.monotonic() - started


def test_synchronous_output_expires_after_output_ttl(http: httpx.Client, voice: str) -> None:
    made = time.monotonic()
    result = http.post(
        "/api/v3/cross-lingual/with-cache", json={"text": "Gone soon.", "voice_id": voice}
    )
    assert result.status_code == 200, result.text
    audio_url = result.json()["audio_url"]
    audio = http.get(audio_url)
    assert audio.status_code == 200 and audio.content[:4] == b"RIFF"

    wait_status(http, audio_url, 404, timeout=OUTPUT_TTL + 10 * SWEEP + 10)
    assert time.monotonic() - made >= OUTPUT_TTL - 1  # not before its time
    assert "detail" in http.get(audio_url).json()


def test_finished_task_goes_with_its_audio_and_unfinished_ones_stay(
    http: httpx.Client, voice: str
) -> None:
    created = http.post(
        "/api/v3/cross-lingual/task", json={"text": "Kept a while.", "voice_id": voice}
    )
    assert created.status_code == 200, created.text
    task_id = created.json()["task_id"]
    done = wait_for(http, f"/api/v3/cross-lingual/task/{task_id}")
    assert done["status"] == "completed"
    audio_url = done["audio_url"]
    assert http.get(audio_url).status_code == 200

    pending = http.post(
        "/api/v3/schedule/register", json={"text": "Not yet rendered.", "voice_id": voice}
    )
    assert pending.status_code == 200, pending.text
    pending_id = pending.json()["task_id"]

    # Past OUTPUT_TTL the task's audio is still there: it lives as long as its task.
    time.sleep(OUTPUT_TTL + 3 * SWEEP)
    assert http.get(audio_url).status_code == 200
    assert http.get(f"/api/v3/cross-lingual/task/{task_id}").status_code == 200

    wait_status(http, f"/api/v3/cross-lingual/task/{task_id}", 404, timeout=TASK_RETENTION + 10)
    assert http.get(audio_url).status_code == 404

    status = http.get(f"/api/v3/schedule/status/{pending_id}")
    assert status.status_code == 200 and status.json()["status"] == "pending"

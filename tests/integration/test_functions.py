"""The Knative topology on one machine: API → NATS → source adapter → functions.

Every part is its own process, as in the cluster: the API (rendering nothing itself),
the render and webhook functions served by the real func-python middleware, and two
JetStream source adapters POSTing CloudEvents to them (what a ContainerSource does with
K_SINK). They share SQLite and a folder as their repository and blob store.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from core.services.webhooks import verify
from tests.audio_checks import assert_speech
from tests.conftest import TESTDATA
from tests.e2e.conftest import ApiServer, create_voice
from tests.function_topology import Receiver, render_and_webhook_functions, wait_for_status

SECRET = "functions-test-secret"


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiServer, Receiver]]:
    receiver = Receiver().start()
    try:
        root = tmp_path_factory.mktemp("functions")
        with render_and_webhook_functions(root, webhook_secret=SECRET) as functions:
            yield functions.api, receiver
    finally:
        receiver.stop()


def test_task_rendered_by_the_function_with_signed_webhook(
    topology: tuple[ApiServer, Receiver],
) -> None:
    api, receiver = topology
    with httpx.Client(base_url=api.url, timeout=60) as http:
        voice_id = create_voice(http, TESTDATA / "cross_lingual_prompt.wav")
        created = http.post(
            "/api/v3/cross-lingual/task",
            json={
                "text": "Rendered by a function.",
                "voice_id": voice_id,
                "callback_url": receiver.url,
            },
        )
        assert created.status_code == 200, created.text
        task_id = created.json()["task_id"]
        status = wait_for_status(http, task_id)
        assert status["status"] == "completed", status
        assert_speech(http.get(status["audio_url"]).content, fmt="wav")

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not receiver.received:
        time.sleep(0.1)
    assert receiver.received, "no webhook arrived"
    headers, body = receiver.received[0]
    assert verify(SECRET, headers["X-CosyVoice-Timestamp"], body, headers["X-CosyVoice-Signature"])
    assert json.loads(body)["task_id"] == task_id


def test_external_producer_submission(topology: tuple[ApiServer, Receiver]) -> None:
    api, _ = topology
    with httpx.Client(base_url=api.url, timeout=60) as http:
        voice_id = create_voice(http, TESTDATA / "cross_lingual_prompt.wav")
    task_id = str(uuid.uuid4())
    nats_url = api.env["EVENT_BUS_URL"]

    async def publish() -> None:
        import nats

        connection = await nats.connect(nats_url)
        headers = {
            "ce-specversion": "1.0",
            "ce-type": "ai.cosyvoice.render.submit.v1",
            "ce-source": "tests",
            "ce-id": f"submit-{task_id}",
            "Nats-Msg-Id": f"submit-{task_id}",
            "content-type": "application/json",
        }
        body = json.dumps({"task_id": task_id, "text": "From a producer.", "voice_id": voice_id})
        for _ in range(2):  # the same event twice: one task
            await connection.jetstream().publish(
                "cosyvoice.render.submit", body.encode(), headers=headers
            )
        await connection.close()

    asyncio.run(publish())
    with httpx.Client(base_url=api.url, timeout=60) as http:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if http.get(f"/api/v3/schedule/status/{task_id}").status_code == 200:
                break
            time.sleep(0.2)
        status = wait_for_status(http, task_id)
        assert status["status"] == "completed", status
        listed = http.get("/api/v3/schedule/tasks", params={"limit": 100}).json()["tasks"]
        assert [t["task_id"] for t in listed].count(task_id) == 1

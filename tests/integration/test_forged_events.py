"""Task-ended events published by someone else send nothing: the webhook function builds
each callback from the stored task, never from the event.

The Knative shape as processes: the API (rendering nothing), the render and webhook
functions, and their JetStream sources, over one NATS server and one SQLite database.
A real task ends and is announced; forged `ai.cosyvoice.task.completed.v1` events, one
for a task that does not exist and one for the real task pointing at another URL, are
published on the subjects the webhook source consumes. The receiver gets exactly one
signed callback: the real one, at the stored URL.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest

from core.services.webhooks import IDEMPOTENCY_HEADER, verify
from tests.e2e.conftest import ApiServer, create_voice
from tests.e2e.test_webhooks import Receiver
from tests.function_topology import render_and_webhook_functions, wait_for_status

pytestmark = pytest.mark.slow

SECRET = "forged-events-test-secret"
STREAM = "COSYVOICE"
WEBHOOK_CONSUMER = "task-ended"


class Shape:
    def __init__(self, api: ApiServer, receiver: Receiver, nats_url: str) -> None:
        self.api = api
        self.receiver = receiver
        self.nats_url = nats_url


@pytest.fixture(scope="module")
def shape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shape]:
    receiver = Receiver()
    try:
        root = tmp_path_factory.mktemp("forged")
        with render_and_webhook_functions(root, webhook_secret=SECRET) as functions:
            yield Shape(functions.api, receiver, functions.nats_url)
    finally:
        receiver.close()


def forged_completion(task_id: str, callback_url: str) -> tuple[dict[str, str], bytes]:
    """A task-ended CloudEvent as the platform publishes one, with chosen data."""
    event_id = f"forged-{uuid.uuid4().hex}"
    headers = {
        "ce-specversion": "1.0",
        "ce-type": "ai.cosyvoice.task.completed.v1",
        "ce-source": "/cosyvoice",
        "ce-id": event_id,
        "Nats-Msg-Id": event_id,
        "content-type": "application/json",
    }
    body = {
        "task_id": task_id,
        "status": "completed",
        "progress": 100,
        "audio_url": "/api/v3/audio/anything.wav",
        "metadata": {"forged": True},
        "callback_url": callback_url,
    }
    return headers, json.dumps(body).encode()


async def publish_and_drain(nats_url: str, events: list[tuple[dict[str, str], bytes]]) -> None:
    """Publish on `cosyvoice.task.completed`, then wait until the webhook source has
    settled everything it was given (nothing pending, nothing awaiting an ack)."""
    connection = await nats.connect(nats_url)
    try:
        jetstream = connection.jetstream()
        for headers, body in events:
            await jetstream.publish("cosyvoice.task.completed", body, headers=headers)
        deadline = time.monotonic() + 30
        while True:
            info = await jetstream.consumer_info(STREAM, WEBHOOK_CONSUMER)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            assert time.monotonic() < deadline, f"webhook source did not settle: {info}"
            await asyncio.sleep(0.1)
    finally:
        await connection.close()


def test_forged_task_endings_send_nothing(shape: Shape, speech_clips: Path) -> None:
    receiver = shape.receiver
    with httpx.Client(base_url=shape.api.url, timeout=60) as http:
        voice_id = create_voice(http, speech_clips / "cross_lingual_prompt.wav")
        created = http.post(
            "/api/v3/cross-lingual/task",
            json={
                "text": "Only the stored ending is announced.",
                "voice_id": voice_id,
                "callback_url": receiver.url("/real"),
                "metadata": {"order": 42},
            },
        )
        assert created.status_code == 200, created.text
        task_id = created.json()["task_id"]
        assert wait_for_status(http, task_id)["status"] == "completed"
    (real,) = receiver.wait("/real", 1, timeout=30)

    asyncio.run(
        publish_and_drain(
            shape.nats_url,
            [
                forged_completion(str(uuid.uuid4()), receiver.url("/forged")),
                forged_completion(task_id, receiver.url("/forged")),
            ],
        )
    )

    assert receiver.to("/forged") == []
    assert len(receiver.to("/real")) == 1
    assert verify(
        SECRET,
        real.headers["x-cosyvoice-timestamp"],
        real.body,
        real.headers["x-cosyvoice-signature"],
    )
    body = json.loads(real.body)
    assert body["task_id"] == task_id
    assert body["status"] == "completed"
    assert body["metadata"] == {"order": 42}
    assert real.headers[IDEMPOTENCY_HEADER.lower()]


def test_a_forged_ending_of_an_unfinished_task_sends_nothing(
    shape: Shape, speech_clips: Path
) -> None:
    """A task that is still waiting: an event saying it completed is refused."""
    receiver = shape.receiver
    with httpx.Client(base_url=shape.api.url, timeout=60) as http:
        voice_id = create_voice(http, speech_clips / "cross_lingual_prompt.wav")
        registered = http.post(
            "/api/v3/schedule/register",
            json={
                "text": "Registered and never rendered.",
                "voice_id": voice_id,
                "callback_url": receiver.url("/waiting"),
            },
        )
        assert registered.status_code == 200, registered.text
        task_id = registered.json()["task_id"]

        asyncio.run(
            publish_and_drain(
                shape.nats_url, [forged_completion(task_id, receiver.url("/waiting"))]
            )
        )

        assert receiver.to("/waiting") == []
        status = http.get(f"/api/v3/schedule/status/{task_id}").json()
        assert status["status"] not in ("completed", "failed", "cancelled"), status

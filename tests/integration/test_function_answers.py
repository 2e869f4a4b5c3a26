"""What the render function answers the JetStream source, from a real function process,
and how a dead letter ends a task.

Answers (the contract with the source): 200 handled; 200 `{"rejected": reason}` for a
poison event; 429 with `Retry-After` and `{"retry_after": s}` for a task another worker
renders under a live lease; 500 a failed attempt; 503 not ready.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.adapters.embedded.memory_bus import MemoryEventBus
from core.adapters.embedded.sqlite_store import SqliteMetadataStore
from core.domain import Task, TaskKind, TaskStatus, utcnow
from core.ports import RenderRequest
from core.services.endings import TaskEndings
from core.services.webhooks import WebhookDispatcher, verify
from core.wiring import _DeadLetterSink
from tests.e2e.conftest import embedded_env, wait_http
from tests.function_topology import Receiver, function_process
from tests.servers import free_port

S = TaskStatus
SECRET = "function-answers-secret"
RENDER_REQUESTED = "ai.cosyvoice.render.requested.v1"


def make_task(status: TaskStatus, **fields: Any) -> Task:
    now = utcnow()
    return Task(
        task_id=str(uuid.uuid4()),
        kind=TaskKind.task,
        status=status,
        text="Hello there.",
        voice_id="no_such_voice",
        filename=f"v3_task_{uuid.uuid4().hex[:8]}.wav",
        created_at=now,
        queued_at=now,
        **fields,
    )


@pytest.fixture(scope="module")
def render_function(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("render-function")
    port = free_port()
    env = {**embedded_env(root), "WEBHOOK_SECRET": SECRET, "TASK_LEASE_SECONDS": "60"}
    process = function_process("render", port, env, root, "function-render")
    try:
        wait_http(f"http://127.0.0.1:{port}/health/readiness", 60, process.proc)
        yield f"http://127.0.0.1:{port}", root / "cosyvoice.db"
    finally:
        process.stop()


@pytest.fixture
async def store(render_function: tuple[str, Path]) -> AsyncIterator[SqliteMetadataStore]:
    repository = SqliteMetadataStore(render_function[1])  # the function's own database
    await repository.start()
    yield repository
    await repository.close()


def post_event(url: str, data: bytes, event_type: str = RENDER_REQUESTED) -> httpx.Response:
    headers = {
        "ce-specversion": "1.0",
        "ce-type": event_type,
        "ce-source": "/tests",
        "ce-id": f"evt-{uuid.uuid4().hex[:8]}",
        "content-type": "application/json",
    }
    return httpx.post(url, content=data, headers=headers, timeout=30)


def render_event(task_id: str) -> bytes:
    return json.dumps({"task_id": task_id, "priority": "normal"}).encode()


async def test_a_live_lease_answers_429_with_retry_after(
    render_function: tuple[str, Path], store: SqliteMetadataStore
) -> None:
    url, _ = render_function
    held = make_task(
        S.processing, claim_id=uuid.uuid4().hex, lease_until=utcnow() + timedelta(seconds=30)
    )
    await store.create_task(held)
    answer = await asyncio.to_thread(post_event, url, render_event(held.task_id))
    assert answer.status_code == 429, answer.text
    assert 1 <= int(answer.headers["retry-after"]) <= 30
    assert 0 < answer.json()["retry_after"] <= 30
    assert (await store.get_task(held.task_id)).model_dump() == held.model_dump()


async def test_an_expired_lease_is_retaken_and_ended(
    render_function: tuple[str, Path], store: SqliteMetadataStore
) -> None:
    url, _ = render_function
    orphan = make_task(
        S.processing,
        claim_id=uuid.uuid4().hex,
        lease_until=utcnow() - timedelta(seconds=1),
        attempts=1,
    )
    await store.create_task(orphan)
    answer = await asyncio.to_thread(post_event, url, render_event(orphan.task_id))
    assert answer.status_code == 200, answer.text
    ended = await store.get_task(orphan.task_id)
    # Retaken under a new claim (a second attempt); its voice does not exist, so the
    # render ends failed with the reason, recorded like every ending.
    assert ended.attempts == 2 and ended.status is S.failed
    assert "no_such_voice" in (ended.error_message or "")
    assert ended.claim_id is None and ended.lease_until is None and ended.completed_at


@pytest.mark.parametrize(
    ("data", "event_type"),
    [
        (b"{not json", RENDER_REQUESTED),
        (b"\xff\xfe", RENDER_REQUESTED),
        (b'{"priority": "normal"}', RENDER_REQUESTED),
        (b'{"task_id": "t", "priority": "whenever"}', RENDER_REQUESTED),
        (b'{"task_id": "no-such-task"}', RENDER_REQUESTED),
        (b'{"task_id": "t"}', "ai.cosyvoice.something.else.v1"),
    ],
    ids=["bad-json", "not-utf8", "no-task-id", "bad-priority", "unknown-task", "unknown-type"],
)
def test_poison_events_are_rejected_once(
    render_function: tuple[str, Path], data: bytes, event_type: str
) -> None:
    answer = post_event(render_function[0], data, event_type)
    assert answer.status_code == 200, answer.text
    assert answer.json()["rejected"]


# --- dead letters --------------------------------------------------------------------------


async def test_a_dead_letter_fails_the_task_and_fires_its_webhook_once(tmp_path: Path) -> None:
    receiver = Receiver().start()
    store = SqliteMetadataStore(tmp_path / "db.sqlite")
    sink = _DeadLetterSink()
    bus = MemoryEventBus(store, retry_delay=0.05, max_deliver=2, on_dead_letter=sink)
    webhooks = WebhookDispatcher(
        store, secret=SECRET, allow_private=True, max_attempts=2, backoff_seconds=0.1, timeout=5
    )
    await store.start()
    await bus.start()
    sink.endings = TaskEndings(store, bus)
    await webhooks.start(bus)
    task = make_task(S.registered, callback_url=receiver.url)
    await store.create_task(task)
    deliveries = 0

    async def always_fails(request: RenderRequest) -> None:
        nonlocal deliveries
        deliveries += 1
        raise RuntimeError("the render pod keeps crashing")

    consuming = asyncio.create_task(bus.consume_renders(always_fails, 1))
    try:
        for _ in range(200):
            if receiver.received:
                break
            await asyncio.sleep(0.05)
        await sink(task.task_id, "again")  # a second dead letter for it changes nothing
        await asyncio.sleep(0.5)
    finally:
        consuming.cancel()
        await asyncio.gather(consuming, return_exceptions=True)
        await webhooks.stop()
        await bus.close()
        failed = await store.get_task(task.task_id)
        await store.close()
        receiver.stop()

    assert deliveries == 2
    assert failed.status is S.failed and failed.completed_at is not None
    assert "the render pod keeps crashing" in (failed.error_message or "")
    assert failed.lease_until is None and failed.claim_id is None
    assert failed.webhook.status == "delivered"
    assert len(receiver.received) == 1
    headers, body = receiver.received[0]
    assert verify(SECRET, headers["X-CosyVoice-Timestamp"], body, headers["X-CosyVoice-Signature"])
    assert json.loads(body)["status"] == "failed"

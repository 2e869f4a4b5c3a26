"""Webhook signatures, the retry schedule, and what the dispatcher sends and records."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from core.adapters.embedded.sqlite_store import SqliteMetadataStore
from core.domain import Task, TaskKind, TaskStatus, WebhookState, utcnow
from core.services.webhooks import (
    EVENT_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookDispatcher,
    backoff_delays,
    idempotency_key,
    sign,
    task_ended_payload,
    verify,
)

SECRET = "s3cret"


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"task_id":"t1","status":"completed"}'
    expected = hmac.new(SECRET.encode(), b"1705312202." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1705312202, body) == f"sha256={expected}"
    assert sign(SECRET, "1705312202", body) == sign(SECRET, 1705312202, body)


def test_verify_accepts_only_the_exact_signed_message() -> None:
    body = b'{"a":1}'
    now = 1_700_000_000
    signature = sign(SECRET, now, body)
    assert verify(SECRET, now, body, signature, now=now)
    assert verify(SECRET, str(now), body, signature, now=now + 60)
    assert not verify(SECRET, now, b'{"a":2}', signature, now=now)
    assert not verify("other", now, body, signature, now=now)
    assert not verify(SECRET, now + 1, body, signature, now=now)
    assert not verify(SECRET, now, body, signature, now=now + 3600)  # replayed later
    assert not verify(SECRET, "yesterday", body, signature, now=now)


def test_backoff_doubles_between_attempts() -> None:
    assert backoff_delays(5, 1.0) == [1.0, 2.0, 4.0, 8.0]
    assert backoff_delays(3, 0.25) == [0.25, 0.5]
    assert backoff_delays(1, 1.0) == []


def test_idempotency_key_is_stable_per_event() -> None:
    key = idempotency_key("t1", "completed", "2024-01-15T10:30:02Z")
    assert key == idempotency_key("t1", "completed", "2024-01-15T10:30:02Z")
    assert key != idempotency_key("t1", "failed", "2024-01-15T10:30:02Z")
    assert key != idempotency_key("t2", "completed", "2024-01-15T10:30:02Z")


# --- the dispatcher against a scripted receiver ------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteMetadataStore]:
    db = SqliteMetadataStore(tmp_path / "tasks.db")
    await db.start()
    yield db
    await db.close()


def ended_task(status: TaskStatus = TaskStatus.completed) -> Task:
    now = utcnow()
    return Task(
        task_id="task-1",
        kind=TaskKind.scheduled,
        status=status,
        text="Hello.",
        voice_id="voice",
        filename="v3_task_0123abcd.wav",
        callback_url="http://127.0.0.1:9/hook",
        metadata={"order": 7},
        created_at=now,
        completed_at=now,
        progress=1.0,
        duration=1.5,
        synthesis_time=0.2,
        webhook=WebhookState(status="pending"),
    )


class Receiver:
    """Answers with the scripted status codes (or exceptions), then 200."""

    def __init__(self, *script: int | Exception) -> None:
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, Exception):
                raise step
            return httpx.Response(step, headers={"location": "http://example.com/"})
        return httpx.Response(200)


async def dispatch(
    store: SqliteMetadataStore, receiver: Receiver, task: Task, max_attempts: int = 4
) -> tuple[WebhookState, list[float]]:
    await store.create_task(task)
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    dispatcher = WebhookDispatcher(
        store,
        secret=SECRET,
        allow_private=True,
        max_attempts=max_attempts,
        backoff_seconds=0.5,
        timeout=1.0,
        transport=httpx.MockTransport(receiver),
        sleep=sleep,
        jitter=lambda delay: delay,  # the schedule itself; jitter is checked on its own
    )
    await dispatcher.start()
    try:
        state = await dispatcher.deliver(task_ended_payload(task))
    finally:
        await dispatcher.stop()
    return state, pauses


async def test_signed_post_of_the_status_object(store: SqliteMetadataStore) -> None:
    receiver = Receiver()
    state, pauses = await dispatch(store, receiver, ended_task())
    assert state.status == "delivered" and state.attempts == 1 and pauses == []
    (request,) = receiver.requests
    assert request.method == "POST"
    assert request.headers[EVENT_HEADER] == "task.completed"
    assert request.headers["content-type"] == "application/json"
    timestamp = request.headers[TIMESTAMP_HEADER]
    assert abs(int(timestamp) - time.time()) < 60
    assert verify(SECRET, timestamp, request.content, request.headers[SIGNATURE_HEADER])
    body = json.loads(request.content)
    assert body["task_id"] == "task-1"
    assert body["status"] == "completed"
    assert body["metadata"] == {"order": 7}
    assert body["audio_url"] == "/api/v3/audio/v3_task_0123abcd.wav"
    assert "callback_url" not in body
    recorded = await store.get_task("task-1")
    assert recorded.webhook.status == "delivered"
    assert recorded.webhook.attempts == 1
    assert recorded.webhook.delivered_at is not None


async def test_retries_5xx_and_connection_errors_with_one_key(
    store: SqliteMetadataStore,
) -> None:
    receiver = Receiver(503, httpx.ConnectError("refused"), httpx.ReadTimeout("slow"))
    state, pauses = await dispatch(store, receiver, ended_task())
    assert state.status == "delivered" and state.attempts == 4
    assert pauses == [0.5, 1.0, 2.0]
    keys = {request.headers[IDEMPOTENCY_HEADER] for request in receiver.requests}
    assert len(receiver.requests) == 4 and len(keys) == 1
    for request in receiver.requests:  # each attempt freshly signed, and valid
        timestamp = request.headers[TIMESTAMP_HEADER]
        assert verify(SECRET, timestamp, request.content, request.headers[SIGNATURE_HEADER])


async def test_gives_up_after_the_last_attempt(store: SqliteMetadataStore) -> None:
    receiver = Receiver(500, 502, 503)
    state, pauses = await dispatch(store, receiver, ended_task(), max_attempts=3)
    assert state.status == "failed" and state.attempts == 3
    assert state.last_error == "HTTP 503"
    assert pauses == [0.5, 1.0]
    assert (await store.get_task("task-1")).webhook.status == "failed"


@pytest.mark.parametrize("code", [400, 404, 410, 301, 307])
async def test_client_errors_and_redirects_are_final(store: SqliteMetadataStore, code: int) -> None:
    receiver = Receiver(code)
    state, pauses = await dispatch(store, receiver, ended_task())
    assert state.status == "failed" and state.attempts == 1 and pauses == []
    assert len(receiver.requests) == 1  # a redirect is not followed
    assert str(code) in (state.last_error or "")


async def test_rate_limited_is_retried(store: SqliteMetadataStore) -> None:
    state, _ = await dispatch(store, Receiver(429), ended_task())
    assert state.status == "delivered" and state.attempts == 2


async def test_refused_address_at_delivery_is_not_retried(store: SqliteMetadataStore) -> None:
    task = ended_task().model_copy(update={"callback_url": "http://169.254.169.254/latest"})
    receiver = Receiver()
    state, _ = await dispatch(store, receiver, task)
    assert state.status == "failed" and "cloud-metadata" in (state.last_error or "")
    assert receiver.requests == []


async def test_delivered_event_is_not_sent_again(store: SqliteMetadataStore) -> None:
    task = ended_task().model_copy(update={"webhook": WebhookState(status="delivered")})
    receiver = Receiver()
    state, _ = await dispatch(store, receiver, task)
    assert state.status == "delivered" and receiver.requests == []


async def test_cancelled_and_failed_events(store: SqliteMetadataStore) -> None:
    receiver = Receiver()
    await dispatch(store, receiver, ended_task(TaskStatus.cancelled))
    assert receiver.requests[0].headers[EVENT_HEADER] == "task.cancelled"
    assert json.loads(receiver.requests[0].content)["status"] == "cancelled"

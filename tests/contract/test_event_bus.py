"""The event bus contract: the in-process queue and NATS JetStream deliver renders alike.

Both drain urgent work first, render a task published twice once, retry a failed
render, give up after `max_deliver` and say so, keep queued work across a restart of
the bus, and announce finished tasks to subscribers. The NATS-only tests at the end
cover what only a server has: its dead-letter subject, surviving its own restart, and
producers that submit work directly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from core.adapters.cluster.nats_bus import DLQ_REASON_HEADER, STREAM, NatsEventBus
from core.adapters.embedded.sqlite_store import SqliteMetadataStore
from core.domain import Priority, Task, TaskStatus
from core.errors import BackendUnavailable
from core.ports import EventBus, MetadataStore, RenderRequest
from tests.contract.conftest import BusFactory, DeadLetters, eventually, make_task
from tests.servers import NatsServer, free_port

QUIET_PERIOD = 0.6  # long enough for a duplicate to have shown up


@contextlib.asynccontextmanager
async def consuming(
    bus: EventBus, handler: Callable[[RenderRequest], Awaitable[None]], concurrency: int = 1
) -> AsyncIterator[None]:
    worker = asyncio.create_task(bus.consume_renders(handler, concurrency))
    try:
        yield
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker


class Renders:
    """A render handler that records calls and fails the first `failures` of each task."""

    def __init__(self, failures: int = 0) -> None:
        self.calls: list[str] = []
        self.failures = failures

    async def __call__(self, request: RenderRequest) -> None:
        self.calls.append(request.task_id)
        if self.calls.count(request.task_id) <= self.failures:
            raise RuntimeError(f"engine fell over on {request.task_id}")


async def queued(store: MetadataStore, task_id: str, priority: Priority = Priority.normal) -> Task:
    task = make_task(task_id, priority=priority, status=TaskStatus.registered)
    assert await store.create_task(task)
    return task


async def publish(bus: EventBus, task: Task) -> None:
    await bus.publish_render(RenderRequest(task_id=task.task_id, priority=task.priority))


async def test_urgent_work_is_served_before_older_low_work(
    make_bus: BusFactory, metadata_store: MetadataStore
) -> None:
    bus = await make_bus()
    for name in ("low-1", "low-2", "low-3"):
        await publish(bus, await queued(metadata_store, name, Priority.low))
    await publish(bus, await queued(metadata_store, "normal", Priority.normal))
    await publish(bus, await queued(metadata_store, "urgent", Priority.urgent))
    renders = Renders()

    async with consuming(bus, renders):
        await eventually(lambda: len(renders.calls) == 5)

    assert renders.calls[:2] == ["urgent", "normal"]
    assert sorted(renders.calls[2:]) == ["low-1", "low-2", "low-3"]


async def test_a_task_published_twice_is_rendered_once(
    make_bus: BusFactory, metadata_store: MetadataStore
) -> None:
    bus = await make_bus()
    task = await queued(metadata_store, "twice")
    await publish(bus, task)
    await publish(bus, task)
    renders = Renders()

    async with consuming(bus, renders, concurrency=2):
        await eventually(lambda: renders.calls == ["twice"])
        await asyncio.sleep(QUIET_PERIOD)

    assert renders.calls == ["twice"]


async def test_a_failed_render_is_retried(
    make_bus: BusFactory, metadata_store: MetadataStore
) -> None:
    dead = DeadLetters()
    bus = await make_bus(max_deliver=3, on_dead_letter=dead)
    await publish(bus, await queued(metadata_store, "flaky"))
    renders = Renders(failures=1)

    async with consuming(bus, renders):
        await eventually(lambda: len(renders.calls) == 2)
        await asyncio.sleep(QUIET_PERIOD)

    assert renders.calls == ["flaky", "flaky"]
    assert dead.calls == []


async def test_a_render_that_keeps_failing_is_given_up(
    make_bus: BusFactory, metadata_store: MetadataStore
) -> None:
    dead = DeadLetters()
    bus = await make_bus(max_deliver=2, on_dead_letter=dead)
    await publish(bus, await queued(metadata_store, "doomed"))
    renders = Renders(failures=100)

    async with consuming(bus, renders):
        await eventually(lambda: len(dead.calls) == 1)
        await asyncio.sleep(QUIET_PERIOD)

    assert renders.calls == ["doomed", "doomed"]
    task_id, reason = dead.calls[0]
    assert task_id == "doomed"
    assert "engine fell over on doomed" in reason


async def test_queued_work_survives_a_restart_of_the_bus(
    make_bus: BusFactory, metadata_store: MetadataStore
) -> None:
    first = await make_bus()
    await publish(first, await queued(metadata_store, "before-restart", Priority.high))
    await first.close()

    second = await make_bus()
    renders = Renders()
    async with consuming(second, renders):
        await eventually(lambda: renders.calls == ["before-restart"])
        await asyncio.sleep(QUIET_PERIOD)

    assert renders.calls == ["before-restart"]


async def test_renders_run_concurrently_up_to_the_limit(
    make_bus: BusFactory, metadata_store: MetadataStore
) -> None:
    bus = await make_bus()
    await bus.ping()
    for name in ("a", "b", "c"):
        await publish(bus, await queued(metadata_store, name))
    running: set[str] = set()
    most_at_once = 0
    done: list[str] = []

    async def render(request: RenderRequest) -> None:
        nonlocal most_at_once
        running.add(request.task_id)
        most_at_once = max(most_at_once, len(running))
        await asyncio.sleep(0.3)
        running.discard(request.task_id)
        done.append(request.task_id)

    async with consuming(bus, render, concurrency=2):
        await eventually(lambda: len(done) == 3)

    assert most_at_once == 2


async def test_task_ended_events_reach_subscribers(make_bus: BusFactory) -> None:
    bus = await make_bus()
    received: list[dict[str, Any]] = []

    async def on_task_ended(payload: dict[str, Any]) -> None:
        received.append(payload)

    await bus.subscribe_task_ended(on_task_ended)
    payload = {
        "task_id": "t-1",
        "status": "completed",
        "audio_url": "/api/v3/audio/v3_task_0123abcd.wav",
        "metadata": {"customer": "acme"},
        "completed_at": "2024-01-15T10:30:00Z",
    }
    await bus.publish_task_ended("completed", payload)
    await bus.publish_task_ended("failed", {"task_id": "t-2", "status": "failed"})

    await eventually(lambda: len(received) == 2)
    assert received[0] == payload
    assert received[1]["task_id"] == "t-2"


# --- in-process only ------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["embedded"], indirect=True)
async def test_tasks_take_turns_with_a_long_tasks_segment_jobs(
    make_bus: BusFactory, metadata_store: MetadataStore
) -> None:
    bus = await make_bus()
    # A long-form task being rendered: claimed, its four segment jobs queued.
    book = make_task("book", status=TaskStatus.processing)
    assert await metadata_store.create_task(book)
    for index in range(4):
        await bus.publish_render(
            RenderRequest(task_id="book", priority=book.priority, segment=index)
        )
    for name in ("short-1", "short-2"):
        await publish(bus, await queued(metadata_store, name))
    await publish(bus, await queued(metadata_store, "urgent", Priority.urgent))
    order: list[str] = []

    async def render(request: RenderRequest) -> None:
        order.append(request.task_id if request.segment is None else f"book#{request.segment}")
        if request.task_id == "short-1":
            # Queued while the book still has three segments to go.
            await publish(bus, await queued(metadata_store, "short-3"))

    async with consuming(bus, render):
        await eventually(lambda: len(order) == 8)
        await asyncio.sleep(QUIET_PERIOD)

    # One job per task and turn: the short tasks wait for one of the book's segment jobs,
    # not for all four, and the book goes on between them.
    assert order == [
        "urgent",  # priority first
        "book#0",
        "short-1",
        "short-2",
        "short-3",  # queued during the first turn: it still takes that turn
        "book#1",
        "book#2",
        "book#3",
    ]


# --- NATS only ------------------------------------------------------------------------------


async def stream_message(server: NatsServer, subject: str) -> Msg | None:
    client = await nats.connect(server.url)
    try:
        message = await client.jetstream().get_last_msg(STREAM, subject)
        assert message.subject is not None
        return Msg(
            client, subject=message.subject, data=message.data or b"", headers=message.headers
        )
    except nats.js.errors.NotFoundError:
        return None
    finally:
        await client.close()


@pytest.mark.cluster
@pytest.mark.parametrize("profile", ["cluster"], indirect=True)
async def test_dead_letters_land_on_the_dlq_subject(
    make_bus: BusFactory, metadata_store: MetadataStore, nats_server: NatsServer
) -> None:
    dead = DeadLetters()
    bus = await make_bus(max_deliver=2, on_dead_letter=dead)
    await publish(bus, await queued(metadata_store, "doomed", Priority.high))

    async with consuming(bus, Renders(failures=100)):
        await eventually(lambda: len(dead.calls) == 1)

    message = await stream_message(nats_server, "cosyvoice.dlq.cosyvoice.render.requested.high")
    assert message is not None
    assert message.headers is not None
    assert message.headers["ce-type"] == "ai.cosyvoice.render.requested.v1"
    assert "engine fell over" in message.headers[DLQ_REASON_HEADER]
    assert b'"task_id": "doomed"' in message.data


@pytest.mark.cluster
@pytest.mark.parametrize("profile", ["cluster"], indirect=True)
async def test_renders_are_cloudevents_on_priority_subjects(
    make_bus: BusFactory, metadata_store: MetadataStore, nats_server: NatsServer
) -> None:
    bus = await make_bus()
    await publish(bus, await queued(metadata_store, "look", Priority.urgent))

    message = await stream_message(nats_server, "cosyvoice.render.requested.urgent")

    assert message is not None and message.headers is not None
    assert message.headers["ce-specversion"] == "1.0"
    assert message.headers["ce-type"] == "ai.cosyvoice.render.requested.v1"
    assert message.headers["ce-id"] == message.headers["Nats-Msg-Id"]
    assert message.headers["content-type"] == "application/json"


@pytest.mark.cluster
@pytest.mark.parametrize("profile", ["cluster"], indirect=True)
async def test_consuming_continues_after_the_server_restarts(
    make_bus: BusFactory, metadata_store: MetadataStore, nats_server: NatsServer
) -> None:
    bus = await make_bus()
    renders = Renders()
    async with consuming(bus, renders):
        await publish(bus, await queued(metadata_store, "before"))
        await eventually(lambda: renders.calls == ["before"])

        nats_server.restart()
        after = await queued(metadata_store, "after")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while True:  # publishing fails fast while the client reconnects
            try:
                await publish(bus, after)
                break
            except BackendUnavailable:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.2)

        await eventually(lambda: renders.calls == ["before", "after"], within=15)


@pytest.mark.cluster
@pytest.mark.parametrize("profile", ["cluster"], indirect=True)
async def test_submissions_with_a_repeated_event_id_arrive_once(make_bus: BusFactory) -> None:
    bus = await make_bus()
    assert isinstance(bus, NatsEventBus)
    received: list[tuple[str, dict[str, Any]]] = []

    async def on_submission(event_id: str, spec: dict[str, Any]) -> None:
        received.append((event_id, spec))

    spec = {"text": "Hello", "voice_id": "voice_1", "priority": "high"}
    await bus.publish_submission(spec, event_id="producer-42")
    await bus.publish_submission(spec, event_id="producer-42")  # a producer's retry
    other = await bus.publish_submission({"text": "Bye", "voice_id": "voice_1"})

    worker = asyncio.create_task(bus.consume_submissions(on_submission))
    try:
        await eventually(lambda: len(received) == 2)
        await asyncio.sleep(QUIET_PERIOD)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker

    assert received == [("producer-42", spec), (other, {"text": "Bye", "voice_id": "voice_1"})]


@pytest.mark.cluster
@pytest.mark.parametrize("profile", ["cluster"], indirect=True)
async def test_a_render_longer_than_the_ack_wait_is_not_handed_out_again(
    make_bus: BusFactory, metadata_store: MetadataStore
) -> None:
    bus = await make_bus()  # ack wait: 2 s
    await publish(bus, await queued(metadata_store, "long"))
    renders = Renders()

    async def slow_render(request: RenderRequest) -> None:
        await renders(request)
        await asyncio.sleep(3.0)  # heartbeats keep the message ours meanwhile

    async with consuming(bus, slow_render, concurrency=2):
        await eventually(lambda: renders.calls == ["long"])
        await asyncio.sleep(3.5)

    assert renders.calls == ["long"]


@pytest.mark.cluster
async def test_an_unreachable_server_fails_start_quickly(tmp_path: Path) -> None:
    store = SqliteMetadataStore(tmp_path / "unused.db")
    bus = NatsEventBus(
        f"nats://127.0.0.1:{free_port()}", store, max_deliver=3, ack_wait=2, timeout=1
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BackendUnavailable, match="event bus unavailable"):
        await bus.start()
    assert loop.time() - started < 4
    await bus.close()

"""Two render workers, one task, over one real repository and bus: fenced leases.

Each worker is what a render pod runs (its own repository client and bus connection);
the engine is a slow stand-in that reports progress after each segment and writes the
output at the end, as `SynthesisService.render_to_file` does. The first worker stalls
mid-render, its lease runs out, the second retakes the task under a new claim: exactly
one of them completes it, every write of the other is refused, one output is written
and one ending announced.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from core.adapters.cluster.mongo_store import MongoMetadataStore
from core.adapters.cluster.nats_bus import NatsEventBus
from core.adapters.embedded.file_blobs import FileBlobStore
from core.adapters.embedded.memory_bus import MemoryEventBus
from core.adapters.embedded.sqlite_store import SqliteMetadataStore
from core.domain import Task, TaskKind, TaskStatus, output_key, utcnow
from core.errors import LeaseHeld
from core.ports import EventBus, MetadataStore, RenderRequest
from core.services.endings import TaskEndings
from core.services.synthesis import RenderResult
from core.services.tasks import TaskService
from core.services.worker import RenderWorker
from tests.nats_stream import delete_stream
from tests.servers import MongoServer, NatsServer

S = TaskStatus


@pytest.fixture(scope="module")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    with MongoServer(tmp_path_factory.mktemp("mongo")) as server:
        yield server


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


@dataclass
class SlowEngine:
    """The two calls the worker makes of `SynthesisService`, rendering `segments` steps;
    after `stall_after` of them it waits for `resume` (a pod stalled mid-render)."""

    blobs: FileBlobStore
    name: str
    segments: int = 4
    stall_after: int | None = None
    stalled: asyncio.Event = field(default_factory=asyncio.Event)
    resume: asyncio.Event = field(default_factory=asyncio.Event)
    rendered: int = 0
    wrote: bool = False

    def refuse_missing_model(self, version: Any) -> None:
        return None

    async def request_for_voice(self, version: Any, voice_id: str, text: str, **_: Any) -> str:
        return text

    async def render_to_file(
        self,
        version: Any,
        request: Any,
        fmt: Any,
        filename: str,
        *,
        on_progress: Any = None,
        before_store: Any = None,
    ) -> RenderResult:
        for index in range(1, self.segments + 1):
            await asyncio.sleep(0.01)
            self.rendered += 1
            if on_progress is not None:
                await on_progress(index / self.segments)
            if index == self.stall_after:
                self.stalled.set()
                await self.resume.wait()
        if before_store is not None:
            await before_store(float(len(self.name)))  # a stale claim stops here
        await self.blobs.put(output_key(filename), self.name.encode(), "audio/wav")
        self.wrote = True
        return RenderResult(filename, float(len(self.name)), 0.1, 22050, len(self.name))


@dataclass
class Pods:
    """Builds a worker per pod over the shared repository, bus and blob store."""

    make_store: Callable[[], MetadataStore]
    make_bus: Callable[[MetadataStore], EventBus]
    blobs: FileBlobStore
    outputs: Path
    endings: list[dict[str, Any]] = field(default_factory=list)
    opened: list[Any] = field(default_factory=list)

    async def open(self, part: Any) -> Any:
        await part.start()
        self.opened.append(part)
        return part

    async def worker(self, engine: SlowEngine, *, lease_seconds: float) -> RenderWorker:
        store = await self.open(self.make_store())
        bus = await self.open(self.make_bus(store))
        tasks = TaskService(
            store,
            bus,
            self.blobs,
            engine,  # type: ignore[arg-type]
            max_text_length=1000,
            allow_private_callbacks=True,
            worker_concurrency=1,
        )
        return RenderWorker(
            store,
            bus,
            self.blobs,
            engine,  # type: ignore[arg-type]
            tasks,
            concurrency=1,
            lease_seconds=lease_seconds,
            max_attempts=3,
            retry_pause=0,
        )

    async def listen(self) -> tuple[MetadataStore, EventBus]:
        """A repository client of our own, and a subscriber recording every ending."""
        store = await self.open(self.make_store())
        bus = await self.open(self.make_bus(store))

        async def record(payload: dict[str, Any]) -> None:
            self.endings.append(payload)

        await bus.subscribe_task_ended(record, name=f"test-{uuid.uuid4().hex[:8]}")
        return store, bus

    async def close(self) -> None:
        for part in reversed(self.opened):
            await part.close()


@pytest.fixture(params=["embedded", pytest.param("cluster", marks=pytest.mark.cluster)])
async def pods(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Pods]:
    outputs = tmp_path / "outputs"
    blobs = FileBlobStore({"voices": tmp_path / "voices", "outputs": outputs})
    await blobs.start()
    if request.param == "embedded":
        path = tmp_path / "cosyvoice.db"
        shared_bus: dict[str, MemoryEventBus] = {}  # one process: one in-memory bus

        def memory_bus(store: MetadataStore) -> EventBus:
            return shared_bus.setdefault("bus", MemoryEventBus(store))

        pods = Pods(lambda: SqliteMetadataStore(path), memory_bus, blobs, outputs)
    else:
        mongo: MongoServer = request.getfixturevalue("mongo_server")
        nats_server: NatsServer = request.getfixturevalue("nats_server")
        await delete_stream(nats_server.url)
        url = f"{mongo.url}/fenced_{uuid.uuid4().hex[:12]}"
        pods = Pods(
            lambda: MongoMetadataStore(url, timeout=2.0),
            lambda store: NatsEventBus(
                nats_server.url, store, max_deliver=3, ack_wait=5.0, timeout=2.0
            ),
            blobs,
            outputs,
        )
    try:
        yield pods
    finally:
        await pods.close()
        await blobs.close()


def new_task() -> Task:
    now = utcnow()
    return Task(
        task_id=str(uuid.uuid4()),
        kind=TaskKind.task,
        status=S.registered,
        text="Two workers, one task.",
        voice_id="voice",
        filename=f"v3_task_{uuid.uuid4().hex[:8]}.wav",
        created_at=now,
        queued_at=now,
        callback_url="https://example.com/hook",
    )


async def settle(check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def expire_lease(store: MetadataStore, task_id: str) -> None:
    """The stalled worker's lease runs out (a pod frozen past TASK_LEASE_SECONDS)."""
    await store.update_task(task_id, {"lease_until": utcnow() - timedelta(seconds=1)})


async def test_of_two_workers_racing_for_one_task_exactly_one_completes_it(
    pods: Pods,
) -> None:
    store, _bus = await pods.listen()
    task = new_task()
    await store.create_task(task)
    first = SlowEngine(pods.blobs, "first", stall_after=1)
    second = SlowEngine(pods.blobs, "second-worker")
    # Leases long enough that neither renews during the test: the expiry is forced.
    worker_a = await pods.worker(first, lease_seconds=60)
    worker_b = await pods.worker(second, lease_seconds=60)
    request = RenderRequest(task_id=task.task_id)

    rendering = asyncio.create_task(worker_a.handle(request))
    await asyncio.wait_for(first.stalled.wait(), 10)
    held = await store.get_task(task.task_id)
    assert held.status is S.processing and held.claim_id and held.attempts == 1

    # While the first worker's lease is alive, a redelivered event is sent back later.
    with pytest.raises(LeaseHeld) as refused:
        await worker_b.handle(request)
    assert 0 < refused.value.retry_after_seconds <= 60

    await expire_lease(store, task.task_id)
    await worker_b.handle(request)  # the redelivery now retakes it and renders it
    done = await store.get_task(task.task_id)
    assert done.status is S.completed and done.attempts == 2
    assert done.claim_id is None and done.lease_until is None
    assert done.completed_at is not None and done.duration == len("second-worker")

    first.resume.set()  # the stalled worker wakes up: its next write is refused
    await asyncio.wait_for(rendering, 10)
    assert first.rendered < first.segments and not first.wrote
    assert second.wrote and second.rendered == second.segments
    after = await store.get_task(task.task_id)
    assert after.model_dump() == done.model_dump()  # nothing of the first worker landed
    assert await pods.blobs.get(output_key(task.filename)) == b"second-worker"
    outputs = [p.name for p in pods.outputs.iterdir() if not p.name.startswith(".")]
    assert outputs == [task.filename]

    await settle(lambda: len(pods.endings) >= 1)
    await asyncio.sleep(0.5)  # a second announcement would have arrived by now
    assert [(e["task_id"], e["status"]) for e in pods.endings] == [(task.task_id, "completed")]


async def test_a_stale_worker_cannot_complete_fail_or_release_the_retaken_task(
    pods: Pods,
) -> None:
    store, bus = await pods.listen()
    task = new_task()
    await store.create_task(task)
    first = SlowEngine(pods.blobs, "first", segments=1, stall_after=1)
    worker_a = await pods.worker(first, lease_seconds=60)
    rendering = asyncio.create_task(worker_a.handle(RenderRequest(task_id=task.task_id)))
    await asyncio.wait_for(first.stalled.wait(), 10)
    stale = await store.get_task(task.task_id)

    # Another worker retakes the expired lease and is still rendering.
    await expire_lease(store, task.task_id)
    second = SlowEngine(pods.blobs, "second-worker", stall_after=1)
    worker_b = await pods.worker(second, lease_seconds=60)
    retaking = asyncio.create_task(worker_b.handle(RenderRequest(task_id=task.task_id)))
    await asyncio.wait_for(second.stalled.wait(), 10)
    retaken = await store.get_task(task.task_id)
    assert retaken.claim_id and retaken.claim_id != stale.claim_id

    # The first worker finishes its render: completing under its old claim is refused,
    # and so are its release and its failure.
    first.resume.set()
    await asyncio.wait_for(rendering, 10)
    endings = TaskEndings(store, bus)  # what every worker ends tasks through
    assert await endings.complete(stale, duration=1.0, synthesis_time=0.1) is None
    assert await endings.fail(task.task_id, "stale", claim_id=stale.claim_id) is None
    assert (await store.get_task(task.task_id)).model_dump() == retaken.model_dump()

    second.resume.set()
    await asyncio.wait_for(retaking, 10)
    done = await store.get_task(task.task_id)
    assert done.status is S.completed and done.duration == len("second-worker")
    await settle(lambda: len(pods.endings) >= 1)
    await asyncio.sleep(0.5)
    assert [(e["task_id"], e["status"]) for e in pods.endings] == [(task.task_id, "completed")]


async def test_recovery_in_many_replicas_requeues_a_dead_workers_task_once(
    pods: Pods,
) -> None:
    store, _bus = await pods.listen()
    task = new_task()
    await store.create_task(task)
    dead = SlowEngine(pods.blobs, "dead", stall_after=1)
    worker_a = await pods.worker(dead, lease_seconds=60)
    rendering = asyncio.create_task(worker_a.handle(RenderRequest(task_id=task.task_id)))
    await asyncio.wait_for(dead.stalled.wait(), 10)
    await expire_lease(store, task.task_id)

    replicas = [await pods.worker(SlowEngine(pods.blobs, "r"), lease_seconds=60) for _ in range(3)]
    recovered = await asyncio.gather(*(replica.recover_expired() for replica in replicas))
    assert sorted(len(ids) for ids in recovered) == [0, 0, 1]
    back = await store.get_task(task.task_id)
    assert back.status is S.registered and back.claim_id is None and back.lease_until is None

    # The stalled worker wakes up: its claim is gone, so its progress write is refused;
    # finding the task queued again, it takes it under a new claim like any worker.
    dead.resume.set()
    await asyncio.wait_for(rendering, 10)
    done = await store.get_task(task.task_id)
    assert done.status is S.completed and done.attempts == 2
    await settle(lambda: len(pods.endings) >= 1)
    await asyncio.sleep(0.5)
    assert [(e["task_id"], e["status"]) for e in pods.endings] == [(task.task_id, "completed")]

"""Scheduled renders per second through the cluster profile, against what its servers allow.

    python -m bench.cluster_throughput [--tasks 200] [--concurrency 4]

Starts the MongoDB-, S3- and NATS-speaking test servers (tests/servers.py) in a temporary
folder and measures, in one run:

- the platform: the render path of `cosyvoice-api serve` in this process, built from the
  same `core.wiring` pieces (MongoDB repository, S3 blob store, NATS JetStream bus, task
  service, render worker, webhook subscriber) with the no-op engine in place of a TTS
  engine. `ENGINE` cannot select the no-op engine, and HTTP is not part of rendering, so
  this is what "renders per second through the cluster profile" honestly means: every
  repository call, object put and bus message a scheduled render makes, and nothing
  else. `concurrency` producers register a task and queue it (register, then render, as
  API clients would) while the worker renders with WORKER_CONCURRENCY = `concurrency`;
  the clock runs from the first register to the last completion. Every task must end
  `completed` with its object stored, or the run fails.
- the ceiling: the operations one render needs, sent straight to each server with its
  client (PyMongo async, minio, nats-py) and no platform code in between: the
  repository writes (register insert, render pending → scheduled, claim CAS, one
  progress update, complete CAS: see core/services/tasks.py and worker.py), one object
  put of the size a render stores, one JetStream publish awaiting its ack. Each server
  is timed alone, at the better of one render at a time and `concurrency` at once (the
  stand-in repository does best serially), on a fresh database warmed like the
  platform's (the stand-in slows down as a collection grows). The platform talks to the
  three servers at once, so the slowest of them is the limit they impose: the ceiling.

The platform's own reads (the voice and the task, looked up around each step) and its
extra bus traffic (consuming the render request, announcing the end) are not in the
ceiling: they are part of what the ratio measures. Urgent renders are timed too: render
requests of each priority wait on their own consumer, and the gap between the two rows
is what reaching a lower priority costs. The stand-ins are much slower than MongoDB,
MinIO and NATS themselves (DESIGN.md), so only the ratio carries over.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import json
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.settings import Settings
    from core.wiring import Runtime

TEXT = "Task {n}."
TARGET = 0.70
WARMUP = 20
# normal first: the default priority, the one the ratio is taken for
PRIORITIES = ("normal", "urgent")


@dataclass(frozen=True)
class Servers:
    database_url: str
    blob_store_url: str
    s3_endpoint: str
    event_bus_url: str


def s3_credentials() -> dict[str, str]:
    """What the blob store adapter reads from the environment to reach the test S3 server."""
    from tests.servers import S3Server

    return {
        "AWS_ACCESS_KEY_ID": S3Server.access_key,
        "AWS_SECRET_ACCESS_KEY": S3Server.secret_key,
        "AWS_REGION": S3Server.region,
    }


@contextlib.contextmanager
def cluster_servers(root: Path) -> Iterator[Servers]:
    """The MongoDB-, S3- and NATS-speaking test servers in folders under `root`, with the
    S3 credentials in this process's environment (as in a pod; ones already set win)."""
    from tests.servers import MongoServer, NatsServer, S3Server

    for name, value in s3_credentials().items():
        os.environ.setdefault(name, value)
    with contextlib.ExitStack() as stack:
        mongo = stack.enter_context(MongoServer(root / "mongo"))
        s3 = stack.enter_context(S3Server(root / "s3"))
        nats_server = stack.enter_context(NatsServer(root / "nats"))
        yield Servers(
            database_url=f"{mongo.url}/bench",
            blob_store_url=f"{s3.url}/bench",
            s3_endpoint=f"127.0.0.1:{s3.port}",
            event_bus_url=nats_server.url,
        )


@dataclass(frozen=True)
class Measured:
    name: str
    renders: int
    seconds: float
    lanes: int  # renders in flight at once

    @property
    def rate(self) -> float:
        return self.renders / self.seconds


async def in_parallel(count: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Run `one(n)` for n in range(count), `concurrency` at once; the seconds it took."""
    numbers = iter(range(count))

    async def lane() -> None:
        for n in numbers:
            await one(n)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return time.perf_counter() - started


# --- the platform ------------------------------------------------------------------------


def build_noop_runtime(settings: Settings) -> Runtime:
    """`core.wiring.build_runtime` with the no-op engine serving every API version."""
    from core.adapters.embedded.inprocess_synthesis import InProcessSynthesis
    from core.domain import EngineSlot
    from core.engines.features import FeatureCache
    from core.engines.noop import NoopEngine
    from core.engines.runner import EngineRunner
    from core.ports import SynthesisClient
    from core.services.synthesis import SynthesisService
    from core.services.voices import VoiceService
    from core.wiring import (
        Runtime,
        build_blob_store,
        build_event_bus,
        build_metadata_store,
        build_task_parts,
    )

    store = build_metadata_store(settings)
    blobs = build_blob_store(settings)
    runtime: Runtime | None = None  # the bus needs its dead-letter callback first

    async def dead_letter(task_id: str, reason: str) -> None:
        assert runtime is not None
        await runtime.tasks.fail(task_id, reason)

    bus = build_event_bus(settings, store, on_dead_letter=dead_letter)
    engine = NoopEngine()
    runner = EngineRunner(
        engine,
        concurrency=settings.synthesis_concurrency,
        timeout=settings.synthesis_timeout,
        feature_cache=FeatureCache(engine, engine.info.model, blobs, 16),
    )
    client = InProcessSynthesis(runner, blobs)
    clients: dict[EngineSlot, SynthesisClient] = {EngineSlot.v3: client, EngineSlot.v2: client}
    synthesis = SynthesisService(
        store,
        blobs,
        clients,
        sample_rate=settings.sample_rate,
        segment_max_chars=settings.segment_max_chars,
    )
    tasks, worker, webhooks = build_task_parts(settings, store, bus, blobs, synthesis)
    runtime = Runtime(
        settings=settings,
        store=store,
        blobs=blobs,
        bus=bus,
        synthesis_clients=clients,
        engine_warnings={EngineSlot.v3: None, EngineSlot.v2: None},
        voices=VoiceService(store, blobs, max_audio_duration=settings.max_audio_duration),
        synthesis=synthesis,
        tasks=tasks,
        worker=worker,
        webhooks=webhooks,
    )
    return runtime


async def platform_renders(
    servers: Servers, clip: bytes, count: int, concurrency: int, warmup: int, priority: str
) -> tuple[Measured, int]:
    """Renders/s of the platform at one priority, and the size of one stored output.

    Each run has a database and a bucket of its own, so every run (and every ceiling
    below) starts from the same collection size: the stand-in slows down as it grows.
    """
    from core.domain import ApiVersion, Priority, TaskKind, TaskStatus, VoiceType, output_key
    from core.services.tasks import NewTask
    from core.services.voices import NewVoice
    from core.settings import Settings

    settings = Settings(
        database_url=f"{servers.database_url}_{priority}",
        blob_store_url=f"{servers.blob_store_url}-{priority}",
        event_bus_url=servers.event_bus_url,
        worker_concurrency=concurrency,
        synthesis_concurrency=concurrency,
        log_level="warning",
        webhook_secret="bench-signing-key",
    )
    runtime = build_noop_runtime(settings)
    await runtime.start()
    ended = asyncio.Queue[str]()

    async def on_ended(payload: dict[str, Any]) -> None:
        ended.put_nowait(str(payload["task_id"]))

    await runtime.bus.subscribe_task_ended(on_ended, name="bench")
    try:
        voice = await runtime.voices.create(
            NewVoice(voice_id="bench", name="Bench", voice_type=VoiceType.cross_lingual), clip
        )

        async def batch(size: int, offset: int) -> tuple[float, list[str]]:
            ids: list[str] = []

            async def one(n: int) -> None:
                spec = NewTask(
                    text=TEXT.format(n=offset + n),
                    voice_id=voice.voice_id,
                    priority=Priority(priority),
                )
                task = await runtime.tasks.register(ApiVersion.v3, spec)
                await runtime.tasks.render(task.task_id)
                ids.append(task.task_id)

            started = time.perf_counter()
            await in_parallel(size, concurrency, one)
            for _ in range(size):
                await asyncio.wait_for(ended.get(), 120)
            return time.perf_counter() - started, ids

        _, warm = await batch(warmup, 0)  # connections, the voice's features, JIT caches
        seconds, ids = await batch(count, warmup)

        counts = await runtime.store.count_tasks(TaskKind.scheduled)
        completed = counts["status"][TaskStatus.completed.value]
        assert completed == warmup + count, f"lost renders: {counts['status']}"
        sizes = [
            (await runtime.blobs.stat(output_key((await runtime.tasks.get(i)).filename))).size
            for i in [*ids, *warm]
        ]
        assert len(sizes) == warmup + count, "an output is missing"
        name = f"platform, {priority} priority"
        return Measured(name, count, seconds, concurrency), round(sum(sizes) / len(sizes))
    finally:
        await runtime.close()


# --- the ceiling ---------------------------------------------------------------------------


def task_document(n: int) -> dict[str, Any]:
    """A task as the repository stores it (same fields and size)."""
    from core.domain import ApiVersion, Task, TaskKind, TaskStatus, utcnow

    now = utcnow()
    task = Task(
        task_id=str(uuid.uuid4()),
        kind=TaskKind.scheduled,
        version=ApiVersion.v3,
        status=TaskStatus.pending,
        text=TEXT.format(n=n),
        voice_id="bench",
        filename=f"v3_task_{uuid.uuid4().hex[:8]}.wav",
        created_at=now,
    )
    document = json.loads(task.model_dump_json())
    document["created_at"] = now
    document["priority_rank"] = 2
    return document


class RawMongo:
    """The repository writes of one render, straight through PyMongo's async client, on a
    fresh database with the repository's own indexes (they cost time on every write)."""

    def __init__(self, url: str) -> None:
        from pymongo import AsyncMongoClient

        self.url = url
        self.client: Any = AsyncMongoClient(url, tz_aware=True)
        self.tasks = self.client.get_default_database().tasks

    async def start(self) -> None:
        from core.adapters.cluster.mongo_store import MongoMetadataStore

        repository = MongoMetadataStore(self.url, timeout=10)
        await repository.start()  # creates the collections' indexes, nothing else
        await repository.close()

    async def render_writes(self, n: int) -> None:
        from pymongo import ReturnDocument

        document = task_document(n)
        task_id = document["task_id"]
        await self.tasks.insert_one(document)
        steps = [
            ("pending", {"status": "scheduled", "queued_at": time.time()}),  # render
            ("scheduled", {"status": "processing", "attempts": 1}),  # claim CAS
            ("processing", {"progress": 0.99}),  # progress update
            ("processing", {"status": "completed", "progress": 1.0}),  # complete CAS
        ]
        for expected, changes in steps:
            after = await self.tasks.find_one_and_update(
                {"task_id": task_id, "status": {"$in": [expected]}},
                {"$set": changes},
                projection={"_id": False},
                return_document=ReturnDocument.AFTER,
            )
            assert after is not None, f"lost a write of {task_id}"

    async def close(self) -> None:
        await self.client.close()


class RawS3:
    """One object put of a render's size, through minio in a thread (as the adapter does)."""

    def __init__(self, endpoint: str, bucket: str, size: int) -> None:
        from minio import Minio

        from tests.servers import S3Server

        self.client = Minio(
            endpoint,
            access_key=S3Server.access_key,
            secret_key=S3Server.secret_key,
            region=S3Server.region,
            secure=False,
        )
        self.bucket = bucket
        self.data = os.urandom(size)

    async def start(self) -> None:
        if not await asyncio.to_thread(self.client.bucket_exists, self.bucket):
            await asyncio.to_thread(self.client.make_bucket, self.bucket)

    async def put(self, n: int) -> None:
        await asyncio.to_thread(
            self.client.put_object,
            self.bucket,
            f"ceiling/{n}.wav",
            io.BytesIO(self.data),
            len(self.data),
            content_type="audio/wav",
        )

    async def close(self) -> None:
        return None


class RawNats:
    """One JetStream publish of a render request, awaiting the stream's ack."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection: Any = None

    async def start(self) -> None:
        import nats

        from core.adapters.cluster.nats_bus import STREAM

        self.connection = await nats.connect(self.url)
        self.jetstream = self.connection.jetstream()
        await self.jetstream.stream_info(STREAM)  # created by the platform's run

    async def publish(self, n: int) -> None:
        from core.adapters.cluster.cloudevents_codec import RENDER_REQUESTED, encode_event

        event = encode_event(RENDER_REQUESTED, {"task_id": str(uuid.uuid4()), "priority": "low"})
        headers = {**event.headers, "Nats-Msg-Id": event.event_id}
        await self.jetstream.publish("cosyvoice.ceiling", event.body, headers=headers)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()


async def ceilings(
    servers: Servers, output_size: int, count: int, concurrency: int, warmup: int
) -> list[Measured]:
    """Renders/s each server allows alone for one render's operations on it."""
    s3 = RawS3(servers.s3_endpoint, "ceiling", output_size)
    bus = RawNats(servers.event_bus_url)
    await s3.start()
    await bus.start()
    databases = itertools.count()

    async def best(
        name: str, make: Callable[[RawMongo], Callable[[int], Awaitable[None]]]
    ) -> Measured:
        runs = []
        for lanes in sorted({1, concurrency}):
            mongo = RawMongo(f"{servers.database_url}_ceiling_{next(databases)}")
            await mongo.start()
            try:
                one = make(mongo)
                await in_parallel(warmup, lanes, one)  # the platform's warm-up, mirrored
                runs.append(Measured(name, count, await in_parallel(count, lanes, one), lanes))
            finally:
                await mongo.close()
        return max(runs, key=lambda run: run.rate)

    try:
        return [
            await best("repository: insert + 4 CAS writes", lambda mongo: mongo.render_writes),
            await best(f"object store: 1 put of {output_size / 1024:.1f} KiB", lambda _: s3.put),
            await best("event bus: 1 publish + ack", lambda _: bus.publish),
        ]
    finally:
        await bus.close()


# --- the run -------------------------------------------------------------------------------


async def measure(
    servers: Servers, clip: bytes, count: int, concurrency: int
) -> tuple[list[Measured], list[Measured]]:
    platform: list[Measured] = []
    sizes: list[int] = []
    for priority in PRIORITIES:
        run, size = await platform_renders(servers, clip, count, concurrency, WARMUP, priority)
        platform.append(run)
        sizes.append(size)
    return platform, await ceilings(servers, max(sizes), count, concurrency, WARMUP)


def report(platform: list[Measured], limits: list[Measured], concurrency: int) -> float:
    """Print the table; return the default priority's rate as a share of the ceiling."""
    ceiling = min(limits, key=lambda row: row.rate)
    print(f"\nscheduled renders through the cluster profile, no-op engine, {ceiling.renders}")
    print(f"renders, {concurrency} at once (test servers: secantus, moto, nats-server)")
    print(f"{'path':<44}{'at once':>8}{'renders/s':>11}{'ms/render':>11}{'of ceiling':>12}")
    for row in [*platform, *limits]:
        print(
            f"{row.name:<44}{row.lanes:>8}{row.rate:>11.1f}{1e3 / row.rate:>11.1f}"
            f"{row.rate / ceiling.rate:>12.0%}"
        )
    ratio = platform[0].rate / ceiling.rate
    verdict = "meets" if ratio >= TARGET else "misses"
    print(
        f"\nceiling = the slowest server alone ({ceiling.name.split(':')[0]}): "
        f"{ceiling.rate:.1f} renders/s"
    )
    print(f"{platform[0].name} / ceiling = {ratio:.0%}: {verdict} the target of {TARGET:.0%}")
    return ratio


def main() -> None:
    from tests.speech import ENGLISH, write_clips

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    clip = (write_clips() / ENGLISH.filename).read_bytes()
    with tempfile.TemporaryDirectory() as tmp, cluster_servers(Path(tmp)) as servers:
        platform, limits = asyncio.run(measure(servers, clip, args.tasks, args.concurrency))
    report(platform, limits, args.concurrency)


if __name__ == "__main__":
    main()

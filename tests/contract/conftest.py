"""Each port's adapters, embedded and cluster, behind one fixture per port.

A test that asks for `metadata_store`, `blob_store` or `make_bus` runs once per
profile (ids `embedded` and `cluster`); the cluster run talks to real servers started
once per session (tests/servers.py), with a fresh database, bucket or stream per test
so tests do not see each other's data.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from core.adapters.cluster.mongo_store import MongoMetadataStore
from core.adapters.cluster.nats_bus import NatsEventBus
from core.adapters.cluster.s3_blobs import S3BlobStore
from core.adapters.embedded.file_blobs import FileBlobStore
from core.adapters.embedded.memory_bus import MemoryEventBus
from core.adapters.embedded.sqlite_store import SqliteMetadataStore
from core.domain import (
    AudioFormat,
    Priority,
    Task,
    TaskKind,
    TaskStatus,
    Voice,
    VoiceType,
    sample_key,
)
from core.ports import BlobStore, EventBus, MetadataStore
from tests.nats_stream import delete_stream
from tests.servers import MongoServer, NatsServer, S3Server

BACKEND_TIMEOUT = 2.0
EPOCH = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)

PROFILES = [
    pytest.param("embedded", id="embedded"),
    pytest.param("cluster", id="cluster", marks=pytest.mark.cluster),
]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until `check()` holds; fail with the timeout otherwise."""
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.02)


# --- records --------------------------------------------------------------------------


def make_voice(voice_id: str, *, minute: int = 0, **fields: Any) -> Voice:
    # whole milliseconds: MongoDB keeps dates to the millisecond
    created = EPOCH + timedelta(minutes=minute)
    values: dict[str, Any] = {
        "voice_id": voice_id,
        "name": f"Voice {voice_id}",
        "description": "a test voice",
        "voice_type": VoiceType.cross_lingual,
        "language": "zh",
        "prompt_text": None,
        "audio_format": AudioFormat.wav,
        "file_size": 245_760,
        "duration": 5.2,
        "sample_rate": 22050,
        "created_at": created,
        "updated_at": created,
        "sample_key": sample_key(voice_id, AudioFormat.wav),
        "sample_sha256": "ab" * 32,
    }
    return Voice(**(values | fields))


def make_task(
    task_id: str | None = None,
    *,
    minute: int = 0,
    status: TaskStatus = TaskStatus.registered,
    priority: Priority = Priority.normal,
    kind: TaskKind = TaskKind.task,
    **fields: Any,
) -> Task:
    created = EPOCH + timedelta(minutes=minute)
    task_id = task_id or str(uuid.uuid4())
    values: dict[str, Any] = {
        "task_id": task_id,
        "kind": kind,
        "status": status,
        "priority": priority,
        "text": "你好，世界。Hello world.",
        "voice_id": "voice_1",
        "filename": f"v3_task_{uuid.uuid4().hex[:8]}.wav",
        "created_at": created,
        "queued_at": created if status in (TaskStatus.registered, TaskStatus.scheduled) else None,
        "metadata": {"customer": "acme", "tags": ["a", "b"]},
        "callback_url": "https://example.com/hook",
    }
    return Task(**(values | fields))


# --- servers (one of each per session) -------------------------------------------------


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    with MongoServer(tmp_path_factory.mktemp("secantus")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# --- metadata store ---------------------------------------------------------------------


@pytest.fixture
def make_metadata_store(
    profile: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[], MetadataStore]:
    """Builds (unstarted) stores over the same data: a second one sees the first's rows."""
    if profile == "embedded":
        path = tmp_path / "cosyvoice.db"
        return lambda: SqliteMetadataStore(path)
    server: MongoServer = request.getfixturevalue("mongo_server")
    url = f"{server.url}/{unique('contract').replace('-', '_')}"
    return lambda: MongoMetadataStore(url, timeout=BACKEND_TIMEOUT)


@pytest.fixture
async def metadata_store(
    make_metadata_store: Callable[[], MetadataStore],
) -> AsyncIterator[MetadataStore]:
    store = make_metadata_store()
    await store.start()
    try:
        yield store
    finally:
        await store.close()


# --- blob store -------------------------------------------------------------------------


@pytest.fixture
def blob_roots(tmp_path: Path) -> dict[str, Path]:
    return {"voices": tmp_path / "voice_cache", "outputs": tmp_path / "outputs"}


@pytest.fixture
async def blob_store(
    profile: str, request: pytest.FixtureRequest, blob_roots: dict[str, Path]
) -> AsyncIterator[BlobStore]:
    store: BlobStore
    if profile == "embedded":
        store = FileBlobStore(blob_roots)
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        store = S3BlobStore(
            f"{server.url}/{unique('contract')}",
            access_key=server.access_key,
            secret_key=server.secret_key,
            region=server.region,
            timeout=BACKEND_TIMEOUT,
        )
    await store.start()
    try:
        yield store
    finally:
        await store.close()


# --- event bus --------------------------------------------------------------------------


class DeadLetters:
    """Records `on_dead_letter(task_id, reason)` calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, task_id: str, reason: str) -> None:
        self.calls.append((task_id, reason))


BusFactory = Callable[..., Awaitable[EventBus]]


@pytest.fixture
async def make_bus(
    profile: str, request: pytest.FixtureRequest, metadata_store: MetadataStore
) -> AsyncIterator[BusFactory]:
    """Starts buses over the test's store; `max_deliver` and `on_dead_letter` optional.

    The cluster ones share one stream, emptied before the test.
    """
    nats_url = ""
    if profile == "cluster":
        server: NatsServer = request.getfixturevalue("nats_server")
        nats_url = server.url
        await delete_stream(nats_url)
    started: list[EventBus] = []

    async def factory(
        *, max_deliver: int = 5, on_dead_letter: DeadLetters | None = None
    ) -> EventBus:
        bus: EventBus
        if profile == "embedded":
            bus = MemoryEventBus(
                metadata_store,
                retry_delay=0.05,
                max_deliver=max_deliver,
                on_dead_letter=on_dead_letter,
            )
        else:
            bus = NatsEventBus(
                nats_url,
                metadata_store,
                max_deliver=max_deliver,
                ack_wait=2.0,
                on_dead_letter=on_dead_letter,
                retry_delay=0.05,
                poll_interval=0.05,
                timeout=BACKEND_TIMEOUT,
            )
        await bus.start()
        started.append(bus)
        return bus

    try:
        yield factory
    finally:
        for bus in started:
            await bus.close()

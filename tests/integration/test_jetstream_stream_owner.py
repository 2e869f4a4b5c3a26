"""One owner of the JetStream stream: with JETSTREAM_MANAGE_STREAM=false the platform
uses a stream someone else configured (a NACK Stream object) and never changes it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from core.adapters.embedded.sqlite_store import SqliteMetadataStore
from core.errors import BackendUnavailable
from core.settings import load_settings
from core.wiring import build_event_bus
from tests.servers import NatsServer


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


async def _stream_config(url: str, name: str) -> StreamConfig:
    """The stream's configuration; the stream is then removed (streams may not share
    subjects, and each test brings its own)."""
    client = await nats.connect(url)
    try:
        config = (await client.jetstream().stream_info(name)).config
        await client.jetstream().delete_stream(name)
        return config
    finally:
        await client.close()


async def test_an_owned_stream_is_left_as_its_owner_configured_it(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    owner = await nats.connect(nats_server.url)
    await owner.jetstream().add_stream(
        StreamConfig(
            name="OWNED",
            subjects=["cosyvoice.>"],
            storage=StorageType.MEMORY,
            retention=RetentionPolicy.LIMITS,
            max_age=3600.0,
            duplicate_window=30.0,
        )
    )
    await owner.close()
    settings = load_settings(
        event_bus_url=nats_server.url, jetstream_stream="OWNED", jetstream_manage_stream=False
    )
    store = SqliteMetadataStore(tmp_path / "tasks.db")
    bus = build_event_bus(settings, store)

    await bus.start()
    await bus.publish_task_ended("completed", {"task_id": "t1", "status": "completed"})
    await bus.close()

    config = await _stream_config(nats_server.url, "OWNED")
    assert config.storage == StorageType.MEMORY
    assert config.max_age == 3600.0
    assert config.duplicate_window == 30.0


async def test_a_missing_owned_stream_is_reported(nats_server: NatsServer, tmp_path: Path) -> None:
    settings = load_settings(
        event_bus_url=nats_server.url, jetstream_stream="ABSENT", jetstream_manage_stream=False
    )
    bus = build_event_bus(settings, SqliteMetadataStore(tmp_path / "tasks.db"))

    with pytest.raises(BackendUnavailable, match="stream ABSENT does not exist"):
        await bus.start()


async def test_a_managed_stream_gets_the_configured_name(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    settings = load_settings(event_bus_url=nats_server.url, jetstream_stream="RENAMED")
    bus = build_event_bus(settings, SqliteMetadataStore(tmp_path / "tasks.db"))

    await bus.start()
    await bus.close()

    config = await _stream_config(nats_server.url, "RENAMED")
    assert config.subjects == ["cosyvoice.>"]
    assert config.storage == StorageType.FILE

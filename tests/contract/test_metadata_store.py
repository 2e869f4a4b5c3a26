"""The repository contract: SQLite and MongoDB answer every question the same way."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from core.adapters.cluster.mongo_store import MongoMetadataStore
from core.adapters.embedded import sqlite_store
from core.adapters.embedded.sqlite_store import SqliteMetadataStore
from core.domain import (
    Priority,
    TaskKind,
    TaskStatus,
    VoiceType,
    WebhookState,
)
from core.errors import (
    BackendUnavailable,
    InvalidInput,
    TaskNotFound,
    VoiceAlreadyExists,
    VoiceNotFound,
)
from core.ports import MetadataStore
from tests.contract.conftest import BACKEND_TIMEOUT, EPOCH, make_task, make_voice, unique
from tests.servers import MongoServer

# --- voices -------------------------------------------------------------------------------


async def test_voice_round_trip_keeps_every_field(metadata_store: MetadataStore) -> None:
    voice = make_voice("my_voice_01", prompt_text="希望你以后能够做的比我还好呦。")
    await metadata_store.create_voice(voice)

    stored = await metadata_store.get_voice("my_voice_01")

    assert stored == voice
    assert stored.created_at.tzinfo is not None
    assert stored.created_at.utcoffset() == timedelta(0)


async def test_duplicate_voice_id_is_refused(metadata_store: MetadataStore) -> None:
    await metadata_store.create_voice(make_voice("dup"))

    with pytest.raises(VoiceAlreadyExists):
        await metadata_store.create_voice(make_voice("dup", name="Another"))
    assert (await metadata_store.get_voice("dup")).name == "Voice dup"


async def test_update_and_delete_voice(metadata_store: MetadataStore) -> None:
    await metadata_store.create_voice(make_voice("v1"))
    later = EPOCH + timedelta(hours=1)

    updated = await metadata_store.update_voice(
        "v1",
        {
            "name": "Renamed",
            "is_active": False,
            "voice_type": VoiceType.zero_shot,
            "prompt_text": "transcript",
            "updated_at": later,
        },
    )

    assert (updated.name, updated.is_active, updated.voice_type) == (
        "Renamed",
        False,
        VoiceType.zero_shot,
    )
    assert updated.updated_at == later
    assert await metadata_store.get_voice("v1") == updated

    await metadata_store.delete_voice("v1")
    with pytest.raises(VoiceNotFound):
        await metadata_store.get_voice("v1")
    with pytest.raises(VoiceNotFound):
        await metadata_store.delete_voice("v1")
    with pytest.raises(VoiceNotFound):
        await metadata_store.update_voice("v1", {"name": "x"})


async def test_update_refuses_unknown_fields(metadata_store: MetadataStore) -> None:
    await metadata_store.create_voice(make_voice("v1"))
    with pytest.raises(InvalidInput):
        await metadata_store.update_voice("v1", {"name; DROP TABLE voices": "x"})


async def test_list_voices_filters_pages_and_counts(metadata_store: MetadataStore) -> None:
    voices = [
        make_voice("a", minute=0, voice_type=VoiceType.zero_shot, language="zh"),
        make_voice("b", minute=1, voice_type=VoiceType.cross_lingual, language="en"),
        make_voice("c", minute=2, voice_type=VoiceType.zero_shot, language="en"),
        make_voice("d", minute=3, voice_type=VoiceType.instruct, language="zh"),
        make_voice("e", minute=4, voice_type=VoiceType.zero_shot, language="ja"),
    ]
    for voice in reversed(voices):  # insertion order must not matter
        await metadata_store.create_voice(voice)

    page, total = await metadata_store.list_voices(offset=1, limit=2)
    assert ([v.voice_id for v in page], total) == (["b", "c"], 5)

    zero_shot, total = await metadata_store.list_voices(voice_type="zero_shot")
    assert ([v.voice_id for v in zero_shot], total) == (["a", "c", "e"], 3)

    english_zero_shot, total = await metadata_store.list_voices(
        voice_type="zero_shot", language="en"
    )
    assert ([v.voice_id for v in english_zero_shot], total) == (["c"], 1)

    beyond, total = await metadata_store.list_voices(offset=10, limit=5)
    assert (beyond, total) == ([], 5)


async def test_voice_stats_sum_every_voice(metadata_store: MetadataStore) -> None:
    empty = await metadata_store.voice_stats()
    assert (empty.total_voices, empty.active_voices, empty.total_size) == (0, 0, 0)

    await metadata_store.create_voice(make_voice("a", duration=2.5, file_size=100))
    await metadata_store.create_voice(
        make_voice("b", duration=4.0, file_size=300, language="en", is_active=False)
    )
    await metadata_store.create_voice(
        make_voice("c", duration=1.5, file_size=50, voice_type=VoiceType.zero_shot)
    )

    stats = await metadata_store.voice_stats()

    assert stats.total_voices == 3
    assert stats.active_voices == 2
    assert stats.voice_types == {"cross_lingual": 2, "zero_shot": 1}
    assert stats.languages == {"zh": 2, "en": 1}
    assert stats.total_duration == pytest.approx(8.0)
    assert stats.total_size == 450


async def test_data_survives_closing_the_store(
    make_metadata_store: Callable[[], MetadataStore],
) -> None:
    first = make_metadata_store()
    await first.start()
    task = make_task()
    await first.create_voice(make_voice("kept"))
    await first.create_task(task)
    await first.close()

    second = make_metadata_store()
    await second.start()
    try:
        assert (await second.get_voice("kept")).voice_id == "kept"
        assert await second.get_task(task.task_id) == task
    finally:
        await second.close()


# --- tasks --------------------------------------------------------------------------------


async def test_task_round_trip_and_idempotent_create(metadata_store: MetadataStore) -> None:
    task = make_task(instruct_text="Speak slowly", speed=1.25)

    assert await metadata_store.create_task(task) is True
    assert await metadata_store.create_task(task.model_copy(update={"text": "other"})) is False

    stored = await metadata_store.get_task(task.task_id)
    assert stored == task
    assert stored.metadata == {"customer": "acme", "tags": ["a", "b"]}
    with pytest.raises(TaskNotFound):
        await metadata_store.get_task("missing")


async def test_transition_is_compare_and_set(metadata_store: MetadataStore) -> None:
    task = make_task(status=TaskStatus.pending, kind=TaskKind.scheduled)
    await metadata_store.create_task(task)
    queued_at = EPOCH + timedelta(minutes=5)

    moved = await metadata_store.transition(
        task.task_id, [TaskStatus.pending], {"status": TaskStatus.scheduled, "queued_at": queued_at}
    )
    assert moved is not None
    assert (moved.status, moved.queued_at) == (TaskStatus.scheduled, queued_at)

    # the state moved on: the same transition no longer applies, and changes nothing
    again = await metadata_store.transition(
        task.task_id, [TaskStatus.pending], {"status": TaskStatus.cancelled}
    )
    assert again is None
    assert (await metadata_store.get_task(task.task_id)).status is TaskStatus.scheduled
    assert await metadata_store.transition("missing", [TaskStatus.pending], {}) is None


async def test_only_one_of_two_concurrent_claims_wins(metadata_store: MetadataStore) -> None:
    task = make_task(status=TaskStatus.registered)
    await metadata_store.create_task(task)

    async def claim(worker: str) -> object:
        return await metadata_store.transition(
            task.task_id,
            [TaskStatus.registered, TaskStatus.scheduled],
            {"status": TaskStatus.processing, "error_message": worker, "attempts": 1},
        )

    results = await asyncio.gather(claim("a"), claim("b"), claim("c"))

    winners = [result for result in results if result is not None]
    assert len(winners) == 1
    stored = await metadata_store.get_task(task.task_id)
    assert stored.status is TaskStatus.processing
    assert stored.error_message == winners[0].error_message  # type: ignore[attr-defined]


async def test_update_task_changes_progress_and_webhook_state(
    metadata_store: MetadataStore,
) -> None:
    task = make_task()
    await metadata_store.create_task(task)
    delivered = EPOCH + timedelta(minutes=9)

    updated = await metadata_store.update_task(
        task.task_id,
        {
            "progress": 0.5,
            "priority": Priority.urgent,
            "webhook": WebhookState(status="delivered", attempts=2, delivered_at=delivered),
        },
    )

    assert updated.progress == 0.5
    assert updated.priority is Priority.urgent
    assert updated.webhook == WebhookState(status="delivered", attempts=2, delivered_at=delivered)
    assert await metadata_store.get_task(task.task_id) == updated
    with pytest.raises(TaskNotFound):
        await metadata_store.update_task("missing", {"progress": 1.0})


async def test_delete_task(metadata_store: MetadataStore) -> None:
    task = make_task()
    await metadata_store.create_task(task)
    await metadata_store.delete_task(task.task_id)
    with pytest.raises(TaskNotFound):
        await metadata_store.get_task(task.task_id)


async def test_pending_tasks_come_by_priority_then_age(metadata_store: MetadataStore) -> None:
    pending: dict[str, Any] = dict(status=TaskStatus.pending, kind=TaskKind.scheduled)
    tasks = [
        make_task("low-old", minute=0, priority=Priority.low, **pending),
        make_task("normal-new", minute=5, priority=Priority.normal, **pending),
        make_task("urgent", minute=9, priority=Priority.urgent, **pending),
        make_task("normal-old", minute=1, priority=Priority.normal, **pending),
        make_task("high", minute=7, priority=Priority.high, **pending),
        make_task("scheduled-already", minute=0, priority=Priority.urgent, kind=TaskKind.scheduled),
        make_task("other-kind", minute=0, priority=Priority.urgent, status=TaskStatus.pending),
    ]
    for task in tasks:
        await metadata_store.create_task(task)

    ordered = await metadata_store.pending_in_order(TaskKind.scheduled, limit=10)
    assert [t.task_id for t in ordered] == ["urgent", "high", "normal-old", "normal-new", "low-old"]

    first_two = await metadata_store.pending_in_order(TaskKind.scheduled, limit=2)
    assert [t.task_id for t in first_two] == ["urgent", "high"]


async def test_queued_tasks_are_in_queue_order(metadata_store: MetadataStore) -> None:
    tasks = [
        make_task("low", minute=0, priority=Priority.low, status=TaskStatus.registered),
        make_task("normal-later", minute=1, priority=Priority.normal),
        make_task("normal-sooner", minute=2, priority=Priority.normal),
        make_task("urgent", minute=3, priority=Priority.urgent, status=TaskStatus.scheduled),
        make_task("pending", minute=0, status=TaskStatus.pending),
        make_task("processing", minute=0, status=TaskStatus.processing),
        make_task("done", minute=0, status=TaskStatus.completed),
    ]
    # "normal-sooner" was queued before "normal-later" although created after it
    tasks[2] = tasks[2].model_copy(update={"queued_at": EPOCH})
    for task in tasks:
        await metadata_store.create_task(task)

    queued = await metadata_store.queued_tasks()

    assert [t.task_id for t in queued] == ["urgent", "normal-sooner", "normal-later", "low"]


async def test_expired_leases_are_found(metadata_store: MetadataStore) -> None:
    now = EPOCH + timedelta(hours=1)
    processing = TaskStatus.processing
    await metadata_store.create_task(
        make_task("expired", status=processing, lease_until=now - timedelta(seconds=1))
    )
    await metadata_store.create_task(
        make_task("alive", status=processing, lease_until=now + timedelta(seconds=30))
    )
    await metadata_store.create_task(
        make_task("finished", status=TaskStatus.completed, lease_until=now - timedelta(hours=1))
    )

    expired = await metadata_store.expired_leases(now)

    assert [t.task_id for t in expired] == ["expired"]


async def test_list_count_and_average(metadata_store: MetadataStore) -> None:
    scheduled = TaskKind.scheduled
    done = TaskStatus.completed
    tasks = [
        make_task("t1", minute=1, kind=scheduled, status=done, synthesis_time=1.0),
        make_task("t2", minute=2, kind=scheduled, status=done, synthesis_time=3.0),
        make_task(
            "t3", minute=3, kind=scheduled, status=TaskStatus.pending, priority=Priority.high
        ),
        make_task("t4", minute=4, kind=scheduled, status=TaskStatus.failed),
        make_task("b1", minute=5, kind=TaskKind.task, status=done, synthesis_time=10.0),
    ]
    for task in tasks:
        await metadata_store.create_task(task)

    newest, total = await metadata_store.list_tasks(kind=scheduled, limit=2)
    assert ([t.task_id for t in newest], total) == (["t4", "t3"], 4)
    completed, total = await metadata_store.list_tasks(kind=scheduled, status=done)
    assert ([t.task_id for t in completed], total) == (["t2", "t1"], 2)
    high, total = await metadata_store.list_tasks(priority=Priority.high)
    assert ([t.task_id for t in high], total) == (["t3"], 1)
    everything, total = await metadata_store.list_tasks()
    assert total == 5 and everything[0].task_id == "b1"

    counts = await metadata_store.count_tasks(scheduled)
    assert counts["status"]["completed"] == 2
    assert counts["status"]["pending"] == 1
    assert counts["status"]["failed"] == 1
    assert counts["status"]["processing"] == 0
    assert counts["priority"] == {"urgent": 0, "high": 1, "normal": 3, "low": 0}
    assert sum((await metadata_store.count_tasks())["status"].values()) == 5

    assert await metadata_store.average_synthesis_time(scheduled) == pytest.approx(2.0)
    assert await metadata_store.average_synthesis_time() == pytest.approx(14.0 / 3)
    assert await metadata_store.average_synthesis_time(TaskKind.task) == pytest.approx(10.0)


async def test_average_without_completed_tasks_is_none(metadata_store: MetadataStore) -> None:
    assert await metadata_store.average_synthesis_time() is None
    counts = await metadata_store.count_tasks()
    assert set(counts) == {"status", "priority"}
    assert sum(counts["status"].values()) == 0


# --- outages (cluster only) -----------------------------------------------------------------


@pytest.mark.cluster
async def test_database_outage_fails_fast_and_recovers(mongo_server: MongoServer) -> None:
    store = MongoMetadataStore(
        f"{mongo_server.url}/{unique('outage').replace('-', '_')}", timeout=BACKEND_TIMEOUT
    )
    await store.start()
    try:
        await store.create_voice(make_voice("before"))
        mongo_server.stop()
        try:
            for call in (lambda: store.get_voice("before"), lambda: store.create_task(make_task())):
                started = time.monotonic()
                with pytest.raises(BackendUnavailable, match="database unavailable"):
                    await call()
                assert time.monotonic() - started < BACKEND_TIMEOUT + 3
        finally:
            mongo_server.start()

        deadline = time.monotonic() + 20
        while True:
            try:
                await store.ping()
                break
            except BackendUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        assert (await store.get_voice("before")).voice_id == "before"
    finally:
        await store.close()


# --- the SQLite file's own guarantees ------------------------------------------------------


async def test_sqlite_schema_migrates_forward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cosyvoice.db"
    store = SqliteMetadataStore(path)
    await store.start()
    await store.create_voice(make_voice("old"))
    await store.close()

    later_step = ("ALTER TABLE voices ADD COLUMN accent TEXT",)
    steps = len(sqlite_store.MIGRATIONS) + 1
    monkeypatch.setattr(sqlite_store, "MIGRATIONS", (*sqlite_store.MIGRATIONS, later_step))
    upgraded = SqliteMetadataStore(path)
    await upgraded.start()
    try:
        assert (await upgraded.get_voice("old")).voice_id == "old"
    finally:
        await upgraded.close()

    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == steps
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        columns = {row[1] for row in conn.execute("PRAGMA table_info(voices)")}
    assert "accent" in columns

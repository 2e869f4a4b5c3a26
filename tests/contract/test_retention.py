"""The retention contract: what both profiles' stores do for the retention sweep.

`delete_finished_tasks_before` and `list_blobs` behave alike in SQLite/files and
MongoDB/S3, and the sweep over them deletes exactly what the two rules say.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from core.domain import FINAL_STATUSES, Task, TaskStatus, output_key
from core.ports import BlobStore, MetadataStore
from core.services.retention import RetentionSweeper, is_synchronous_output
from tests.contract.conftest import EPOCH, make_task

HOUR = timedelta(hours=1)


def ended(status: TaskStatus, hours: int, **fields: Any) -> Task:
    at = EPOCH + hours * HOUR
    return make_task(status=status, minute=hours * 60, completed_at=at, **fields)


async def test_only_finished_tasks_before_the_cutoff_are_deleted(
    metadata_store: MetadataStore,
) -> None:
    old = [ended(status, hours) for hours, status in enumerate(sorted(FINAL_STATUSES), start=1)]
    recent = ended(TaskStatus.completed, 10)
    unfinished = [
        make_task(status=status, minute=1)
        for status in (TaskStatus.registered, TaskStatus.pending, TaskStatus.processing)
    ]
    for task in [*old, recent, *unfinished]:
        assert await metadata_store.create_task(task)

    cutoff = EPOCH + 5 * HOUR
    deleted = await metadata_store.delete_finished_tasks_before(cutoff, limit=100)

    assert sorted(t.task_id for t in deleted) == sorted(t.task_id for t in old)
    assert all(t.filename for t in deleted)  # the caller removes their audio by it
    remaining, total = await metadata_store.list_tasks(limit=100)
    assert total == 1 + len(unfinished)
    assert {t.task_id for t in remaining} == {recent.task_id, *(t.task_id for t in unfinished)}
    assert await metadata_store.delete_finished_tasks_before(cutoff, limit=100) == []


async def test_deleting_finished_tasks_takes_the_oldest_first_within_the_limit(
    metadata_store: MetadataStore,
) -> None:
    tasks = [ended(TaskStatus.completed, hours) for hours in (3, 1, 2)]
    for task in tasks:
        assert await metadata_store.create_task(task)

    first = await metadata_store.delete_finished_tasks_before(EPOCH + 9 * HOUR, limit=2)
    rest = await metadata_store.delete_finished_tasks_before(EPOCH + 9 * HOUR, limit=2)

    assert [t.completed_at for t in first] == [EPOCH + HOUR, EPOCH + 2 * HOUR]
    assert [t.completed_at for t in rest] == [EPOCH + 3 * HOUR]


async def test_listing_gives_every_key_under_a_prefix_with_its_time(
    blob_store: BlobStore,
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    keys = [f"outputs/v3_cache_{n:08x}.wav" for n in range(3)]
    for key in keys:
        await blob_store.put(key, b"RIFF" + bytes(100), "audio/wav")
    await blob_store.put("voices/v1/sample.wav", b"RIFF", "audio/wav")
    after = datetime.now(UTC) + timedelta(seconds=5)

    listed = [blob async for blob in blob_store.list_blobs("outputs/")]

    assert sorted(blob.key for blob in listed) == keys
    for blob in listed:
        assert blob.size == 104
        assert before <= blob.modified <= after
    assert [blob async for blob in blob_store.list_blobs("outputs/nothing-here/")] == []


async def test_the_sweep_deletes_what_the_rules_say(
    metadata_store: MetadataStore, blob_store: BlobStore
) -> None:
    synchronous = output_key("v3_cache_0123abcd.wav")
    old_task = ended(TaskStatus.completed, 1)
    running = make_task(status=TaskStatus.processing)
    for task in (old_task, running):
        assert await metadata_store.create_task(task)
        await blob_store.put(output_key(task.filename), b"RIFF", "audio/wav")
    await blob_store.put(synchronous, b"RIFF", "audio/wav")
    sweeper = RetentionSweeper(
        metadata_store, blob_store, output_ttl=3600, task_retention=3600, interval=60
    )

    now_swept = await sweeper.sweep()  # everything is younger than an hour of real time
    assert (now_swept.outputs, now_swept.tasks) == (0, 1)  # the task ended in 2024
    assert await blob_store.get(synchronous) == b"RIFF"
    later = await sweeper.sweep(now=datetime.now(UTC) + 2 * HOUR)

    assert (later.outputs, later.tasks) == (1, 0)
    remaining = sorted([blob.key async for blob in blob_store.list_blobs("outputs/")])
    assert remaining == [output_key(running.filename)]
    assert (await metadata_store.get_task(running.task_id)).status is TaskStatus.processing


def test_only_synchronous_outputs_fall_under_output_ttl() -> None:
    assert is_synchronous_output("outputs/v3_cache_0123abcd.wav")
    assert is_synchronous_output("outputs/v1_cross_lingual_0123abcd.mp3")
    assert is_synchronous_output("outputs/v3_instruct_0123abcd.flac")
    assert not is_synchronous_output("outputs/v3_task_0123abcd.wav")
    assert not is_synchronous_output("outputs/notes.txt")
    assert not is_synchronous_output("voices/v1/sample.wav")

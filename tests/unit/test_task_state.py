"""The task state machine: allowed transitions, races between callers, and the worker's
claim / cancel / release / recovery paths (with a scripted synthesis service)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from core.adapters.embedded.file_blobs import FileBlobStore
from core.adapters.embedded.memory_bus import MemoryEventBus
from core.adapters.embedded.sqlite_store import SqliteMetadataStore
from core.domain import (
    FINAL_STATUSES,
    ApiVersion,
    AudioFormat,
    Priority,
    Task,
    TaskKind,
    TaskStatus,
    WebhookState,
    output_key,
    utcnow,
)
from core.errors import (
    BackendUnavailable,
    InvalidInput,
    InvalidTransition,
    SynthesisFailed,
    TaskNotFound,
    VoiceNotFound,
)
from core.ports import RenderRequest
from core.services.endings import TaskEndings
from core.services.synthesis import RenderResult
from core.services.tasks import (
    TRANSITIONS,
    NewTask,
    TaskService,
    can_transition,
    ending_changes,
    estimate_speech_seconds,
    queued_status,
    sources_of,
    wait_seconds,
)
from core.services.worker import RenderWorker, WorkerStopping

S = TaskStatus


# --- the table -----------------------------------------------------------------------------


def test_final_statuses_are_final() -> None:
    for status in FINAL_STATUSES:
        assert TRANSITIONS[status] == frozenset()
    assert set(TRANSITIONS) == set(TaskStatus)


def test_allowed_paths() -> None:
    assert can_transition(S.pending, S.scheduled)
    assert can_transition(S.scheduled, S.processing)
    assert can_transition(S.registered, S.processing)
    assert can_transition(S.processing, S.completed)
    assert can_transition(S.processing, S.scheduled)  # released
    for unfinished in (S.pending, S.registered, S.scheduled, S.processing):
        assert can_transition(unfinished, S.cancelled)
    assert not can_transition(S.pending, S.processing)  # must be rendered first
    assert not can_transition(S.completed, S.processing)
    assert not can_transition(S.cancelled, S.scheduled)
    assert sources_of(S.processing) == {S.registered, S.scheduled}
    assert sources_of(S.completed) == {S.processing}
    assert queued_status(TaskKind.task) is S.registered
    assert queued_status(TaskKind.scheduled) is S.scheduled


def test_ending_marks_the_webhook_due_only_with_a_callback() -> None:
    plain = make_task("a", S.processing)
    with_hook = plain.model_copy(update={"callback_url": "https://example.com/h"})
    assert "webhook" not in ending_changes(plain, S.completed)
    changes = ending_changes(with_hook, S.failed, error_message="boom")
    assert changes["webhook"].status == "pending"
    assert changes["status"] is S.failed and changes["lease_until"] is None
    assert changes["error_message"] == "boom"


def test_estimates() -> None:
    assert wait_seconds(0, 0, 2, 3.0) == 0.0
    assert wait_seconds(0, 1, 2, 3.0) == 0.0  # a slot is free
    assert wait_seconds(0, 2, 2, 3.0) == 3.0
    assert wait_seconds(3, 2, 2, 3.0) == 6.0
    english = estimate_speech_seconds("one two three four five six seven eight nine ten")
    assert 2.0 < english < 6.0
    assert estimate_speech_seconds("你好世界你好世界你好") > 1.0
    assert estimate_speech_seconds("one two three", speed=2.0) < estimate_speech_seconds(
        "one two three"
    )


# --- a service and a worker over the real embedded adapters ----------------------------------


@dataclass
class ScriptedSynthesis:
    """Stands in for SynthesisService: `segments` steps of `step` seconds each."""

    blobs: FileBlobStore
    segments: int = 3
    step: float = 0.01
    error: Exception | None = None
    renders: int = 0
    progressed: asyncio.Event = field(default_factory=asyncio.Event)

    def refuse_missing_model(self, version: ApiVersion) -> None:
        return None  # every version is served here

    async def request_for_voice(self, version: ApiVersion, voice_id: str, text: str, **_: Any):
        if voice_id == "missing":
            raise VoiceNotFound(voice_id)
        if _.get("instruct_text") and version is not ApiVersion.v3:
            raise InvalidInput("instruct_text is only available on /api/v3")
        return text

    async def render_to_file(
        self, version, request, fmt, filename, *, on_progress=None, before_store=None
    ) -> RenderResult:
        self.renders += 1
        for index in range(1, self.segments + 1):
            await asyncio.sleep(self.step)
            if self.error is not None:
                raise self.error
            if on_progress is not None:
                await on_progress(index / self.segments)
            self.progressed.set()
        if before_store is not None:
            await before_store(1.0)
        await self.blobs.put(output_key(filename), b"RIFF....", "audio/wav")
        return RenderResult(filename, 1.0, self.step * self.segments, 22050, 8)


@dataclass
class Rig:
    store: SqliteMetadataStore
    blobs: FileBlobStore
    bus: MemoryEventBus
    synthesis: ScriptedSynthesis
    tasks: TaskService
    outputs: Path

    def worker(self, **options: Any) -> RenderWorker:
        settings = {"concurrency": 2, "lease_seconds": 5.0, "max_attempts": 3} | options
        return RenderWorker(
            self.store,
            self.bus,
            self.blobs,
            self.synthesis,  # type: ignore[arg-type]  # a stand-in for SynthesisService
            self.tasks,
            **settings,
        )


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = SqliteMetadataStore(tmp_path / "db.sqlite")
    blobs = FileBlobStore({"voices": tmp_path / "voices", "outputs": tmp_path / "outputs"})
    bus = MemoryEventBus(store)
    for part in (store, blobs, bus):
        await part.start()
    synthesis = ScriptedSynthesis(blobs)
    tasks = TaskService(
        store,
        bus,
        blobs,
        synthesis,  # type: ignore[arg-type]
        max_text_length=200,
        allow_private_callbacks=True,
        worker_concurrency=2,
    )
    yield Rig(store, blobs, bus, synthesis, tasks, tmp_path / "outputs")
    await bus.close()
    await blobs.close()
    await store.close()


def make_task(task_id: str, status: TaskStatus, **fields: Any) -> Task:
    kind = TaskKind.task if status is S.registered else TaskKind.scheduled
    return Task(
        task_id=task_id,
        kind=fields.pop("kind", kind),
        status=status,
        text="Hello there.",
        voice_id="voice",
        filename=f"v3_task_{abs(hash(task_id)) % 16**8:08x}.wav",
        created_at=utcnow(),
        queued_at=utcnow(),
        **fields,
    )


def output_files(rig: Rig) -> list[str]:
    if not rig.outputs.exists():
        return []
    return sorted(p.name for p in rig.outputs.iterdir() if not p.name.startswith("."))


async def test_create_validates_before_storing(rig: Rig) -> None:
    with pytest.raises(InvalidInput, match="empty"):
        await rig.tasks.create(ApiVersion.v3, NewTask(text="   ", voice_id="voice"))
    with pytest.raises(InvalidInput, match="MAX_TASK_TEXT_LENGTH"):
        await rig.tasks.create(ApiVersion.v3, NewTask(text="x" * 201, voice_id="voice"))
    with pytest.raises(VoiceNotFound):
        await rig.tasks.register(ApiVersion.v3, NewTask(text="Hi.", voice_id="missing"))
    with pytest.raises(InvalidInput, match="v3"):
        await rig.tasks.create(
            ApiVersion.v2, NewTask(text="Hi.", voice_id="voice", instruct_text="Whisper")
        )
    with pytest.raises(InvalidInput, match="http"):
        await rig.tasks.create(
            ApiVersion.v3, NewTask(text="Hi.", voice_id="voice", callback_url="ftp://x/y")
        )
    assert (await rig.store.list_tasks())[1] == 0


async def test_register_then_render_once(rig: Rig) -> None:
    task = await rig.tasks.register(
        ApiVersion.v3, NewTask(text="  Hello.  ", voice_id="voice", format=AudioFormat.mp3)
    )
    assert task.status is S.pending and task.text == "Hello."
    assert task.filename.startswith("v3_task_") and task.filename.endswith(".mp3")
    results = await asyncio.gather(
        rig.tasks.render(task.task_id), rig.tasks.render(task.task_id), return_exceptions=True
    )
    assert sum(isinstance(r, Task) for r in results) == 1
    assert sum(isinstance(r, InvalidTransition) for r in results) == 1
    assert (await rig.store.get_task(task.task_id)).status is S.scheduled


async def test_cancel_then_delete(rig: Rig) -> None:
    task = await rig.tasks.register(ApiVersion.v3, NewTask(text="Hi.", voice_id="voice"))
    action, cancelled = await rig.tasks.cancel_or_delete(task.task_id)
    assert action == "cancelled" and cancelled.status is S.cancelled
    assert cancelled.completed_at is not None
    with pytest.raises(InvalidTransition):
        await rig.tasks.render(task.task_id)
    action, _ = await rig.tasks.cancel_or_delete(task.task_id)
    assert action == "deleted"
    with pytest.raises(TaskNotFound):
        await rig.tasks.get(task.task_id)


async def test_render_all_takes_the_highest_priority_first(rig: Rig) -> None:
    ids: dict[str, Priority] = {}
    for priority in (Priority.low, Priority.low, Priority.normal, Priority.urgent, Priority.high):
        task = await rig.tasks.register(
            ApiVersion.v3, NewTask(text="Hi.", voice_id="voice", priority=priority)
        )
        ids[task.task_id] = priority
    outcome = await rig.tasks.render_all(3)
    assert [ids[i] for i in outcome.started] == [Priority.urgent, Priority.high, Priority.normal]
    assert outcome.remaining == 2


async def test_queue_estimate_follows_the_queue(rig: Rig) -> None:
    for n in range(3):
        await rig.store.create_task(make_task(f"q{n}", S.registered, priority=Priority.normal))
    urgent = await rig.tasks.register(
        ApiVersion.v3, NewTask(text="Hi.", voice_id="voice", priority=Priority.urgent)
    )
    low = await rig.tasks.register(
        ApiVersion.v3, NewTask(text="Hi.", voice_id="voice", priority=Priority.low)
    )
    assert (await rig.tasks.queue_estimate(urgent)).position == 1
    estimate = await rig.tasks.queue_estimate(low)
    assert estimate.position == 4
    assert estimate.wait_seconds > 0
    assert await rig.tasks.pending_position(urgent) == 1
    assert await rig.tasks.pending_position(low) == 2


async def test_a_request_delivered_twice_renders_once(rig: Rig) -> None:
    await rig.store.create_task(make_task("t1", S.registered))
    worker = rig.worker()
    await asyncio.gather(worker.handle(RenderRequest("t1")), worker.handle(RenderRequest("t1")))
    done = await rig.store.get_task("t1")
    assert done.status is S.completed and done.progress == 1.0 and done.attempts == 1
    assert rig.synthesis.renders == 1
    assert output_files(rig) == [done.filename]


async def test_cancel_during_render_discards_the_output(rig: Rig) -> None:
    rig.synthesis.segments, rig.synthesis.step = 20, 0.02
    await rig.store.create_task(make_task("t2", S.scheduled))
    worker = rig.worker()
    rendering = asyncio.create_task(worker.handle(RenderRequest("t2")))
    await rig.synthesis.progressed.wait()
    action, _ = await rig.tasks.cancel_or_delete("t2")
    assert action == "cancelled"
    await rendering
    final = await rig.store.get_task("t2")
    assert final.status is S.cancelled
    assert final.progress < 1.0
    assert output_files(rig) == []


async def test_engine_error_is_retried_then_fails_the_task(rig: Rig) -> None:
    rig.synthesis.error = SynthesisFailed("the engine produced no audio")
    await rig.store.create_task(make_task("t3", S.registered))
    worker = rig.worker(max_attempts=2, retry_pause=0)
    with pytest.raises(SynthesisFailed):  # back to the bus: deliver it again
        await worker.handle(RenderRequest("t3"))
    retried = await rig.store.get_task("t3")
    assert retried.status is S.registered and retried.attempts == 1
    with pytest.raises(SynthesisFailed):  # last attempt: failed, and the bus dead-letters it
        await worker.handle(RenderRequest("t3"))
    failed = await rig.store.get_task("t3")
    assert failed.status is S.failed
    assert failed.error_message == "the engine produced no audio"
    assert failed.completed_at is not None
    await worker.handle(RenderRequest("t3"))  # a late redelivery finds nothing to do


async def test_stop_releases_unfinished_renders(rig: Rig) -> None:
    rig.synthesis.segments, rig.synthesis.step = 100, 0.05
    await rig.store.create_task(make_task("t4", S.scheduled))
    worker = rig.worker(drain_seconds=0.1)
    rendering = asyncio.create_task(worker.handle(RenderRequest("t4")))
    await rig.synthesis.progressed.wait()
    await worker.stop()
    with pytest.raises(asyncio.CancelledError):
        await rendering
    released = await rig.store.get_task("t4")
    assert released.status is S.scheduled
    assert released.lease_until is None and released.attempts == 0
    with pytest.raises(WorkerStopping):
        await worker.handle(RenderRequest("t4"))


async def test_expired_lease_goes_back_to_the_queue(rig: Rig) -> None:
    past = utcnow() - timedelta(seconds=10)
    await rig.store.create_task(
        make_task("t5", S.processing, kind=TaskKind.task, lease_until=past, attempts=1)
    )
    await rig.store.create_task(
        make_task("t6", S.processing, lease_until=utcnow() + timedelta(minutes=5), attempts=1)
    )
    worker = rig.worker()
    assert await worker.recover_expired() == ["t5"]
    back = await rig.store.get_task("t5")
    assert back.status is S.registered and back.lease_until is None
    assert (await rig.store.get_task("t6")).status is S.processing
    await worker.handle(RenderRequest("t5"))
    assert (await rig.store.get_task("t5")).attempts == 2


async def test_a_task_that_keeps_crashing_its_worker_ends_failed(rig: Rig) -> None:
    await rig.store.create_task(make_task("t7", S.scheduled, attempts=3))
    await rig.worker(max_attempts=3).handle(RenderRequest("t7"))
    failed = await rig.store.get_task("t7")
    assert failed.status is S.failed and "3 times" in (failed.error_message or "")
    assert rig.synthesis.renders == 0


async def test_submission_is_idempotent(rig: Rig) -> None:
    spec = {"text": "From the bus.", "voice_id": "voice", "priority": "high"}
    first = await rig.tasks.submit("evt-1", spec)
    again = await rig.tasks.submit("evt-1", spec)
    assert first is not None and again is not None
    assert first.task_id == again.task_id
    assert first.priority is Priority.high and first.status is S.scheduled
    assert first.kind is TaskKind.scheduled
    refused = await rig.tasks.submit("evt-2", {"text": "Hi.", "voice_id": "missing"})
    assert refused is not None and refused.status is S.failed
    assert "not found" in (refused.error_message or "")
    assert await rig.tasks.submit("evt-3", {"nonsense": True}) is None


class FlakyBus:
    """A bus that is unavailable for its first `outage` announcements."""

    def __init__(self, outage: int) -> None:
        self.outage = outage
        self.announced: list[tuple[str, str]] = []

    async def publish_task_ended(self, status: str, payload: dict[str, Any]) -> None:
        if self.outage:
            self.outage -= 1
            raise BackendUnavailable("event bus unavailable: restarting")
        self.announced.append((payload["task_id"], status))


async def test_an_ending_announced_while_the_bus_restarts_is_announced_once_it_is_back(
    rig: Rig,
) -> None:
    await rig.store.create_task(
        make_task("t8", S.processing, claim_id="c", callback_url="https://example.com/hook")
    )
    bus = FlakyBus(outage=3)
    endings = TaskEndings(rig.store, bus, retry_delays=(0.01,) * 5)  # type: ignore[arg-type]
    ended = await endings.complete(await rig.store.get_task("t8"), filename="x.wav")
    assert ended is not None and bus.announced == []  # the caller is not held up
    await endings.settle()
    assert bus.announced == [("t8", "completed")]
    assert (await rig.store.get_task("t8")).webhook.status == "pending"


async def test_an_ending_the_bus_never_takes_leaves_the_webhook_to_the_resend(rig: Rig) -> None:
    await rig.store.create_task(
        make_task("t9", S.processing, claim_id="c", callback_url="https://example.com/hook")
    )
    bus = FlakyBus(outage=100)
    endings = TaskEndings(rig.store, bus, retry_delays=(0.01,) * 3)  # type: ignore[arg-type]
    assert await endings.complete(await rig.store.get_task("t9")) is not None
    await endings.settle()
    assert bus.announced == [] and bus.outage == 100 - 4
    assert (await rig.store.get_task("t9")).webhook.status == "pending"


async def test_a_render_delivered_again_after_its_ending_announces_an_unsent_callback(
    rig: Rig,
) -> None:
    """The worker that completed t10 died before announcing it: the render request comes
    back, and the callback nobody has tried yet is announced. One already tried, or an
    ending too old for the bus to drop a repeat of, is left alone."""
    heard: list[str] = []

    async def listen(payload: dict[str, Any]) -> None:
        heard.append(payload["task_id"])

    await rig.bus.subscribe_task_ended(listen)
    hook = "https://example.com/hook"
    pending = WebhookState(status="pending")
    await rig.store.create_task(
        make_task("t10", S.completed, callback_url=hook, completed_at=utcnow(), webhook=pending)
    )
    tried = WebhookState(status="pending", attempts=1, last_error="HTTP 503")
    await rig.store.create_task(
        make_task("t11", S.completed, callback_url=hook, completed_at=utcnow(), webhook=tried)
    )
    long_ago = utcnow() - timedelta(minutes=10)
    await rig.store.create_task(
        make_task("t12", S.failed, callback_url=hook, completed_at=long_ago, webhook=pending)
    )
    worker = rig.worker()
    for task_id in ("t10", "t11", "t12"):
        await worker.handle(RenderRequest(task_id))
    await asyncio.sleep(0.05)
    assert heard == ["t10"]
    assert rig.synthesis.renders == 0

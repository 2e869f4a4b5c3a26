"""Background and scheduled rendering: the task life cycle, seen from the API.

    pending ──render──▶ scheduled ──┐
                                    ├─claim─▶ processing ──▶ completed | failed
    (create) ─────────▶ registered ─┘             │
                                                  └─release (shutdown, lease expired)─▶ queued again
    any unfinished ──cancel──▶ cancelled

Every ending (completed, failed, cancelled) goes through `TaskEndings` (endings.py):
one compare-and-set that records it the same way wherever it happens, and one
announcement by whoever won it.

Every change is a compare-and-set on the status in the repository (`MetadataStore.
transition`), so two racing calls (render twice, cancel during a render) cannot both
win: the loser sees the state the winner left and answers 409, or the worker notices it
lost its task and throws its output away. `TRANSITIONS` is the whole state machine;
nothing changes a status except through it.

Queue positions and wait estimates come from the live queue (`queued_tasks`, processing
counts) and the measured average synthesis time of completed tasks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any, Literal

from pydantic import ValidationError

from ..domain import (
    QUEUED_STATUSES,
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
from ..engines.text import check_renderable
from ..errors import CosyVoiceError, InvalidInput, InvalidTransition, NotFound, TaskNotFound
from ..ports import BlobStore, EventBus, MetadataStore, RenderRequest
from ..schemas.tasks import RenderSubmission
from .endings import TaskEndings
from .endings import ending_changes as ending_changes  # re-exported: part of this API
from .netguard import CallbackRejected, check_callback_url
from .synthesis import SynthesisService, checked_text, output_filename

log = logging.getLogger(__name__)

# --- the state machine -------------------------------------------------------------------

S = TaskStatus
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.pending: frozenset({S.scheduled, S.cancelled}),
    S.registered: frozenset({S.processing, S.failed, S.cancelled}),
    S.scheduled: frozenset({S.processing, S.failed, S.cancelled}),
    # back to registered/scheduled: released at shutdown or retaken after its lease ran out
    S.processing: frozenset({S.completed, S.failed, S.cancelled, S.registered, S.scheduled}),
    S.completed: frozenset(),
    S.failed: frozenset(),
    S.cancelled: frozenset(),
}
# The statuses a task of each kind can be in (API.md): what its counts list, so they add
# up to its total with only documented keys. A scheduled task is never `registered`.
STATUSES_OF_KIND: dict[TaskKind, tuple[TaskStatus, ...]] = {
    TaskKind.task: (S.registered, S.processing, S.completed, S.failed, S.cancelled),
    TaskKind.scheduled: (S.pending, S.scheduled, S.processing, S.completed, S.failed, S.cancelled),
}

SUBMISSION_NAMESPACE = uuid.UUID("6f1c0c52-4d0e-5b8e-9a57-3c1d2f0e8b11")
METADATA_MAX_BYTES = 16 * 1024
# Seconds per render assumed before any task has completed (nothing measured yet).
UNMEASURED_RENDER_SECONDS = 2.0


def counts_of_kind(kind: TaskKind, counts: dict[str, int]) -> dict[str, int]:
    """Counts by status over the statuses of `kind`, zeros included.

    A count under any other status would be a bug elsewhere; it is kept rather than
    hidden, so the counts still add up to the total.
    """
    listed = {status.value: counts.get(status.value, 0) for status in STATUSES_OF_KIND[kind]}
    return listed | {status: n for status, n in counts.items() if n and status not in listed}


def can_transition(source: TaskStatus, target: TaskStatus) -> bool:
    return target in TRANSITIONS[source]


def sources_of(target: TaskStatus) -> frozenset[TaskStatus]:
    """The statuses a task may be in for a change to `target` to be allowed."""
    return frozenset(source for source, targets in TRANSITIONS.items() if target in targets)


def queued_status(kind: TaskKind) -> TaskStatus:
    """Where a task of this kind waits for a worker (and returns to when released)."""
    return TaskStatus.registered if kind is TaskKind.task else TaskStatus.scheduled


def back_in_queue(task: Task) -> dict[str, Any]:
    """The changes that take a `processing` task back to its queue, unclaimed and
    unleased, as if no render had started."""
    return {
        "status": queued_status(task.kind),
        "claim_id": None,
        "lease_until": None,
        "progress": 0.0,
        "started_at": None,
    }


async def renew_lease(store: MetadataStore, task: Task, *, lease: timedelta, every: float) -> None:
    """Extend the task's lease every `every` seconds while it stays `processing` under
    its claim; return once it does not (ended, requeued or retaken). A renewal the
    repository refuses is logged and tried again at the next turn."""
    while True:
        await asyncio.sleep(every)
        try:
            mine = await store.transition(
                task.task_id,
                [TaskStatus.processing],
                {"lease_until": utcnow() + lease},
                claim_id=task.claim_id,
            )
        except CosyVoiceError as exc:
            log.warning("could not renew the lease of task %s: %s", task.task_id, exc.detail)
            continue
        if mine is None:
            return


# --- estimates ---------------------------------------------------------------------------

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_WORD = re.compile(r"[^\W\d_]+|\d+", re.UNICODE)
CJK_CHARS_PER_SECOND = 4.5
WORDS_PER_SECOND = 2.6


def estimate_speech_seconds(text: str, speed: float = 1.0) -> float:
    """Rough length of `text` spoken at `speed`: characters for CJK, words otherwise."""
    cjk = len(_CJK.findall(text))
    words = len(_WORD.findall(_CJK.sub(" ", text)))
    seconds = cjk / CJK_CHARS_PER_SECOND + words / WORDS_PER_SECOND
    return round(seconds / max(speed, 0.1), 1)


def wait_seconds(ahead: int, processing: int, slots: int, average: float) -> float:
    """When the job behind `ahead` queued and `processing` running ones starts."""
    slots = max(slots, 1)
    before = ahead + processing
    if before < slots:
        return 0.0
    rounds = (before - slots) // slots + 1
    return round(rounds * average, 2)


# --- the service -------------------------------------------------------------------------


@dataclass(frozen=True)
class NewTask:
    text: str
    voice_id: str
    format: AudioFormat = AudioFormat.wav
    speed: float = 1.0
    instruct_text: str | None = None
    callback_url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    priority: Priority = Priority.normal

    @classmethod
    def of(cls, body: object) -> NewTask:
        """The spec carried by any task-creating request body (its fields of the same name)."""
        names = [f.name for f in fields(cls)]
        return cls(**{name: getattr(body, name) for name in names if hasattr(body, name)})


@dataclass(frozen=True)
class QueueEstimate:
    position: int  # 1-based
    wait_seconds: float


@dataclass(frozen=True)
class RenderAllOutcome:
    started: list[str]
    remaining: int


@dataclass(frozen=True)
class QueueSnapshot:
    status_counts: dict[str, int]
    priority_counts: dict[str, int]
    average_synthesis_time: float | None
    queued: int
    processing: int

    @property
    def total(self) -> int:
        return sum(self.status_counts.values())


RemovalAction = Literal["cancelled", "deleted"]


class TaskService:
    def __init__(
        self,
        store: MetadataStore,
        bus: EventBus,
        blobs: BlobStore,
        synthesis: SynthesisService,
        *,
        max_text_length: int,
        allow_private_callbacks: bool,
        worker_concurrency: int,
        endings: TaskEndings | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self.endings = endings or TaskEndings(store, bus)
        self._blobs = blobs
        self._synthesis = synthesis
        self._max_text_length = max_text_length
        self._allow_private = allow_private_callbacks
        self.worker_concurrency = worker_concurrency

    # --- creating ----------------------------------------------------------------------

    async def create(
        self, version: ApiVersion, spec: NewTask, *, task_id: str | None = None
    ) -> Task:
        """A background task, queued at once (status `registered`)."""
        return await self._create_queued(version, spec, TaskKind.task, task_id)

    async def schedule(
        self, version: ApiVersion, spec: NewTask, *, task_id: str | None = None
    ) -> Task:
        """A scheduled task queued at once (status `scheduled`): what producers submit."""
        return await self._create_queued(version, spec, TaskKind.scheduled, task_id)

    async def register(self, version: ApiVersion, spec: NewTask) -> Task:
        """A scheduled task, waiting for `render` (status `pending`)."""
        task = await self._new_task(version, spec, TaskKind.scheduled, None, queued=False)
        await self._store.create_task(task)
        return task

    async def _create_queued(
        self, version: ApiVersion, spec: NewTask, kind: TaskKind, task_id: str | None
    ) -> Task:
        task = await self._new_task(version, spec, kind, task_id, queued=True)
        if not await self._store.create_task(task):
            return await self._store.get_task(task.task_id)  # same id submitted again
        await self._publish(task, undo=None)
        return task

    async def _new_task(
        self,
        version: ApiVersion,
        spec: NewTask,
        kind: TaskKind,
        task_id: str | None,
        *,
        queued: bool,
    ) -> Task:
        self._synthesis.refuse_missing_model(version)
        text = self.checked_text(spec.text)
        check_renderable(text)  # the render's own check: refused now, not at render time
        _check_metadata(spec.metadata)
        # Refuses an unknown voice (404) and instruct_text outside v3 (400) now, not later.
        await self._synthesis.request_for_voice(
            version, spec.voice_id, text, speed=spec.speed, instruct_text=spec.instruct_text
        )
        if spec.callback_url:
            await check_callback_url(spec.callback_url, allow_private=self._allow_private)
        now = utcnow()
        return Task(
            task_id=task_id or str(uuid.uuid4()),
            kind=kind,
            version=version,
            status=queued_status(kind) if queued else TaskStatus.pending,
            priority=spec.priority,
            text=text,
            voice_id=spec.voice_id,
            format=spec.format,
            speed=spec.speed,
            instruct_text=spec.instruct_text or None,
            callback_url=spec.callback_url or None,
            metadata=spec.metadata,
            filename=output_filename(version, "task", spec.format),
            created_at=now,
            queued_at=now if queued else None,
        )

    def checked_text(self, text: str) -> str:
        return checked_text(text, self._max_text_length, "MAX_TASK_TEXT_LENGTH")

    # --- scheduling --------------------------------------------------------------------

    async def render(self, task_id: str) -> Task:
        """pending → scheduled, and onto the queue. 409 when it is not pending."""
        task = await self._store.transition(
            task_id, [TaskStatus.pending], {"status": TaskStatus.scheduled, "queued_at": utcnow()}
        )
        if task is None:
            current = await self._store.get_task(task_id)
            raise InvalidTransition(
                f"Task {task_id} is {current.status.value}; only pending tasks can be rendered"
            )
        await self._publish(task, undo=TaskStatus.pending)
        return task

    async def render_all(self, max_tasks: int) -> RenderAllOutcome:
        """Queue up to `max_tasks` pending tasks, highest priority first, oldest first."""
        started: list[str] = []
        for task in await self._store.pending_in_order(TaskKind.scheduled, max_tasks):
            try:
                await self.render(task.task_id)
            except (InvalidTransition, TaskNotFound):
                continue  # cancelled or rendered by a concurrent call meanwhile
            started.append(task.task_id)
        counts = await self._store.count_tasks(TaskKind.scheduled)
        return RenderAllOutcome(started=started, remaining=counts["status"].get("pending", 0))

    async def _publish(self, task: Task, *, undo: TaskStatus | None) -> None:
        """Put a queued task on the bus; if the bus refuses, do not leave it half-queued."""
        try:
            await self._bus.publish_render(
                RenderRequest(task_id=task.task_id, priority=task.priority)
            )
        except Exception as exc:
            if undo is not None:
                await self._store.transition(
                    task.task_id, [task.status], {"status": undo, "queued_at": None}
                )
            else:
                await self.endings.fail(
                    task.task_id, f"could not be queued: {exc}", expected=[task.status]
                )
            raise

    # --- ending ------------------------------------------------------------------------

    async def cancel_or_delete(self, task_id: str) -> tuple[RemovalAction, Task]:
        """Cancel an unfinished task; delete a finished one (and its audio)."""
        for _ in range(5):  # the status may change under us; each round re-reads it
            task = await self._store.get_task(task_id)
            if task.status.is_final:
                await self._store.delete_task(task_id)
                await self._discard_output(task)
                return "deleted", task
            cancelled = await self.endings.cancel(task)
            if cancelled is not None:
                await self._discard_output(cancelled)
                return "cancelled", cancelled
        raise InvalidTransition(f"Task {task_id} keeps changing state; try again")

    async def delete(self, task_id: str) -> Task:
        """Remove a task whatever its state: cancel it first if it is still running."""
        action, task = await self.cancel_or_delete(task_id)
        if action == "cancelled":
            try:
                await self._store.delete_task(task_id)
            except TaskNotFound:
                pass
            await self._discard_output(task)
        return task

    async def fail(self, task_id: str, reason: str) -> Task | None:
        """Mark a queued or processing task failed (a render that exhausted its
        deliveries); None when it is absent, pending or already ended."""
        return await self.endings.fail(task_id, reason)

    async def announce(self, task: Task) -> None:
        """Tell the bus a task ended (see `TaskEndings.announce`)."""
        await self.endings.announce(task)

    async def _discard_output(self, task: Task) -> None:
        try:
            await self._blobs.delete(output_key(task.filename))
        except NotFound:
            pass

    # --- reading -----------------------------------------------------------------------

    async def get(self, task_id: str) -> Task:
        return await self._store.get_task(task_id)

    async def list(
        self,
        *,
        kind: TaskKind,
        status: TaskStatus | None = None,
        priority: Priority | None = None,
        limit: int = 50,
    ) -> tuple[list[Task], int]:
        return await self._store.list_tasks(
            kind=kind, status=status, priority=priority, limit=limit
        )

    async def status_counts(self, kind: TaskKind) -> dict[str, int]:
        return counts_of_kind(kind, (await self._store.count_tasks(kind))["status"])

    async def snapshot(self, kind: TaskKind) -> QueueSnapshot:
        counts = await self._store.count_tasks(kind)
        everything = (await self._store.count_tasks())["status"]
        average = await self._store.average_synthesis_time(kind)
        return QueueSnapshot(
            status_counts=counts_of_kind(kind, counts["status"]),
            priority_counts=dict(counts["priority"]),
            average_synthesis_time=None if average is None else round(average, 3),
            queued=sum(everything.get(status.value, 0) for status in QUEUED_STATUSES),
            processing=everything.get(TaskStatus.processing.value, 0),
        )

    async def queue_estimate(self, task: Task) -> QueueEstimate:
        """Where `task` stands in the render queue, and when a worker should start it.

        A queued task counts the tasks before it in queue order; a pending one counts
        those it would queue behind if rendered now (same or higher priority). A task a
        worker already holds (or that has ended) is at position 0 with nothing to wait.
        """
        queued = await self._store.queued_tasks()
        ids = [t.task_id for t in queued]
        if task.task_id in ids:
            ahead = ids.index(task.task_id)
        elif task.status is TaskStatus.pending:
            ahead = sum(1 for t in queued if t.priority.rank <= task.priority.rank)
        else:
            return QueueEstimate(position=0, wait_seconds=0.0)
        counts = (await self._store.count_tasks())["status"]
        processing = counts.get(TaskStatus.processing.value, 0)
        average = await self._store.average_synthesis_time()
        wait = wait_seconds(
            ahead,
            processing,
            self.worker_concurrency,
            UNMEASURED_RENDER_SECONDS if average is None else average,
        )
        return QueueEstimate(position=ahead + 1, wait_seconds=wait)

    async def pending_position(self, task: Task) -> int:
        """1-based place of a pending task in render-all order."""
        pending = (await self._store.count_tasks(TaskKind.scheduled))["status"].get("pending", 0)
        order = await self._store.pending_in_order(TaskKind.scheduled, pending + 1)
        ids = [t.task_id for t in order]
        return ids.index(task.task_id) + 1 if task.task_id in ids else len(ids) + 1

    async def estimated_completion(self, task: Task) -> float:
        """Seconds until the audio should be ready: wait in the queue plus one render."""
        estimate = await self.queue_estimate(task)
        average = await self._store.average_synthesis_time()
        render = UNMEASURED_RENDER_SECONDS if average is None else average
        return round(estimate.wait_seconds + render, 2)

    # --- events from producers ---------------------------------------------------------

    async def submit(self, event_id: str, data: dict[str, Any]) -> Task | None:
        """Create and queue a task from a `render.submit` event, idempotently.

        The task id comes from the event (or from its id, so a redelivered event maps to
        the same task). A spec that cannot be rendered (unknown voice, text too long,
        refused callback) becomes a failed task that listings show, rather than an event
        retried forever; a payload that is not a spec at all is logged and dropped.
        """
        try:
            spec = RenderSubmission.model_validate(data)
        except ValidationError as exc:
            log.warning("dropping render.submit event %s: %s", event_id, exc.errors()[:3])
            return None
        task_id = spec.task_id or str(uuid.uuid5(SUBMISSION_NAMESPACE, event_id))
        try:
            existing = await self._store.get_task(task_id)
        except TaskNotFound:
            pass
        else:
            if existing.status in QUEUED_STATUSES:  # created, but its render was not queued
                await self._bus.publish_render(
                    RenderRequest(task_id=existing.task_id, priority=existing.priority)
                )
            return existing
        new = NewTask.of(spec)
        try:
            return await self.schedule(spec.version, new, task_id=task_id)
        except (InvalidInput, NotFound) as exc:
            return await self._record_refused(spec.version, new, task_id, exc)

    async def _record_refused(
        self, version: ApiVersion, spec: NewTask, task_id: str, exc: InvalidInput | NotFound
    ) -> Task:
        now = utcnow()
        callback = None if isinstance(exc, CallbackRejected) else spec.callback_url
        task = Task(
            task_id=task_id,
            kind=TaskKind.scheduled,  # listed with the other submissions
            version=version,
            status=TaskStatus.failed,
            priority=spec.priority,
            text=spec.text,
            voice_id=spec.voice_id,
            format=spec.format,
            speed=spec.speed,
            instruct_text=spec.instruct_text,
            callback_url=callback,
            metadata=spec.metadata,
            filename=output_filename(version, "task", spec.format),
            error_message=exc.detail,
            created_at=now,
            completed_at=now,
            webhook=WebhookState(status="pending" if callback else "none"),
        )
        if await self._store.create_task(task):
            await self.announce(task)
            return task
        return await self._store.get_task(task_id)


def _check_metadata(metadata: dict[str, Any]) -> None:
    try:
        size = len(json.dumps(metadata, ensure_ascii=False).encode())
    except (TypeError, ValueError):
        raise InvalidInput("metadata must be a JSON object") from None
    if size > METADATA_MAX_BYTES:
        raise InvalidInput(f"metadata is {size} bytes; at most {METADATA_MAX_BYTES} are kept")

"""The render worker: takes queued tasks off the event bus and renders them to files.

One render, step by step:

1. claim: compare-and-set `registered|scheduled → processing` with a lease
   (`lease_until = now + TASK_LEASE_SECONDS`) and one more attempt. A task that is not
   queued any more (rendered, cancelled, claimed by another worker) is skipped, so a
   request delivered twice renders once.
2. render through `SynthesisService.render_to_file` (long text in segments); each
   finished segment advances `progress` and renews the lease in the same compare-and-set,
   and a renewer renews it between segments too. When either finds the task no longer
   `processing` (cancelled or deleted), the render stops.
3. end: `processing → completed` (or `failed`) with the result. The output key is the
   task's own filename, fixed at creation, so a render repeated after a crash overwrites
   the same object instead of adding a second one; a render that lost its task removes
   what it wrote.

A process killed mid-render leaves `processing` tasks whose lease stops being renewed;
at start-up and then periodically, tasks with an expired lease go back to their queued
status and onto the bus. A graceful stop takes no new work, lets running renders finish
for a grace period, and releases the rest (back to queued, lease cleared) so the next
start takes them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from ..domain import QUEUED_STATUSES, Task, TaskStatus, output_key, utcnow
from ..errors import CosyVoiceError, NotFound, SynthesisFailed, TaskNotFound, Unavailable
from ..ports import BlobStore, EventBus, MetadataStore, RenderRequest
from .synthesis import RenderResult, SynthesisService
from .tasks import TaskService, ending_changes, queued_status

log = logging.getLogger(__name__)

SubmissionHandler = Callable[[str, dict[str, Any]], Awaitable[Any]]


class WorkerStopping(Unavailable):
    """The worker is shutting down: the bus should hand this render to the next one."""


class TaskLost(Exception):
    """The task stopped being ours mid-render (cancelled, deleted or retaken)."""


class RenderWorker:
    def __init__(
        self,
        store: MetadataStore,
        bus: EventBus,
        blobs: BlobStore,
        synthesis: SynthesisService,
        tasks: TaskService,
        *,
        concurrency: int,
        lease_seconds: float,
        max_attempts: int,
        drain_seconds: float = 20.0,
        sweep_seconds: float | None = None,
        retry_pause: float = 1.0,
    ) -> None:
        self._store = store
        self._bus = bus
        self._blobs = blobs
        self._synthesis = synthesis
        self._tasks = tasks
        self.concurrency = concurrency
        self._lease = timedelta(seconds=lease_seconds)
        self._renew_every = max(lease_seconds / 3, 0.05)
        self._sweep_every = sweep_seconds or min(max(lease_seconds / 2, 0.5), 30.0)
        self._max_attempts = max_attempts
        self._drain_seconds = drain_seconds
        self._retry_pause = retry_pause
        self._stopping = False
        self._loops: list[asyncio.Task[Any]] = []
        self._active: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> int:
        return len(self._active)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        try:
            await self.recover_expired()
        except CosyVoiceError as exc:  # the store is down or refuses us: /health says so
            log.warning("lease recovery at start failed, the sweep retries: %s", exc.detail)
        self._loops.append(
            asyncio.create_task(
                self._bus.consume_renders(self.handle, self.concurrency), name="render-consumer"
            )
        )
        self._loops.append(asyncio.create_task(self._sweep(), name="lease-sweeper"))
        consume_submissions = getattr(self._bus, "consume_submissions", None)
        if consume_submissions is not None:
            self._loops.append(
                asyncio.create_task(consume_submissions(self._tasks.submit), name="submissions")
            )

    async def stop(self) -> None:
        """Take no new work; finish running renders within the grace period, release the rest."""
        self._stopping = True
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops.clear()
        if self._active:
            log.info("waiting up to %.0fs for %d render(s)", self._drain_seconds, self.active)
            _, unfinished = await asyncio.wait(set(self._active), timeout=self._drain_seconds)
            for job in unfinished:
                job.cancel()  # each releases its task on the way out
            await asyncio.gather(*unfinished, return_exceptions=True)

    # --- the bus handler -----------------------------------------------------------------

    async def handle(self, request: RenderRequest) -> None:
        """Render one queued task. Raising asks the bus to deliver it again later."""
        if self._stopping:
            raise WorkerStopping("the worker is stopping; the render stays queued")
        job = asyncio.create_task(self._run(request.task_id), name=f"render-{request.task_id}")
        self._active.add(job)
        job.add_done_callback(self._active.discard)
        # Shielded: if the bus cancels its consumer, the render still finishes or is
        # released by `stop`, instead of being cut off with its task left `processing`.
        await asyncio.shield(job)

    async def _run(self, task_id: str) -> None:
        while not self._stopping:
            task = await self._claim(task_id)
            if task is None:
                return
            if not await self._render(task):
                return
            # Requeued under us (our lease was taken for expired): the bus already
            # counts this task as ours, so take it again here rather than strand it.

    async def _claim(self, task_id: str) -> Task | None:
        try:
            task = await self._store.get_task(task_id)
        except TaskNotFound:
            return None
        if task.status not in QUEUED_STATUSES:
            return None  # already rendered, cancelled, or another worker holds it
        if task.attempts >= self._max_attempts:
            await self._finish_failed(
                task,
                f"rendering was started {task.attempts} times without finishing "
                f"(TASK_MAX_ATTEMPTS={self._max_attempts})",
                expected=QUEUED_STATUSES,
            )
            return None
        now = utcnow()
        return await self._store.transition(
            task_id,
            QUEUED_STATUSES,
            {
                "status": TaskStatus.processing,
                "started_at": now,
                "lease_until": now + self._lease,
                "attempts": task.attempts + 1,
                "progress": 0.0,
                "error_message": None,
            },
        )

    async def _render(self, task: Task) -> bool:
        """Render a claimed task; True when it went back to the queue meanwhile."""
        lost = asyncio.Event()
        renewer = asyncio.create_task(self._keep_lease(task.task_id, lost))

        async def on_progress(progress: float) -> None:
            if lost.is_set():
                raise TaskLost(task.task_id)
            mine = await self._store.transition(
                task.task_id,
                [TaskStatus.processing],
                {"progress": min(progress, 0.99), "lease_until": utcnow() + self._lease},
            )
            if mine is None:
                raise TaskLost(task.task_id)

        try:
            request = await self._synthesis.request_for_voice(
                task.version,
                task.voice_id,
                task.text,
                speed=task.speed,
                instruct_text=task.instruct_text,
                background=True,  # a task waited in the task queue: never refused
            )
            result = await self._synthesis.render_to_file(
                task.version, request, task.format, task.filename, on_progress=on_progress
            )
        except TaskLost:
            log.info("task %s was cancelled, removed or retaken while rendering", task.task_id)
            return await self._discard_if_abandoned(task)
        except asyncio.CancelledError:
            await asyncio.shield(self._release(task))
            raise
        except (Unavailable, SynthesisFailed) as exc:
            await self._retry_later(task, exc)
        except CosyVoiceError as exc:
            await self._finish_failed(task, exc.detail)
        except Exception as exc:
            log.exception("render of task %s crashed", task.task_id)
            await self._finish_failed(task, f"internal error while rendering: {type(exc).__name__}")
        else:
            return await self._finish_completed(task, result)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        return False

    async def _keep_lease(self, task_id: str, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self._renew_every)
            try:
                mine = await self._store.transition(
                    task_id, [TaskStatus.processing], {"lease_until": utcnow() + self._lease}
                )
            except CosyVoiceError as exc:
                log.warning("could not renew the lease of task %s: %s", task_id, exc.detail)
                continue
            if mine is None:
                lost.set()
                return

    # --- endings -------------------------------------------------------------------------

    async def _finish_completed(self, task: Task, result: RenderResult) -> bool:
        done = await self._store.transition(
            task.task_id,
            [TaskStatus.processing],
            ending_changes(
                task,
                TaskStatus.completed,
                progress=1.0,
                duration=result.duration,
                synthesis_time=result.synthesis_time,
                error_message=None,
            ),
        )
        if done is None:
            return await self._discard_if_abandoned(task)
        log.info(
            "task %s completed: %.2fs of audio in %.2fs",
            task.task_id,
            result.duration,
            result.synthesis_time,
        )
        await self._tasks.announce(done)
        return False

    async def _finish_failed(
        self,
        task: Task,
        reason: str,
        expected: frozenset[TaskStatus] | None = None,
    ) -> None:
        failed = await self._store.transition(
            task.task_id,
            expected or [TaskStatus.processing],
            ending_changes(task, TaskStatus.failed, error_message=reason),
        )
        if failed is None:
            await self._discard_if_abandoned(task)
            return
        log.warning("task %s failed: %s", task.task_id, reason)
        await self._discard_output(task)
        await self._tasks.announce(failed)

    async def _retry_later(self, task: Task, exc: CosyVoiceError) -> None:
        """A render that may succeed later (a backend down, the engine failing): requeue
        while attempts remain and let the bus deliver it again. On the last attempt the
        task fails with the reason, and the error still goes back to the bus, which moves
        the event to its dead-letter subject."""
        if task.attempts >= self._max_attempts:
            await self._finish_failed(task, exc.detail)
            raise exc
        log.warning("task %s: %s; it goes back to the queue", task.task_id, exc.detail)
        await self._release(task, count_attempt=True)
        await asyncio.sleep(self._retry_pause)
        raise exc

    async def _release(self, task: Task, *, count_attempt: bool = False) -> None:
        """processing → queued again, lease cleared, so the next worker takes it at once.

        A render cut short by a shutdown does not count as an attempt; one that failed
        on an unavailable backend does (so an outage ends in `failed`, not a loop)."""
        try:
            released = await self._store.transition(
                task.task_id,
                [TaskStatus.processing],
                {
                    "status": queued_status(task.kind),
                    "lease_until": None,
                    "progress": 0.0,
                    "started_at": None,
                    "attempts": task.attempts if count_attempt else max(task.attempts - 1, 0),
                },
            )
        except CosyVoiceError as exc:
            log.error("could not release task %s: %s", task.task_id, exc.detail)
            return
        if released is not None and not count_attempt:
            log.info("released task %s back to the queue", task.task_id)

    async def _discard_if_abandoned(self, task: Task) -> bool:
        """After losing a task: remove our output if it was cancelled or deleted (never
        when another worker completed it: the key is shared). True when it is queued
        again and should be taken anew."""
        try:
            current = await self._store.get_task(task.task_id)
        except TaskNotFound:
            await self._discard_output(task)
            return False
        if current.status in (TaskStatus.cancelled, TaskStatus.failed):
            await self._discard_output(task)
        return current.status in QUEUED_STATUSES

    async def _discard_output(self, task: Task) -> None:
        with contextlib.suppress(NotFound):
            await self._blobs.delete(output_key(task.filename))

    # --- crash recovery ------------------------------------------------------------------

    async def recover_expired(self) -> list[str]:
        """Requeue every processing task whose worker stopped renewing its lease."""
        recovered: list[str] = []
        for task in await self._store.expired_leases(utcnow()):
            back = await self._store.transition(
                task.task_id,
                [TaskStatus.processing],
                {
                    "status": queued_status(task.kind),
                    "lease_until": None,
                    "progress": 0.0,
                    "started_at": None,
                    "queued_at": task.queued_at or utcnow(),
                },
            )
            if back is None:
                continue
            log.warning("task %s lost its worker; back in the queue", task.task_id)
            await self._bus.publish_render(
                RenderRequest(task_id=task.task_id, priority=task.priority)
            )
            recovered.append(task.task_id)
        return recovered

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_every)
            try:
                await self.recover_expired()
            except CosyVoiceError as exc:
                log.warning("lease sweep failed: %s", exc.detail)

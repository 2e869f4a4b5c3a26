"""The render worker: takes queued tasks off the event bus and renders them to files.

One render, step by step:

1. claim: compare-and-set `registered|scheduled → processing` with a lease
   (`lease_until = now + TASK_LEASE_SECONDS`), one more attempt and a new claim id (a
   fencing token). A `processing` task whose lease ran out (its worker is gone) is
   retaken the same way under a new claim; one whose lease is alive belongs to its
   worker, and the event raises `LeaseHeld` so the bus brings it back after the lease.
   A task that ended is skipped, so a request delivered twice renders once.
2. render through `SynthesisService.render_to_file` (long text in segments); each
   finished segment advances `progress` and renews the lease in the same compare-and-set,
   and a renewer renews it between segments too. When either finds the task no longer
   `processing` under our claim (cancelled, deleted, or retaken after our lease ran
   out), the render stops.
3. end: `processing → completed` (or `failed`) with the result, through `TaskEndings`
   and under our claim, so a worker whose claim was retaken writes nothing. The output key is the
   task's own filename, fixed at creation, so a render repeated after a crash overwrites
   the same object instead of adding a second one; a render that lost its task removes
   what it wrote.

A process killed mid-render leaves `processing` tasks whose lease stops being renewed;
at start-up and then periodically (`start_recovery`, wherever renders run, in any
number of replicas), tasks with an expired lease go back to their queued status, claim
cleared, and onto the bus. A graceful stop takes no new work, lets running renders finish
for a grace period, and releases the rest (back to queued, lease cleared) so the next
start takes them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from .. import metrics
from ..domain import QUEUED_STATUSES, Task, TaskStatus, output_key, utcnow
from ..errors import (
    CosyVoiceError,
    LeaseHeld,
    NotFound,
    SynthesisFailed,
    TaskNotFound,
    Unavailable,
)
from ..ports import BlobStore, EventBus, MetadataStore, RenderRequest
from .segments import SegmentedRenders
from .synthesis import RenderResult, SynthesisService
from .tasks import TaskService, back_in_queue, renew_lease

log = logging.getLogger(__name__)


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
        segment_max_chars: int | None = None,
    ) -> None:
        """With `segment_max_chars`, a task longer than one segment is rendered as
        segment jobs (`SegmentedRenders`); without, every task in one render."""
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
        self._rendering: dict[str, asyncio.Task[None]] = {}  # task id → its render here
        self._segments = (
            SegmentedRenders(
                store,
                bus,
                blobs,
                synthesis,
                tasks,
                max_chars=segment_max_chars,
                lease_seconds=lease_seconds,
            )
            if segment_max_chars
            else None
        )

    @property
    def active(self) -> int:
        return len(self._active)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.start_recovery()
        self._loops.append(
            asyncio.create_task(
                self._bus.consume_renders(self.handle, self.concurrency), name="render-consumer"
            )
        )
        self._loops.append(
            asyncio.create_task(
                self._bus.consume_submissions(self._tasks.submit), name="submissions"
            )
        )

    async def start_recovery(self) -> None:
        """Requeue what dead workers left, now and every sweep interval until `stop`.

        Runs wherever renders run (serve with workers, the render function), in any
        number of replicas at once: each task is requeued by one compare-and-set.
        """
        self._stopping = False
        try:
            await self.recover_expired()
        except CosyVoiceError as exc:  # the store is down or refuses us: /health says so
            log.warning("lease recovery at start failed, the sweep retries: %s", exc.detail)
        self._loops.append(asyncio.create_task(self._sweep(), name="lease-sweeper"))

    async def stop(self) -> None:
        """Take no new work; finish running renders within the grace period, release the rest."""
        self._stopping = True
        deadline = asyncio.get_running_loop().time() + self._drain_seconds
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
        await self._finish_segmented(deadline)

    # --- the bus handler -----------------------------------------------------------------

    async def handle(self, request: RenderRequest) -> None:
        """Render one queued task. Raising asks the bus to deliver it again later;
        `LeaseHeld` means another worker renders it: come back after its lease."""
        if self._stopping:
            raise WorkerStopping("the worker is stopping; the render stays queued")
        if request.segment is not None:
            await self._render_segment(request)
            return
        # A second delivery of a render this process is running (a redelivery that
        # reached the same replica) waits for that render rather than starting another.
        job = self._rendering.get(request.task_id)
        if job is None:
            job = self._start_render(request.task_id)
        # Shielded: if the bus cancels its consumer, the render still finishes or is
        # released by `stop`, instead of being cut off with its task left `processing`.
        await asyncio.shield(job)

    async def _render_segment(self, request: RenderRequest) -> None:
        """One segment job of a long-form task: no claim (storing a segment twice is
        harmless), and shielded like a whole render."""
        if self._segments is None:
            raise WorkerStopping("this worker renders no segment jobs; another one will")
        job = asyncio.create_task(self._segments.render(request), name=f"render-{request.key}")
        self._active.add(job)
        job.add_done_callback(self._active.discard)
        await asyncio.shield(job)

    async def _finish_segmented(self, deadline: float) -> None:
        """On a graceful stop: finish the long-form tasks this process planned (their
        remaining segments here, one after another) within the grace period, and put
        the rest back in the queue for the next start."""
        if self._segments is None:
            return
        loop = asyncio.get_running_loop()
        for task_id in self._segments.dispatched:
            remaining = deadline - loop.time()
            try:
                async with asyncio.timeout(max(remaining, 0.001)):
                    await self._segments.render_remaining(task_id)
                continue
            except TimeoutError:
                log.info("task %s: grace period over; it goes back to the queue", task_id)
            except CosyVoiceError as exc:
                log.warning("task %s could not finish before the stop: %s", task_id, exc.detail)
            with contextlib.suppress(CosyVoiceError):
                task = await self._store.get_task(task_id)
                if task.status is TaskStatus.processing:
                    await self._release(task)
        await self._segments.stop()

    def _start_render(self, task_id: str) -> asyncio.Task[None]:
        job = asyncio.create_task(self._run(task_id), name=f"render-{task_id}")
        self._active.add(job)
        self._rendering[task_id] = job

        def forget(done: asyncio.Task[None]) -> None:
            self._active.discard(done)
            if self._rendering.get(task_id) is done:
                del self._rendering[task_id]

        job.add_done_callback(forget)
        return job

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
        """Take the task under a new claim: a queued one, or a processing one whose lease
        ran out. None when there is nothing to render; `LeaseHeld` while another
        worker's lease is alive."""
        for _ in range(3):  # a lost compare-and-set: read again and decide again
            try:
                task = await self._store.get_task(task_id)
            except TaskNotFound:
                return None
            now = utcnow()
            expired_before = None
            if task.status is TaskStatus.processing:
                if task.lease_until is None:
                    return None  # no lease to run out: nothing this event can take over
                if task.lease_until >= now:
                    raise LeaseHeld(task_id, (task.lease_until - now).total_seconds())
                expired_before = now  # its worker is gone: retake it
            elif task.status.is_final:
                # Delivered again after it ended: its worker died before acknowledging,
                # perhaps before announcing the ending too.
                await self._tasks.endings.announce_if_unsent(task)
                return None
            elif task.status not in QUEUED_STATUSES:
                return None  # pending (never queued)
            # A claim resets progress, so a long-form task with progress on its lost claim
            # had segments stored under it: that crash cost no attempt. One that made no
            # progress did, so a task that kills its worker every time still ends.
            attempts = task.attempts
            if expired_before is not None and task.segments_total and task.progress > 0:
                attempts -= 1
            if attempts >= self._max_attempts:
                await self._finish_failed(
                    task,
                    f"rendering was started {task.attempts} times without finishing "
                    f"(TASK_MAX_ATTEMPTS={self._max_attempts})",
                    expected=[task.status],
                )
                return None
            claimed = await self._store.transition(
                task_id,
                [task.status],
                {
                    "status": TaskStatus.processing,
                    "claim_id": uuid.uuid4().hex,
                    "started_at": now,
                    "lease_until": now + self._lease,
                    "attempts": attempts + 1,
                    "progress": 0.0,
                    "error_message": None,
                },
                lease_expired_before=expired_before,
            )
            if claimed is None:
                continue
            if expired_before is None:
                metrics.count_task_transition(task.status, TaskStatus.processing)
            else:
                log.warning("task %s: its worker's lease ran out; retaken", task_id)
            return claimed
        return None

    async def _render(self, task: Task) -> bool:
        """Render a claimed task; True when it went back to the queue meanwhile."""
        lost = asyncio.Event()
        renewer = asyncio.create_task(self._keep_lease(task, lost))

        async def on_progress(progress: float) -> None:
            if lost.is_set():
                raise TaskLost(task.task_id)
            mine = await self._store.transition(
                task.task_id,
                [TaskStatus.processing],
                {"progress": min(progress, 0.99), "lease_until": utcnow() + self._lease},
                claim_id=task.claim_id,
            )
            if mine is None:
                raise TaskLost(task.task_id)

        async def before_store(duration: float) -> None:
            # The result is recorded under the claim before the upload: a claim that lost
            # the task uploads nothing, and a retake after a crash between the upload and
            # the completion finds the output and completes from it (`_stored_output`).
            mine = await self._store.transition(
                task.task_id,
                [TaskStatus.processing],
                {"duration": duration, "lease_until": utcnow() + self._lease},
                claim_id=task.claim_id,
            )
            if mine is None:
                raise TaskLost(task.task_id)

        try:
            if self._segments is not None and self._segments.is_long(task):
                await self._segments.dispatch(task)  # the segment jobs take it from here
                return False
            stored = await self._stored_output(task)
            if stored is not None:
                return await self._finish_completed(task, stored)
            request = await self._synthesis.request_for_voice(
                task.version,
                task.voice_id,
                task.text,
                speed=task.speed,
                instruct_text=task.instruct_text,
                background=True,  # a task waited in the task queue: never refused
            )
            result = await self._synthesis.render_to_file(
                task.version,
                request,
                task.format,
                task.filename,
                on_progress=on_progress,
                before_store=before_store,
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

    async def _stored_output(self, task: Task) -> RenderResult | None:
        """The output an earlier claim rendered and stored before it died, if any: its
        duration was recorded first (`before_store`), so a stored object is complete."""
        if task.duration is None:
            return None
        try:
            info = await self._blobs.stat(output_key(task.filename))
        except NotFound:
            return None
        log.info("task %s: its output was stored by an earlier claim; completing", task.task_id)
        return RenderResult(
            filename=task.filename,
            duration=task.duration,
            synthesis_time=task.synthesis_time or 0.0,
            sample_rate=0,  # not recorded; nothing downstream reads it
            size=info.size,
        )

    async def _keep_lease(self, task: Task, lost: asyncio.Event) -> None:
        await renew_lease(self._store, task, lease=self._lease, every=self._renew_every)
        lost.set()

    # --- endings -------------------------------------------------------------------------

    async def _finish_completed(self, task: Task, result: RenderResult) -> bool:
        done = await self._tasks.endings.complete(
            task, duration=result.duration, synthesis_time=result.synthesis_time
        )
        if done is None:  # our claim was lost: the task is not ours to write
            return await self._discard_if_abandoned(task)
        metrics.count_task_transition(TaskStatus.processing, TaskStatus.completed)
        log.info(
            "task %s completed: %.2fs of audio in %.2fs",
            task.task_id,
            result.duration,
            result.synthesis_time,
        )
        return False

    async def _finish_failed(
        self,
        task: Task,
        reason: str,
        expected: Iterable[TaskStatus] | None = None,
    ) -> None:
        """Fail the task under the claim it was read with (a queued task has none)."""
        failed = await self._tasks.endings.fail(
            task.task_id, reason, claim_id=task.claim_id, expected=expected
        )
        if failed is None:
            await self._discard_if_abandoned(task)
            return
        metrics.count_task_transition(task.status, TaskStatus.failed)
        log.warning("task %s failed: %s", task.task_id, reason)
        await self._discard_output(task)

    async def _retry_later(self, task: Task, exc: CosyVoiceError) -> None:
        """A render that may succeed later: requeue it and let the bus deliver it again.

        An unavailable backend or engine (a predictor scaled to zero or restarting, the
        database down) is not the task's fault: the attempt is not counted, so an outage
        delays tasks but never fails them (they can still be cancelled). A render that
        failed counts; on the last attempt the task fails with the reason, and the error
        still goes back to the bus, which moves the event to its dead-letter subject."""
        metrics.count_backend_failure(exc)
        if isinstance(exc, Unavailable):
            log.warning("task %s waits: %s", task.task_id, exc.detail)
            await self._release(task, count_attempt=False)
            await asyncio.sleep(self._retry_pause)
            raise exc
        if task.attempts >= self._max_attempts:
            await self._finish_failed(task, exc.detail)
            raise exc
        log.warning("task %s: %s; it goes back to the queue", task.task_id, exc.detail)
        await self._release(task, count_attempt=True)
        await asyncio.sleep(self._retry_pause)
        raise exc

    async def _release(self, task: Task, *, count_attempt: bool = False) -> None:
        """processing → queued again, lease cleared, so the next worker takes it at once.

        A render cut short by a shutdown or an unavailable backend does not count as an
        attempt; one that failed does (so a render that cannot succeed ends `failed`)."""
        try:
            released = await self._store.transition(
                task.task_id,
                [TaskStatus.processing],
                {
                    **back_in_queue(task),
                    "attempts": task.attempts if count_attempt else max(task.attempts - 1, 0),
                },
                claim_id=task.claim_id,
            )
        except CosyVoiceError as exc:
            log.error("could not release task %s: %s", task.task_id, exc.detail)
            return
        if released is not None:
            metrics.count_task_transition(TaskStatus.processing, released.status)
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
            try:
                if await self._requeue_expired(task):
                    recovered.append(task.task_id)
            except CosyVoiceError as exc:  # the next sweep tries again
                log.warning("could not requeue task %s: %s", task.task_id, exc.detail)
        return recovered

    async def _requeue_expired(self, task: Task) -> bool:
        """processing (lease run out) → queued, claim cleared; False when it is not ours
        to requeue (another replica did, or its worker renewed in time).

        The render event goes out first: if publishing fails the task stays as it was
        for the next sweep, never queued without an event. Replicas requeueing one task
        together publish the same event id (task, queued time, attempts), which the
        bus de-duplicates, and only one of them wins the compare-and-set.
        """
        await self._bus.publish_render(RenderRequest(task_id=task.task_id, priority=task.priority))
        back = await self._store.transition(
            task.task_id,
            [TaskStatus.processing],
            {**back_in_queue(task), "queued_at": task.queued_at or utcnow()},
            lease_expired_before=utcnow(),
        )
        if back is None:
            return False
        metrics.count_task_transition(TaskStatus.processing, back.status)
        log.warning("task %s lost its worker; back in the queue", task.task_id)
        return True

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_every)
            try:
                await self.recover_expired()
            except CosyVoiceError as exc:
                log.warning("lease sweep failed: %s", exc.detail)
            except Exception:  # the sweep must outlive any one failure
                log.exception("lease sweep failed")

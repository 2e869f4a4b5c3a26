"""Long-form tasks rendered as segment jobs: planned, stored, recorded, assembled.

A task whose text makes more than one segment job (consecutive sentences packed up to
SEGMENT_MAX_CHARS characters) is not rendered in one request:

1. plan (`dispatch`, by the worker that claimed the task): record how many jobs the
   text makes and publish one render event per job not stored yet. The event ends there;
   the claiming process keeps the task's lease alive while the jobs run.
2. segment jobs (`render`, any worker or render pod, in parallel): synthesize the job's
   sentences, store them as 16-bit FLAC under `outputs/.segments/<task>/<index>.flac`
   (an atomic put: rendering a job twice writes the same thing twice) and add the index
   to the task's set of stored segments, which also advances progress (stored / total)
   and renews the lease. A job of a task that ended or is gone is skipped.
3. assembly (`assemble`, by whoever records the last segment, or by the next claim when
   every segment is already there): one compare-and-set on `assembling_until` picks
   exactly one process, which streams the segments in order into the output file
   (`AudioFileWriter`: crossfaded seams, encoded as it goes, one segment in memory at a
   time), stores it, completes the task and deletes the segments.

A crash loses at most the jobs in flight: the task's lease runs out, the task is queued
again, and its next claim publishes only the jobs whose segments are missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from typing import TypeVar

import numpy as np
import soundfile as sf

from .. import metrics
from ..audio.encode import CONTENT_TYPES
from ..audio.file_writer import AudioFileWriter, SeamJoiner
from ..domain import Task, TaskStatus, output_key, utcnow
from ..engines.text import split_sentences
from ..errors import CosyVoiceError, NotFound, SynthesisFailed, TaskNotFound, Unavailable
from ..ports import BlobStore, EventBus, MetadataStore, RenderRequest
from .endings import ending_changes
from .synthesis import SynthesisService
from .tasks import TaskService, renew_lease

log = logging.getLogger(__name__)

T = TypeVar("T")

SEGMENTS_PREFIX = "outputs/.segments/"
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")

# FLAC encoding and decoding of segments, off the event loop and out of asyncio's default
# pool (which the blob store and database calls use).
_CODEC_THREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="segment-codec")


async def _off_loop(work: Callable[..., T], *args: object) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_CODEC_THREADS, functools.partial(work, *args))


@functools.lru_cache(maxsize=16)
def _planned(text: str, max_chars: int) -> tuple[tuple[str, ...], ...]:
    # Every segment job of a task plans the same text again: tens of milliseconds of
    # event-loop time for 100,000 characters, paid once per process instead.
    return tuple(tuple(job) for job in plan_segments(text, max_chars))


def plan_segments(text: str, max_chars: int) -> list[list[str]]:
    """The text's segment jobs: consecutive sentences, each job at most `max_chars`
    characters (a longer sentence is already cut by `split_sentences`)."""
    jobs: list[list[str]] = []
    size = 0
    for sentence in split_sentences(text, max_chars):
        if jobs and size + 1 + len(sentence) <= max_chars:
            jobs[-1].append(sentence)
            size += 1 + len(sentence)
        else:
            jobs.append([sentence])
            size = len(sentence)
    return jobs


def segments_prefix(task_id: str) -> str:
    # Task ids from external producers are free text: only plain ones name a folder.
    name = task_id if _SAFE_ID.match(task_id) else hashlib.sha256(task_id.encode()).hexdigest()
    return f"{SEGMENTS_PREFIX}{name}/"


def segment_key(task_id: str, index: int) -> str:
    return f"{segments_prefix(task_id)}{index:05d}.flac"


def all_stored(task: Task) -> bool:
    return task.segments_total > 0 and len(set(task.segments_done)) >= task.segments_total


class SegmentLost(Exception):
    """The task stopped being assembled by us (cancelled, deleted or retaken)."""


class SegmentedRenders:
    """Plans, renders, records and assembles the segment jobs of long-form tasks."""

    def __init__(
        self,
        store: MetadataStore,
        bus: EventBus,
        blobs: BlobStore,
        synthesis: SynthesisService,
        tasks: TaskService,
        *,
        max_chars: int,
        lease_seconds: float,
    ) -> None:
        self._store = store
        self._bus = bus
        self._blobs = blobs
        self._synthesis = synthesis
        self._tasks = tasks
        self._max_chars = max_chars
        self._lease = timedelta(seconds=lease_seconds)
        self._renew_every = max(lease_seconds / 3, 0.05)
        self._keepers: dict[str, asyncio.Task[None]] = {}

    def plan(self, task: Task) -> list[list[str]]:
        return [list(job) for job in _planned(task.text, self._max_chars)]

    def is_long(self, task: Task) -> bool:
        return len(self.plan(task)) > 1

    @property
    def dispatched(self) -> list[str]:
        """Tasks this process planned whose segment jobs may still be running."""
        return [task_id for task_id, keeper in self._keepers.items() if not keeper.done()]

    async def stop(self) -> None:
        keepers, self._keepers = list(self._keepers.values()), {}
        for keeper in keepers:
            keeper.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)

    # --- 1. plan -------------------------------------------------------------------------

    async def dispatch(self, task: Task) -> None:
        """For a claimed task: publish the jobs whose segments are missing, or assemble
        at once when none is."""
        total = len(self.plan(task))
        done = set(task.segments_done)
        planned = await self._store.transition(
            task.task_id,
            [TaskStatus.processing],
            {"segments_total": total, "progress": min(len(done) / total, 0.99)},
            claim_id=task.claim_id,
        )
        if planned is None:
            return  # lost between the claim and here: its new owner plans it
        missing = [index for index in range(total) if index not in done]
        if not missing:
            await self.assemble(planned)
            return
        self._keep_lease(planned)
        for index in missing:
            await self._bus.publish_render(
                RenderRequest(task_id=task.task_id, priority=task.priority, segment=index)
            )
        log.info(
            "task %s: %d segment job(s) published, %d of %d already stored",
            task.task_id,
            len(missing),
            len(done),
            total,
        )

    def _keep_lease(self, task: Task) -> None:
        """Renew the task's lease while its jobs run elsewhere: if this process dies,
        the lease runs out and the task is planned again."""
        previous = self._keepers.pop(task.task_id, None)
        if previous is not None:
            previous.cancel()
        keeper = asyncio.create_task(
            renew_lease(self._store, task, lease=self._lease, every=self._renew_every),
            name=f"segments-lease-{task.task_id}",
        )
        self._keepers[task.task_id] = keeper
        keeper.add_done_callback(functools.partial(self._forget_keeper, task.task_id))

    def _forget_keeper(self, task_id: str, keeper: asyncio.Task[None]) -> None:
        if self._keepers.get(task_id) is keeper:
            del self._keepers[task_id]

    # --- 2. segment jobs -----------------------------------------------------------------

    async def render(self, request: RenderRequest) -> None:
        """One segment job. Raising asks the bus to deliver it again later."""
        assert request.segment is not None
        index = request.segment
        try:
            task = await self._store.get_task(request.task_id)
        except TaskNotFound:
            await self._drop_segments(request.task_id)
            return
        if task.status.is_final or task.status is TaskStatus.pending:
            if task.status in (TaskStatus.cancelled, TaskStatus.failed):
                await self._drop_segments(task.task_id)
            if task.status.is_final:  # its assembler may have died before announcing
                await self._tasks.endings.announce_if_unsent(task)
            return
        jobs = self.plan(task)
        if index >= len(jobs):
            log.warning("task %s has no segment %d: job dropped", task.task_id, index)
            return
        if index not in task.segments_done:
            recorded = await self._render_and_record(task, index, jobs[index])
            if recorded is None:
                return
            task = recorded
        if task.status is TaskStatus.processing and all_stored(task):
            await self.assemble(task)

    async def render_remaining(self, task_id: str) -> None:
        """Render every missing segment of a planned task here, one after another, then
        assemble it (a stopping process finishing what it started)."""
        task = await self._store.get_task(task_id)
        jobs = self.plan(task)
        for index, job in enumerate(jobs):
            if task.status is not TaskStatus.processing:
                return
            if index not in task.segments_done:
                recorded = await self._render_and_record(task, index, job)
                if recorded is None:
                    return
                task = recorded
        if all_stored(task):
            await self.assemble(task)

    async def _render_and_record(self, task: Task, index: int, job: list[str]) -> Task | None:
        started = time.perf_counter()
        try:
            data = await self._synthesize(task, job)
            await self._blobs.put(segment_key(task.task_id, index), data, CONTENT_TYPES["flac"])
        except (Unavailable, SynthesisFailed):
            raise  # may work later: the bus delivers the job again
        except CosyVoiceError as exc:
            await self._fail(task, exc.detail)
            return None
        except Exception as exc:
            log.exception("segment %d of task %s crashed", index, task.task_id)
            await self._fail(task, f"internal error while rendering: {type(exc).__name__}")
            return None
        # Logged before it is recorded: a crash between the two renders it again,
        # never leaves a stored segment unaccounted for.
        log.info(
            "task %s: segment %d/%d rendered in %.2fs",
            task.task_id,
            index + 1,
            task.segments_total or len(self.plan(task)),
            time.perf_counter() - started,
        )
        recorded = await self._store.record_segment(task.task_id, index, utcnow() + self._lease)
        if recorded is None:  # cancelled or deleted while rendering
            await self._drop_segments(task.task_id)
        return recorded

    async def _synthesize(self, task: Task, job: list[str]) -> bytes:
        """The job's sentences, each synthesized as the one-request render does, joined
        under the same crossfade, as a 16-bit FLAC file."""
        await self._synthesis.ensure_ready(task.version)
        request = await self._synthesis.request_for_voice(
            task.version,
            task.voice_id,
            " ".join(job),
            speed=task.speed,
            instruct_text=task.instruct_text,
            background=True,  # a task waited in the task queue: never refused
        )
        rate = request.sample_rate or self._synthesis.sample_rate
        joiner = SeamJoiner(rate)
        parts: list[np.ndarray] = []
        for sentence in job:
            pieces = [
                chunk.samples
                async for chunk in self._synthesis.stream(
                    task.version, replace(request, text=sentence)
                )
            ]
            if pieces:
                parts.append(joiner.push(np.concatenate(pieces)))
        parts.append(joiner.flush())
        samples = np.concatenate(parts)
        if samples.size == 0:
            raise SynthesisFailed("the engine produced no audio")
        return await _off_loop(_flac_bytes, samples, rate)

    # --- 3. assembly ---------------------------------------------------------------------

    async def assemble(self, task: Task) -> None:
        """Join the stored segments into the output and complete the task, unless another
        process holds the assembly."""
        now = utcnow()
        claimed = await self._store.claim_assembly(task.task_id, now, now + self._lease)
        if claimed is None:
            return
        if not all_stored(claimed):
            await self._release_assembly(claimed)
            return
        try:
            duration = await self._stored_duration(claimed) or await self._write_output(claimed)
        except SegmentLost:
            await self._after_losing(claimed)
            return
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._release_assembly(claimed))
            raise
        started = claimed.started_at or now
        results: dict[str, object] = {
            "duration": duration,
            "synthesis_time": round((utcnow() - started).total_seconds(), 3),
            "assembling_until": None,
        }
        if claimed.claim_id is not None:
            done = await self._tasks.endings.complete(claimed, claim_id=claimed.claim_id, **results)
        else:  # claimed before claims carried fencing tokens: compare the status only
            done = await self._complete_unfenced(claimed, results)
        if done is None:
            await self._after_losing(claimed)
            return
        metrics.count_task_transition(TaskStatus.processing, TaskStatus.completed)
        log.info(
            "task %s completed: %d segments, %.2fs of audio",
            task.task_id,
            claimed.segments_total,
            duration,
        )
        await self._drop_segments(task.task_id)

    async def _complete_unfenced(self, task: Task, results: dict[str, object]) -> Task | None:
        changes = ending_changes(task, TaskStatus.completed, progress=1.0, error_message=None)
        done = await self._store.transition(
            task.task_id, [TaskStatus.processing], changes | results
        )
        if done is not None:
            await self._tasks.endings.announce(done)
        return done

    async def _stored_duration(self, task: Task) -> float | None:
        """An earlier assembly stored the output and died before completing: its duration
        was recorded under the claim first, so a stored object is complete. Reused, never
        written twice."""
        if task.duration is None:
            return None
        try:
            await self._blobs.stat(output_key(task.filename))
        except NotFound:
            return None
        return task.duration

    async def _write_output(self, task: Task) -> float:
        """Stream the segments, in order, through one `AudioFileWriter` into the output."""
        writer: AudioFileWriter | None = None
        renewed = time.monotonic()
        try:
            for index in range(task.segments_total):
                try:
                    data = await self._blobs.get(segment_key(task.task_id, index))
                except NotFound as exc:
                    raise SynthesisFailed(
                        f"segment {index} of task {task.task_id} is recorded but not stored"
                    ) from exc
                samples, rate = await _off_loop(_decode_flac, data)
                del data
                if writer is None:
                    writer = await _off_loop(AudioFileWriter, task.format, rate)
                await _off_loop(writer.add_segment, [samples])
                if time.monotonic() - renewed > self._renew_every:
                    await self._renew_assembly(task)
                    renewed = time.monotonic()
            if writer is None:
                raise SynthesisFailed("the task has no segments")
            await _off_loop(writer.finish)
            # Recorded before the upload (see `_stored_duration`).
            await self._renew_assembly(task, duration=round(writer.duration, 3))
            await self._blobs.put_file(
                output_key(task.filename), writer.path, CONTENT_TYPES[task.format.value]
            )
            return round(writer.duration, 3)
        finally:
            if writer is not None:
                await _off_loop(writer.discard)

    async def _renew_assembly(self, task: Task, **recorded: float) -> None:
        until = utcnow() + self._lease
        mine = await self._store.transition(
            task.task_id,
            [TaskStatus.processing],
            {"lease_until": until, "assembling_until": until, **recorded},
            claim_id=task.claim_id,
        )
        if mine is None:
            raise SegmentLost(task.task_id)

    async def _release_assembly(self, task: Task) -> None:
        await self._store.transition(
            task.task_id, [TaskStatus.processing], {"assembling_until": None}
        )

    async def _after_losing(self, task: Task) -> None:
        """The task was cancelled, deleted or retaken while we assembled it: remove what
        we wrote if it ended without its audio (never a completed task's: same key)."""
        try:
            current = await self._store.get_task(task.task_id)
        except TaskNotFound:
            current = None
        if current is None or current.status in (TaskStatus.cancelled, TaskStatus.failed):
            with contextlib.suppress(NotFound):
                await self._blobs.delete(output_key(task.filename))
            await self._drop_segments(task.task_id)

    # --- endings -------------------------------------------------------------------------

    async def _fail(self, task: Task, reason: str) -> None:
        failed = await self._tasks.fail(task.task_id, reason)
        if failed is not None:
            log.warning("task %s failed: %s", task.task_id, reason)
        await self._drop_segments(task.task_id)

    async def _drop_segments(self, task_id: str) -> None:
        try:
            await self._blobs.delete(segments_prefix(task_id))
        except NotFound:
            pass
        except CosyVoiceError as exc:
            log.warning("could not remove the segments of task %s: %s", task_id, exc.detail)


def _flac_bytes(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def _decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    return np.asarray(samples, dtype=np.float32).reshape(-1), int(rate)

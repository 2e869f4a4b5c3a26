"""Retention: rendered audio and finished tasks do not pile up forever.

Two rules, applied by a sweep every RETENTION_SWEEP_SECONDS in the API process:

- OUTPUT_TTL: the audio of a synchronous call (`outputs/<version>_<mode>_<hex>.<ext>`
  for every mode but `task`) is deleted once its file is older than this. Nothing else
  refers to it: its `audio_url` answers 404 from then on.
- TASK_RETENTION: a task that ended (completed, failed, cancelled) longer ago than this
  is deleted together with its audio. Unfinished tasks are never touched, and neither is
  a task's audio by the OUTPUT_TTL rule: it lives as long as its task.

0 keeps forever. Every deletion is idempotent, so several replicas sweeping the same
stores at once only repeat each other's work. In a cluster, an S3 lifecycle rule can
expire old objects too (see the README), but only this sweep removes the task records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..domain import OUTPUT_FILENAME_PATTERN, output_key, utcnow
from ..errors import CosyVoiceError, NotFound
from ..ports import BlobStore, MetadataStore

log = logging.getLogger(__name__)

OUTPUTS_PREFIX = "outputs/"
TASK_BATCH = 500


def is_synchronous_output(key: str) -> bool:
    """True for the audio of a synchronous call; False for task audio and anything else."""
    if not key.startswith(OUTPUTS_PREFIX):
        return False
    match = OUTPUT_FILENAME_PATTERN.fullmatch(key.removeprefix(OUTPUTS_PREFIX))
    return match is not None and match.group(2) != "task"


@dataclass(frozen=True)
class Swept:
    outputs: int = 0
    tasks: int = 0


class RetentionSweeper:
    """Deletes expired synchronous outputs and finished tasks, now or periodically."""

    def __init__(
        self,
        store: MetadataStore,
        blobs: BlobStore,
        *,
        output_ttl: float,
        task_retention: float,
        interval: float,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._output_ttl = output_ttl
        self._task_retention = task_retention
        self._interval = interval
        self._job: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self._output_ttl > 0 or self._task_retention > 0

    async def start(self) -> None:
        if self.enabled and self._job is None:
            self._job = asyncio.create_task(self._run(), name="retention-sweep")

    async def stop(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job

    async def _run(self) -> None:
        while True:
            try:
                swept = await self.sweep()
            except CosyVoiceError as exc:  # an outage: the next sweep tries again
                log.warning("retention sweep skipped: %s", exc.detail)
            except Exception:
                log.exception("retention sweep failed")
            else:
                if swept.outputs or swept.tasks:
                    log.info(
                        "retention: deleted %d output(s) and %d finished task(s)",
                        swept.outputs,
                        swept.tasks,
                    )
            await asyncio.sleep(self._interval)

    async def sweep(self, now: datetime | None = None) -> Swept:
        """One pass of both rules; returns how much it deleted."""
        now = now or utcnow()
        outputs = tasks = 0
        if self._output_ttl > 0:
            outputs = await self._sweep_outputs(now - timedelta(seconds=self._output_ttl))
        if self._task_retention > 0:
            tasks = await self._sweep_tasks(now - timedelta(seconds=self._task_retention))
        return Swept(outputs=outputs, tasks=tasks)

    async def _sweep_outputs(self, cutoff: datetime) -> int:
        # Collected first: deleting while a store lists could make it skip keys.
        expired = [
            blob.key
            async for blob in self._blobs.list_blobs(OUTPUTS_PREFIX)
            if blob.modified < cutoff and is_synchronous_output(blob.key)
        ]
        for key in expired:
            await self._delete_blob(key)
        return len(expired)

    async def _sweep_tasks(self, cutoff: datetime) -> int:
        deleted = 0
        while True:
            batch = await self._store.delete_finished_tasks_before(cutoff, TASK_BATCH)
            for task in batch:
                await self._delete_blob(output_key(task.filename))
            deleted += len(batch)
            if len(batch) < TASK_BATCH:
                return deleted

    async def _delete_blob(self, key: str) -> None:
        with contextlib.suppress(NotFound):
            await self._blobs.delete(key)

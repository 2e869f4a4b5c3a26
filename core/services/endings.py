"""How a task ends: one path for every ending, recorded the same way and announced once.

Whoever ends a task (the worker with its result, the API cancelling, the bus giving up
on a render after its last delivery) goes through `TaskEndings`:

1. one compare-and-set writes the final status with `completed_at`, clears the lease
   and its claim, and marks the webhook `pending` when the task has a callback;
2. only the caller whose compare-and-set won announces the ending on the bus, so two
   racing endings (a dead letter and a late worker, a cancel during a render) record one
   ending and announce it once.

It needs only the repository and the bus, so a process without engines (the JetStream
source handling dead letters) ends tasks exactly as the API and the worker do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from ..domain import FINAL_STATUSES, QUEUED_STATUSES, Task, TaskStatus, WebhookState, utcnow
from ..errors import BackendUnavailable, TaskNotFound
from ..ports import EventBus, MetadataStore
from .webhooks import task_ended_payload

log = logging.getLogger(__name__)

UNFINISHED_STATUSES = frozenset(set(TaskStatus) - FINAL_STATUSES)
# What a render can fail from: a `pending` task was never queued, so no render of it can
# give up (an old event for it must not end it).
RENDERABLE_STATUSES = QUEUED_STATUSES | {TaskStatus.processing}
# Pauses between announcements of one ending while the bus is unavailable: about a
# minute in all, longer than a NATS pod takes to restart. The resend of pending webhooks
# is the last resort, and it waits a whole delivery window (minutes) before it acts.
ANNOUNCE_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
# How recent an ending must be to be announced again when its render is delivered again:
# well inside the bus's duplicate window (two minutes), so that if the first announcement
# did get through, the stream drops the repeat by its event id.
REANNOUNCE_WITHIN = timedelta(seconds=60)


def ending_changes(task: Task, status: TaskStatus, **changes: Any) -> dict[str, Any]:
    """Changes that end a task: the final status, its time, and a webhook marked due.

    Marking the webhook `pending` in the same write as the final status means a crash
    between the two cannot lose the callback: the resend picks up every pending one.
    """
    assert status in FINAL_STATUSES
    ending: dict[str, Any] = {
        "status": status,
        "completed_at": utcnow(),
        "lease_until": None,
        "claim_id": None,
    }
    if task.callback_url:
        ending["webhook"] = WebhookState(status="pending")
    return ending | changes


class TaskEndings:
    """Completes, fails and cancels tasks; the only writer of final statuses."""

    def __init__(
        self,
        store: MetadataStore,
        bus: EventBus,
        retry_delays: Iterable[float] = ANNOUNCE_RETRY_DELAYS,
    ) -> None:
        self._store = store
        self._bus = bus
        self._retry_delays = tuple(retry_delays)
        self._retrying: set[asyncio.Task[None]] = set()

    async def complete(
        self, task: Task, *, claim_id: str | None = None, **results: Any
    ) -> Task | None:
        """processing → completed with the render's `results`, only while the task still
        holds `claim_id` (by default the claim it was read with, the worker's own).

        None when the claim was lost (retaken, cancelled, deleted): nothing is written.
        """
        claim = claim_id or task.claim_id
        if claim is None:
            raise ValueError(f"task {task.task_id} was not claimed: only its claim completes it")
        changes = {"progress": 1.0, "error_message": None} | results
        return await self._end(task, TaskStatus.completed, [TaskStatus.processing], claim, changes)

    async def fail(
        self,
        task_id: str,
        reason: str,
        *,
        claim_id: str | None = None,
        expected: Iterable[TaskStatus] | None = None,
    ) -> Task | None:
        """Fail a task with `reason`; None when it is absent or no longer fails from here.

        With `claim_id` only the worker holding that claim can fail it (from
        `processing`); without, from any status a render can fail from (or `expected`).
        """
        try:
            task = await self._store.get_task(task_id)
        except TaskNotFound:
            return None
        if expected is None:
            expected = [TaskStatus.processing] if claim_id is not None else RENDERABLE_STATUSES
        return await self._end(
            task, TaskStatus.failed, expected, claim_id, {"error_message": reason}
        )

    async def cancel(self, task: Task, reason: str = "cancelled by request") -> Task | None:
        """Any unfinished status → cancelled; a worker rendering it notices at its next write."""
        return await self._end(
            task, TaskStatus.cancelled, UNFINISHED_STATUSES, None, {"error_message": reason}
        )

    async def _end(
        self,
        task: Task,
        status: TaskStatus,
        expected: Iterable[TaskStatus],
        claim_id: str | None,
        changes: dict[str, Any],
    ) -> Task | None:
        ended = await self._store.transition(
            task.task_id, expected, ending_changes(task, status, **changes), claim_id=claim_id
        )
        if ended is not None:
            await self.announce(ended)
        return ended

    async def announce(self, task: Task) -> None:
        """Tell the bus a task ended (the webhook path listens). Never raises: while the
        bus is unavailable the announcement is retried in the background (the event id
        makes a repeat harmless), and past that the webhook, marked pending on the task,
        is resent by the periodic resend."""
        try:
            await self._publish(task)
        except BackendUnavailable as exc:
            log.warning(
                "task %s is %s; announcing it again soon: %s",
                task.task_id,
                task.status.value,
                exc.detail,
            )
            retry = asyncio.create_task(self._announce_again(task))
            self._retrying.add(retry)
            retry.add_done_callback(self._retrying.discard)
        except Exception:
            log.exception("could not announce that task %s is %s", task.task_id, task.status)

    async def announce_if_unsent(self, task: Task) -> bool:
        """Announce an ended task again when its process may have died between the
        final write and the announcement; True when it did.

        The sign is a render request delivered again for a task that has already ended:
        the bus redelivers what its worker never acknowledged. A callback not yet tried
        (`pending`, no attempt) of a recent ending is announced again; the event id makes
        the repeat a no-op when the first got through. Older ones are the resend's.
        """
        if not task.status.is_final or not task.callback_url or task.completed_at is None:
            return False
        if task.webhook.status != "pending" or task.webhook.attempts:
            return False
        if utcnow() - task.completed_at > REANNOUNCE_WITHIN:
            return False
        log.info(
            "task %s is %s: announcing it again in case its worker died before it did",
            task.task_id,
            task.status.value,
        )
        await self.announce(task)
        return True

    async def _publish(self, task: Task) -> None:
        await self._bus.publish_task_ended(task.status.value, task_ended_payload(task))

    async def _announce_again(self, task: Task) -> None:
        for delay in self._retry_delays:
            await asyncio.sleep(delay)
            try:
                await self._publish(task)
            except BackendUnavailable:
                continue
            except Exception:
                break
            log.info("task %s: announced that it is %s", task.task_id, task.status.value)
            return
        log.error(
            "could not announce that task %s is %s; its webhook waits for the resend",
            task.task_id,
            task.status.value,
        )

    async def settle(self) -> None:
        """Wait for announcements being retried (tests, and a stop that may wait)."""
        await asyncio.gather(*self._retrying, return_exceptions=True)

"""The embedded event bus: an in-process priority queue backed by the task table.

Nothing is kept only in memory: a render is queued because its task is `registered` or
`scheduled` in the repository, so after a restart `consume_renders` rebuilds the queue
from `MetadataStore.queued_tasks()` before it serves anything. A task id sits in the
queue at most once; a failed render goes back in after a growing delay, and one whose
task another worker holds (`LeaseHeld`) after that lease, without counting a delivery.

Within a priority, tasks take turns: each job of a task gets the task's next turn, from
the current turn on (start-time fair queueing), and ties go to the job queued first. A
long-form task's segment jobs therefore take one turn each, and a task queued after them
waits for one of them, not for all: a short render is never stuck behind an audiobook.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ...errors import BackendUnavailable, LeaseHeld
from ...ports import (
    MetadataStore,
    RenderHandler,
    RenderRequest,
    SubmissionHandler,
    TaskEndedHandler,
)

log = logging.getLogger(__name__)

DeadLetterHandler = Callable[[str, str], Awaitable[None]]

_MAX_RETRY_DELAY = 60.0


class MemoryEventBus:
    """`EventBus` inside one process (the default: nothing to install)."""

    def __init__(
        self,
        store: MetadataStore,
        *,
        retry_delay: float = 1.0,
        max_deliver: int | None = None,
        on_dead_letter: DeadLetterHandler | None = None,
    ) -> None:
        """`max_deliver=None` retries until the handler succeeds; handlers that give up
        on a task themselves (marking it failed and returning) never need the limit."""
        self._store = store
        self._retry_delay = retry_delay
        self._max_deliver = max_deliver
        self._on_dead_letter = on_dead_letter
        self._queue: asyncio.PriorityQueue[tuple[int, int, int, RenderRequest]] | None = None
        self._order = itertools.count()
        self._turn = 0  # the turn of the job handed out last
        self._next_turns: dict[str, int] = {}  # task id -> the turn after its last queued job
        self._tracked: set[str] = set()  # request keys queued, waiting for a retry, or running
        self._deliveries: dict[str, int] = {}
        self._task_ended: list[TaskEndedHandler] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._workers: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> None:
        self._queue = asyncio.PriorityQueue()
        self._closing = False

    async def close(self) -> None:
        self._closing = True
        pending = [*self._workers, *self._background]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._workers.clear()
        self._background.clear()
        self._tracked.clear()
        self._deliveries.clear()
        self._next_turns.clear()
        self._queue = None

    async def ping(self) -> None:
        return None

    # --- renders -------------------------------------------------------------------

    async def publish_render(self, request: RenderRequest) -> None:
        self._enqueue(request)

    def _enqueue(self, request: RenderRequest) -> None:
        if request.key in self._tracked:
            return
        self._tracked.add(request.key)
        self._put(request)

    def _put(self, request: RenderRequest) -> None:
        if self._queue is None:
            raise BackendUnavailable("event bus unavailable: it is not started")
        turn = max(self._turn, self._next_turns.get(request.task_id, 0))
        self._next_turns[request.task_id] = turn + 1
        self._queue.put_nowait((request.priority.rank, turn, next(self._order), request))

    def _handed_out(self, turn: int, request: RenderRequest) -> None:
        self._turn = max(self._turn, turn)
        if self._next_turns.get(request.task_id, 0) <= self._turn + 1:
            # Nothing of the task queued past this turn: it starts afresh next time.
            self._next_turns.pop(request.task_id, None)

    async def consume_renders(self, handler: RenderHandler, concurrency: int) -> None:
        for task in await self._store.queued_tasks():
            self._enqueue(RenderRequest(task_id=task.task_id, priority=task.priority))
        workers = [
            asyncio.create_task(self._work(handler), name=f"render-worker-{n}")
            for n in range(max(concurrency, 1))
        ]
        self._workers.update(workers)
        try:
            await asyncio.gather(*workers)
        except asyncio.CancelledError:
            if not self._closing:
                raise
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self._workers.difference_update(workers)

    async def _work(self, handler: RenderHandler) -> None:
        while True:
            assert self._queue is not None
            _, turn, _, request = await self._queue.get()
            self._handed_out(turn, request)
            deliveries = self._deliveries.get(request.key, 0) + 1
            self._deliveries[request.key] = deliveries
            try:
                await handler(request)
            except asyncio.CancelledError:
                raise
            except LeaseHeld as exc:
                # Another worker renders it: not an attempt. Ask again when its lease may
                # have run out, to retake it if that worker is gone.
                self._deliveries[request.key] = deliveries - 1
                self._spawn(self._requeue_later(request, exc.retry_after_seconds))
            except Exception as exc:
                await self._failed(request, deliveries, exc)
            else:
                self._forget(request.key)

    async def _failed(self, request: RenderRequest, deliveries: int, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        if self._max_deliver is not None and deliveries >= self._max_deliver:
            log.error(
                "render %s failed %d times, giving up: %s", request.task_id, deliveries, reason
            )
            self._forget(request.key)
            if self._on_dead_letter is not None:
                try:
                    await self._on_dead_letter(request.task_id, reason)
                except Exception:  # the worker must outlive a failing callback
                    log.exception("dead-letter callback failed for task %s", request.task_id)
            return
        delay = min(self._retry_delay * 2 ** (deliveries - 1), _MAX_RETRY_DELAY)
        log.warning("render %s failed (%s); retrying in %.1fs", request.task_id, reason, delay)
        self._spawn(self._requeue_later(request, delay))

    async def _requeue_later(self, request: RenderRequest, delay: float) -> None:
        await asyncio.sleep(delay)
        self._put(request)

    def _forget(self, key: str) -> None:
        self._tracked.discard(key)
        self._deliveries.pop(key, None)

    async def consume_submissions(
        self, handler: SubmissionHandler, *, concurrency: int = 1
    ) -> None:
        """No other service reaches an in-process bus, so nothing is ever submitted here:
        jobs come through the task API instead."""
        return None

    # --- task-ended notifications --------------------------------------------------

    async def publish_task_ended(self, status: str, payload: dict[str, Any]) -> None:
        for handler in self._task_ended:
            self._spawn(self._notify(handler, status, payload))

    async def subscribe_task_ended(
        self, handler: TaskEndedHandler, *, name: str = "task-ended"
    ) -> None:
        """Call `handler(payload)` for every task that ends from now on.

        `name` matters to the cluster bus (subscribers sharing a name share the work);
        here every subscriber sees every event.
        """
        self._task_ended.append(handler)

    @staticmethod
    async def _notify(handler: TaskEndedHandler, status: str, payload: dict[str, Any]) -> None:
        try:
            await handler(payload)
        except Exception:
            log.exception("task-ended subscriber failed for a %s task", status)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

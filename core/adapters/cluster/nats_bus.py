"""The cluster event bus: NATS JetStream, every message a binary-mode CloudEvent.

Stream `COSYVOICE` (its name is configurable) holds every `cosyvoice.>` subject on
disk. The bus creates it and keeps its configuration unless `manage_stream` is off:
then another owner (a NACK Stream object) defines it and the bus only checks it exists.
Render requests go to `cosyvoice.render.requested.<priority>`, one durable pull
consumer per priority, and a dispatcher drains them highest first: it asks `urgent`
for one message, then `high` only if `urgent` had none, and so on, and only when a
handler slot is free, so an urgent job never waits behind a thousand low ones.

Delivery rules, shared by every consumer here:

- success → ack; the handler raised → a failed attempt: nak with a growing delay
  (JetStream redelivers);
- the handler raised `RetryLater` (the work is someone else's for now) → nak with the
  delay it asked for; no attempt is spent;
- the handler raised `SinkUnavailable` (what it hands the event to is not there or not
  ready: not the event's fault) → the message is kept, in progress, and tried again
  after a pause that doubles up to `sink_backoff_max`; no new message is pulled until
  the sink answers again;
- a long handler sends in-progress heartbeats so the ack wait does not run out;
- after `max_deliver` failed attempts the message is copied to `cosyvoice.dlq.<subject>`,
  `on_dead_letter(task_id, reason)` is told (so the task can be marked failed), and the
  message is terminated.

Failed attempts are counted here, per message, and not read from JetStream's delivery
count: that count also grows with every redelivery that was no attempt (a busy or
restarting sink, a nak asked for by the handler), so the consumers have no MaxDeliver
(-1). The count lives in the consuming process; if it restarts, a message's count
starts again, and the render's own attempts on the task record (TASK_MAX_ATTEMPTS) bound
a task that keeps killing its worker.

De-duplication: each message carries `Nats-Msg-Id` equal to its `ce-id`, and the
stream drops a repeat within its duplicate window. A render's id is
`render.<task_id>.<queued_at ms>.<attempts>` read from the task, so publishing the same
queued task twice is one message, while a task re-queued after a crash (a later
`queued_at` or more `attempts`) is a new one.

The connection reconnects forever; consumers keep polling through an outage and pick
up again when the server is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from ...domain import PRIORITY_ORDER, Priority
from ...errors import BackendUnavailable, InvalidInput, LeaseHeld, TaskNotFound
from ...ports import (
    MetadataStore,
    RenderHandler,
    RenderRequest,
    SubmissionHandler,
    TaskEndedHandler,
)
from .cloudevents_codec import (
    DEFAULT_SOURCE,
    RENDER_REQUESTED,
    RENDER_SUBMIT,
    IncomingEvent,
    OutgoingEvent,
    decode_event,
    encode_event,
    render_event_data,
    render_request_from,
    task_ended_type,
)

log = logging.getLogger(__name__)

STREAM = "COSYVOICE"
STREAM_SUBJECTS = "cosyvoice.>"
RENDER_SUBJECT = "cosyvoice.render.requested"
SUBMIT_SUBJECT = "cosyvoice.render.submit"
TASK_SUBJECT = "cosyvoice.task"
DLQ_SUBJECT = "cosyvoice.dlq"

MSG_ID_HEADER = "Nats-Msg-Id"
DLQ_REASON_HEADER = "Cosyvoice-Dead-Letter-Reason"
DLQ_DELIVERIES_HEADER = "Cosyvoice-Deliveries"
DLQ_ATTEMPTS_HEADER = "Cosyvoice-Failed-Attempts"

DeadLetterHandler = Callable[[str, str], Awaitable[None]]

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
_MAX_RETRY_DELAY = 60.0
_SINK_BACKOFF_BASE = 0.5
_ATTEMPT_MEMORY = 10_000  # messages whose failed attempts are remembered at once
_IDLE_FETCH_TIMEOUT = 1.0
_OUTAGE_PAUSE = 1.0
_RETENTION_SECONDS = 7 * 24 * 3600.0


def render_subject(priority: Priority) -> str:
    return f"{RENDER_SUBJECT}.{priority.value}"


class SinkUnavailable(Exception):
    """Where the handler sends the event is not there or not ready: try it again later,
    without spending one of the event's attempts."""


class RetryLater(Exception):
    """The handler was told to come back after `delay` seconds; not an attempt."""

    def __init__(self, reason: str, delay: float) -> None:
        super().__init__(reason)
        self.delay = delay


class SinkGate:
    """Whether the sink takes events, and when to try it again while it does not.

    Every held message reports the outcome of its try; the pause doubles once per round
    of tries (not once per message), from `base` up to `cap`.
    """

    def __init__(self, base: float, cap: float) -> None:
        self._base = base
        self._cap = cap
        self._open = asyncio.Event()
        self._open.set()
        self._failures = 0
        self._retry_at = 0.0
        self.round = 0

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def down(self, seen_round: int, reason: str) -> None:
        """A try that started in `seen_round` found the sink unavailable."""
        if seen_round != self.round:
            return  # another message already reported this round
        self._failures += 1
        self.round += 1
        pause = min(self._base * 2 ** (self._failures - 1), self._cap)
        self._retry_at = time.monotonic() + pause
        self._open.clear()
        log.warning("sink unavailable (%s); next try in %.1fs", reason, pause)

    def up(self) -> None:
        if not self._open.is_set():
            log.info("sink available again after %d failed tries", self._failures)
        self._failures = 0
        self.round += 1
        self._open.set()

    async def wait_open(self) -> None:
        await self._open.wait()

    async def wait_retry(self) -> None:
        await asyncio.sleep(max(self._retry_at - time.monotonic(), 0.0))


class NatsEventBus:
    """`EventBus` over NATS JetStream."""

    def __init__(
        self,
        url: str,
        store: MetadataStore,
        *,
        max_deliver: int,
        ack_wait: float,
        on_dead_letter: DeadLetterHandler | None = None,
        retry_delay: float = 1.0,
        duplicate_window: float = 120.0,
        replicas: int = 1,
        poll_interval: float = 0.1,
        timeout: float = 5.0,
        source: str = DEFAULT_SOURCE,
        stream: str = STREAM,
        manage_stream: bool = True,
        sink_backoff_max: float = 30.0,
    ) -> None:
        """`poll_interval` is how long each priority is asked for work before the next
        one; `timeout` bounds connecting and each publish. `stream` names the JetStream
        stream; with `manage_stream` off its configuration belongs to someone else.
        `max_deliver` is failed attempts, not deliveries; `sink_backoff_max` caps the
        pause between tries while the sink is unavailable."""
        self._url = url
        self._stream = stream
        self._manage_stream = manage_stream
        self._store = store
        self._max_deliver = max(max_deliver, 1)
        self._ack_wait = ack_wait
        self._on_dead_letter = on_dead_letter
        self._retry_delay = retry_delay
        self._duplicate_window = duplicate_window
        self._replicas = replicas
        self._poll_interval = poll_interval
        self._timeout = timeout
        self._source = source
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._loops: set[asyncio.Task[None]] = set()
        self._closing = False
        self._sink = SinkGate(_SINK_BACKOFF_BASE, sink_backoff_max)
        self._failed_attempts: dict[int, int] = {}  # stream sequence → failed attempts

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        if self._nc is not None:
            return
        self._closing = False
        nc = NatsClient()
        try:
            # Reconnecting forever also applies to the first connection, so bound it here:
            # a server that is not there at start-up is an error the caller should see.
            async with asyncio.timeout(self._timeout):
                await nc.connect(
                    self._url,
                    name="cosyvoice",
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    # nats-py annotates this as int, but it is seconds passed to sleep().
                    reconnect_time_wait=0.5,  # type: ignore[arg-type]
                    connect_timeout=max(int(self._timeout), 1),
                    error_cb=self._connection_error,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                )
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            self._closing = True
            with contextlib.suppress(nats.errors.Error):
                await nc.close()
            where = _without_credentials(self._url)
            raise BackendUnavailable(f"event bus unavailable: cannot reach {where}") from exc
        self._nc, self._js = nc, nc.jetstream(timeout=self._timeout)
        try:
            await self._ensure_stream()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._closing = True
        loops = list(self._loops)
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        self._loops.clear()
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await nc.close()

    async def ping(self) -> None:
        if self._nc is None or not self._nc.is_connected:
            raise BackendUnavailable("event bus unavailable: not connected to NATS")
        try:
            await self._jetstream.account_info()
        except nats.errors.Error as exc:
            raise BackendUnavailable(f"event bus unavailable: {exc!r}") from exc

    async def _connection_error(self, exc: Exception) -> None:
        if not self._closing:
            log.warning("event bus connection error: %r", exc)

    async def _disconnected(self) -> None:
        if not self._closing:
            log.warning("event bus disconnected; reconnecting")

    async def _reconnected(self) -> None:
        log.info("event bus reconnected")

    @property
    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise BackendUnavailable("event bus unavailable: it is not started")
        return self._js

    async def _ensure_stream(self) -> None:
        """Create the stream, or bring an existing one to this configuration.

        When the stream is managed elsewhere, updating it here would fight its owner over
        replicas and retention, so it is only required to exist.
        """
        if not self._manage_stream:
            await self._require_stream()
            return
        config = StreamConfig(
            name=self._stream,
            subjects=[STREAM_SUBJECTS],
            storage=StorageType.FILE,
            num_replicas=self._replicas,
            duplicate_window=self._duplicate_window,
            max_age=_RETENTION_SECONDS,
        )
        js = self._jetstream
        try:
            try:
                await js.stream_info(self._stream)
            except nats.js.errors.NotFoundError:
                try:
                    await js.add_stream(config)
                    return
                except nats.js.errors.BadRequestError:
                    pass  # another replica created it first: fall through to update
            await js.update_stream(config)
        except nats.errors.Error as exc:
            raise BackendUnavailable(f"event bus unavailable: {exc!r}") from exc

    async def _require_stream(self) -> None:
        try:
            await self._jetstream.stream_info(self._stream)
        except nats.js.errors.NotFoundError as exc:
            raise BackendUnavailable(
                f"event bus unavailable: stream {self._stream} does not exist "
                "(JETSTREAM_MANAGE_STREAM=false leaves creating it to its owner)"
            ) from exc
        except nats.errors.Error as exc:
            raise BackendUnavailable(f"event bus unavailable: {exc!r}") from exc

    # --- publishing ----------------------------------------------------------------

    async def publish_render(self, request: RenderRequest) -> None:
        if request.segment is not None:
            # A segment's content never changes: one id per segment, so a re-planned
            # task re-publishing a segment still in the stream adds nothing.
            event_id = f"render.{request.task_id}.segment.{request.segment}"
        else:
            event_id = await self._render_event_id(request.task_id)
        event = encode_event(
            RENDER_REQUESTED, render_event_data(request), event_id=event_id, source=self._source
        )
        await self._publish(render_subject(request.priority), event)

    async def _render_event_id(self, task_id: str) -> str:
        try:
            task = await self._store.get_task(task_id)
        except TaskNotFound:
            return f"render.{task_id}"
        queued = int(task.queued_at.timestamp() * 1000) if task.queued_at else 0
        return f"render.{task_id}.{queued}.{task.attempts}"

    async def publish_task_ended(self, status: str, payload: dict[str, Any]) -> None:
        if not _TOKEN.match(status):
            raise InvalidInput(f"invalid task status for a subject: {status!r}")
        task_id = payload.get("task_id")
        # A task ends in a given status once, so the pair names the event: a repeat
        # announcement (a retried worker) is dropped by the stream.
        event = encode_event(
            task_ended_type(status),
            payload,
            event_id=f"task.{task_id}.{status}" if task_id else None,
            source=self._source,
        )
        await self._publish(f"{TASK_SUBJECT}.{status}", event)

    async def publish_submission(self, spec: dict[str, Any], *, event_id: str | None = None) -> str:
        """Put a full task spec on `cosyvoice.render.submit`, as an external producer
        would; returns the event id (repeat it to make a retry a no-op)."""
        event = encode_event(RENDER_SUBMIT, spec, event_id=event_id, source=self._source)
        await self._publish(SUBMIT_SUBJECT, event)
        return event.event_id

    async def _publish(self, subject: str, event: OutgoingEvent) -> None:
        headers = {**event.headers, MSG_ID_HEADER: event.event_id}
        try:
            await self._jetstream.publish(
                subject, event.body, headers=headers, timeout=self._timeout
            )
        except nats.errors.Error as exc:
            raise BackendUnavailable(f"event bus unavailable: {exc!r}") from exc

    # --- consuming -----------------------------------------------------------------

    async def consume_renders(self, handler: RenderHandler, concurrency: int) -> None:
        subscriptions = [
            await self._bind(f"render-{priority.value}", render_subject(priority))
            for priority in PRIORITY_ORDER
        ]
        await self._serve(subscriptions, partial(self._render, handler), concurrency)

    async def consume_submissions(
        self, handler: SubmissionHandler, *, concurrency: int = 1
    ) -> None:
        """Run `handler(ce_id, task_spec)` for each event on `cosyvoice.render.submit`
        until cancelled; the message is acked once the handler returns."""
        subscription = await self._bind("render-submit", SUBMIT_SUBJECT)
        await self._serve([subscription], partial(self._submission, handler), concurrency)

    async def subscribe_task_ended(
        self, handler: TaskEndedHandler, *, name: str = "task-ended", concurrency: int = 4
    ) -> None:
        """Call `handler(payload)` for every task that ends, in the background.

        Subscribers with the same `name` (replicas of one service) share one durable
        consumer, so each event is handled once among them.
        """
        if not _TOKEN.match(name):
            raise InvalidInput(f"invalid subscriber name: {name!r}")
        subscription = await self._bind(name, f"{TASK_SUBJECT}.>")
        loop = asyncio.create_task(
            self._serve([subscription], partial(self._task_ended, handler), concurrency),
            name=f"nats-{name}",
        )
        self._loops.add(loop)
        loop.add_done_callback(self._loops.discard)

    async def _bind(self, durable: str, subject: str) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(
            name=durable,
            durable_name=durable,
            filter_subject=subject,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait,
            # Unlimited: redeliveries that were no attempt must not use up the event;
            # failed attempts are counted in `_deliver`.
            max_deliver=-1,
        )
        js = self._jetstream
        try:
            await js.add_consumer(self._stream, config)  # creates, or updates in place
            return await js.pull_subscribe_bind(durable=durable, stream=self._stream)
        except nats.errors.Error as exc:
            raise BackendUnavailable(f"event bus unavailable: {exc!r}") from exc

    async def _serve(
        self,
        subscriptions: Sequence[JetStreamContext.PullSubscription],
        process: Callable[[Msg], Coroutine[Any, Any, None]],
        concurrency: int,
    ) -> None:
        """Feed `process` one message at a time, at most `concurrency` at once, until
        cancelled or the bus closes."""
        dispatcher = asyncio.create_task(self._dispatch(subscriptions, process, concurrency))
        self._loops.add(dispatcher)
        try:
            await dispatcher
        except asyncio.CancelledError:
            if not self._closing or not dispatcher.cancelled():
                raise
        finally:
            await _stop(dispatcher)
            self._loops.discard(dispatcher)

    async def _dispatch(
        self,
        subscriptions: Sequence[JetStreamContext.PullSubscription],
        process: Callable[[Msg], Coroutine[Any, Any, None]],
        concurrency: int,
    ) -> None:
        slots = asyncio.Semaphore(max(concurrency, 1))
        running: set[asyncio.Task[None]] = set()

        def finished(task: asyncio.Task[None]) -> None:
            running.discard(task)
            slots.release()
            if not task.cancelled() and task.exception() is not None:
                log.error("message handling crashed", exc_info=task.exception())

        try:
            while True:
                await slots.acquire()
                try:
                    await self._sink.wait_open()  # pull nothing while the sink is down
                    msg = await self._next_message(subscriptions)
                except BaseException:
                    slots.release()
                    raise
                task = asyncio.create_task(process(msg))
                running.add(task)
                task.add_done_callback(finished)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _next_message(
        self, subscriptions: Sequence[JetStreamContext.PullSubscription]
    ) -> Msg:
        """The next message of the first subscription that has one (highest first).

        With several consumers, each is first asked how many messages it holds, in
        priority order, and the fetch goes to the first with work: a normal render never
        waits for the empty urgent and high consumers to time out. Redeliveries waiting
        out their backoff are not counted there, so when every count is zero the
        consumers are polled in order as well.
        """
        timeout = self._poll_interval if len(subscriptions) > 1 else _IDLE_FETCH_TIMEOUT
        while True:
            try:
                if len(subscriptions) > 1:
                    for subscription in await self._with_pending(subscriptions):
                        msg = await self._fetch_one(subscription, timeout)
                        if msg is not None:
                            return msg
                for subscription in subscriptions:
                    msg = await self._fetch_one(subscription, timeout)
                    if msg is not None:
                        return msg
            except nats.errors.Error as exc:  # reconnecting, JetStream not ready yet
                log.debug("waiting for the event bus: %r", exc)
                await asyncio.sleep(_OUTAGE_PAUSE)

    @staticmethod
    async def _with_pending(
        subscriptions: Sequence[JetStreamContext.PullSubscription],
    ) -> list[JetStreamContext.PullSubscription]:
        infos = await asyncio.gather(*(s.consumer_info() for s in subscriptions))
        return [s for s, info in zip(subscriptions, infos, strict=True) if info.num_pending]

    @staticmethod
    async def _fetch_one(
        subscription: JetStreamContext.PullSubscription, wait: float
    ) -> Msg | None:
        try:
            (msg,) = await subscription.fetch(1, timeout=wait)
        except nats.errors.TimeoutError:
            msg = None
        this = asyncio.current_task()
        if this is not None and this.cancelling():
            # A cancellation the fetch swallowed (asyncio.wait_for on 3.11 can, when it
            # lands as the fetch ends): honour it. A message fetched meanwhile is not
            # acked, so the bus delivers it again.
            raise asyncio.CancelledError
        return msg

    # --- message handling ----------------------------------------------------------

    async def _render(self, handler: RenderHandler, msg: Msg) -> None:
        try:
            event = decode_event(msg.headers, msg.data)
            request = render_request_from(event.data)
        except (InvalidInput, KeyError, ValueError) as exc:
            await self._dead_letter(msg, f"malformed render request: {exc}", None)
            return
        await self._deliver(msg, partial(handler, request), request.task_id)

    async def _submission(self, handler: SubmissionHandler, msg: Msg) -> None:
        event = await self._decoded(msg)
        if event is not None:
            await self._deliver(msg, partial(handler, event.event_id, event.data), None)

    async def _task_ended(self, handler: TaskEndedHandler, msg: Msg) -> None:
        event = await self._decoded(msg)
        if event is not None:
            await self._deliver(msg, partial(handler, event.data), None)

    async def _decoded(self, msg: Msg) -> IncomingEvent | None:
        try:
            return decode_event(msg.headers, msg.data)
        except InvalidInput as exc:
            await self._dead_letter(msg, exc.detail, None)
            return None

    async def _deliver(
        self, msg: Msg, work: Callable[[], Awaitable[None]], task_id: str | None
    ) -> None:
        sequence = msg.metadata.sequence.stream
        failed = self._failed_attempts.get(sequence, 0)
        if failed >= self._max_deliver:  # the dead letter itself did not go through
            await self._give_up(msg, f"{failed} failed attempts", task_id, sequence)
            return
        try:
            async with self._heartbeats(msg):
                await self._until_sink_answers(work)
        except asyncio.CancelledError:
            raise  # not acked: JetStream redelivers it after the ack wait
        except LeaseHeld as exc:  # another worker renders the task: not an attempt
            log.info("%s comes back in %.1fs: %s", msg.subject, exc.retry_after_seconds, exc)
            await _settle(msg.nak(delay=exc.retry_after_seconds))
        except RetryLater as exc:
            log.info("%s comes back in %.1fs: %s", msg.subject, exc.delay, exc)
            await _settle(msg.nak(delay=exc.delay))
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            failed += 1
            if failed >= self._max_deliver:
                await self._give_up(msg, reason, task_id, sequence)
                return
            self._remember_failure(sequence, failed)
            delay = min(self._retry_delay * 2 ** (failed - 1), _MAX_RETRY_DELAY)
            log.warning(
                "handling %s failed (attempt %d of %d): %s; retry in %.1fs",
                msg.subject,
                failed,
                self._max_deliver,
                reason,
                delay,
            )
            await _settle(msg.nak(delay=delay))
        else:
            self._failed_attempts.pop(sequence, None)
            await _settle(msg.ack())

    async def _until_sink_answers(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work` until its sink answers: while it is unavailable, keep the message
        (the caller's heartbeats hold it) and try again after the gate's pause."""
        while True:
            seen = self._sink.round
            try:
                await work()
            except SinkUnavailable as exc:
                self._sink.down(seen, str(exc))
                await self._sink.wait_retry()
                continue
            except asyncio.CancelledError:
                raise
            except Exception:
                self._sink.up()  # it answered, even if the answer was a failure
                raise
            self._sink.up()
            return

    def _remember_failure(self, sequence: int, failed: int) -> None:
        self._failed_attempts[sequence] = failed
        while len(self._failed_attempts) > _ATTEMPT_MEMORY:  # forget the oldest
            del self._failed_attempts[next(iter(self._failed_attempts))]

    async def _give_up(self, msg: Msg, reason: str, task_id: str | None, sequence: int) -> None:
        self._remember_failure(sequence, self._max_deliver)
        if await self._dead_letter(msg, reason, task_id):
            self._failed_attempts.pop(sequence, None)

    @contextlib.asynccontextmanager
    async def _heartbeats(self, msg: Msg) -> AsyncIterator[None]:
        """Tell JetStream a long handler is alive, so the message is not redelivered."""

        async def beat() -> None:
            interval = max(self._ack_wait / 3, 0.2)
            while True:
                await asyncio.sleep(interval)
                with contextlib.suppress(nats.errors.Error):
                    await msg.in_progress()

        beating = asyncio.create_task(beat())
        try:
            yield
        finally:
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)

    async def _dead_letter(self, msg: Msg, reason: str, task_id: str | None) -> bool:
        """Copy the message to the DLQ, report the task, then stop its redeliveries.

        Each step may be repeated safely: a failure naks the message, it is delivered
        again, and the DLQ copy is de-duplicated by its id. False when it must be repeated.
        """
        meta = msg.metadata
        log.error("dead-lettering %s (task %s): %s", msg.subject, task_id, reason)
        headers = dict(msg.headers or {})
        headers[MSG_ID_HEADER] = f"dlq.{meta.stream}.{meta.sequence.stream}"
        headers[DLQ_REASON_HEADER] = " ".join(reason.split())[:500]
        headers[DLQ_DELIVERIES_HEADER] = str(meta.num_delivered)
        headers[DLQ_ATTEMPTS_HEADER] = str(self._failed_attempts.get(meta.sequence.stream, 0))
        try:
            await self._jetstream.publish(
                f"{DLQ_SUBJECT}.{msg.subject}", msg.data, headers=headers, timeout=self._timeout
            )
        except nats.errors.Error as exc:
            log.warning("could not dead-letter %s yet: %r", msg.subject, exc)
            await _settle(msg.nak(delay=self._retry_delay))
            return False
        if task_id is not None and self._on_dead_letter is not None:
            try:
                await self._on_dead_letter(task_id, reason)
            except Exception:
                log.exception("dead-letter callback failed for task %s", task_id)
                await _settle(msg.nak(delay=self._retry_delay))
                return False
        await _settle(msg.term())
        return True


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 4222}"


async def _settle(reply: Awaitable[None]) -> None:
    """Ack/nak/term are best effort: if one is lost, JetStream redelivers the message."""
    try:
        await reply
    except nats.errors.Error as exc:
        log.warning("could not settle a message: %r", exc)


async def _stop(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait for it, cancelling again while it runs: a cancellation can
    be swallowed by a library call in progress (see `_dispatch`)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    if not task.cancelled():
        task.exception()  # retrieved: its end is reported by whoever awaited it

"""The JetStream source adapter: pull durable consumers, POST each event to K_SINK.

Runs as a Knative ContainerSource, one per consumer. JetStream is the durable store, so
an event is settled only by what the function answers:

    200                      handled: ack
    200 {"rejected": why}    the event can never be handled: ack, log why once
    429 + Retry-After        come back later (the task is someone else's for now): nak
                             with that delay; not an attempt
    500                      a failed attempt: nak with backoff; after
                             JETSTREAM_MAX_DELIVER of them the event goes to
                             `cosyvoice.dlq.<subject>` and a render's task fails
    503, any other answer,   the function is not there or not ready (a pod restarting,
    no answer, a time-out    a cold start): not the event's fault. The event is kept,
                             nothing new is pulled, and it is tried again after a pause
                             doubling from 0.5 s up to JETSTREAM_SINK_BACKOFF_MAX

Which consumers to run follows JETSTREAM_SUBJECTS:

    cosyvoice.render.requested.*   render requests, drained urgent → high → normal → low
    cosyvoice.render.submit        jobs from external producers
    cosyvoice.task.>               task endings (for the webhook function)
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import signal
import time
from collections.abc import Coroutine
from typing import Any

import httpx

from core.adapters.cluster.cloudevents_codec import (
    RENDER_REQUESTED,
    RENDER_SUBMIT,
    encode_event,
    render_event_data,
    task_ended_type,
)
from core.adapters.cluster.nats_bus import NatsEventBus, RetryLater, SinkUnavailable
from core.ports import RenderRequest
from core.settings import load_settings
from core.wiring import build_metadata_store

log = logging.getLogger("jetstream_source")

SOURCE = "/cosyvoice/jetstream-source"
DEFAULT_RETRY_AFTER = 1.0


class SinkFailed(Exception):
    """The function was ready and answered 500: one failed attempt of the event."""


def retry_after(value: str | None) -> float:
    """Retry-After in seconds (delta-seconds or an HTTP date); 1 s when absent or odd."""
    if not value:
        return DEFAULT_RETRY_AFTER
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER
    return max(moment.timestamp() - time.time(), 0.0)


def rejection(response: httpx.Response) -> str | None:
    """The reason of a `200 {"rejected": reason}` answer, else None."""
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and "rejected" in body:
        return str(body["rejected"])
    return None


class SinkForwarder:
    """POSTs binary-mode CloudEvents to the sink and turns its answer into what the bus
    does with the message (see the module docstring)."""

    def __init__(self, sink: str, timeout: float) -> None:
        self.sink = sink
        self._http = httpx.AsyncClient(timeout=timeout)

    async def close(self) -> None:
        await self._http.aclose()

    async def forward(self, event_type: str, data: dict[str, Any], event_id: str) -> None:
        event = encode_event(event_type, data, event_id=event_id, source=SOURCE)
        try:
            response = await self._http.post(self.sink, content=event.body, headers=event.headers)
        except httpx.TimeoutException as exc:
            raise SinkUnavailable(f"{self.sink} did not answer in time: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise SinkUnavailable(f"{self.sink} unreachable: {exc!r}") from exc
        code = response.status_code
        if 200 <= code < 300:
            if (reason := rejection(response)) is not None:
                log.warning("%s %s rejected by the function: %s", event_type, event_id, reason)
            return
        if code == 429:
            raise RetryLater(
                f"{event_id}: {response.text[:200]}",
                retry_after(response.headers.get("retry-after")),
            )
        if code == 500:
            raise SinkFailed(f"the function answered 500: {response.text[:2000]}")
        raise SinkUnavailable(f"{self.sink} answered {code}")

    async def render(self, request: RenderRequest) -> None:
        await self.forward(
            RENDER_REQUESTED, render_event_data(request), event_id=f"render.{request.key}"
        )

    async def submission(self, event_id: str, data: dict[str, Any]) -> None:
        await self.forward(RENDER_SUBMIT, data, event_id=event_id)

    async def task_ended(self, payload: dict[str, Any]) -> None:
        status = str(payload.get("status", "completed"))
        key = f"task.{payload.get('task_id')}.{status}"
        await self.forward(task_ended_type(status), payload, event_id=key)


def roles(subjects: str) -> set[str]:
    found = set()
    for subject in (s.strip() for s in subjects.split(",") if s.strip()):
        if subject.startswith("cosyvoice.render.requested"):
            found.add("renders")
        elif subject.startswith("cosyvoice.render.submit"):
            found.add("submissions")
        elif subject.startswith("cosyvoice.task"):
            found.add("task-ended")
        else:
            raise SystemExit(f"JETSTREAM_SUBJECTS: no consumer for subject {subject!r}")
    return found


async def run() -> None:
    settings = load_settings()
    sink = settings.k_sink
    if not sink:
        raise SystemExit("K_SINK is not set: the ContainerSource sets it to the function's URL")
    wanted = roles(settings.jetstream_subjects)
    in_flight = settings.jetstream_max_in_flight
    store = build_metadata_store(settings)  # dead letters mark their task failed
    await store.start()

    async def dead_letter(task_id: str, reason: str) -> None:
        from core.services.endings import TaskEndings
        from core.wiring import dead_letter_reason

        # Ended as every task ends: failed with completed_at, lease and claim cleared,
        # the webhook marked due, and announced once (on `bus`, bound by then).
        await TaskEndings(store, bus).fail(task_id, dead_letter_reason(reason))

    bus = NatsEventBus(
        settings.event_bus_url,
        store,
        max_deliver=settings.jetstream_max_deliver or settings.task_max_attempts,
        ack_wait=settings.jetstream_ack_wait or settings.task_lease_seconds,
        on_dead_letter=dead_letter,
        stream=settings.jetstream_stream,
        manage_stream=settings.jetstream_manage_stream,
        sink_backoff_max=settings.jetstream_sink_backoff_max,
    )
    # The function answers when its work is done, which may take as long as its own
    # request timeout: waiting less would retry an event that is still being handled.
    sink_timeout = settings.jetstream_sink_timeout or settings.predictor_timeout
    forwarder = SinkForwarder(sink, timeout=sink_timeout)
    await bus.start()
    jobs: list[Coroutine[Any, Any, object]] = []
    if "renders" in wanted:
        jobs.append(bus.consume_renders(forwarder.render, in_flight))
    if "submissions" in wanted:
        jobs.append(bus.consume_submissions(forwarder.submission, concurrency=in_flight))
    if "task-ended" in wanted:
        await bus.subscribe_task_ended(forwarder.task_ended, concurrency=in_flight)
        jobs.append(asyncio.Event().wait())
    log.info("forwarding %s to %s", ", ".join(sorted(wanted)), sink)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumers = [asyncio.create_task(job) for job in jobs]
    try:
        await stop.wait()
    finally:
        for consumer in consumers:
            consumer.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        await forwarder.close()
        await bus.close()
        await store.close()


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(run())


if __name__ == "__main__":
    main()

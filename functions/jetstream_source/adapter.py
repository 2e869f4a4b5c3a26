"""The JetStream source adapter: pull durable consumers, POST each event to K_SINK.

Runs as a Knative ContainerSource, one per consumer. JetStream is the durable store, so
an event is acked only when the function answered 2xx; a 5xx, a time-out or an
unreachable function is a nak with backoff, and after JETSTREAM_MAX_DELIVER deliveries
the bus moves the event to `cosyvoice.dlq.<subject>` (and a render's task is marked failed).

Which consumers to run follows JETSTREAM_SUBJECTS:

    cosyvoice.render.requested.*   render requests, drained urgent → high → normal → low
    cosyvoice.render.submit        jobs from external producers
    cosyvoice.task.>               task endings (for the webhook function)
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

import httpx

from core.adapters.cluster.cloudevents_codec import (
    RENDER_REQUESTED,
    RENDER_SUBMIT,
    encode_event,
    task_ended_type,
)
from core.adapters.cluster.nats_bus import NatsEventBus
from core.errors import BackendUnavailable
from core.ports import RenderRequest
from core.settings import load_settings
from core.wiring import build_metadata_store

log = logging.getLogger("jetstream_source")

SOURCE = "/cosyvoice/jetstream-source"


class SinkForwarder:
    """POSTs binary-mode CloudEvents to the sink; anything but 2xx raises (→ nak)."""

    def __init__(self, sink: str, timeout: float) -> None:
        self.sink = sink
        self._http = httpx.AsyncClient(timeout=timeout)

    async def close(self) -> None:
        await self._http.aclose()

    async def forward(self, event_type: str, data: dict[str, Any], event_id: str) -> None:
        event = encode_event(event_type, data, event_id=event_id, source=SOURCE)
        try:
            response = await self._http.post(self.sink, content=event.body, headers=event.headers)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"sink {self.sink} unreachable: {exc}") from exc
        if response.status_code >= 300:
            raise BackendUnavailable(
                f"sink answered {response.status_code}: {response.text[:2000]}"
            )

    async def render(self, request: RenderRequest) -> None:
        await self.forward(
            RENDER_REQUESTED,
            {"task_id": request.task_id, "priority": request.priority.value},
            event_id=f"render.{request.task_id}",
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
    sink = os.environ.get("K_SINK")
    if not sink:
        raise SystemExit("K_SINK is not set: the ContainerSource sets it to the function's URL")
    wanted = roles(os.environ.get("JETSTREAM_SUBJECTS", "cosyvoice.render.requested.*"))
    in_flight = int(os.environ.get("JETSTREAM_MAX_IN_FLIGHT", "4"))
    store = build_metadata_store(settings)  # dead letters mark their task failed
    await store.start()

    async def dead_letter(task_id: str, reason: str) -> None:
        from core.domain import FINAL_STATUSES, TaskStatus

        live = [s for s in TaskStatus if s not in FINAL_STATUSES]
        await store.transition(
            task_id, live, {"status": TaskStatus.failed, "error_message": reason}
        )

    bus = NatsEventBus(
        settings.event_bus_url,
        store,
        max_deliver=int(os.environ.get("JETSTREAM_MAX_DELIVER", settings.task_max_attempts)),
        ack_wait=float(os.environ.get("JETSTREAM_ACK_WAIT", settings.task_lease_seconds)),
        on_dead_letter=dead_letter,
        stream=settings.jetstream_stream,
        manage_stream=settings.jetstream_manage_stream,
    )
    # The function answers when its work is done, which may take as long as its own
    # request timeout: waiting less would nak an event that is still being handled.
    sink_timeout = float(os.environ.get("JETSTREAM_SINK_TIMEOUT", settings.predictor_timeout))
    forwarder = SinkForwarder(sink, timeout=sink_timeout)
    await bus.start()
    jobs = []
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

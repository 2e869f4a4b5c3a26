"""The render function: one task per `render.requested` event; `render.submit` creates one.

Renders run here (the router renders nothing in the cluster), so recovery runs here
too: every replica sweeps for tasks whose render pod died (lease run out) and puts them
back on the queue, and resends callbacks left pending; both are safe in many replicas.
"""

from __future__ import annotations

from typing import Any

from core.adapters.cluster.cloudevents_codec import render_request_from
from core.errors import InvalidInput, TaskNotFound
from core.wiring import Runtime
from functions.host import EventRejected, FunctionHost

RENDER_REQUESTED = "ai.cosyvoice.render.requested.v1"
RENDER_SUBMIT = "ai.cosyvoice.render.submit.v1"


class RenderFunction(FunctionHost):
    name = "render"

    async def prepare(self, runtime: Runtime) -> None:
        await runtime.webhooks.start()  # its HTTP client; endings reach the webhook function
        runtime.webhooks.start_resending(runtime.settings.webhook_resend_interval)
        await runtime.worker.start_recovery()

    async def release(self, runtime: Runtime) -> None:
        await runtime.worker.stop()  # running renders finish or go back to the queue
        await runtime.webhooks.stop()

    async def on_event(
        self, runtime: Runtime, event_type: str, event_id: str, data: Any
    ) -> dict[str, Any] | None:
        if not isinstance(data, dict):
            raise EventRejected("data must be a JSON object")
        if event_type == RENDER_REQUESTED:
            try:
                request = render_request_from(data)
            except InvalidInput as exc:
                raise EventRejected(exc.detail) from exc
            # Claiming is a compare-and-set: a redelivered event renders nothing twice.
            # A segment job (`segment` set) renders and stores one segment of a
            # long-form task; storing it twice is harmless.
            await runtime.worker.handle(request)
            try:
                task = await runtime.store.get_task(request.task_id)
            except TaskNotFound:
                raise EventRejected(f"task {request.task_id} does not exist") from None
            answer: dict[str, Any] = {"task_id": request.task_id, "status": task.status.value}
            if request.segment is not None:
                answer["segment"] = request.segment
            return answer
        if event_type == RENDER_SUBMIT:
            submitted = await runtime.tasks.submit(event_id, data)
            if submitted is None:
                raise EventRejected("render.submit data is not a task spec")
            return {"task_id": submitted.task_id, "status": submitted.status.value}
        raise EventRejected(f"unexpected event type {event_type}")


def new() -> RenderFunction:
    """func-python's constructor hook."""
    return RenderFunction()

"""The render function: one task per `render.requested` event; `render.submit` creates one."""

from __future__ import annotations

from typing import Any

from core.domain import Priority
from core.ports import RenderRequest
from core.wiring import Runtime
from functions.host import EventRejected, FunctionHost

RENDER_REQUESTED = "ai.cosyvoice.render.requested.v1"
RENDER_SUBMIT = "ai.cosyvoice.render.submit.v1"


class RenderFunction(FunctionHost):
    name = "render"

    async def on_event(
        self, runtime: Runtime, event_type: str, event_id: str, data: Any
    ) -> dict[str, Any] | None:
        if not isinstance(data, dict):
            raise EventRejected("data must be a JSON object")
        if event_type == RENDER_REQUESTED:
            task_id = data.get("task_id")
            if not isinstance(task_id, str):
                raise EventRejected("render.requested needs a task_id")
            priority = Priority(data.get("priority", Priority.normal))
            # Claiming is a compare-and-set: a redelivered event renders nothing twice.
            await runtime.worker.handle(RenderRequest(task_id=task_id, priority=priority))
            task = await runtime.store.get_task(task_id)
            return {"task_id": task_id, "status": task.status.value}
        if event_type == RENDER_SUBMIT:
            task = await runtime.tasks.submit(event_id, data)
            if task is None:
                raise EventRejected("render.submit data is not a task spec")
            return {"task_id": task.task_id, "status": task.status.value}
        raise EventRejected(f"unexpected event type {event_type}")


def new() -> RenderFunction:
    """func-python's constructor hook."""
    return RenderFunction()

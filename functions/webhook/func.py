"""The webhook function: deliver a task's signed callback for each `task.<status>` event."""

from __future__ import annotations

from typing import Any

from core.wiring import Runtime
from functions.host import EventRejected, FunctionHost

TASK_ENDED_PREFIX = "ai.cosyvoice.task."


class WebhookFunction(FunctionHost):
    name = "webhook"

    async def prepare(self, runtime: Runtime) -> None:
        await runtime.webhooks.start()  # its HTTP client; no bus subscription here

    async def release(self, runtime: Runtime) -> None:
        await runtime.webhooks.stop()

    async def on_event(
        self, runtime: Runtime, event_type: str, event_id: str, data: Any
    ) -> dict[str, Any] | None:
        if not event_type.startswith(TASK_ENDED_PREFIX) or not isinstance(data, dict):
            raise EventRejected(f"unexpected event {event_type}")
        if not data.get("callback_url"):
            return {"delivered": False, "reason": "no callback_url"}
        state = await runtime.webhooks.deliver(data)
        return {"task_id": data.get("task_id"), "webhook": state.model_dump(mode="json")}


def new() -> WebhookFunction:
    """func-python's constructor hook."""
    return WebhookFunction()

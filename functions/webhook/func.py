"""The webhook function: deliver a task's signed callback for each `task.<status>` event.

The event only names the task that ended; the body and the URL come from the stored
task, so a forged event can neither choose what is signed nor where it goes, and an
event for an unknown or unfinished task is refused. Callbacks left `pending` (an
announcement lost, a replica gone mid-delivery) are resent at start and periodically.
"""

from __future__ import annotations

from typing import Any

from core.services.webhooks import NothingToDeliver, event_task_id
from core.wiring import Runtime
from functions.host import EventRejected, FunctionHost

TASK_ENDED_PREFIX = "ai.cosyvoice.task."
EVENT_VERSION_SUFFIX = ".v1"


def ended_status(event_type: str) -> str:
    """`ai.cosyvoice.task.completed.v1` → `completed`."""
    return event_type.removeprefix(TASK_ENDED_PREFIX).removesuffix(EVENT_VERSION_SUFFIX)


class WebhookFunction(FunctionHost):
    name = "webhook"

    async def prepare(self, runtime: Runtime) -> None:
        await runtime.webhooks.start()  # its HTTP client; no bus subscription here
        runtime.webhooks.start_resending(runtime.settings.webhook_resend_interval)

    async def release(self, runtime: Runtime) -> None:
        await runtime.webhooks.stop()

    async def on_event(
        self, runtime: Runtime, event_type: str, event_id: str, data: Any
    ) -> dict[str, Any] | None:
        if not event_type.startswith(TASK_ENDED_PREFIX) or not isinstance(data, dict):
            raise EventRejected(f"unexpected event {event_type}")
        task_id = event_task_id(data)
        try:
            state = await runtime.webhooks.deliver_for_task(task_id, ended=ended_status(event_type))
        except NothingToDeliver as exc:
            raise EventRejected(str(exc)) from None
        return {"task_id": task_id, "webhook": state.model_dump(mode="json")}


def new() -> WebhookFunction:
    """func-python's constructor hook."""
    return WebhookFunction()

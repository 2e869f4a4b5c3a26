"""Scheduled rendering (v3): register now, render later, in priority order.

register (pending) → render / render-all (scheduled) → the worker (processing) →
completed | failed; or cancelled. Every state change is a compare-and-set, so racing
calls end in one well-defined state and the loser gets 409.

Built per version by `build_router(version)`: the closure keeps the version whose engine
renders these tasks beside the handlers, with no per-request dependency to resolve it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from core.domain import ApiVersion, Priority, TaskKind, TaskStatus
from core.schemas.tasks import (
    QueueStats,
    RenderAllResponse,
    ScheduleRegistered,
    ScheduleRegisterRequest,
    ScheduleRenderStarted,
    ScheduleTaskList,
    TaskDeleted,
    TaskStatusResponse,
)
from core.services.tasks import NewTask

from ..deps import RuntimeDep
from ..errors import error_responses


def build_router(version: ApiVersion) -> APIRouter:
    router = APIRouter(prefix="/schedule", tags=[f"{version.value} scheduled rendering"])

    @router.post(
        "/register",
        response_model=ScheduleRegistered,
        responses=error_responses(400, 404),
        summary="Register a task for later rendering (renders nothing yet)",
    )
    async def register(body: ScheduleRegisterRequest, runtime: RuntimeDep) -> ScheduleRegistered:
        task = await runtime.tasks.register(
            version,
            NewTask.of(body),
        )
        estimate = await runtime.tasks.queue_estimate(task)
        return ScheduleRegistered(
            task_id=task.task_id,
            status=task.status,
            message=(
                "Task registered successfully. "
                "Call POST /schedule/render/{task_id} to start rendering."
            ),
            queue_position=await runtime.tasks.pending_position(task),
            estimated_wait_time=estimate.wait_seconds,
            created_at=task.created_at,
            priority=task.priority,
        )

    @router.post(
        "/render/{task_id}",
        response_model=ScheduleRenderStarted,
        responses=error_responses(404, 409, 503),
        summary="Start rendering one pending task",
    )
    async def render(task_id: str, runtime: RuntimeDep) -> ScheduleRenderStarted:
        task = await runtime.tasks.render(task_id)
        estimate = await runtime.tasks.queue_estimate(task)
        return ScheduleRenderStarted(
            task_id=task.task_id,
            status=task.status,
            message=(
                "Background rendering started. "
                "Use GET /schedule/status/{task_id} to check progress."
            ),
            queue_position=estimate.position,
            estimated_wait_time=estimate.wait_seconds,
        )

    @router.get(
        "/status/{task_id}",
        response_model=TaskStatusResponse,
        responses=error_responses(404),
        summary="Status of a scheduled task",
    )
    async def status(task_id: str, runtime: RuntimeDep) -> TaskStatusResponse:
        return TaskStatusResponse.of(await runtime.tasks.get(task_id))

    @router.get(
        "/tasks",
        response_model=ScheduleTaskList,
        responses=error_responses(400),
        summary="List scheduled tasks, newest first",
    )
    async def list_tasks(
        runtime: RuntimeDep,
        limit: Annotated[int, Query(ge=1, le=1000, description="At most this many")] = 50,
        status: Annotated[TaskStatus | None, Query(description="Only this state")] = None,
        priority: Annotated[Priority | None, Query(description="Only this priority")] = None,
    ) -> ScheduleTaskList:
        tasks, total = await runtime.tasks.list(
            kind=TaskKind.scheduled, status=status, priority=priority, limit=limit
        )
        return ScheduleTaskList(
            tasks=[TaskStatusResponse.of(task) for task in tasks],
            total=total,
            status_filter=status,
            priority_filter=priority,
            status_counts=await runtime.tasks.status_counts(TaskKind.scheduled),
            version=version,
        )

    @router.delete(
        "/task/{task_id}",
        response_model=TaskDeleted,
        responses=error_responses(404, 409),
        summary="Cancel a task not yet finished; delete a finished one (and its audio)",
    )
    async def cancel_or_delete(task_id: str, runtime: RuntimeDep) -> TaskDeleted:
        action, task = await runtime.tasks.cancel_or_delete(task_id)
        return TaskDeleted(
            message=f"Task {action} successfully",
            data={"task_id": task_id, "status": task.status.value},
            task_id=task_id,
            action=action,
            version=version,
        )

    @router.post(
        "/render-all",
        response_model=RenderAllResponse,
        responses=error_responses(400, 503),
        summary="Queue pending tasks: highest priority first, oldest first within one",
    )
    async def render_all(
        runtime: RuntimeDep,
        max_tasks: Annotated[int, Query(ge=1, le=1000, description="Queue at most this many")] = 10,
    ) -> RenderAllResponse:
        outcome = await runtime.tasks.render_all(max_tasks)
        return RenderAllResponse(
            message=f"Started rendering {len(outcome.started)} task(s)",
            tasks_started=len(outcome.started),
            tasks_remaining=outcome.remaining,
            task_ids=outcome.started,
            version=version,
        )

    @router.get(
        "/queue-stats",
        response_model=QueueStats,
        summary="Counts of scheduled tasks by status and priority, and the live queue",
    )
    async def queue_stats(runtime: RuntimeDep) -> QueueStats:
        snapshot = await runtime.tasks.snapshot(TaskKind.scheduled)
        return QueueStats(
            total_tasks=snapshot.total,
            status_counts=snapshot.status_counts,
            priority_counts=snapshot.priority_counts,
            average_synthesis_time=snapshot.average_synthesis_time,
            completed_tasks=snapshot.status_counts.get(TaskStatus.completed.value, 0),
            queued_tasks=snapshot.queued,
            processing_tasks=snapshot.processing,
            worker_concurrency=runtime.tasks.worker_concurrency,
            version=version,
        )

    return router

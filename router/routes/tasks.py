"""Background tasks: /cross-lingual/task, /cross-lingual/task/{task_id}, /cross-lingual/tasks.

A task is queued as soon as it is created and rendered by the worker; long text is
rendered in segments, and `progress` advances per segment.

Built per version by `build_router(version)`: the closure keeps the version whose engine
renders these tasks beside the handlers, with no per-request dependency to resolve it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from core.domain import ApiVersion, TaskKind, TaskStatus
from core.schemas.tasks import (
    TaskCreated,
    TaskCreateRequest,
    TaskDeleted,
    TaskList,
    TaskStatusResponse,
)
from core.services.tasks import NewTask, estimate_speech_seconds

from ..deps import RuntimeDep
from ..errors import error_responses


def build_router(version: ApiVersion) -> APIRouter:
    router = APIRouter(prefix="/cross-lingual", tags=[f"{version.value} tasks"])

    @router.post(
        "/task",
        response_model=TaskCreated,
        responses=error_responses(400, 404, 503),
        summary="Create a background synthesis task (starts at once)",
    )
    async def create_task(body: TaskCreateRequest, runtime: RuntimeDep) -> TaskCreated:
        task = await runtime.tasks.create(
            version,
            NewTask.of(body),
        )
        estimate = await runtime.tasks.queue_estimate(task)
        return TaskCreated(
            task_id=task.task_id,
            status=task.status,
            file_path=task.file_path,
            audio_url=task.audio_url(),
            estimated_duration=estimate_speech_seconds(task.text, task.speed),
            estimated_wait_time=estimate.wait_seconds,
            created_at=task.created_at,
            priority=task.priority,
            version=version,
        )

    @router.get(
        "/task/{task_id}",
        response_model=TaskStatusResponse,
        responses=error_responses(404),
        summary="Status of a task",
    )
    async def task_status(task_id: str, runtime: RuntimeDep) -> TaskStatusResponse:
        return TaskStatusResponse.of(await runtime.tasks.get(task_id))

    @router.get(
        "/tasks",
        response_model=TaskList,
        responses=error_responses(400),
        summary="List background tasks, newest first",
    )
    async def list_tasks(
        runtime: RuntimeDep,
        status: Annotated[TaskStatus | None, Query(description="Only tasks in this state")] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="At most this many")] = 50,
    ) -> TaskList:
        tasks, total = await runtime.tasks.list(kind=TaskKind.task, status=status, limit=limit)
        return TaskList(
            tasks=[TaskStatusResponse.of(task) for task in tasks],
            total=total,
            status_filter=status,
            version=version,
        )

    @router.delete(
        "/task/{task_id}",
        response_model=TaskDeleted,
        responses=error_responses(404, 409),
        summary="Delete a task and its audio (a running one is cancelled first)",
    )
    async def delete_task(task_id: str, runtime: RuntimeDep) -> TaskDeleted:
        task = await runtime.tasks.delete(task_id)
        return TaskDeleted(
            message=f"Task {task_id} deleted successfully",
            data={"task_id": task_id, "status": task.status.value},
            task_id=task_id,
            action="deleted",
            version=version,
        )

    return router

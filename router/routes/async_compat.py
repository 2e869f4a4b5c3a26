"""The original service's v1/v2 asynchronous routes, served by the task machinery.

    POST   /cross-lingual/async             create (starts at once)
    GET    /cross-lingual/async/{task_id}   status
    GET    /cross-lingual/async             every task's status, by id
    DELETE /cross-lingual/async/{task_id}   cancel (delete when already finished)

Waiting states are reported as `pending`, as the original did.

Built per version by `build_router(version)`: the closure keeps the version whose engine
renders these tasks beside the handlers, with no per-request dependency to resolve it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from core.domain import ApiVersion, TaskKind
from core.schemas.tasks import (
    AsyncCreateRequest,
    AsyncTaskCancelled,
    AsyncTaskCreated,
    AsyncTaskList,
    AsyncTaskStatus,
    async_status,
)
from core.services.tasks import NewTask

from ..deps import RuntimeDep
from ..errors import error_responses


def build_router(version: ApiVersion) -> APIRouter:
    router = APIRouter(prefix="/cross-lingual/async", tags=[f"{version.value} async (legacy)"])

    @router.post(
        "",
        response_model=AsyncTaskCreated,
        responses=error_responses(400, 404, 503),
        summary="Start an asynchronous synthesis",
    )
    async def create(body: AsyncCreateRequest, runtime: RuntimeDep) -> AsyncTaskCreated:
        task = await runtime.tasks.create(
            version,
            NewTask.of(body),
        )
        return AsyncTaskCreated(
            task_id=task.task_id,
            message="Synthesis task started",
            status=async_status(task.status),
            estimated_time=await runtime.tasks.estimated_completion(task),
        )

    @router.get(
        "/{task_id}",
        response_model=AsyncTaskStatus,
        responses=error_responses(404),
        summary="Status of an asynchronous synthesis",
    )
    async def status(task_id: str, runtime: RuntimeDep) -> AsyncTaskStatus:
        return AsyncTaskStatus.of(await runtime.tasks.get(task_id))

    @router.get("", response_model=AsyncTaskList, summary="Status of every asynchronous task")
    async def list_all(
        runtime: RuntimeDep,
        limit: Annotated[int, Query(ge=1, le=1000, description="At most this many")] = 100,
    ) -> AsyncTaskList:
        tasks, total = await runtime.tasks.list(kind=TaskKind.task, limit=limit)
        return AsyncTaskList(
            total=total, tasks={task.task_id: async_status(task.status) for task in tasks}
        )

    @router.delete(
        "/{task_id}",
        response_model=AsyncTaskCancelled,
        responses=error_responses(404, 409),
        summary="Cancel an asynchronous synthesis",
    )
    async def cancel(task_id: str, runtime: RuntimeDep) -> AsyncTaskCancelled:
        action, _ = await runtime.tasks.cancel_or_delete(task_id)
        return AsyncTaskCancelled(
            task_id=task_id, message=f"Task {task_id} {action}", action=action
        )

    return router

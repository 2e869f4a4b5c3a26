"""API shapes of background tasks, scheduled rendering and the v1/v2 async routes.

Every route of API.md's "Background tasks", "Scheduled rendering" and the compatibility
section's async routes speaks these models; the webhook body is `TaskStatusResponse`
too, so a callback receiver sees exactly what `GET .../status/{task_id}` returns.
The text limit (MAX_TASK_TEXT_LENGTH) is a setting, so the service checks it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer

from ..domain import ApiVersion, AudioFormat, Priority, Task, TaskKind, TaskStatus
from ..services.netguard import MAX_CALLBACK_URL_LENGTH, callback_url_problem
from .common import iso_utc
from .synthesis import INSTRUCT_FIELD, SPEED_FIELD

UtcTime = Annotated[datetime, PlainSerializer(iso_utc, return_type=str)]

TEXT_FIELD = Field(
    min_length=1,
    description="1..MAX_TASK_TEXT_LENGTH characters after trimming; long text is rendered "
    "in sentence-sized segments and joined into one file.",
)
CALLBACK_FIELD = Field(
    None,
    max_length=MAX_CALLBACK_URL_LENGTH,
    description="http(s) URL that receives the final status object (signed POST) when the "
    "task completes, fails or is cancelled. No whitespace or control characters; private "
    "and loopback addresses are refused.",
)


def _callback_url(value: str | None) -> str | None:
    """Refuse at registration what could never be delivered ("" means no callback)."""
    if not value:
        return None
    problem = callback_url_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


CallbackUrl = Annotated[str | None, AfterValidator(_callback_url)]
METADATA_FIELD: dict[str, Any] = Field(
    default_factory=dict, description="Any JSON object; returned unchanged with the task."
)


# --- requests ------------------------------------------------------------------------


class TaskCreateRequest(BaseModel):
    """A background render that starts at once (`POST /cross-lingual/task`)."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "example": {
                "text": "Text to synthesize",
                "voice_id": "my_voice_01",
                "format": "wav",
                "speed": 1.0,
            }
        },
    )

    text: str = TEXT_FIELD
    voice_id: str = Field(min_length=1, max_length=64)
    format: AudioFormat = AudioFormat.wav
    speed: float = SPEED_FIELD
    instruct_text: str | None = INSTRUCT_FIELD
    callback_url: CallbackUrl = CALLBACK_FIELD
    metadata: dict[str, Any] = METADATA_FIELD


class ScheduleRegisterRequest(TaskCreateRequest):
    """A render registered for later (`POST /schedule/register`)."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "example": {
                "text": "Text to synthesize",
                "voice_id": "my_voice_01",
                "format": "wav",
                "speed": 1.0,
                "priority": "normal",
                "callback_url": "https://your-server.com/webhook",
                "metadata": {"custom_field": "custom_value"},
            }
        },
    )

    priority: Priority = Field(Priority.normal, description="low, normal, high or urgent.")


class AsyncCreateRequest(BaseModel):
    """The original v1/v2 asynchronous synthesis request."""

    model_config = ConfigDict(extra="ignore")

    text: str = TEXT_FIELD
    voice_id: str = Field(min_length=1, max_length=64)
    format: AudioFormat = AudioFormat.wav
    speed: float = SPEED_FIELD
    instruct_text: str | None = Field(None, description="Refused here: v3 only.")
    callback_url: CallbackUrl = CALLBACK_FIELD


class RenderSubmission(BaseModel):
    """Data of an `ai.cosyvoice.render.submit.v1` event put on the bus by a producer."""

    model_config = ConfigDict(extra="ignore")

    task_id: str | None = Field(
        None, min_length=1, max_length=64, description="Default: derived from the event id."
    )
    version: ApiVersion = ApiVersion.v3
    text: str = TEXT_FIELD
    voice_id: str = Field(min_length=1, max_length=64)
    format: AudioFormat = AudioFormat.wav
    speed: float = SPEED_FIELD
    instruct_text: str | None = INSTRUCT_FIELD
    priority: Priority = Priority.normal
    callback_url: str | None = CALLBACK_FIELD
    metadata: dict[str, Any] = METADATA_FIELD


# --- responses -----------------------------------------------------------------------


class WebhookDelivery(BaseModel):
    status: str = Field(description="none, pending, delivered or failed.")
    attempts: int
    last_error: str | None = None
    delivered_at: UtcTime | None = None


class TaskStatusResponse(BaseModel):
    """A task as clients (and webhook receivers) see it."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "task_id": "550e8400-e29b-41d4-a716-446655440000",
                "status": "completed",
                "file_path": "outputs/v3_task_abc12345.wav",
                "audio_url": "/api/v3/audio/v3_task_abc12345.wav",
                "progress": 1.0,
                "duration": 3.2,
                "synthesis_time": 1.1,
                "created_at": "2024-01-15T10:30:00Z",
                "started_at": "2024-01-15T10:30:01Z",
                "completed_at": "2024-01-15T10:30:02Z",
                "priority": "normal",
                "error_message": None,
                "metadata": {},
            }
        }
    )

    task_id: str
    status: TaskStatus
    file_path: str = Field(description="Where the audio is (or will be): outputs/<filename>.")
    audio_url: str = Field(description="GET it once the task is completed.")
    progress: float = Field(description="0.0–1.0, advancing per rendered segment.")
    duration: float | None = Field(None, description="Seconds of audio, once completed.")
    synthesis_time: float | None = Field(None, description="Seconds spent rendering.")
    created_at: UtcTime
    started_at: UtcTime | None = None
    completed_at: UtcTime | None = None
    priority: Priority
    error_message: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    version: ApiVersion
    kind: TaskKind = Field(description="task (starts at once) or scheduled (waits for render).")
    format: AudioFormat
    attempts: int = Field(0, description="Times a worker has started rendering it.")
    webhook: WebhookDelivery | None = Field(
        None, description="Delivery state of the callback, when the task has a callback_url."
    )

    @classmethod
    def of(cls, task: Task) -> TaskStatusResponse:
        return cls(
            task_id=task.task_id,
            status=task.status,
            file_path=task.file_path,
            audio_url=task.audio_url(),
            progress=round(task.progress, 4),
            duration=task.duration,
            synthesis_time=task.synthesis_time,
            created_at=task.created_at,
            started_at=task.started_at,
            completed_at=task.completed_at,
            priority=task.priority,
            error_message=task.error_message,
            metadata=task.metadata,
            version=task.version,
            kind=task.kind,
            format=task.format,
            attempts=task.attempts,
            webhook=(
                WebhookDelivery.model_validate(task.webhook.model_dump())
                if task.callback_url
                else None
            ),
        )


class TaskCreated(BaseModel):
    """Answer of `POST /cross-lingual/task`."""

    task_id: str = Field(description="UUID of the task.")
    status: TaskStatus = Field(description="registered: queued, a worker will pick it up.")
    file_path: str
    audio_url: str = Field(description="Where the audio will be once completed.")
    estimated_duration: float = Field(description="Estimated seconds of audio.")
    estimated_wait_time: float = Field(
        description="Estimated seconds before a worker starts it (queue ahead × measured "
        "average synthesis time)."
    )
    created_at: UtcTime
    priority: Priority
    version: ApiVersion


class TaskList(BaseModel):
    tasks: list[TaskStatusResponse]
    total: int = Field(description="All matching tasks, not just this page.")
    status_filter: TaskStatus | None = None
    version: ApiVersion


class TaskDeleted(BaseModel):
    """Answer of the task and schedule DELETE routes (what happened is in `action`)."""

    success: bool = True
    message: str
    data: dict[str, Any] = Field(default_factory=dict)
    task_id: str
    action: Literal["cancelled", "deleted"]
    version: ApiVersion


class ScheduleRegistered(BaseModel):
    task_id: str
    status: TaskStatus
    message: str
    queue_position: int = Field(
        description="1-based place among pending tasks in render-all order (priority, then age)."
    )
    estimated_wait_time: float = Field(
        description="Estimated seconds from render until a worker starts it, from the live "
        "queue and the measured average synthesis time."
    )
    created_at: UtcTime
    priority: Priority


class ScheduleRenderStarted(BaseModel):
    task_id: str
    status: TaskStatus
    message: str
    queue_position: int = Field(
        description="1-based place in the render queue (0: a worker has it already)."
    )
    estimated_wait_time: float


class ScheduleTaskList(BaseModel):
    tasks: list[TaskStatusResponse]
    total: int
    status_filter: TaskStatus | None = None
    priority_filter: Priority | None = None
    status_counts: dict[str, int]
    version: ApiVersion


class RenderAllResponse(BaseModel):
    message: str
    tasks_started: int
    tasks_remaining: int = Field(description="Pending tasks left after this call.")
    task_ids: list[str] = Field(description="The tasks queued, in the order they were queued.")
    version: ApiVersion


class QueueStats(BaseModel):
    total_tasks: int
    status_counts: dict[str, int] = Field(
        description="Scheduled tasks by status (pending, scheduled, processing, completed, "
        "failed, cancelled; zeros included). They add up to total_tasks."
    )
    priority_counts: dict[str, int]
    average_synthesis_time: float | None = Field(
        description="Mean seconds per completed task (None before any completed)."
    )
    completed_tasks: int
    queued_tasks: int = Field(description="Tasks waiting for a worker, all kinds.")
    processing_tasks: int = Field(description="Tasks being rendered now, all kinds.")
    worker_concurrency: int
    version: ApiVersion


# --- v1/v2 async compatibility -----------------------------------------------------------


AsyncStatus = Literal["pending", "processing", "completed", "failed", "cancelled"]


def async_status(status: TaskStatus) -> AsyncStatus:
    """The original async routes call every waiting state `pending`."""
    if status in (TaskStatus.registered, TaskStatus.scheduled, TaskStatus.pending):
        return "pending"
    return status.value  # type: ignore[return-value]


def async_message(task: Task) -> str:
    match task.status:
        case TaskStatus.processing:
            return f"Synthesizing ({task.progress:.0%})"
        case TaskStatus.completed:
            return "Synthesis completed"
        case TaskStatus.failed:
            return f"Synthesis failed: {task.error_message or 'unknown error'}"
        case TaskStatus.cancelled:
            return "Task was cancelled"
        case _:
            return "Task is waiting in the queue"


class AsyncTaskCreated(BaseModel):
    success: bool = True
    task_id: str
    message: str
    status: AsyncStatus
    estimated_time: float = Field(description="Estimated seconds until the audio is ready.")


class AsyncTaskStatus(BaseModel):
    success: bool = True
    task_id: str
    status: AsyncStatus
    progress: float
    message: str
    audio_url: str | None = Field(None, description="Set once completed.")
    file_path: str | None = Field(None, description="Set once completed.")
    duration: float | None = None
    synthesis_time: float | None = None
    error_message: str | None = None
    created_at: UtcTime
    completed_at: UtcTime | None = None

    @classmethod
    def of(cls, task: Task) -> AsyncTaskStatus:
        done = task.status is TaskStatus.completed
        return cls(
            task_id=task.task_id,
            status=async_status(task.status),
            progress=round(task.progress, 4),
            message=async_message(task),
            audio_url=task.audio_url() if done else None,
            file_path=task.file_path if done else None,
            duration=task.duration,
            synthesis_time=task.synthesis_time,
            error_message=task.error_message,
            created_at=task.created_at,
            completed_at=task.completed_at,
        )


class AsyncTaskList(BaseModel):
    success: bool = True
    total: int
    tasks: dict[str, AsyncStatus] = Field(description="task_id → status, newest first.")


class AsyncTaskCancelled(BaseModel):
    success: bool = True
    task_id: str
    message: str
    action: Literal["cancelled", "deleted"]

"""The ports: what the services need from the outside world, named by role.

Each port has an embedded adapter (the default: nothing to install) and a cluster
adapter; `core.wiring` picks one by URL scheme. Every method is async and speaks only
domain types, so no SQLite row, file path, BSON document or S3 response leaks through.
Adapters translate their vendor's failures into `core.errors` at their own edge:
`BackendUnavailable` for an outage, `NotFound`/`Conflict` for the data answers.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .domain import Priority, SynthesisMode, Task, TaskKind, TaskStatus, Voice, VoiceStats

# --- repository ------------------------------------------------------------------------


class MetadataStore(Protocol):
    """Voices and tasks. Filters, ordering and pagination happen in the database."""

    async def start(self) -> None:
        """Open connections, create tables/collections and indexes (idempotent)."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise BackendUnavailable when the database does not answer."""

    # voices
    async def create_voice(self, voice: Voice) -> None:
        """Insert; VoiceAlreadyExists when the id is taken."""

    async def get_voice(self, voice_id: str) -> Voice:
        """VoiceNotFound when absent."""

    async def list_voices(
        self,
        *,
        voice_type: str | None = None,
        language: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[Voice], int]:
        """One page ordered by created_at, and the total number of matches."""

    async def update_voice(self, voice_id: str, changes: dict[str, Any]) -> Voice:
        """Apply field changes (updated_at included by the caller); VoiceNotFound."""

    async def delete_voice(self, voice_id: str) -> None:
        """VoiceNotFound when absent."""

    async def voice_stats(self) -> VoiceStats: ...

    # tasks
    async def create_task(self, task: Task) -> bool:
        """Insert; False (and nothing written) when the task_id exists already."""

    async def get_task(self, task_id: str) -> Task:
        """TaskNotFound when absent."""

    async def list_tasks(
        self,
        *,
        kind: TaskKind | None = None,
        status: TaskStatus | None = None,
        priority: Priority | None = None,
        limit: int = 50,
    ) -> tuple[list[Task], int]:
        """Newest first, and the total number of matches."""

    async def transition(
        self,
        task_id: str,
        expected: Iterable[TaskStatus],
        changes: dict[str, Any],
        *,
        claim_id: str | None = None,
        lease_expired_before: datetime | None = None,
    ) -> Task | None:
        """Atomic compare-and-set: apply `changes` only if the status is in `expected`.

        With `claim_id`, only while the task still holds that claim (the fencing token a
        worker got when it claimed the task): a worker whose lease was retaken is refused.
        With `lease_expired_before`, only when the task's lease ran out before that
        instant (a task without a lease has none to run out).

        Returns the updated task, or None when the task is absent or any condition fails.
        """

    async def record_segment(self, task_id: str, index: int, lease_until: datetime) -> Task | None:
        """Add `index` to the task's stored segments (a set: recording one twice is
        harmless) unless the task ended or is gone. While it is processing, its lease also
        moves to `lease_until` and its progress up to stored/total (never down). Returns
        the updated task, or None."""

    async def claim_assembly(self, task_id: str, now: datetime, until: datetime) -> Task | None:
        """Compare-and-set `assembling_until = until` on a processing task that no one
        else is assembling (no claim, or one that ran out before `now`); None otherwise."""

    async def update_task(self, task_id: str, changes: dict[str, Any]) -> Task:
        """Unconditional field update (progress, webhook state); TaskNotFound."""

    async def delete_task(self, task_id: str) -> None: ...

    async def pending_in_order(self, kind: TaskKind, limit: int) -> list[Task]:
        """Pending tasks of a kind, highest priority first, oldest first within one."""

    async def queued_tasks(self) -> list[Task]:
        """Tasks waiting for a worker (registered, scheduled) in queue order."""

    async def expired_leases(self, now: datetime) -> list[Task]:
        """Processing tasks whose lease ran out (their worker is gone)."""

    async def count_tasks(self, kind: TaskKind | None = None) -> dict[str, dict[str, int]]:
        """{"status": {status: n}, "priority": {priority: n}} over tasks of a kind."""

    async def average_synthesis_time(self, kind: TaskKind | None = None) -> float | None: ...

    async def delete_finished_tasks_before(self, cutoff: datetime, limit: int) -> list[Task]:
        """Delete up to `limit` tasks that ended (completed, failed, cancelled) before
        `cutoff`, oldest first, and return them: their audio is the caller's to remove."""


# --- blob store ------------------------------------------------------------------------


@dataclass(frozen=True)
class BlobInfo:
    size: int
    content_type: str


@dataclass(frozen=True)
class StoredBlob:
    """One object of a listing: its key and when it was last written (UTC)."""

    key: str
    size: int
    modified: datetime


class BlobStore(Protocol):
    """Voice samples, rendered outputs and cached voice features, by key.

    Keys are relative paths like `voices/<id>/sample.wav` or `outputs/<file>`; an
    adapter refuses keys that would escape its namespace.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Write atomically: readers see the old object or the new one, never a part."""

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        """Store a local file's content, streamed (never whole in memory), as atomically
        as `put`; the file itself is left where it is."""

    async def get(self, key: str) -> bytes:
        """NotFound when absent."""

    async def stat(self, key: str) -> BlobInfo:
        """NotFound when absent."""

    def read_range(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes [start, end] (inclusive, like HTTP Range) without loading it all."""

    async def delete(self, key: str) -> None:
        """Remove the object and, for a prefix ending in '/', everything under it."""

    def list_blobs(self, prefix: str) -> AsyncIterator[StoredBlob]:
        """Every object under `prefix` (e.g. `outputs/`), in no set order, read page by
        page so a large store is never listed into memory at once."""


# --- event bus ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderRequest:
    """A render to perform: the task is in the repository, this only points at it."""

    task_id: str
    priority: Priority = Priority.normal
    # One segment job of a long-form task (its index in the task's plan); None renders
    # the whole task (claiming it, or planning its segment jobs).
    segment: int | None = None

    @property
    def key(self) -> str:
        """What identifies the job in a queue: the task, or the task and segment."""
        return self.task_id if self.segment is None else f"{self.task_id}#{self.segment}"


RenderHandler = Callable[[RenderRequest], Awaitable[None]]
"""Renders one task. Raising means "try again later"; returning means done (ack)."""

TaskEndedHandler = Callable[[dict[str, Any]], Awaitable[None]]

SubmissionHandler = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""Takes one job another service submitted: (the event's id, the task spec it carries)."""


class EventBus(Protocol):
    """Render requests in priority order, and task-ended notifications."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def publish_render(self, request: RenderRequest) -> None:
        """Queue a render. Publishing the same task twice renders it once."""

    async def publish_task_ended(self, status: str, payload: dict[str, Any]) -> None:
        """Announce that a task reached a final status (the webhook path listens)."""

    async def consume_renders(self, handler: RenderHandler, concurrency: int) -> None:
        """Run `handler` for queued renders, urgent first, until cancelled."""

    async def consume_submissions(
        self, handler: SubmissionHandler, *, concurrency: int = 1
    ) -> None:
        """Run `handler` for each render job other services submit through the bus, until
        cancelled. A bus no other service reaches (the in-process one) has none to
        consume and returns at once."""

    async def subscribe_task_ended(
        self, handler: TaskEndedHandler, *, name: str = "task-ended"
    ) -> None:
        """Call `handler(payload)` in the background for every task that ends; replicas
        subscribing under one `name` share the work (each event is handled once)."""


# --- synthesis -------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """A decoded reference clip: mono float32 samples in [-1, 1]."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True)
class VoicePrompt:
    """The voice to clone: an uploaded clip, or a stored voice (by reference)."""

    sha256: str
    clip: Clip | None = None  # inline clip (with-audio, instruct); loaded lazily otherwise
    voice_id: str | None = None
    sample_key: str | None = None  # blob store key of the stored sample
    prompt_text: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class SynthesisRequest:
    text: str
    voice: VoicePrompt
    mode: SynthesisMode = SynthesisMode.cross_lingual
    instruct_text: str | None = None
    speed: float = 1.0
    language: str | None = None  # target language hint; None = from the text's script
    sample_rate: int | None = None  # None = the engine's native rate
    # False when the caller only wants the finished audio (a file render): the engine
    # may then skip its streaming path, which costs extra passes for an early first chunk.
    stream: bool = True
    # Work that already waited its turn (a task render, the later segments of an admitted
    # request) queues for a slot however full the queue is; anything else is refused
    # with `Overloaded` once MAX_QUEUED_SYNTHESES calls are waiting.
    background: bool = False


@dataclass(frozen=True)
class EngineInfo:
    """What an engine is, honestly: /health and capabilities report these fields."""

    engine: str  # "cosyvoice" | "espeak" | "noop"
    model: str  # e.g. "Fun-CosyVoice3-0.5B-2512" or "espeak-ng (development engine)"
    real_model: bool  # False for the development engine
    sample_rate: int
    languages: tuple[str, ...]
    chinese_dialects: tuple[str, ...] = ()
    instruct_support: bool = False
    pretrained_voices: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AudioChunk:
    """One piece of synthesized audio: mono float32 at `sample_rate`.

    `pcm16` is the same audio as 16-bit PCM when its producer made it: the engine thread
    (or an engine process) does for streams, so that they send it without converting on
    the event loop (where each numpy pass hands the GIL to the engine thread and waits to
    get it back).
    """

    samples: np.ndarray
    sample_rate: int
    pcm16: np.ndarray | None = None


@runtime_checkable
class SynthesisClient(Protocol):
    """Turns a request into audio chunks: the engine in-process, or a remote predictor."""

    @property
    def info(self) -> EngineInfo: ...

    @property
    def missing_reason(self) -> str | None:
        """Why this slot can never serve while the process runs (its model is absent);
        None when it serves or may serve later (a predictor still starting)."""

    @property
    def remote(self) -> bool:
        """True when another process (a predictor) runs the engine."""

    @property
    def warning(self) -> str | None:
        """What /health shows beside the slot (e.g. a predictor serving a fallback engine)."""

    @property
    def first_chunk_seconds(self) -> float | None:
        """The engine's time to first audio as last measured; None before any measurement."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ready(self, deep: bool = False) -> bool:
        """True when requests can be served. `deep=False` must not wake a scaled-to-zero
        predictor: it reports the last known state."""

    def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[AudioChunk, None]:
        """Chunks as the engine produces them, at `request.sample_rate` when it is set (else
        the engine's own rate); closing the iterator cancels the work."""

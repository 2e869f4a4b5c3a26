"""Domain records and enums shared by every part.

These are what the ports store and move. The API's request and response models live in
`core.schemas` and are built from these; the stores never see HTTP shapes.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

VOICE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
OUTPUT_FILENAME_PATTERN = re.compile(
    r"^(v1|v2|v3)_(cross_lingual|cache|instruct|task|stream)_[0-9a-f]{8,32}\.(wav|mp3|flac)$"
)


# Free text (what is spoken, a description) may break lines and hold tabs; no other
# control character: NUL ends the text where a C engine reads it, and the rest are
# terminal escapes and the like. These are all of Unicode's Cc but \t, \n and \r.
_STRAY_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def free_text_problem(text: str) -> str | None:
    """What makes `text` unfit as free text ("a control character (U+0000) at character
    4; ..."), or None."""
    stray = _STRAY_CONTROL.search(text)
    if stray:
        return (
            f"a control character (U+{ord(stray.group()):04X}) at character {stray.start()}; "
            "only line breaks and tabs may appear"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # JSON's "\ud800" escape decodes to half a UTF-16 pair, which no engine can take.
        return (
            f"a lone surrogate (U+{ord(text[exc.start]):04X}) at character {exc.start}, "
            "which is not valid Unicode"
        )
    return None


def utcnow() -> datetime:
    return datetime.now(UTC)


class ApiVersion(StrEnum):
    v1 = "v1"
    v2 = "v2"
    v3 = "v3"

    @property
    def engine_slot(self) -> EngineSlot:
        return EngineSlot.v3 if self is ApiVersion.v3 else EngineSlot.v2


class EngineSlot(StrEnum):
    """Which model family serves a request: v1 and v2 share the CosyVoice2 slot."""

    v2 = "v2"
    v3 = "v3"


class VoiceType(StrEnum):
    sft = "sft"
    zero_shot = "zero_shot"
    cross_lingual = "cross_lingual"
    instruct = "instruct"


class AudioFormat(StrEnum):
    wav = "wav"
    mp3 = "mp3"
    flac = "flac"


class StreamFormat(StrEnum):
    wav = "wav"
    mp3 = "mp3"
    pcm = "pcm"


class SynthesisMode(StrEnum):
    zero_shot = "zero_shot"
    cross_lingual = "cross_lingual"
    instruct = "instruct"


class Priority(StrEnum):
    low = "low"
    normal = "normal"
    high = "high"
    urgent = "urgent"

    @property
    def rank(self) -> int:
        """0 is served first."""
        return PRIORITY_ORDER.index(self)


PRIORITY_ORDER: tuple[Priority, ...] = (
    Priority.urgent,
    Priority.high,
    Priority.normal,
    Priority.low,
)


class TaskKind(StrEnum):
    task = "task"  # /cross-lingual/task and the v1/v2 async routes: starts at once
    scheduled = "scheduled"  # /schedule/register: waits for render


class TaskStatus(StrEnum):
    pending = "pending"  # registered for scheduling, nothing queued yet
    registered = "registered"  # a background task queued at creation
    scheduled = "scheduled"  # a scheduled task queued by render / render-all
    processing = "processing"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({TaskStatus.completed, TaskStatus.failed, TaskStatus.cancelled})
QUEUED_STATUSES = frozenset({TaskStatus.registered, TaskStatus.scheduled})


class Voice(BaseModel):
    """A stored voice: its record plus where its sample lives."""

    voice_id: str = Field(pattern=VOICE_ID_PATTERN)
    name: str
    description: str | None = None
    voice_type: VoiceType
    language: str | None = None
    prompt_text: str | None = None
    audio_format: AudioFormat
    file_size: int
    duration: float
    sample_rate: int
    is_active: bool = True
    created_at: datetime
    updated_at: datetime
    sample_key: str  # blob store key of the stored (normalised) sample
    sample_sha256: str  # content hash of the stored sample: keys cached features


class WebhookState(BaseModel):
    status: str = "none"  # none | pending | delivered | failed
    attempts: int = 0
    last_error: str | None = None
    delivered_at: datetime | None = None


class Task(BaseModel):
    """A background or scheduled render."""

    task_id: str
    kind: TaskKind
    version: ApiVersion = ApiVersion.v3
    status: TaskStatus
    priority: Priority = Priority.normal
    text: str
    voice_id: str
    format: AudioFormat = AudioFormat.wav
    speed: float = 1.0
    instruct_text: str | None = None
    callback_url: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    filename: str
    progress: float = 0.0
    duration: float | None = None
    synthesis_time: float | None = None
    error_message: str | None = None
    created_at: datetime
    queued_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    attempts: int = 0
    lease_until: datetime | None = None
    # The fencing token of the claim that holds the lease: every write of the render
    # compares it, so a worker whose lease was retaken can no longer change the task.
    claim_id: str | None = None
    # Long-form renders in segment jobs: how many, which are stored, and until when
    # one process holds the right to assemble them into the output.
    segments_total: int = 0
    segments_done: list[int] = Field(default_factory=list)
    assembling_until: datetime | None = None
    webhook: WebhookState = Field(default_factory=WebhookState)

    @property
    def file_path(self) -> str:
        return f"outputs/{self.filename}"

    def audio_url(self) -> str:
        return f"/api/{self.version.value}/audio/{self.filename}"


class VoiceStats(BaseModel):
    total_voices: int
    active_voices: int
    voice_types: dict[str, int]
    languages: dict[str, int]
    total_duration: float
    total_size: int


def output_key(filename: str) -> str:
    return f"outputs/{filename}"


def sample_key(
    voice_id: str, audio_format: AudioFormat, sha256: str | None = None, write_id: str = ""
) -> str:
    """Where a voice's sample lives: `voices/<id>/samples/<sha256>-<write id>.<ext>`.

    Each write of a sample gets a key of its own (its content hash plus a fresh write
    id), and a key is never written twice: a request that fails, or the cleanup of a
    replaced sample, can only ever delete its own object, never the sample another
    request just made the record point to. Without a hash, the single-key layout of
    samples stored before keys were content addressed (`voices/<id>/sample.<ext>`).
    """
    if sha256 is None:
        return f"voices/{voice_id}/sample.{audio_format.value}"
    suffix = f"-{write_id}" if write_id else ""
    return f"voices/{voice_id}/samples/{sha256}{suffix}.{audio_format.value}"


def features_prefix(voice_id: str) -> str:
    return f"voices/{voice_id}/features/"


def features_key(voice_id: str, model: str, sha256: str) -> str:
    return f"{features_prefix(voice_id)}{model}-{sha256[:16]}"

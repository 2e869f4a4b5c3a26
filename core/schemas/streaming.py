"""API shapes of streaming: quality table, SSE event payloads, WebSocket frames, health.

WebSocket frames from the client are one discriminated union on `message_type`, so a
frame is parsed and validated in one step and an unknown type is told apart from a bad
field. Server frames and SSE payloads keep the field names of the original service
(API.md, "Compatibility with the original service"); what is added is marked so.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .synthesis import INSTRUCT_FIELD, SPEED_FIELD

STREAM_FORMATS: tuple[str, ...] = ("wav", "mp3", "flac", "pcm")
"""Formats that stream: every output format, and raw 16-bit PCM."""

CHUNK_SIZE_MIN = 256
CHUNK_SIZE_MAX = 8192
CHUNK_SIZE_DEFAULT = 1024


def now_timestamp() -> float:
    """Seconds since the epoch, the timestamp style of the streaming messages."""
    return round(time.time(), 3)


# --- quality ---------------------------------------------------------------------------


class StreamQuality(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"


@dataclass(frozen=True)
class QualityProfile:
    sample_rate: int
    chunk_seconds: float


QUALITY_PROFILES: dict[StreamQuality, QualityProfile] = {
    StreamQuality.low: QualityProfile(sample_rate=16000, chunk_seconds=0.5),
    StreamQuality.medium: QualityProfile(sample_rate=22050, chunk_seconds=0.3),
    StreamQuality.high: QualityProfile(sample_rate=44100, chunk_seconds=0.2),
}


# --- SSE event payloads ----------------------------------------------------------------


class SseStart(BaseModel):
    message: str = "Streaming synthesis started"
    version: str
    timestamp: float = Field(default_factory=now_timestamp)
    sample_rate: int
    format: str
    request_id: str


class SseAudioChunk(BaseModel):
    chunk_index: int = Field(ge=1, description="1-based.")
    chunk_size: int = Field(description="Bytes of audio in this event (decoded audio_data).")
    total_bytes: int = Field(description="Bytes of audio sent so far, this event included.")
    audio_data: str = Field(
        description="Base64: a small WAV or FLAC file, MP3 frames or raw PCM (empty for a "
        "final event that only marks the end)."
    )
    is_final: bool
    timestamp: float = Field(default_factory=now_timestamp)
    sample_rate: int
    channels: int = 1
    duration: float = Field(description="Seconds of audio in this event.")
    version: str


class SseComplete(BaseModel):
    total_chunks: int
    total_bytes: int
    duration: float = Field(description="Seconds of audio sent.")
    synthesis_time: float = Field(description="Seconds from the request to the last chunk.")
    message: str = "Streaming synthesis completed"
    version: str


class SseError(BaseModel):
    error: str
    error_code: str
    timestamp: float = Field(default_factory=now_timestamp)
    version: str


# --- WebSocket: client frames ------------------------------------------------------------


def _new_request_id() -> str:
    return f"req_{uuid.uuid4().hex[:12]}"


class TextRequest(BaseModel):
    """Synthesize `text` with a stored voice; answers carry the same `request_id`."""

    model_config = ConfigDict(extra="ignore")

    message_type: Literal["text_request"]
    request_id: str = Field(default_factory=_new_request_id, min_length=1, max_length=128)
    text: str
    voice_id: str = Field(min_length=1, max_length=64)
    format: str = Field("wav", description="wav, mp3, flac or pcm")
    speed: float = SPEED_FIELD
    quality: StreamQuality = StreamQuality.medium
    instruct_text: str | None = INSTRUCT_FIELD


class PingMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    message_type: Literal["ping"]
    request_id: str | None = None


class CancelMessage(BaseModel):
    """Stop a request in flight (an addition to the original protocol)."""

    model_config = ConfigDict(extra="ignore")

    message_type: Literal["cancel"]
    request_id: str = Field(min_length=1, max_length=128)


ClientMessage = Annotated[
    TextRequest | PingMessage | CancelMessage, Field(discriminator="message_type")
]
CLIENT_MESSAGE = TypeAdapter(ClientMessage)
CLIENT_MESSAGE_TYPES: tuple[str, ...] = ("text_request", "ping", "cancel")


# --- WebSocket: server frames -------------------------------------------------------------


class WsErrorCode(StrEnum):
    INVALID_JSON = "INVALID_JSON"
    UNKNOWN_MESSAGE_TYPE = "UNKNOWN_MESSAGE_TYPE"
    INVALID_REQUEST = "INVALID_REQUEST"
    VOICE_NOT_FOUND = "VOICE_NOT_FOUND"
    SYNTHESIS_ERROR = "SYNTHESIS_ERROR"
    BUSY = "BUSY"


class StatusMessage(BaseModel):
    message_type: Literal["status"] = "status"
    status: Literal["connected"] = "connected"
    session_id: str
    client_id: str
    message: str = "Connected to the streaming service"
    timestamp: float = Field(default_factory=now_timestamp)


class SynthesisStart(BaseModel):
    message_type: Literal["synthesis_start"] = "synthesis_start"
    request_id: str
    timestamp: float = Field(default_factory=now_timestamp)
    text: str
    voice_id: str
    format: str
    sample_rate: int


class ChunkMetadata(BaseModel):
    chunk_index: int = Field(ge=1, description="1-based.")
    chunk_size: int = Field(description="Bytes of audio in this chunk (decoded audio_data).")
    sample_rate: int
    channels: int = 1
    is_final: bool
    duration: float = Field(description="Seconds of audio in this chunk.")
    format: str


class AudioChunkMessage(BaseModel):
    message_type: Literal["audio_chunk"] = "audio_chunk"
    request_id: str
    timestamp: float = Field(default_factory=now_timestamp)
    audio_data: str = Field(description="Base64: a small WAV or FLAC file, MP3 frames or raw PCM.")
    metadata: ChunkMetadata


class SynthesisComplete(BaseModel):
    message_type: Literal["synthesis_complete"] = "synthesis_complete"
    request_id: str
    timestamp: float = Field(default_factory=now_timestamp)
    total_chunks: int
    total_duration: float = Field(description="Seconds of audio sent.")
    synthesis_time: float = Field(description="Seconds from the request to the last chunk.")


class SynthesisCancelled(BaseModel):
    """The answer to `cancel` (an addition): no more frames follow for this request."""

    message_type: Literal["synthesis_cancelled"] = "synthesis_cancelled"
    request_id: str
    timestamp: float = Field(default_factory=now_timestamp)
    chunks_sent: int


class PongMessage(BaseModel):
    message_type: Literal["pong"] = "pong"
    request_id: str | None = None
    timestamp: float = Field(default_factory=now_timestamp)


class ErrorMessage(BaseModel):
    message_type: Literal["error"] = "error"
    request_id: str | None = None
    timestamp: float = Field(default_factory=now_timestamp)
    error_code: WsErrorCode
    error_message: str


ServerMessage = (
    StatusMessage
    | SynthesisStart
    | AudioChunkMessage
    | SynthesisComplete
    | SynthesisCancelled
    | PongMessage
    | ErrorMessage
)


# --- health and sessions ---------------------------------------------------------------


class StreamingHealth(BaseModel):
    status: Literal["healthy", "unavailable"]
    version: str
    model: str
    streaming_engine: str = Field(description="Engine behind the streams: cosyvoice or espeak.")
    engine_ready: bool
    supported_formats: list[str] = list(STREAM_FORMATS)
    supported_qualities: list[str] = [quality.value for quality in StreamQuality]
    protocols: list[str] = ["http-chunked", "sse", "websocket"]
    latency_ms: float | None = Field(
        description="Median time to first audio of recent streams; before any, the engine's "
        "time to first audio measured when it warmed up (null only if that failed)."
    )
    active_streams: int = Field(description="Streams in flight on this server, every version.")
    streams_by_protocol: dict[str, int] = Field(description="active_streams by http/sse/websocket.")
    max_concurrent_streams: int
    active_websocket_sessions: int = Field(description="Open WebSocket sessions on this server.")
    timestamp: float = Field(default_factory=now_timestamp)


class WsSessionPublic(BaseModel):
    session_id: str
    client_id: str
    version: str
    connected_at: datetime
    requests_served: int = Field(description="Text requests finished on this socket.")
    active_requests: list[str] = Field(description="request_ids in flight.")


class WsSessionList(BaseModel):
    sessions: list[WsSessionPublic]
    total: int
    version: str

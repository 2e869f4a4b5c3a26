"""API shapes of synchronous synthesis, capabilities and health (API.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..domain import AudioFormat

SPEED_FIELD = Field(1.0, ge=0.5, le=2.0, description="Speaking rate, 0.5–2.0.")
INSTRUCT_FIELD = Field(
    None,
    max_length=500,
    description='v3 only. E.g. "Use Cantonese dialect", "Speak slowly with a happy tone", '
    '"Use formal and professional tone", "Whisper softly". Switches to instruct mode.',
)


class WithCacheRequest(BaseModel):
    """Clone a stored voice."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"example": {"text": "Hello world", "voice_id": "my_voice"}},
    )

    text: str = Field(description="1..MAX_TEXT_LENGTH characters after trimming.")
    voice_id: str = Field(min_length=1, max_length=64)
    format: AudioFormat = AudioFormat.wav
    speed: float = SPEED_FIELD
    stream: bool = Field(False, description="Send the audio itself, chunked, as it is produced.")
    instruct_text: str | None = INSTRUCT_FIELD


class SynthesisResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "success": True,
                "message": "CosyVoice3 synthesis completed",
                "audio_url": "/api/v3/audio/v3_cross_lingual_abc12345.wav",
                "file_path": "outputs/v3_cross_lingual_abc12345.wav",
                "duration": 3.5,
                "format": "wav",
                "synthesis_time": 1.2,
            }
        }
    )

    success: bool = True
    message: str
    audio_url: str = Field(description="GET it to download the audio.")
    file_path: str = Field(description="Where the output is stored: outputs/<filename>.")
    duration: float = Field(description="Seconds of audio in the file.")
    format: AudioFormat
    synthesis_time: float = Field(description="Seconds spent rendering.")
    sample_rate: int = Field(description="Sample rate of the file, Hz.")
    engine: str = Field(description="Engine that rendered it: cosyvoice or espeak.")


class PhonemeSupport(BaseModel):
    chinese_pinyin: bool
    english_cmu: bool


class StreamingSupport(BaseModel):
    enabled: bool = True
    latency_ms: float | None = Field(
        None,
        description="Median time to first audio of recent streams; before any, the engine's "
        "time to first audio measured when it warmed up (None only if that failed).",
    )
    protocols: list[str] = ["http-chunked", "sse", "websocket"]
    formats: list[str] = ["wav", "mp3", "flac", "pcm"]


class Features(BaseModel):
    languages: list[str]
    chinese_dialects: list[str]
    instruct_support: bool
    phoneme_support: PhonemeSupport
    streaming: StreamingSupport
    modes: list[str]
    output_formats: list[str] = ["wav", "mp3", "flac"]
    speed_range: tuple[float, float] = (0.5, 2.0)
    max_text_length: int


class Capabilities(BaseModel):
    version: str
    model: str
    engine: str = Field(description="cosyvoice (the real model) or espeak (development engine).")
    real_model: bool
    sample_rate: int
    features: Features


class EngineHealth(BaseModel):
    ready: bool
    model: str
    engine: str = Field(description="cosyvoice (the real model) or espeak (development engine).")
    real_model: bool
    remote: bool = Field(description="Served by a KServe predictor over HTTP.")
    warning: str | None = None
    serves: list[str] = Field(description="API versions this engine slot serves.")


class ServiceHealth(BaseModel):
    ok: bool
    backend: str
    detail: str | None = None


class Health(BaseModel):
    status: Literal["healthy", "degraded"]
    v2: EngineHealth
    v3: EngineHealth
    services: dict[str, ServiceHealth]
    version: str

"""API shapes of the voice library (API.md, "Voices")."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from ..domain import AudioFormat, Voice, VoiceType
from .common import iso_utc


class VoicePublic(BaseModel):
    """A voice as clients see it; `file_size`, `duration`, `sample_rate` are measured."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "voice_id": "my_voice_01",
                "name": "My Custom Voice",
                "description": "A custom voice for testing",
                "voice_type": "cross_lingual",
                "language": "zh",
                "prompt_text": None,
                "created_at": "2024-01-15T10:30:00Z",
                "updated_at": "2024-01-15T10:30:00Z",
                "audio_format": "wav",
                "file_size": 245760,
                "duration": 5.2,
                "sample_rate": 22050,
                "is_active": True,
            }
        }
    )

    voice_id: str = Field(description="1–64 letters, digits, '_' or '-'.")
    name: str
    description: str | None = None
    voice_type: VoiceType
    language: str | None = Field(None, description="Language of the sample (zh, en, ja, ...).")
    prompt_text: str | None = Field(None, description="Transcript of the sample, if known.")
    created_at: datetime
    updated_at: datetime
    audio_format: AudioFormat = Field(description="Container detected from the upload's bytes.")
    file_size: int = Field(description="Bytes of the stored sample.")
    duration: float = Field(description="Seconds of the decoded sample.")
    sample_rate: int = Field(description="Sample rate of the uploaded clip, Hz.")
    is_active: bool = True

    @field_serializer("created_at", "updated_at")
    def _timestamps(self, value: datetime) -> str:
        return iso_utc(value)

    @classmethod
    def of(cls, voice: Voice) -> VoicePublic:
        return cls.model_validate(voice.model_dump())


class VoiceList(BaseModel):
    voices: list[VoicePublic]
    total: int = Field(description="All matches, not just this page.")
    page: int
    page_size: int


class VoiceUpdate(BaseModel):
    """PUT body: every field optional; only the fields sent change."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    language: str | None = Field(None, max_length=16)
    prompt_text: str | None = Field(None, max_length=2000)
    voice_type: VoiceType | None = None
    is_active: bool | None = None


class VoiceDeleted(BaseModel):
    success: bool = True
    message: str
    data: dict[str, str]


class VoiceStatsPublic(BaseModel):
    total_voices: int
    active_voices: int
    voice_types: dict[str, int]
    languages: dict[str, int]
    total_duration: float = Field(description="Seconds of all samples.")
    total_size: int = Field(description="Bytes of all samples.")


class PretrainedVoices(BaseModel):
    pretrained_voices: list[str]
    total: int
    version: str

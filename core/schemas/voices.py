"""API shapes of the voice library (API.md, "Voices")."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
)

from ..domain import VOICE_ID_PATTERN, AudioFormat, Voice, VoiceType, free_text_problem
from ..errors import InvalidInput
from .common import describe_validation_error, iso_utc, single_line

LANGUAGE_PATTERN = r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})?$"


def _text(value: str) -> str:
    """Free text: line breaks and tabs are fine, other control characters are not."""
    problem = free_text_problem(value)
    if problem:
        raise ValueError(f"has {problem}")
    return value


def _optional_text(value: str | None) -> str | None:
    """An empty transcript is no transcript."""
    return (value or "").strip() or None


_M = TypeVar("_M", bound=BaseModel)

# The field rules of a voice, shared by create (form fields) and update (JSON or form),
# so both accept and refuse exactly the same values.
VoiceName = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(single_line)]
VoiceDescription = Annotated[str, Field(max_length=2000), AfterValidator(_text)]
VoiceLanguage = Annotated[
    str,
    Field(pattern=LANGUAGE_PATTERN, description="Language of the sample (zh, en, ja, ...)."),
    AfterValidator(str.lower),
]
PromptText = Annotated[
    str | None, Field(max_length=2000), AfterValidator(lambda v: _optional_text(_text(v or "")))
]


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
    file_size: int = Field(description="Bytes of the uploaded clip.")
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


class VoiceFields(BaseModel):
    """The form fields of a new voice (POST), checked by the same rules as an update."""

    model_config = ConfigDict(extra="forbid")

    voice_id: str = Field(pattern=VOICE_ID_PATTERN)
    name: VoiceName
    voice_type: VoiceType
    description: VoiceDescription | None = None
    language: VoiceLanguage | None = None
    prompt_text: PromptText = None


class VoiceUpdate(BaseModel):
    """PUT body: every field optional; only the fields sent change."""

    model_config = ConfigDict(extra="forbid")

    name: VoiceName | None = None
    description: VoiceDescription | None = None
    language: VoiceLanguage | None = None
    prompt_text: PromptText = None
    voice_type: VoiceType | None = None
    is_active: bool | None = None


def checked_voice_fields(model: type[_M], raw: Mapping[str, object]) -> _M:
    """Validate voice fields; InvalidInput (400) names every field that is wrong."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(describe_validation_error(exc.errors(), unnamed="body")) from None


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

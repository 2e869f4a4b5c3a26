"""API shapes of the OpenAI-compatible speech API (`/v1/...`).

Field names, values, events and error bodies follow OpenAI's API reference for
`POST /v1/audio/speech`, `GET /v1/models` and the `stream_format=sse` events, so the
official SDKs work unchanged. What the platform adds is marked so in the descriptions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..domain import VOICE_ID_PATTERN, ApiVersion
from ..errors import InvalidInput, NotFound
from .synthesis import Features

OPENAI_PATH_PREFIX = "/v1/"
"""Routes under this prefix answer errors in OpenAI's shape (the original API is /api/...)."""

SPEECH_SAMPLE_RATE = 24_000
"""OpenAI's rate: `pcm` is 16-bit little-endian mono at 24 kHz, and so is every other format
here (Opus decoders play it at 48 kHz, as they play every Opus stream)."""

MAX_INPUT_CHARS = 4096  # OpenAI's limit; MAX_TEXT_LENGTH may be lower and then wins

ENGINE_SPEED_RANGE: tuple[float, float] = Features.model_fields["speed_range"].default
"""The speeds the engines render (the original API's 0.5–2.0); OpenAI accepts 0.25–4.0."""

BUILTIN_VOICES: tuple[str, ...] = (
    "alloy",
    "ash",
    "ballad",
    "cedar",
    "coral",
    "echo",
    "fable",
    "marin",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
)
"""OpenAI's voice names; each stands for the stored voice OPENAI_VOICES maps it to."""

MODEL_VERSIONS: dict[str, ApiVersion] = {"cosyvoice3": ApiVersion.v3, "cosyvoice2": ApiVersion.v2}
MODEL_ALIASES: tuple[str, ...] = (
    "tts-1",
    "tts-1-hd",
    "gpt-4o-mini-tts",
    "gpt-4o-mini-tts-2025-12-15",
)
"""OpenAI's model names: each means the best model loaded (cosyvoice3, else cosyvoice2)."""

_ALIAS_ENTRY = re.compile(r"^\s*([a-z]+)\s*:\s*(\S+?)\s*$")


def parse_voice_aliases(value: str | Mapping[str, Any]) -> dict[str, str]:
    """OPENAI_VOICES: `alloy:my_voice,nova:other` or a JSON object; ValueError names the
    entry that is wrong."""
    if isinstance(value, str):
        raw = value.strip()
        if not raw:
            return {}
        if raw.startswith("{"):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc.msg})") from None
        else:
            pairs = {}
            for entry in raw.split(","):
                match = _ALIAS_ENTRY.match(entry)
                if match is None:
                    raise ValueError(f"entry {entry.strip()!r} must be name:voice_id")
                pairs[match.group(1)] = match.group(2)
            value = pairs
    if not isinstance(value, Mapping):
        raise ValueError('expected "name:voice_id,..." or a JSON object')
    aliases: dict[str, str] = {}
    for name, voice_id in value.items():
        if name not in BUILTIN_VOICES:
            raise ValueError(f"{name!r} is not an OpenAI voice name ({', '.join(BUILTIN_VOICES)})")
        if not isinstance(voice_id, str) or not re.match(VOICE_ID_PATTERN, voice_id):
            raise ValueError(f"{name}: {voice_id!r} is not a voice id")
        aliases[name] = voice_id
    return aliases


# --- POST /v1/audio/speech -------------------------------------------------------------


class SpeechFormat(StrEnum):
    mp3 = "mp3"
    opus = "opus"
    aac = "aac"
    flac = "flac"
    wav = "wav"
    pcm = "pcm"


class SpeechStreamFormat(StrEnum):
    audio = "audio"
    sse = "sse"


class VoiceRef(BaseModel):
    """A custom voice by id, as OpenAI's SDKs send it: `{"id": "my_voice"}`."""

    id: str = Field(min_length=1, max_length=64)


class SpeechRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "example": {
                "model": "cosyvoice3",
                "input": "Hello world",
                "voice": "my_voice",
                "response_format": "mp3",
            }
        },
    )

    model: str = Field(
        min_length=1,
        max_length=64,
        description="cosyvoice3 or cosyvoice2; tts-1, tts-1-hd and gpt-4o-mini-tts mean the "
        "best model loaded.",
    )
    input: str = Field(
        max_length=MAX_INPUT_CHARS,
        description="The text to speak: 1..MAX_TEXT_LENGTH characters after trimming.",
    )
    voice: str | VoiceRef = Field(
        description='A stored voice id (or {"id": ...}); OpenAI\'s names (alloy, nova, ...) '
        "stand for the stored voices OPENAI_VOICES maps them to."
    )
    instructions: str | None = Field(
        None,
        max_length=500,
        description="How to speak (cosyvoice3 only: instruct mode), e.g. 'Speak slowly with "
        "a happy tone'.",
    )
    response_format: SpeechFormat = Field(
        SpeechFormat.mp3, description="Every format is mono at 24 kHz; pcm is raw 16-bit LE."
    )
    speed: float = Field(
        1.0,
        ge=0.25,
        le=4.0,
        description="0.25–4.0 as OpenAI accepts; outside the engines' 0.5–2.0 a 400.",
    )
    stream_format: SpeechStreamFormat = Field(
        SpeechStreamFormat.audio,
        description="audio: the file's bytes as they are made; sse: speech.audio.delta events "
        "(base64 pieces of that file) and one speech.audio.done.",
    )

    @property
    def voice_name(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice


class SpeechUsage(BaseModel):
    """There are no tokens here: the input counts in characters, the output as 0."""

    input_tokens: int
    output_tokens: int = 0
    total_tokens: int


class SpeechAudioDelta(BaseModel):
    type: Literal["speech.audio.delta"] = "speech.audio.delta"
    audio: str = Field(description="Base64: the next bytes of the response_format file.")


class SpeechAudioDone(BaseModel):
    type: Literal["speech.audio.done"] = "speech.audio.done"
    usage: SpeechUsage


# --- GET /v1/models, /v1/audio/voices ----------------------------------------------


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "cosyvoice"
    root: str = Field(description="Added: the model that serves this name.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class VoiceObject(BaseModel):
    id: str
    object: Literal["audio.voice"] = "audio.voice"
    created_at: int = Field(description="Unix seconds.")
    name: str
    type: Literal["audio_sample"] = "audio_sample"
    language: str | None = Field(None, description="Added: the voice's language.")
    aliases: list[str] = Field(
        default_factory=list, description="Added: OpenAI voice names mapped to this voice."
    )


class VoiceList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VoiceObject]
    has_more: bool


# --- errors ----------------------------------------------------------------------------


class OpenAiError(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAiErrorBody(BaseModel):
    """Every error of the /v1 routes."""

    error: OpenAiError


_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", None),
    409: ("invalid_request_error", None),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}


class OpenAiErrorFields:
    """Marks errors raised by the /v1 routes that name the offending parameter."""

    param: str | None = None
    code: str | None = None


class SpeechParamError(OpenAiErrorFields, InvalidInput):
    def __init__(self, detail: str, param: str, code: str | None = None) -> None:
        super().__init__(detail)
        self.param = param
        self.code = code


class ModelNotFound(OpenAiErrorFields, NotFound):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.param = "model"
        self.code = "model_not_found"


def openai_error_body(
    status: int, message: Any, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}` for a status and message."""
    kind, default_code = _ERROR_TYPES.get(status, ("server_error", None))
    if status == 503:
        default_code = "service_unavailable"
    text = message if isinstance(message, str) else json.dumps(message, default=str)
    error = OpenAiError(message=text, type=kind, param=param, code=code or default_code)
    return OpenAiErrorBody(error=error).model_dump()

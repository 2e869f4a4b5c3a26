"""The predictor's wire protocol, shared by the KServe model and its HTTP client.

The predictor speaks KServe's V1 protocol: `POST /v1/models/<name>:predict` with a JSON
body `{"instances": [<one SynthesisInstance>]}`. One request is one synthesis.

Without `stream` the answer is JSON, `{"predictions": [<one SynthesisPrediction>]}`,
with the audio as base64 little-endian float32 PCM (mono).

With `"stream": true` the answer is a byte stream of frames, sent as the engine produces
audio (KServe's V1 route turns the model's async iterator into a chunked response):

    frame   := header payload
    header  := kind:1 byte | sample_rate:uint32 big-endian | length:uint32 big-endian
    kind    'A'  audio: `length` bytes of mono little-endian float32 PCM at `sample_rate`
            'E'  end:   JSON `StreamSummary`; the last frame of a complete stream
            'X'  error: JSON `StreamError`; the last frame of a stream that failed

A stream that stops without an 'E' or 'X' frame was cut off (the predictor went away).
Errors found before the first audio are answered with an HTTP status instead (400 bad
input, 422 unusable clip, 503 not ready or saturated, 500 engine failure) and a JSON body
`{"error": "<detail>", "type": "<error class>"}`.

A voice travels inline (`audio`: the reference clip as a base64 audio file) or by
reference (`voice_id` + `sample_key` in the shared blob store). The predictor keys the
voice features it caches by the SHA-256 of the bytes it reads itself; the `sha256` a
caller sends is only checked for shape, so no caller can file features under a hash
that is not their clip's.

`GET /v1/models/<name>/metadata` describes the engine (`PredictorMetadata`) with the
counters of its synthesis queue and feature cache.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..domain import VOICE_ID_PATTERN, SynthesisMode
from ..errors import (
    AudioRejected,
    BackendUnavailable,
    Busy,
    Conflict,
    CosyVoiceError,
    EngineNotReady,
    InvalidInput,
    NotFound,
    SynthesisFailed,
)
from ..ports import EngineInfo

STREAM_FRAMING = "cosyvoice-pcm-frames/1"
PCM_ENCODING: Final = "pcm_f32le"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
SAMPLE_KEY_PATTERN = r"^voices/[^\s\\]+$"


# --- request ----------------------------------------------------------------------------


class VoiceSpec(BaseModel):
    """The voice to clone: the clip inline, or a stored sample by reference."""

    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(
        pattern=SHA256_PATTERN,
        description="SHA-256 of the clip (64 hex); advisory: the predictor hashes what it reads.",
    )
    audio: str | None = Field(
        None, description="The reference clip itself: a WAV, FLAC or MP3 file, base64."
    )
    voice_id: str | None = Field(None, pattern=VOICE_ID_PATTERN)
    sample_key: str | None = Field(
        None,
        max_length=512,
        pattern=SAMPLE_KEY_PATTERN,
        description="Blob store key of the stored sample, e.g. voices/<id>/samples/<sha256>.flac.",
    )
    # Sanity bounds only: the API validates the real limits before a request gets here.
    prompt_text: str | None = Field(None, max_length=10_000, description="Transcript of the clip.")
    language: str | None = Field(None, max_length=16)

    @model_validator(mode="after")
    def _one_source(self) -> VoiceSpec:
        if (self.audio is None) == (self.sample_key is None):
            raise ValueError(
                "give the voice either inline ('audio', base64) or by reference "
                "('voice_id' and 'sample_key'), exactly one of the two"
            )
        if self.sample_key is not None and self.voice_id is None:
            raise ValueError("a voice given by 'sample_key' needs its 'voice_id'")
        return self


class SynthesisInstance(BaseModel):
    """One synthesis: the only item of a V1 request's `instances`."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1)
    mode: SynthesisMode = SynthesisMode.cross_lingual
    voice: VoiceSpec
    instruct_text: str | None = Field(None, max_length=2000)
    speed: float = Field(1.0, ge=0.5, le=2.0)
    language: str | None = Field(None, max_length=16)
    sample_rate: int | None = Field(
        None, ge=8000, le=48000, description="Output rate; None = the engine's own."
    )
    stream: bool = Field(False, description="Answer with PCM frames as they are produced.")
    low_latency: bool = Field(
        True,
        description="Synthesize for an early first chunk (the engine's streaming path); "
        "False renders each sentence in one pass, cheaper when the audio is joined anyway.",
    )

    @field_validator("text")
    @classmethod
    def _speakable(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text is empty")
        return value

    @model_validator(mode="after")
    def _mode_needs(self) -> SynthesisInstance:
        if self.mode is SynthesisMode.zero_shot and not (self.voice.prompt_text or "").strip():
            raise ValueError("zero_shot mode needs the voice's prompt_text (the clip's transcript)")
        return self


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: list[SynthesisInstance] = Field(
        min_length=1, max_length=1, description="Exactly one synthesis per request."
    )


# --- answers ----------------------------------------------------------------------------


class SynthesisPrediction(BaseModel):
    audio: str = Field(description="Base64 of mono little-endian float32 PCM.")
    encoding: Literal["pcm_f32le"] = PCM_ENCODING
    sample_rate: int
    num_samples: int
    duration: float = Field(description="Seconds of audio.")
    synthesis_time: float = Field(description="Seconds from request to the last sample.")
    engine: str
    model: str

    def samples(self) -> np.ndarray:
        import base64

        return pcm_to_samples(base64.b64decode(self.audio))


class PredictResponse(BaseModel):
    predictions: list[SynthesisPrediction]


class StreamSummary(BaseModel):
    """Payload of the end frame."""

    sample_rate: int
    num_samples: int
    chunks: int
    duration: float
    synthesis_time: float


class StreamError(BaseModel):
    """Payload of an error frame, and the JSON body of an error answer."""

    type: str
    error: str


class EngineDescription(BaseModel):
    """`EngineInfo` on the wire."""

    engine: str
    model: str
    real_model: bool
    sample_rate: int
    languages: list[str]
    chinese_dialects: list[str] = Field(default_factory=list)
    instruct_support: bool = False
    pretrained_voices: list[str] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_info(cls, info: EngineInfo) -> EngineDescription:
        return cls(
            engine=info.engine,
            model=info.model,
            real_model=info.real_model,
            sample_rate=info.sample_rate,
            languages=list(info.languages),
            chinese_dialects=list(info.chinese_dialects),
            instruct_support=info.instruct_support,
            pretrained_voices=list(info.pretrained_voices),
            extra=dict(info.extra),
        )

    def to_info(self) -> EngineInfo:
        return EngineInfo(
            engine=self.engine,
            model=self.model,
            real_model=self.real_model,
            sample_rate=self.sample_rate,
            languages=tuple(self.languages),
            chinese_dialects=tuple(self.chinese_dialects),
            instruct_support=self.instruct_support,
            pretrained_voices=tuple(self.pretrained_voices),
            extra=dict(self.extra),
        )


class SynthesisStats(BaseModel):
    concurrency: int = Field(description="Syntheses run at once (the GPU's slots).")
    active: int
    queued: int
    completed: int
    failed: int
    cancelled: int
    stuck: int = Field(0, description="Engine calls that ignored a stop (restart advisable).")
    first_chunk_seconds: float | None = Field(
        None, description="Smoothed time from request to first audio, seconds."
    )


class FeatureCacheStats(BaseModel):
    entries: int = Field(description="Voices whose features are in memory.")
    hits: int = Field(description="Syntheses served from memory.")
    blob_hits: int = Field(description="Voices loaded from the blob store.")
    extractions: int = Field(description="Voices whose features were computed.")


class PredictorMetadata(BaseModel):
    name: str
    ready: bool
    load_error: str | None = None
    warning: str | None = Field(None, description="E.g. why the development engine serves.")
    engine: EngineDescription
    synthesis: SynthesisStats
    feature_cache: FeatureCacheStats
    stream_framing: str = STREAM_FRAMING


# --- errors on the wire -----------------------------------------------------------------

WIRE_ERRORS: dict[str, type[CosyVoiceError]] = {
    cls.__name__: cls
    for cls in (
        InvalidInput,
        AudioRejected,
        NotFound,
        Conflict,
        EngineNotReady,
        Busy,
        BackendUnavailable,
        SynthesisFailed,
    )
}


def wire_error_name(exc: CosyVoiceError) -> str:
    """The most specific class of the wire table that `exc` is an instance of."""
    for cls in type(exc).__mro__:
        if cls.__name__ in WIRE_ERRORS and WIRE_ERRORS[cls.__name__] is cls:
            return cls.__name__
    return SynthesisFailed.__name__


def error_from_wire(name: str, detail: str) -> CosyVoiceError:
    return WIRE_ERRORS.get(name, SynthesisFailed)(detail)


# --- stream frames ----------------------------------------------------------------------

FRAME_HEADER = struct.Struct(">cII")
AUDIO: bytes = b"A"
END: bytes = b"E"
ERROR: bytes = b"X"
_KINDS = frozenset({AUDIO, END, ERROR})
MAX_FRAME_BYTES = 64 * 1024 * 1024


def samples_to_pcm(samples: np.ndarray) -> bytes:
    return np.ascontiguousarray(samples, dtype="<f4").reshape(-1).tobytes()


def pcm_to_samples(data: bytes) -> np.ndarray:
    if len(data) % 4:
        raise ValueError(f"{len(data)} bytes is not a whole number of float32 samples")
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def audio_frame(samples: np.ndarray, sample_rate: int) -> bytes:
    pcm = samples_to_pcm(samples)
    return FRAME_HEADER.pack(AUDIO, sample_rate, len(pcm)) + pcm


def end_frame(summary: StreamSummary) -> bytes:
    return _json_frame(END, summary.sample_rate, summary.model_dump())


def error_frame(error: StreamError) -> bytes:
    return _json_frame(ERROR, 0, error.model_dump())


def _json_frame(kind: bytes, sample_rate: int, payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, ensure_ascii=False).encode()
    return FRAME_HEADER.pack(kind, sample_rate, len(data)) + data


@dataclass(frozen=True)
class Frame:
    kind: bytes
    sample_rate: int
    payload: bytes

    def samples(self) -> np.ndarray:
        return pcm_to_samples(self.payload)

    def summary(self) -> StreamSummary:
        return StreamSummary.model_validate_json(self.payload)

    def error(self) -> StreamError:
        return StreamError.model_validate_json(self.payload)


class FrameProtocolError(ValueError):
    """The bytes are not a frame stream (a proxy's error page, a truncated header...)."""


class FrameReader:
    """Cuts a byte stream, arriving in pieces of any size, into whole frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while len(self._buffer) >= FRAME_HEADER.size:
            kind, sample_rate, length = FRAME_HEADER.unpack_from(self._buffer)
            if kind not in _KINDS or length > MAX_FRAME_BYTES:
                raise FrameProtocolError(
                    f"not a {STREAM_FRAMING} stream (frame kind {kind!r}, {length} bytes)"
                )
            end = FRAME_HEADER.size + length
            if len(self._buffer) < end:
                break
            with memoryview(self._buffer) as view:  # one copy of the payload, not two
                payload = bytes(view[FRAME_HEADER.size : end])
            frames.append(Frame(kind, sample_rate, payload))
            del self._buffer[:end]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame (non-zero at the end means the stream was cut)."""
        return len(self._buffer)

"""The OpenAI-compatible speech API: POST /v1/audio/speech, GET /v1/models, /v1/audio/voices.

The same services as the original API stand behind it: stored voices, the engine of each
version, the one streaming path (admission against MAX_CONCURRENT_STREAMS and the engine
queue, audio leaving with the engine's first chunk, the synthesis cancelled when the
client goes away), API keys and limits (their middleware guards /v1 like /api). Errors
take OpenAI's shape (router/errors.py), so OpenAI's SDKs raise their usual exceptions.

A speech request, step by step:
1. `model` picks the version: cosyvoice3 → v3, cosyvoice2 → v2, OpenAI's model names →
   the best model loaded; a model that is not loaded is a 404 `model_not_found`.
2. `voice` is a stored voice id, or one of OpenAI's names mapped by OPENAI_VOICES.
3. `speed` outside the engines' range and `instructions` on cosyvoice2 are 400s naming
   the parameter, never silently clamped or dropped.
4. The audio is rendered at 24 kHz whatever SAMPLE_RATE says (OpenAI's rate), encoded
   as it comes (`open_stream_encoder`) and sent as one file (`stream_format=audio`) or as
   base64 pieces of that file in `speech.audio.delta` events (`sse`).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from core.audio.stream import StreamEncoder, open_stream_encoder
from core.domain import ApiVersion, free_text_problem
from core.errors import CosyVoiceError, InvalidInput, VoiceNotFound
from core.ports import SynthesisRequest
from core.schemas.openai import (
    BUILTIN_VOICES,
    ENGINE_SPEED_RANGE,
    MODEL_ALIASES,
    MODEL_VERSIONS,
    SPEECH_SAMPLE_RATE,
    ModelList,
    ModelNotFound,
    ModelObject,
    OpenAiErrorBody,
    SpeechAudioDelta,
    SpeechAudioDone,
    SpeechFormat,
    SpeechParamError,
    SpeechRequest,
    SpeechStreamFormat,
    SpeechUsage,
    VoiceList,
    VoiceObject,
    openai_error_body,
)
from core.services.streams import StreamKind
from core.wiring import Runtime

from ..deps import RuntimeDep
from ..errors import status_for
from ..sse import SSE_HEADERS, SSE_MEDIA_TYPE, SseEncoder, with_keepalive
from ..streaming import AudioStream, AudioStreamResponse, close_shielded, open_audio_stream

log = logging.getLogger("router.openai")

MODEL_NAME = {ApiVersion.v3: "cosyvoice3", ApiVersion.v2: "cosyvoice2"}
ERROR_MEANING = {
    400: "Invalid parameter (the `param` field names it)",
    401: "Missing or invalid API key",
    404: "Model not loaded",
    429: "Over a rate or concurrency limit",
    503: "Engine busy or not ready",
}
SPEECH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The audio (chunked, as it is made), or SSE events with stream_format=sse",
        "content": {
            "audio/mpeg": {},
            "audio/ogg": {},
            "audio/aac": {},
            "audio/flac": {},
            "audio/wav": {},
            "audio/L16": {},
            SSE_MEDIA_TYPE: {},
        },
    },
    **{
        code: {"model": OpenAiErrorBody, "description": meaning}
        for code, meaning in ERROR_MEANING.items()
    },
}


def error_doc(code: int) -> dict[str, Any]:
    return {"model": OpenAiErrorBody, "description": ERROR_MEANING[code]}


def unix_seconds(moment: datetime) -> int:
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return int(aware.timestamp())


# --- request → synthesis ---------------------------------------------------------------


def loaded_versions(runtime: Runtime) -> list[ApiVersion]:
    """The versions whose model can serve, best first."""
    return [
        version
        for version in (ApiVersion.v3, ApiVersion.v2)
        if runtime.synthesis.client(version).missing_reason is None
    ]


def version_for_model(runtime: Runtime, model: str) -> ApiVersion:
    loaded = loaded_versions(runtime)
    if model in MODEL_ALIASES:
        if not loaded:
            raise ModelNotFound(f"The model `{model}` is not available: no model is loaded")
        return loaded[0]
    version = MODEL_VERSIONS.get(model)
    if version is None:
        known = ", ".join([*MODEL_VERSIONS, *MODEL_ALIASES])
        raise ModelNotFound(f"The model `{model}` does not exist; use one of {known}")
    if version not in loaded:
        reason = runtime.synthesis.client(version).missing_reason
        raise ModelNotFound(f"The model `{model}` is not loaded on this server: {reason}")
    return version


def checked_speed(speed: float) -> float:
    low, high = ENGINE_SPEED_RANGE
    if not low <= speed <= high:
        raise SpeechParamError(
            f"speed {speed:g} is outside what this server's engines render ({low:g} to {high:g})",
            param="speed",
            code="unsupported_value",
        )
    return speed


def checked_input(text: str, limit: int) -> str:
    stripped = text.strip()
    if not stripped:
        raise SpeechParamError("input is empty", param="input")
    if len(stripped) > limit:
        raise SpeechParamError(
            f"input is {len(stripped)} characters; this server's limit is {limit} "
            "(MAX_TEXT_LENGTH)",
            param="input",
            code="string_above_max_length",
        )
    problem = free_text_problem(stripped)
    if problem:
        raise SpeechParamError(f"input has {problem}", param="input")
    return stripped


def checked_instructions(version: ApiVersion, instructions: str | None) -> str | None:
    instruction = (instructions or "").strip() or None
    if instruction and version is not ApiVersion.v3:
        raise SpeechParamError(
            "instructions need cosyvoice3 (its instruct mode); cosyvoice2 cannot follow them",
            param="instructions",
            code="unsupported_parameter",
        )
    return instruction


async def speech_request(
    runtime: Runtime, version: ApiVersion, body: SpeechRequest
) -> SynthesisRequest:
    """The synthesis request for a stored voice, or an OpenAI name mapped to one."""
    name = body.voice_name
    voice_id = runtime.settings.openai_voices.get(name, name)
    try:
        return await runtime.synthesis.request_for_voice(
            version,
            voice_id,
            checked_input(body.input, runtime.settings.max_text_length),
            speed=checked_speed(body.speed),
            instruct_text=checked_instructions(version, body.instructions),
            sample_rate=SPEECH_SAMPLE_RATE,
        )
    except VoiceNotFound:
        if name in BUILTIN_VOICES and name not in runtime.settings.openai_voices:
            raise SpeechParamError(
                f"The voice '{name}' is one of OpenAI's voices, and this server maps it to no "
                f"stored voice: set OPENAI_VOICES (e.g. '{name}:my_voice') or pass the id of "
                "a stored voice (GET /v1/audio/voices lists them)",
                param="voice",
                code="voice_not_configured",
            ) from None
        raise SpeechParamError(
            f"Voice '{voice_id}' not found; GET /v1/audio/voices lists the stored voices",
            param="voice",
            code="voice_not_found",
        ) from None


def speech_encoder(fmt: SpeechFormat) -> StreamEncoder:
    try:
        return open_stream_encoder(fmt.value, SPEECH_SAMPLE_RATE)
    except InvalidInput as exc:  # aac without its optional encoder
        raise SpeechParamError(
            exc.detail, param="response_format", code="unsupported_value"
        ) from None


# --- the answer ------------------------------------------------------------------------


async def _audio_body(stream: AudioStream, encoder: StreamEncoder) -> AsyncIterator[bytes]:
    try:
        if header := encoder.header():
            yield header
        async for piece in stream.pieces():
            if piece.pcm.size and (data := encoder.encode(piece.pcm)):
                yield data
        if tail := encoder.finish():
            yield tail
    except CosyVoiceError as exc:
        # Headers are gone: a stream that does not end properly is the only honest signal.
        log.warning("speech stream failed after it started: %s", exc.detail)
        raise
    finally:
        await close_shielded(stream)


def _delta(events: SseEncoder, data: bytes) -> bytes:
    delta = SpeechAudioDelta(audio=base64.b64encode(data).decode("ascii"))
    return events.event(delta.type, delta)


async def _sse_body(
    stream: AudioStream, encoder: StreamEncoder, input_chars: int
) -> AsyncIterator[bytes]:
    """`speech.audio.delta` per piece (the next bytes of one file), then `speech.audio.done`;
    a failure after the first event is an `error` event in OpenAI's error shape."""
    events = SseEncoder()
    try:
        pending = encoder.header()
        async for piece in stream.pieces():
            if piece.pcm.size:
                pending += encoder.encode(piece.pcm)
            if pending:
                yield _delta(events, pending)
                pending = b""
        if pending := pending + encoder.finish():
            yield _delta(events, pending)
        usage = SpeechUsage(input_tokens=input_chars, total_tokens=input_chars)
        done = SpeechAudioDone(usage=usage)
        yield events.event(done.type, done)
    except CosyVoiceError as exc:
        log.info("speech SSE stream ended with an error: %s", exc.detail)
        yield events.event(
            "error", {"type": "error", **openai_error_body(status_for(exc), exc.detail)}
        )
    except Exception:
        log.exception("speech SSE stream failed")
        yield events.event(
            "error", {"type": "error", **openai_error_body(500, "Internal error during synthesis")}
        )
    finally:
        await close_shielded(stream)


async def speech_response(
    runtime: Runtime,
    version: ApiVersion,
    request: SynthesisRequest,
    body: SpeechRequest,
) -> AudioStreamResponse:
    """Admit and start the stream; everything that fails before the first audio (a full
    queue, an engine not ready, an engine failing at once) is still a status code."""
    encoder = speech_encoder(body.response_format)
    sse = body.stream_format is SpeechStreamFormat.sse
    stream = await open_audio_stream(
        runtime, version, request, StreamKind.sse if sse else StreamKind.http
    )
    try:
        await stream.prime()
    except BaseException:
        await close_shielded(stream)
        raise
    if sse:
        return AudioStreamResponse(
            stream,
            with_keepalive(
                _sse_body(stream, encoder, len(request.text)),
                runtime.settings.sse_keepalive_seconds,
            ),
            media_type=SSE_MEDIA_TYPE,
            headers=SSE_HEADERS,
        )
    media_type = encoder.content_type
    if body.response_format is SpeechFormat.pcm:
        media_type = f"{media_type};rate={SPEECH_SAMPLE_RATE};channels=1"
    return AudioStreamResponse(
        stream,
        _audio_body(stream, encoder),
        media_type=media_type,
        headers={
            "X-Sample-Rate": str(SPEECH_SAMPLE_RATE),
            "X-Channels": "1",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        },
    )


# --- routes ----------------------------------------------------------------------------


def build_router() -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])

    @router.post(
        "/audio/speech",
        response_model=None,
        summary="Speak text with a stored voice (OpenAI's audio.speech.create)",
        responses=SPEECH_RESPONSES,
    )
    async def create_speech(runtime: RuntimeDep, body: SpeechRequest) -> AudioStreamResponse:
        version = version_for_model(runtime, body.model)
        request = await speech_request(runtime, version, body)
        return await speech_response(runtime, version, request, body)

    @router.get(
        "/models",
        response_model=ModelList,
        summary="The models loaded, and OpenAI's model names that stand for the best one",
        responses={401: error_doc(401)},
    )
    async def list_models(runtime: RuntimeDep) -> ModelList:
        return ModelList(data=model_objects(runtime))

    @router.get(
        "/models/{model_id}",
        response_model=ModelObject,
        summary="One model",
        responses={401: error_doc(401), 404: error_doc(404)},
    )
    async def get_model(runtime: RuntimeDep, model_id: str) -> ModelObject:
        version_for_model(runtime, model_id)  # a model that is not here: 404 with the reason
        return next(model for model in model_objects(runtime) if model.id == model_id)

    @router.get(
        "/audio/voices",
        response_model=VoiceList,
        summary="The stored voices, with the OpenAI voice names mapped to each",
        responses={401: error_doc(401)},
    )
    async def list_voices(
        runtime: RuntimeDep,
        limit: Annotated[int, Query(ge=1, le=100)] = 100,
        page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    ) -> VoiceList:
        voices, total = await runtime.voices.list(
            voice_type=None, language=None, page=page, page_size=limit
        )
        aliases: dict[str, list[str]] = {}
        for name, voice_id in runtime.settings.openai_voices.items():
            aliases.setdefault(voice_id, []).append(name)
        return VoiceList(
            data=[
                VoiceObject(
                    id=voice.voice_id,
                    created_at=unix_seconds(voice.created_at),
                    name=voice.name,
                    language=voice.language,
                    aliases=sorted(aliases.get(voice.voice_id, [])),
                )
                for voice in voices
            ],
            has_more=page * limit < total,
        )

    return router


def model_objects(runtime: Runtime) -> list[ModelObject]:
    loaded = loaded_versions(runtime)
    models = [
        ModelObject(id=MODEL_NAME[version], root=runtime.synthesis.client(version).info.model)
        for version in loaded
    ]
    if loaded:
        best = MODEL_NAME[loaded[0]]
        models += [ModelObject(id=alias, root=best) for alias in MODEL_ALIASES]
    return models

"""Streaming over HTTP: /streaming/cross-lingual (chunked), /sse, /chunked, /health.

The routes only validate and build the synthesis request; the streaming itself is
`router.streaming`, shared with `stream=true` on the synchronous routes and with the
WebSocket.

Built per version by `build_router(version)`: the closure keeps the version (which engine
streams) beside the handlers, with no per-request dependency to resolve it.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query
from fastapi.responses import StreamingResponse

from core.domain import ApiVersion
from core.errors import CosyVoiceError
from core.ports import SynthesisRequest
from core.schemas.streaming import (
    CHUNK_SIZE_DEFAULT,
    CHUNK_SIZE_MAX,
    CHUNK_SIZE_MIN,
    QUALITY_PROFILES,
    StreamingHealth,
    StreamQuality,
)
from core.services.synthesis import checked_text
from core.wiring import Runtime

from ..deps import RuntimeDep
from ..errors import error_responses
from ..streaming import (
    AudioStreamResponse,
    audio_stream_response,
    checked_stream_format,
    sse_stream_response,
    stream_registry,
    streaming_latency_ms,
)

FORMAT_HELP = "wav, mp3, flac or pcm (raw 16-bit little-endian)"
QUALITY_HELP = "low (16 kHz, 0.5 s chunks), medium (22.05 kHz, 0.3 s), high (44.1 kHz, 0.2 s)"
CHUNKED_AUDIO: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The audio as one file, sent with chunked transfer encoding",
        "content": {"audio/wav": {}, "audio/mpeg": {}, "audio/flac": {}, "audio/L16": {}},
    }
}
EVENT_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Events start, audio_chunk (base64 audio), complete, error",
        "content": {"text/event-stream": {}},
    }
}
STREAM_ERRORS = error_responses(400, 404, 503)


VoiceIdForm = Annotated[str, Form(min_length=1, max_length=64)]
FormatForm = Annotated[str, Form(description=FORMAT_HELP)]
SpeedForm = Annotated[float, Form(ge=0.5, le=2.0)]
QualityForm = Annotated[StreamQuality, Form(description=QUALITY_HELP)]
InstructForm = Annotated[str | None, Form(max_length=500)]


def build_router(version: ApiVersion) -> APIRouter:
    router = APIRouter(prefix="/streaming", tags=[f"{version.value} streaming"])

    async def synthesis_request(
        runtime: Runtime,
        text: str,
        voice_id: str,
        fmt: str,
        speed: float,
        quality: StreamQuality,
        instruct_text: str | None,
    ) -> SynthesisRequest:
        checked_stream_format(fmt)
        return await runtime.synthesis.request_for_voice(
            version,
            voice_id,
            checked_text(text, runtime.settings.max_text_length),
            speed=speed,
            instruct_text=(instruct_text or "").strip() or None,
            sample_rate=QUALITY_PROFILES[quality].sample_rate,
        )

    async def chunked(
        runtime: Runtime,
        text: str,
        voice_id: str,
        fmt: str,
        speed: float,
        quality: StreamQuality,
        chunk_size: int,
        instruct_text: str | None,
    ) -> AudioStreamResponse:
        request = await synthesis_request(
            runtime, text, voice_id, fmt, speed, quality, instruct_text
        )
        return await audio_stream_response(
            runtime,
            version,
            request,
            fmt,
            chunk_bytes=chunk_size,
        )

    @router.post(
        "/cross-lingual",
        response_class=StreamingResponse,
        summary="Stream a stored voice's speech as it is synthesized (chunked transfer)",
        responses={**CHUNKED_AUDIO, **STREAM_ERRORS},
    )
    async def stream_cross_lingual(
        runtime: RuntimeDep,
        text: Annotated[str, Form()],
        voice_id: VoiceIdForm,
        format: FormatForm = "wav",
        speed: SpeedForm = 1.0,
        quality: QualityForm = StreamQuality.medium,
        chunk_size: Annotated[
            int,
            Form(ge=CHUNK_SIZE_MIN, le=CHUNK_SIZE_MAX, description="Most bytes per HTTP chunk"),
        ] = CHUNK_SIZE_DEFAULT,
        instruct_text: InstructForm = None,
    ) -> AudioStreamResponse:
        return await chunked(
            runtime, text, voice_id, format, speed, quality, chunk_size, instruct_text
        )

    @router.post(
        "/cross-lingual/chunked",
        response_class=StreamingResponse,
        summary="Same as /streaming/cross-lingual, with the default chunk size",
        responses={**CHUNKED_AUDIO, **STREAM_ERRORS},
    )
    async def stream_cross_lingual_chunked(
        runtime: RuntimeDep,
        text: Annotated[str, Form()],
        voice_id: VoiceIdForm,
        format: FormatForm = "wav",
        speed: SpeedForm = 1.0,
        quality: QualityForm = StreamQuality.medium,
        instruct_text: InstructForm = None,
    ) -> AudioStreamResponse:
        return await chunked(
            runtime, text, voice_id, format, speed, quality, CHUNK_SIZE_DEFAULT, instruct_text
        )

    @router.get(
        "/cross-lingual/sse",
        response_class=StreamingResponse,
        summary="Stream a stored voice's speech as Server-Sent Events",
        responses={**EVENT_STREAM, **STREAM_ERRORS},
    )
    async def stream_cross_lingual_sse(
        runtime: RuntimeDep,
        text: Annotated[str, Query()],
        voice_id: Annotated[str, Query(min_length=1, max_length=64)],
        format: Annotated[str, Query(description=FORMAT_HELP)] = "wav",
        speed: Annotated[float, Query(ge=0.5, le=2.0)] = 1.0,
        quality: Annotated[StreamQuality, Query(description=QUALITY_HELP)] = StreamQuality.medium,
        chunk_size: Annotated[
            int,
            Query(
                ge=CHUNK_SIZE_MIN,
                le=CHUNK_SIZE_MAX,
                description="Accepted for compatibility: events follow the quality's chunk "
                "duration, each a self-contained file",
            ),
        ] = CHUNK_SIZE_DEFAULT,
        instruct_text: Annotated[str | None, Query(max_length=500)] = None,
        request_id: Annotated[
            str | None, Query(max_length=128, description="Echoed in the start event")
        ] = None,
    ) -> AudioStreamResponse:
        request = await synthesis_request(
            runtime, text, voice_id, format, speed, quality, instruct_text
        )
        return await sse_stream_response(
            runtime,
            version,
            request,
            format,
            request_id=request_id or f"sse_{uuid.uuid4().hex[:12]}",
            chunk_seconds=QUALITY_PROFILES[quality].chunk_seconds,
        )

    @router.get(
        "/health",
        response_model=StreamingHealth,
        summary="The streaming service: engine readiness, live streams, measured latency",
    )
    async def streaming_health(runtime: RuntimeDep) -> StreamingHealth:
        client = runtime.synthesis.client(version)
        try:
            ready = await asyncio.wait_for(client.ready(), runtime.settings.backend_timeout)
        except (CosyVoiceError, TimeoutError, OSError):
            ready = False
        registry = stream_registry(runtime)
        return StreamingHealth(
            status="healthy" if ready else "unavailable",
            version=version.value,
            model=client.info.model,
            streaming_engine=client.info.engine,
            engine_ready=ready,
            latency_ms=streaming_latency_ms(runtime, version),
            active_streams=registry.active_streams,
            streams_by_protocol=registry.active_by_kind(),
            max_concurrent_streams=registry.max_streams,
            active_websocket_sessions=registry.session_count,
        )

    return router

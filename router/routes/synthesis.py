"""Synchronous synthesis: /cross-lingual/with-audio, /with-cache, /instruct, /capabilities.

Built per version by `build_router(version)`: the version picks the engine and which
routes exist at all (`/instruct` is v3's), which a shared module-level router cannot vary.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import StreamingResponse

from core.audio.decode import sha256_hex
from core.domain import ApiVersion, AudioFormat
from core.engines.text import SUPPORTED_LANGUAGES
from core.errors import InvalidInput
from core.ports import SynthesisRequest
from core.schemas.synthesis import (
    Capabilities,
    Features,
    PhonemeSupport,
    StreamingSupport,
    SynthesisResponse,
    WithCacheRequest,
)
from core.services.synthesis import check_instruct_allowed, checked_text, output_filename
from core.wiring import Runtime

from ..deps import RuntimeDep
from ..errors import error_responses
from ..streaming import audio_stream_response, streaming_latency_ms

MODEL_LABEL = {
    ApiVersion.v1: "CosyVoice2",
    ApiVersion.v2: "CosyVoice2",
    ApiVersion.v3: "CosyVoice3",
}
AUDIO_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON result, or the audio itself (chunked) when stream=true",
        "content": {"audio/wav": {}, "audio/mpeg": {}, "audio/flac": {}},
    }
}

SpeedForm = Annotated[float, Form(ge=0.5, le=2.0, description="0.5–2.0")]
FormatForm = Annotated[AudioFormat, Form(description="wav, mp3 or flac")]
StreamForm = Annotated[bool, Form(description="Send the audio itself, chunked, as produced")]
PromptAudio = Annotated[UploadFile, File(description="Reference clip: wav, mp3 or flac")]


def build_router(version: ApiVersion) -> APIRouter:
    router = APIRouter(prefix="/cross-lingual", tags=[f"{version.value} synthesis"])
    label = MODEL_LABEL[version]

    async def respond(
        runtime: Runtime,
        request: SynthesisRequest,
        fmt: AudioFormat,
        mode: str,
        stream: bool,
    ) -> SynthesisResponse | StreamingResponse:
        if stream:
            return await audio_stream_response(runtime, version, request, fmt.value)
        result = await runtime.synthesis.render_to_file(
            version, request, fmt, output_filename(version, mode, fmt)
        )
        return SynthesisResponse(
            message=f"{label} synthesis completed",
            audio_url=f"/api/{version.value}/audio/{result.filename}",
            file_path=result.file_path,
            duration=result.duration,
            format=fmt,
            synthesis_time=result.synthesis_time,
            sample_rate=result.sample_rate,
            engine=runtime.synthesis.client(version).info.engine,
        )

    def instruct_field(value: str | None) -> str | None:
        instruction = (value or "").strip() or None
        check_instruct_allowed(version, instruction)
        return instruction

    @router.post(
        "/with-audio",
        response_model=SynthesisResponse,
        summary="Clone the voice of an uploaded clip",
        responses={**AUDIO_RESPONSES, **error_responses(400, 413, 422, 503)},
    )
    async def with_audio(
        runtime: RuntimeDep,
        text: Annotated[str, Form()],
        prompt_audio: PromptAudio,
        format: FormatForm = AudioFormat.wav,
        speed: SpeedForm = 1.0,
        stream: StreamForm = False,
        instruct_text: Annotated[str | None, Form(max_length=500)] = None,
        prompt_text: Annotated[
            str | None, Form(max_length=2000, description="Transcript: zero-shot cloning")
        ] = None,
    ) -> SynthesisResponse | StreamingResponse:
        text = checked_text(text, runtime.settings.max_text_length)
        instruct = instruct_field(instruct_text)
        audio = await prompt_audio.read()
        upload = await runtime.voices.read_upload(audio)
        request = runtime.synthesis.request_for_clip(
            version,
            upload.clip,
            sha256_hex(audio),
            text,
            prompt_text=(prompt_text or "").strip() or None,
            speed=speed,
            instruct_text=instruct,
        )
        mode = "instruct" if instruct else "cross_lingual"
        return await respond(runtime, request, format, mode, stream)

    @router.post(
        "/with-cache",
        response_model=SynthesisResponse,
        summary="Clone a stored voice",
        responses={**AUDIO_RESPONSES, **error_responses(400, 404, 503)},
    )
    async def with_cache(
        runtime: RuntimeDep, body: WithCacheRequest
    ) -> SynthesisResponse | StreamingResponse:
        text = checked_text(body.text, runtime.settings.max_text_length)
        request = await runtime.synthesis.request_for_voice(
            version,
            body.voice_id,
            text,
            speed=body.speed,
            instruct_text=instruct_field(body.instruct_text),
        )
        return await respond(runtime, request, body.format, "cache", body.stream)

    if version is ApiVersion.v3:

        @router.post(
            "/instruct",
            response_model=SynthesisResponse,
            summary="Instruction-controlled synthesis from an uploaded clip",
            responses={**AUDIO_RESPONSES, **error_responses(400, 413, 422, 503)},
        )
        async def instruct(
            runtime: RuntimeDep,
            text: Annotated[str, Form()],
            instruct_text: Annotated[str, Form(max_length=500)],
            prompt_audio: PromptAudio,
            format: FormatForm = AudioFormat.wav,
            speed: SpeedForm = 1.0,
            stream: StreamForm = False,
        ) -> SynthesisResponse | StreamingResponse:
            text = checked_text(text, runtime.settings.max_text_length)
            instruction = instruct_field(instruct_text)
            if not instruction:
                raise InvalidInput("instruct_text must not be empty")
            audio = await prompt_audio.read()
            upload = await runtime.voices.read_upload(audio)
            request = runtime.synthesis.request_for_clip(
                version,
                upload.clip,
                sha256_hex(audio),
                text,
                speed=speed,
                instruct_text=instruction,
            )
            return await respond(runtime, request, format, "instruct", stream)

    @router.get(
        "/capabilities",
        response_model=Capabilities,
        summary="What the engine behind this version can do",
    )
    async def capabilities(runtime: RuntimeDep) -> Capabilities:
        client = runtime.synthesis.client(version)
        info = client.info
        real = info.real_model
        return Capabilities(
            version=version.value,
            model=info.model,
            engine=info.engine,
            real_model=real,
            sample_rate=info.sample_rate,
            features=Features(
                languages=list(info.languages or SUPPORTED_LANGUAGES),
                chinese_dialects=list(info.chinese_dialects),
                instruct_support=info.instruct_support and version is ApiVersion.v3,
                phoneme_support=PhonemeSupport(chinese_pinyin=real, english_cmu=real),
                streaming=StreamingSupport(latency_ms=streaming_latency_ms(runtime, version)),
                modes=["zero_shot", "cross_lingual"]
                + (["instruct"] if version is ApiVersion.v3 else []),
                max_text_length=runtime.settings.max_text_length,
            ),
        )

    return router

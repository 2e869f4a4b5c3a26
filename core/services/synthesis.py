"""Synthesis use cases: turn (text, voice, options) into audio chunks or a stored file.

Every inbound adapter goes through here: the synchronous routes, the streaming routes,
the WebSocket, the task worker and the render function. The service picks the engine slot
of the API version, decides the CosyVoice mode from the voice, and owns long-form
rendering (segments rendered one after another, joined without clicks).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

import numpy as np

from ..audio.dsp import join_segments
from ..audio.encode import CONTENT_TYPES, encode_audio
from ..domain import (
    ApiVersion,
    AudioFormat,
    EngineSlot,
    SynthesisMode,
    Voice,
    VoiceType,
    output_key,
)
from ..engines.text import split_sentences
from ..errors import EngineNotReady, InvalidInput, SynthesisFailed
from ..ports import (
    AudioChunk,
    BlobStore,
    Clip,
    MetadataStore,
    SynthesisClient,
    SynthesisRequest,
    VoicePrompt,
)

ProgressCallback = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RenderResult:
    filename: str
    duration: float
    synthesis_time: float
    sample_rate: int
    size: int

    @property
    def file_path(self) -> str:
        return output_key(self.filename)


def output_filename(version: ApiVersion, mode: str, fmt: AudioFormat | str) -> str:
    """`{version}_{mode}_{8 hex}.{format}`, the naming the audio route accepts."""
    return f"{version.value}_{mode}_{secrets.token_hex(4)}.{AudioFormat(fmt).value}"


def prompt_for_voice(voice: Voice) -> VoicePrompt:
    return VoicePrompt(
        sha256=voice.sample_sha256,
        voice_id=voice.voice_id,
        sample_key=voice.sample_key,
        prompt_text=voice.prompt_text,
        language=voice.language,
    )


def mode_for(
    voice_type: VoiceType | None, prompt_text: str | None, instruct: str | None
) -> SynthesisMode:
    """The CosyVoice mode a request runs in (API.md, "How a stored voice is used")."""
    if instruct:
        return SynthesisMode.instruct
    if voice_type is VoiceType.instruct:
        return SynthesisMode.instruct
    if prompt_text:
        return SynthesisMode.zero_shot
    return SynthesisMode.cross_lingual


class SynthesisService:
    def __init__(
        self,
        store: MetadataStore,
        blobs: BlobStore,
        clients: dict[EngineSlot, SynthesisClient],
        *,
        sample_rate: int,
        segment_max_chars: int,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._clients = clients
        self.sample_rate = sample_rate
        self._segment_max_chars = segment_max_chars

    def client(self, version: ApiVersion) -> SynthesisClient:
        return self._clients[version.engine_slot]

    async def ensure_ready(self, version: ApiVersion) -> SynthesisClient:
        client = self.client(version)
        if not await client.ready():
            raise EngineNotReady(
                f"The {version.value} engine ({client.info.model}) is not ready; try again shortly"
            )
        return client

    async def request_for_voice(
        self,
        version: ApiVersion,
        voice_id: str,
        text: str,
        *,
        speed: float = 1.0,
        instruct_text: str | None = None,
        sample_rate: int | None = None,
    ) -> SynthesisRequest:
        """A request cloning a stored voice; VoiceNotFound when it does not exist."""
        voice = await self._store.get_voice(voice_id)
        check_instruct_allowed(version, instruct_text)
        return SynthesisRequest(
            text=text,
            voice=prompt_for_voice(voice),
            mode=mode_for(voice.voice_type, voice.prompt_text, instruct_text),
            instruct_text=instruct_text or None,
            speed=speed,
            language=voice.language,
            sample_rate=sample_rate or self.sample_rate,
        )

    def request_for_clip(
        self,
        version: ApiVersion,
        clip: Clip,
        sha256: str,
        text: str,
        *,
        prompt_text: str | None = None,
        speed: float = 1.0,
        instruct_text: str | None = None,
        sample_rate: int | None = None,
    ) -> SynthesisRequest:
        """A request cloning an uploaded clip (with-audio, instruct)."""
        check_instruct_allowed(version, instruct_text)
        prompt = VoicePrompt(sha256=sha256, clip=clip, prompt_text=prompt_text or None)
        return SynthesisRequest(
            text=text,
            voice=prompt,
            mode=mode_for(None, prompt_text, instruct_text),
            instruct_text=instruct_text or None,
            speed=speed,
            sample_rate=sample_rate or self.sample_rate,
        )

    async def stream(
        self, version: ApiVersion, request: SynthesisRequest
    ) -> AsyncIterator[AudioChunk]:
        """Chunks at the request's sample rate, the first as soon as the engine has it."""
        client = await self.ensure_ready(version)
        if request.sample_rate is None:
            request = replace(request, sample_rate=self.sample_rate)
        # Every synthesis client delivers at the request's rate (resampling with state
        # across chunks, so seams do not click): nothing to convert here.
        chunks = client.synthesize(request)
        try:
            async for chunk in chunks:
                if chunk.samples.size:
                    yield chunk
        finally:
            # Closing the engine's iterator is what stops its work when we stop early.
            await chunks.aclose()

    async def render_to_file(
        self,
        version: ApiVersion,
        request: SynthesisRequest,
        fmt: AudioFormat,
        filename: str,
        *,
        on_progress: ProgressCallback | None = None,
    ) -> RenderResult:
        """Render (long text in segments), join, encode and store under outputs/."""
        started = time.perf_counter()
        segments = split_sentences(request.text, self._segment_max_chars)
        if not segments:
            raise InvalidInput("text is empty")
        rate = request.sample_rate or self.sample_rate
        rendered: list[np.ndarray] = []
        for index, segment in enumerate(segments, start=1):
            pieces = [c.samples async for c in self.stream(version, _with_text(request, segment))]
            if pieces:
                rendered.append(np.concatenate(pieces))
            if on_progress is not None:
                await on_progress(index / len(segments))
        if not rendered:
            raise SynthesisFailed("the engine produced no audio")
        audio = join_segments(rendered, rate) if len(rendered) > 1 else rendered[0]
        data = encode_audio(audio, rate, fmt)
        await self._blobs.put(output_key(filename), data, CONTENT_TYPES[fmt.value])
        return RenderResult(
            filename=filename,
            duration=round(len(audio) / rate, 3),
            synthesis_time=round(time.perf_counter() - started, 3),
            sample_rate=rate,
            size=len(data),
        )


def _with_text(request: SynthesisRequest, text: str) -> SynthesisRequest:
    return replace(request, text=text)


def checked_text(text: str, limit: int, setting: str = "MAX_TEXT_LENGTH") -> str:
    """The text to speak, trimmed; InvalidInput when it is empty or over `limit`."""
    stripped = text.strip()
    if not stripped:
        raise InvalidInput("text is empty")
    if len(stripped) > limit:
        raise InvalidInput(f"text is {len(stripped)} characters; the limit is {limit} ({setting})")
    return stripped


def check_instruct_allowed(version: ApiVersion, instruct_text: str | None) -> None:
    if instruct_text and version is not ApiVersion.v3:
        raise InvalidInput(f"instruct_text is only available on /api/v3 (not {version.value})")

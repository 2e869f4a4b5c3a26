"""Synthesis use cases: turn (text, voice, options) into audio chunks or a stored file.

Every inbound adapter goes through here: the synchronous routes, the streaming routes,
the WebSocket, the task worker and the render function. The service picks the engine slot
of the API version, decides the CosyVoice mode from the voice, and owns long-form
rendering (segments rendered one after another, joined without clicks).

Rendering to a file keeps the event loop free and the memory flat however long the
text: each segment, once synthesized, is joined and encoded in a worker thread into a
temporary file (`AudioFileWriter`), which the blob store then takes as a stream.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

from ..audio.dsp import join_segments
from ..audio.encode import CONTENT_TYPES, encode_audio
from ..audio.file_writer import AudioFileWriter
from ..domain import (
    ApiVersion,
    AudioFormat,
    EngineSlot,
    SynthesisMode,
    Voice,
    VoiceType,
    free_text_problem,
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
# Called with the output's duration once it is encoded, just before it is stored.
BeforeStore = Callable[[float], Awaitable[None]]
T = TypeVar("T")
# Audio this short is written as WAV on the event loop (about a millisecond at most).
_INLINE_WAV_SECONDS = 20
# Texts up to this long (about half a minute of speech, a few MB of samples) are joined
# and encoded in memory: a temporary file and its copy into the store would cost more
# than the encoding. Longer ones stream through `AudioFileWriter`, so memory stays flat.
_IN_MEMORY_CHARS = 500

# Encoding has threads of its own: in asyncio's default pool, seconds of MP3 encoding
# would queue the database and blob-store calls (and /health with them) behind it.
_ENCODER_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="audio-encode")


async def _off_loop(work: Callable[..., T], *args: object) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_ENCODER_THREADS, functools.partial(work, *args))


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

    def refuse_missing_model(self, version: ApiVersion) -> None:
        """EngineNotReady (503) when this version's model is absent for good: a task for
        it would only fail after its retries, so it is refused when it is created."""
        reason = self.client(version).missing_reason
        if reason is not None:
            raise EngineNotReady(reason)

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
        background: bool = False,
    ) -> SynthesisRequest:
        """A request cloning a stored voice; VoiceNotFound when it does not exist.

        `background` marks queued work (a task render): it waits for an engine slot
        instead of being refused when the synthesis queue is full."""
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
            background=background,
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
        check_free_text("prompt_text", prompt_text)
        prompt = VoicePrompt(sha256=sha256, clip=clip, prompt_text=prompt_text or None)
        return SynthesisRequest(
            text=text,
            voice=prompt,
            mode=mode_for(None, prompt_text, instruct_text),
            instruct_text=instruct_text or None,
            speed=speed,
            sample_rate=sample_rate or self.sample_rate,
        )

    def stream(
        self, version: ApiVersion, request: SynthesisRequest
    ) -> AsyncGenerator[AudioChunk, None]:
        """Chunks at the request's sample rate, the first as soon as the engine has it.

        Call `ensure_ready` first. An engine whose queue is full refuses here, at the
        call (`Overloaded`), so a stream can still answer with a status code.
        """
        if request.sample_rate is None:
            request = replace(request, sample_rate=self.sample_rate)
        # Every synthesis client delivers at the request's rate (resampling with state
        # across chunks, so seams do not click): nothing to convert here.
        return _audible(self.client(version).synthesize(request))

    async def render_to_file(
        self,
        version: ApiVersion,
        request: SynthesisRequest,
        fmt: AudioFormat,
        filename: str,
        *,
        on_progress: ProgressCallback | None = None,
        before_store: BeforeStore | None = None,
    ) -> RenderResult:
        """Render (long text in segments), join, encode and store under outputs/.

        Only the first segment can be refused for a full queue: once admitted, a render's
        later segments wait their turn (see `SynthesisRequest.background`). A task's
        worker uses `before_store` to record the result under its claim first (raising
        stops the upload).
        """
        started = time.perf_counter()
        segments = split_sentences(request.text, self._segment_max_chars)
        if not segments:
            raise InvalidInput("text is empty")
        await self.ensure_ready(version)
        rate = request.sample_rate or self.sample_rate
        request = replace(request, sample_rate=rate)
        if len(request.text) <= _IN_MEMORY_CHARS:
            return await self._render_short(
                version, request, segments, fmt, filename, started, on_progress, before_store
            )
        writer: AudioFileWriter | None = None
        try:
            for index, segment in enumerate(segments, start=1):
                pieces = await self._segment(version, request, segment, index)
                last = index == len(segments)
                if writer is None and pieces:
                    writer = await _off_loop(_open_and_add, fmt, rate, pieces, last)
                elif writer is not None:
                    await _off_loop(_add, writer, pieces, last)
                if on_progress is not None:
                    await on_progress(index / len(segments))
            if writer is None or writer.samples == 0:
                raise SynthesisFailed("the engine produced no audio")
            if before_store is not None:
                await before_store(round(writer.duration, 3))
            await self._blobs.put_file(output_key(filename), writer.path, CONTENT_TYPES[fmt.value])
        finally:
            if writer is not None:
                await _off_loop(writer.discard)
        return RenderResult(
            filename=filename,
            duration=round(writer.duration, 3),
            synthesis_time=round(time.perf_counter() - started, 3),
            sample_rate=rate,
            size=writer.size,
        )

    async def _segment(
        self, version: ApiVersion, request: SynthesisRequest, text: str, index: int
    ) -> list[np.ndarray]:
        """The chunks of one segment. Only the first can be refused for a full queue."""
        part = replace(
            request,
            text=text,
            background=request.background or index > 1,
            stream=False,  # joined into a file: no early first chunk needed
        )
        return [chunk.samples async for chunk in self.stream(version, part)]

    async def _render_short(
        self,
        version: ApiVersion,
        request: SynthesisRequest,
        segments: list[str],
        fmt: AudioFormat,
        filename: str,
        started: float,
        on_progress: ProgressCallback | None,
        before_store: BeforeStore | None,
    ) -> RenderResult:
        """A short text (most synchronous requests): joined and encoded in memory, which
        spares the temporary file and its copy on the hot path."""
        rendered: list[np.ndarray] = []
        for index, segment in enumerate(segments, start=1):
            pieces = await self._segment(version, request, segment, index)
            if pieces:
                rendered.append(pieces[0] if len(pieces) == 1 else np.concatenate(pieces))
            if on_progress is not None and index < len(segments):
                await on_progress(index / len(segments))
        if not rendered:
            raise SynthesisFailed("the engine produced no audio")
        rate = request.sample_rate or self.sample_rate
        if fmt is AudioFormat.wav and sum(p.size for p in rendered) < rate * _INLINE_WAV_SECONDS:
            # A WAV file is a header and a copy: cheaper than the hop to a thread.
            samples, data = _encode_whole(rendered, rate, fmt)
        else:
            samples, data = await _off_loop(_encode_whole, rendered, rate, fmt)
        if before_store is not None:
            await before_store(round(samples / rate, 3))
        await self._blobs.put(output_key(filename), data, CONTENT_TYPES[fmt.value])
        if on_progress is not None:
            await on_progress(1.0)
        return RenderResult(
            filename=filename,
            duration=round(samples / rate, 3),
            synthesis_time=round(time.perf_counter() - started, 3),
            sample_rate=rate,
            size=len(data),
        )


def _encode_whole(segments: list[np.ndarray], rate: int, fmt: AudioFormat) -> tuple[int, bytes]:
    """Segments joined under the same crossfade as `AudioFileWriter`, then encoded."""
    audio = join_segments(segments, rate) if len(segments) > 1 else segments[0]
    return audio.size, encode_audio(audio, rate, fmt)


def _open_and_add(
    fmt: AudioFormat, rate: int, pieces: list[np.ndarray], last: bool
) -> AudioFileWriter:
    writer = AudioFileWriter(fmt, rate)
    try:
        _add(writer, pieces, last)
    except BaseException:
        writer.discard()
        raise
    return writer


def _add(writer: AudioFileWriter, pieces: list[np.ndarray], last: bool) -> None:
    """One segment into the file, and the file completed after the last (one thread hop)."""
    writer.add_segment(pieces)
    if last:
        writer.finish()


async def _audible(
    chunks: AsyncGenerator[AudioChunk, None],
) -> AsyncGenerator[AudioChunk, None]:
    try:
        async for chunk in chunks:
            if chunk.samples.size:
                yield chunk
    finally:
        # Closing the engine's iterator is what stops its work when we stop early.
        await chunks.aclose()


def checked_text(text: str, limit: int, setting: str = "MAX_TEXT_LENGTH") -> str:
    """The text to speak, trimmed; InvalidInput when it is empty, over `limit`, or holds
    what no engine can take (`free_text_problem`)."""
    stripped = text.strip()
    if not stripped:
        raise InvalidInput("text is empty")
    if len(stripped) > limit:
        raise InvalidInput(f"text is {len(stripped)} characters; the limit is {limit} ({setting})")
    check_free_text("text", stripped)
    return stripped


def check_free_text(name: str, value: str | None) -> None:
    """InvalidInput naming `name` when `value` holds what no engine can take."""
    problem = free_text_problem(value) if value else None
    if problem:
        raise InvalidInput(f"{name} has {problem}")


def check_instruct_allowed(version: ApiVersion, instruct_text: str | None) -> None:
    if instruct_text and version is not ApiVersion.v3:
        raise InvalidInput(f"instruct_text is only available on /api/v3 (not {version.value})")
    check_free_text("instruct_text", instruct_text)

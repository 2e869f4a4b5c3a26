"""The synthesis port served by an engine loaded in this process (the embedded profile).

Everything about running the engine safely lives in `EngineRunner`; this adapter only
knows where a stored voice's sample is (the blob store) and how to decode it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from ...audio.decode import decode_clip
from ...engines.runner import EngineRunner
from ...errors import InvalidInput, NotFound, SynthesisFailed
from ...ports import AudioChunk, BlobStore, Clip, EngineInfo, SynthesisRequest, VoicePrompt


class InProcessSynthesis:
    """`SynthesisClient` over an `EngineRunner`."""

    missing_reason: str | None = None  # the engine loaded: it is here
    remote = False
    warning: str | None = None  # the registry's fallback warning is the runtime's to show

    def __init__(self, runner: EngineRunner, blobs: BlobStore) -> None:
        self._runner = runner
        self._blobs = blobs

    @property
    def info(self) -> EngineInfo:
        return self._runner.info

    @property
    def runner(self) -> EngineRunner:
        return self._runner

    @property
    def first_chunk_seconds(self) -> float | None:
        """The engine's time to first audio: measured at warm-up, then by every call."""
        return self._runner.first_chunk_seconds

    async def start(self) -> None:
        await self._runner.start()

    async def close(self) -> None:
        await self._runner.close()

    async def ready(self, deep: bool = False) -> bool:
        # The engine is in this process: the shallow answer is already the true one.
        return self._runner.ready

    def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[AudioChunk, None]:
        voice = request.voice

        async def load_clip() -> Clip:
            return await self._load_clip(voice)

        return self._runner.synthesize(request, load_clip)

    async def _load_clip(self, voice: VoicePrompt) -> Clip:
        if voice.clip is not None:
            return voice.clip
        if not voice.sample_key:
            raise InvalidInput("the voice has neither an uploaded clip nor a stored sample")
        try:
            data = await self._blobs.get(voice.sample_key)
        except NotFound:
            owner = f"voice {voice.voice_id}" if voice.voice_id else "the voice"
            raise SynthesisFailed(
                f"the stored sample of {owner} is missing ({voice.sample_key})"
            ) from None
        return await asyncio.to_thread(decode_clip, data)

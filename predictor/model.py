"""The synthesis engine as a KServe model.

`SynthesisModel` is an inbound adapter over the same `InProcessSynthesis` (and so the
same `EngineRunner`: fair queue, worker threads, feature cache, deadlines) that serves
the embedded profile; it only translates KServe's V1 calls to and from the wire schema
in `core.schemas.predictor`.

Lifecycle: the server answers probes from its first second, while the engine loads in
the background (`start_serving`, run by the app's lifespan); `healthy()` — what
`/v1/models/<name>` and `/v2/models/<name>/ready` report — turns true only once the
engine loaded and warmed up.

Importing this module imports `kserve`, which parses `sys.argv`: only the predictor's
entry point imports it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, TypeVar

import numpy as np
from fastapi import HTTPException
from kserve import Model
from kserve.errors import InvalidInput as KServeInvalidInput
from pydantic import ValidationError

from core.adapters.embedded.inprocess_synthesis import InProcessSynthesis
from core.audio.decode import decode_clip, sha256_hex
from core.engines.features import ClipLoader
from core.errors import CosyVoiceError, InvalidInput, NotFound, Overloaded, SynthesisFailed
from core.ports import AudioChunk, BlobStore, Clip, SynthesisRequest, VoicePrompt
from core.schemas.common import describe_validation_error
from core.schemas.predictor import (
    EngineDescription,
    FeatureCacheStats,
    PredictorMetadata,
    PredictRequest,
    PredictResponse,
    StreamError,
    StreamSummary,
    SynthesisInstance,
    SynthesisPrediction,
    SynthesisStats,
    audio_frame,
    end_frame,
    error_frame,
    samples_to_pcm,
    wire_error_name,
)
from core.services.synthesis import checked_text

from .disconnect import ClientGone, client_gone, until_gone

log = logging.getLogger(__name__)

T = TypeVar("T")


class SynthesisModel(Model):
    """KServe V1 `:predict` over a synthesis engine (see `core.schemas.predictor`)."""

    def __init__(
        self,
        name: str,
        synthesis: InProcessSynthesis,
        *,
        blobs: BlobStore,
        max_text_length: int,
        warning: str | None = None,
    ) -> None:
        super().__init__(name)
        self._synthesis = synthesis
        self._runner = synthesis.runner
        self._blobs = blobs
        self._max_text_length = max_text_length
        self._warning = warning
        self._start_error: str | None = None
        self.ready = False

    # --- lifecycle ----------------------------------------------------------------------

    async def start_serving(self) -> None:
        """Load and warm the engine; the model reports ready only when this succeeded."""
        log.info("loading %s (%s)", self.name, self._runner.info.model)
        started = time.perf_counter()
        try:
            await self._blobs.start()
        except CosyVoiceError as exc:
            self._start_error = f"the blob store is unavailable: {exc.detail}"
            log.error("%s is not ready: %s", self.name, self._start_error)
            return
        await self._synthesis.start()
        if self._runner.ready:
            # Measures the engine's time to first audio, which the metadata reports and
            # the router shows as streaming latency before any stream ran.
            await self._runner.warm_up()
        self.ready = self._runner.ready
        if self.ready:
            log.info(
                "%s ready in %.1f s: %s",
                self.name,
                time.perf_counter() - started,
                self._runner.info.model,
            )
        else:
            log.error("%s is not ready: %s", self.name, self._runner.load_error)

    async def stop_serving(self) -> None:
        self.ready = False
        await self._synthesis.close()
        await self._blobs.close()

    def load(self) -> bool:
        # KServe calls this for a model that is not ready; loading already runs in the
        # background and must not block the event loop, so there is nothing to do here.
        return self.ready

    def stop(self) -> None:
        self.ready = False

    async def healthy(self) -> bool:
        return self.ready and self._runner.ready

    # --- description --------------------------------------------------------------------

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": "text", "datatype": "BYTES", "shape": [1]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [{"name": "audio", "datatype": "FP32", "shape": [-1]}]

    def metadata(self) -> PredictorMetadata:
        runner = self._runner
        cache = runner.feature_cache
        return PredictorMetadata(
            name=self.name,
            ready=self.ready and runner.ready,
            load_error=self._start_error or runner.load_error,
            warning=self._warning,
            engine=EngineDescription.from_info(runner.info),
            synthesis=SynthesisStats(
                concurrency=runner.concurrency,
                active=runner.active,
                queued=runner.queued,
                completed=runner.completed,
                failed=runner.failed,
                cancelled=runner.cancelled,
                stuck=getattr(runner, "stuck", 0),
                first_chunk_seconds=runner.first_chunk_seconds,
            ),
            feature_cache=FeatureCacheStats(
                entries=len(cache),
                hits=cache.hits,
                blob_hits=cache.blob_hits,
                extractions=cache.extractions,
            ),
        )

    # --- inference ----------------------------------------------------------------------

    async def predict(
        self,
        payload: Any,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | AsyncIterator[bytes]:
        instance = self._parse(payload)
        request, load_clip = await self._request(instance)
        gone = client_gone()
        started = time.perf_counter()
        try:
            chunks = self._runner.synthesize(request, load_clip)
        except Overloaded as exc:
            raise _busy_answer(exc) from None
        try:
            # The first chunk is awaited here, not in the stream, so that a refusal
            # (saturated, not ready, unusable clip) still gets its HTTP status.
            first = await _edge(until_gone(anext(chunks, None), gone))
            if instance.stream:
                return self._frames(first, chunks, started)
            rest = await _edge(until_gone(_collect(chunks), gone))
        except BaseException:
            await chunks.aclose()
            raise
        return self._prediction([first, *rest] if first else rest, started)

    def _parse(self, payload: Any) -> SynthesisInstance:
        if isinstance(payload, bytes | bytearray | str):
            raise KServeInvalidInput(
                "the body must be JSON (Content-Type: application/json) of the form "
                '{"instances": [{"text": ..., "voice": {...}}]}'
            )
        try:
            instance = PredictRequest.model_validate(payload).instances[0]
        except ValidationError as exc:
            raise KServeInvalidInput(describe_validation_error(exc.errors())) from None
        try:
            checked_text(instance.text, self._max_text_length)
        except InvalidInput as exc:
            raise KServeInvalidInput(exc.detail) from None
        return instance

    async def _request(self, instance: SynthesisInstance) -> tuple[SynthesisRequest, ClipLoader]:
        """The request, and the loader of its clip, keyed by the hash of the clip's bytes.

        The feature cache is keyed by the SHA-256 of the bytes this process decodes,
        never by the `sha256` a caller sends: a caller naming one voice's sample with
        another voice's hash would otherwise file features under the wrong voice.
        """
        spec = instance.voice
        if spec.audio is not None:
            data = await asyncio.to_thread(_inline_bytes, spec.audio)
        else:
            data = await self._stored_sample(spec.voice_id, spec.sample_key)
        # Hashing and decoding a clip take milliseconds: off the event loop.
        sha256 = await asyncio.to_thread(sha256_hex, data)
        clip = None if spec.audio is None else await asyncio.to_thread(decode_clip, data)

        async def load_clip() -> Clip:
            return await asyncio.to_thread(decode_clip, data)

        voice = VoicePrompt(
            sha256=sha256,
            clip=clip,
            voice_id=spec.voice_id,
            sample_key=spec.sample_key,
            prompt_text=spec.prompt_text,
            language=spec.language,
        )
        request = SynthesisRequest(
            text=instance.text,
            voice=voice,
            mode=instance.mode,
            instruct_text=instance.instruct_text,
            speed=instance.speed,
            language=instance.language,
            sample_rate=instance.sample_rate,
            stream=instance.low_latency,
        )
        return request, load_clip

    async def _stored_sample(self, voice_id: str | None, key: str | None) -> bytes:
        try:
            return await self._blobs.get(key or "")
        except NotFound:
            owner = f"voice {voice_id}" if voice_id else "the voice"
            raise SynthesisFailed(f"the stored sample of {owner} is missing ({key})") from None

    def _prediction(self, chunks: list[AudioChunk], started: float) -> dict[str, Any]:
        info = self._runner.info
        rate = chunks[0].sample_rate if chunks else info.sample_rate
        samples = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)
        prediction = SynthesisPrediction(
            audio=base64.b64encode(samples_to_pcm(samples)).decode("ascii"),
            sample_rate=rate,
            num_samples=int(samples.size),
            duration=round(samples.size / rate, 4),
            synthesis_time=round(time.perf_counter() - started, 4),
            engine=info.engine,
            model=info.model,
        )
        return PredictResponse(predictions=[prediction]).model_dump()

    async def _frames(
        self, first: AudioChunk | None, chunks: AsyncGenerator[AudioChunk, None], started: float
    ) -> AsyncIterator[bytes]:
        """The stream body. Once it started, a client that leaves is noticed by the HTTP
        server, which cancels this generator; closing `chunks` stops the engine."""
        count = total = 0
        rate = first.sample_rate if first else self._runner.info.sample_rate
        try:
            chunk = first
            while chunk is not None:
                count += 1
                total += chunk.samples.size
                rate = chunk.sample_rate
                yield audio_frame(chunk.samples, chunk.sample_rate)
                chunk = await anext(chunks, None)
            yield end_frame(
                StreamSummary(
                    sample_rate=rate,
                    num_samples=total,
                    chunks=count,
                    duration=round(total / rate, 4),
                    synthesis_time=round(time.perf_counter() - started, 4),
                )
            )
        except CosyVoiceError as exc:
            log.warning("%s: synthesis failed mid-stream: %s", self.name, exc.detail)
            yield error_frame(StreamError(type=wire_error_name(exc), error=exc.detail))
        except Exception as exc:
            log.exception("%s: unexpected error mid-stream", self.name)
            yield error_frame(StreamError(type="SynthesisFailed", error=f"synthesis failed: {exc}"))
        finally:
            await chunks.aclose()


def _inline_bytes(audio: str) -> bytes:
    try:
        return base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise KServeInvalidInput("voice.audio is not valid base64") from None


async def _collect(chunks: AsyncIterator[AudioChunk]) -> list[AudioChunk]:
    return [chunk async for chunk in chunks]


async def _edge(work: Awaitable[T]) -> T:
    """Bad input to KServe's error (400); a full queue to 503 with Retry-After."""
    try:
        return await work
    except InvalidInput as exc:
        raise KServeInvalidInput(exc.detail) from None
    except Overloaded as exc:
        raise _busy_answer(exc) from None


def _busy_answer(exc: Overloaded) -> HTTPException:
    """A full queue: 503 with Retry-After, which the router's client passes on as is."""
    seconds = max(math.ceil(exc.retry_after), 1)
    return HTTPException(status_code=503, detail=exc.detail, headers={"Retry-After": str(seconds)})


__all__ = ["ClientGone", "SynthesisModel"]

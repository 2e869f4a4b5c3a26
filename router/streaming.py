"""The one streaming path: HTTP chunked, Server-Sent Events and WebSocket all end here.

`open_audio_stream` admits a stream (the per-server cap), starts the synthesis and
hands out `AudioPiece`s: the engine's chunks cut into the quality's chunk duration. A
piece leaves as soon as its audio exists: a chunk is cut into whole durations and its
remainder goes out at once too, never held back waiting for the engine's next chunk.

`audio_stream_response` (the /streaming routes and `stream=true` on the synchronous
routes) sends one continuous file with chunked transfer encoding; `sse_stream_response`
sends one event per piece, each a self-contained file; the WebSocket connection class
does the same over its socket.

Resource safety, in one place:
- a client that goes away closes the stream, which cancels the engine call behind it;
- nothing buffers without bound: a piece is made only when the previous one was handed
  to the transport, whose writes wait while the client is slow, and the engine runner
  stops producing when its small window is full;
- the registry's cap answers 503 (`Busy`) beyond MAX_CONCURRENT_STREAMS.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace

import anyio
import numpy as np
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from core.audio.encode import float_to_pcm16
from core.audio.stream import open_stream_encoder, self_contained_chunk
from core.domain import ApiVersion
from core.errors import CosyVoiceError, InvalidInput, NotFound, SynthesisFailed, Unavailable
from core.ports import AudioChunk, SynthesisRequest
from core.schemas.streaming import (
    QUALITY_PROFILES,
    STREAM_FORMATS,
    SseAudioChunk,
    SseComplete,
    SseError,
    SseStart,
    StreamQuality,
    WsErrorCode,
)
from core.services.streams import StreamKind, StreamRegistry, StreamTicket
from core.wiring import Runtime

from . import chunk_framing
from .sse import SSE_HEADERS, SSE_MEDIA_TYPE, SseEncoder, with_keepalive

log = logging.getLogger("router.streaming")

DEFAULT_CHUNK_SECONDS = QUALITY_PROFILES[StreamQuality.medium].chunk_seconds
_REGISTRY_KEY = "streams"


def stream_registry(runtime: Runtime) -> StreamRegistry:
    """The process's stream registry, created with the first stream."""
    registry = runtime.extras.get(_REGISTRY_KEY)
    if registry is None:
        registry = StreamRegistry(runtime.settings.max_concurrent_streams)
        runtime.extras[_REGISTRY_KEY] = registry
    return registry


def streaming_latency_ms(runtime: Runtime, version: ApiVersion) -> float | None:
    """Measured time to first audio: recent streams, else the engine's warm-up."""
    client = runtime.synthesis.client(version)
    engine_seconds = getattr(client, "first_chunk_seconds", None)
    return stream_registry(runtime).reported_latency_ms(engine_seconds)


def checked_stream_format(fmt: str) -> str:
    name = str(fmt).strip().lower()
    if name not in STREAM_FORMATS:
        raise InvalidInput(
            f"format {fmt!r} cannot be streamed; the formats that stream are "
            + ", ".join(STREAM_FORMATS)
        )
    return name


def error_code_for(exc: CosyVoiceError) -> WsErrorCode:
    """The WebSocket/SSE error code of a platform error."""
    if isinstance(exc, NotFound):
        return WsErrorCode.VOICE_NOT_FOUND
    if isinstance(exc, InvalidInput):
        return WsErrorCode.INVALID_REQUEST
    if isinstance(exc, Unavailable):
        return WsErrorCode.BUSY
    return WsErrorCode.SYNTHESIS_ERROR


def to_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- the stream ------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioPiece:
    index: int  # 1-based
    pcm: np.ndarray  # mono 16-bit PCM; empty only for a bare end marker
    sample_rate: int
    is_final: bool

    @property
    def duration(self) -> float:
        return len(self.pcm) / self.sample_rate


class _Lookahead:
    """Reads the engine's chunks one ahead of the consumer.

    Knowing whether the chunk in hand is the last lets its last piece say `is_final`
    without waiting: the read of the next chunk runs while this one is being sent.
    """

    def __init__(self, chunks: AsyncGenerator[AudioChunk, None]) -> None:
        self._chunks = chunks
        self._ahead: asyncio.Task[AudioChunk | None] | None = None
        self._closed = False

    async def _read(self) -> AudioChunk | None:
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            return None

    async def next(self) -> AudioChunk | None:
        if self._ahead is None:
            self._ahead = asyncio.create_task(self._read())
        # Cancelling the awaiting task cancels this read too, and with it the engine call.
        chunk = await self._ahead
        if chunk is not None:
            self._ahead = asyncio.create_task(self._read())
        return chunk

    @property
    def at_end(self) -> bool:
        """True when the chunk last returned is known to be the last one."""
        ahead = self._ahead
        return (
            ahead is not None
            and ahead.done()
            and not ahead.cancelled()
            and ahead.exception() is None
            and ahead.result() is None
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        ahead = self._ahead
        if ahead is not None and not ahead.done():
            # The cancellation travels into the engine call and ends the generator.
            ahead.cancel()
            await asyncio.wait([ahead])
        if ahead is None or ahead.done():
            if ahead is not None and not ahead.cancelled():
                ahead.exception()  # retrieved: a failure nobody waits for is not an error
            await self._chunks.aclose()


class AudioStream:
    """One admitted synthesis, handed out as pieces of the quality's chunk duration, or
    (`chunk_seconds=None`) as the engine made them."""

    def __init__(
        self,
        ticket: StreamTicket,
        chunks: AsyncGenerator[AudioChunk, None],
        sample_rate: int,
        chunk_seconds: float | None,
    ) -> None:
        self.sample_rate = sample_rate
        self._ticket = ticket
        self._feed = _Lookahead(chunks)
        self._piece_samples = (
            None if chunk_seconds is None else max(1, round(sample_rate * chunk_seconds))
        )
        self._primed: AudioChunk | None = None
        self._started = time.perf_counter()
        self.pieces_sent = 0
        self.samples_sent = 0
        self.finished_at: float | None = None

    @property
    def audio_seconds(self) -> float:
        return round(self.samples_sent / self.sample_rate, 3)

    @property
    def elapsed(self) -> float:
        end = self.finished_at or time.perf_counter()
        return round(end - self._started, 3)

    async def prime(self) -> None:
        """Wait for the first audio, so a failure before it can still be a status code."""
        self._primed = await self._feed.next()
        if self._primed is None:
            raise SynthesisFailed("the engine produced no audio")

    async def pieces(self) -> AsyncIterator[AudioPiece]:
        final_sent = False
        while True:
            chunk, self._primed = self._primed, None
            if chunk is None:
                chunk = await self._feed.next()
            if chunk is None:
                break
            # Made by the engine runner (off the loop when an engine thread serves the
            # call); converted here (once per chunk) only for audio from elsewhere, a
            # predictor's.
            pcm = chunk.pcm16 if chunk.pcm16 is not None else float_to_pcm16(chunk.samples)
            piece_samples = self._piece_samples or max(len(pcm), 1)
            for start in range(0, len(pcm), piece_samples):
                if self.pieces_sent:
                    # Sending never waits while the client keeps up, so without this turn
                    # one stream would send a whole chunk's pieces while other streams'
                    # first audio waits; the first piece itself leaves without one.
                    await asyncio.sleep(0)
                part = pcm[start : start + piece_samples]
                final = start + piece_samples >= len(pcm) and self._feed.at_end
                final_sent = final
                yield self._piece(part, final)
        self.finished_at = time.perf_counter()
        if not final_sent:
            # The end became known only after the last audio left: say so without audio.
            yield self._piece(np.zeros(0, dtype=np.int16), True)

    def _piece(self, pcm: np.ndarray, is_final: bool) -> AudioPiece:
        if pcm.size:
            self._ticket.first_audio()
        self.pieces_sent += 1
        self.samples_sent += len(pcm)
        return AudioPiece(self.pieces_sent, pcm, self.sample_rate, is_final)

    async def aclose(self) -> None:
        """Stop the synthesis (if still running) and give the stream's slot back."""
        try:
            await self._feed.aclose()
        finally:
            self._ticket.release()


async def open_audio_stream(
    runtime: Runtime,
    version: ApiVersion,
    request: SynthesisRequest,
    kind: StreamKind,
    *,
    chunk_seconds: float | None = DEFAULT_CHUNK_SECONDS,
) -> AudioStream:
    """Admit a stream (Busy beyond the cap) and start its synthesis."""
    ticket = stream_registry(runtime).acquire(kind)
    try:
        await runtime.synthesis.ensure_ready(version)
        sample_rate = request.sample_rate or runtime.synthesis.sample_rate
        chunks = runtime.synthesis.stream(version, replace(request, stream=True))
    except BaseException:
        ticket.release()
        raise
    return AudioStream(ticket, chunks, sample_rate, chunk_seconds)


async def close_shielded(stream: AudioStream) -> None:
    """Close a stream even from code that is being cancelled (a client went away)."""
    with anyio.CancelScope(shield=True):
        await stream.aclose()


# --- HTTP ------------------------------------------------------------------------------


class AudioStreamResponse(StreamingResponse):
    """A StreamingResponse that always closes its stream, whatever ends the response.

    Starlette cancels the body when the client disconnects, possibly before the body
    ever started; closing here, after the response, covers every case. With
    `chunk_bytes`, each piece of the body leaves as HTTP chunks of at most that many
    bytes: framed by the server in one write where it offers that (`chunk_framing`),
    else as one message per chunk.
    """

    def __init__(
        self,
        stream: AudioStream,
        body: AsyncIterator[bytes],
        *,
        media_type: str,
        headers: dict[str, str],
        chunk_bytes: int | None = None,
    ) -> None:
        super().__init__(body, media_type=media_type, headers=headers)
        self.stream = stream
        self.chunk_bytes = chunk_bytes
        self._pieces = body
        self._server_frames = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._server_frames = chunk_framing.offered(scope)
        try:
            await self._stream_until_client_leaves(receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                close_body = getattr(self.body_iterator, "aclose", None)
                if close_body is not None:
                    await close_body()
                await self.stream.aclose()

    async def _stream_until_client_leaves(self, receive: Receive, send: Send) -> None:
        """Starlette's StreamingResponse, with one plain task watching for the disconnect.

        Starlette runs the body and the watch as two tasks of an anyio task group; the
        group, its cancel scopes and its cancellation message cost a tenth of the
        server's CPU per stream. Here the body runs in the request's own task.
        """
        watch = _ClientWatch(receive)
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            # Only the watch's own cancellation ends quietly: anything else goes on.
            if not watch.cancelled_streaming or watch.streaming.uncancel():
                raise
        finally:
            watch.stop()

    async def stream_response(self, send: Send) -> None:
        limit = self.chunk_bytes
        if limit is None:
            await super().stream_response(send)
            return
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for piece in self._pieces:
            if self._server_frames:
                await send(chunk_framing.message(piece, limit))
                continue
            for start in range(0, len(piece), limit):
                part = piece[start : start + limit]
                await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _ClientWatch:
    """Cancels the task streaming a response when its client goes away."""

    def __init__(self, receive: Receive) -> None:
        streaming = asyncio.current_task()
        assert streaming is not None
        self.streaming = streaming
        self.cancelled_streaming = False
        self._watching = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.cancelled_streaming = True
        self.streaming.cancel()

    def stop(self) -> None:
        if not self._watching.done():
            self._watching.cancel()
        elif not self._watching.cancelled():
            self._watching.exception()  # a failed read: the response has ended anyway


async def _file_body(stream: AudioStream, fmt: str) -> AsyncIterator[bytes]:
    encoder = open_stream_encoder(fmt, stream.sample_rate)
    try:
        pending = encoder.header()
        async for piece in stream.pieces():
            data = pending + encoder.encode(piece.pcm) if piece.pcm.size else pending
            pending = b""
            if data:
                yield data
        if tail := pending + encoder.finish():
            yield tail
    except CosyVoiceError as exc:
        # Headers are gone: the only honest signal left is a stream that does not end
        # properly (no last chunk), never an error message inside the audio.
        log.warning("stream failed after it started: %s", exc.detail)
        raise
    finally:
        await close_shielded(stream)


async def audio_stream_response(
    runtime: Runtime,
    version: ApiVersion,
    request: SynthesisRequest,
    fmt: str,
    *,
    chunk_bytes: int | None = None,
    headers: dict[str, str] | None = None,
) -> AudioStreamResponse:
    """Audio as one continuous file, chunked, leaving with the engine's first chunk.

    Each engine chunk leaves whole, in one write: in one continuous file the only units
    a client sees are the HTTP chunks (`chunk_bytes`), and cutting the audio into the
    quality's chunk durations first cost a trip through the middleware's sends per piece
    for the same bytes (those sends were a quarter of the event loop's time under 16
    streaming clients).

    Everything that can fail before audio exists (format, cap, engine readiness, the
    engine failing before its first chunk) fails here, as a proper status code.
    """
    fmt = checked_stream_format(fmt)
    sample_rate = request.sample_rate or runtime.synthesis.sample_rate
    content_type = open_stream_encoder(fmt, sample_rate).content_type
    if fmt == "pcm":
        content_type = f"{content_type};rate={sample_rate};channels=1"
    stream = await open_audio_stream(runtime, version, request, StreamKind.http, chunk_seconds=None)
    try:
        await stream.prime()
    except BaseException:
        await close_shielded(stream)
        raise
    return AudioStreamResponse(
        stream,
        _file_body(stream, fmt),
        media_type=content_type,
        chunk_bytes=chunk_bytes,
        headers={
            "X-Sample-Rate": str(sample_rate),
            "X-Channels": "1",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
            **(headers or {}),
        },
    )


# --- Server-Sent Events ----------------------------------------------------------------


async def _sse_body(
    stream: AudioStream, fmt: str, version: ApiVersion, request_id: str
) -> AsyncIterator[bytes]:
    events = SseEncoder()
    total_bytes = 0
    try:
        yield events.event(
            "start",
            SseStart(
                version=version.value,
                sample_rate=stream.sample_rate,
                format=fmt,
                request_id=request_id,
            ),
        )
        async for piece in stream.pieces():
            audio = self_contained_chunk(piece.pcm, piece.sample_rate, fmt)
            total_bytes += len(audio)
            yield events.event(
                "audio_chunk",
                SseAudioChunk(
                    chunk_index=piece.index,
                    chunk_size=len(audio),
                    total_bytes=total_bytes,
                    audio_data=to_base64(audio),
                    is_final=piece.is_final,
                    sample_rate=piece.sample_rate,
                    duration=round(piece.duration, 4),
                    version=version.value,
                ),
            )
        yield events.event(
            "complete",
            SseComplete(
                total_chunks=stream.pieces_sent,
                total_bytes=total_bytes,
                duration=stream.audio_seconds,
                synthesis_time=stream.elapsed,
                version=version.value,
            ),
        )
    except CosyVoiceError as exc:
        log.info("SSE stream ended with an error: %s", exc.detail)
        yield events.event(
            "error",
            SseError(error=exc.detail, error_code=error_code_for(exc), version=version.value),
        )
    except Exception:
        log.exception("SSE stream failed")
        yield events.event(
            "error",
            SseError(
                error="Internal error during synthesis",
                error_code=WsErrorCode.SYNTHESIS_ERROR,
                version=version.value,
            ),
        )
    finally:
        await close_shielded(stream)


async def sse_stream_response(
    runtime: Runtime,
    version: ApiVersion,
    request: SynthesisRequest,
    fmt: str,
    *,
    request_id: str,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
) -> AudioStreamResponse:
    """Events `start`, `audio_chunk`..., `complete`; after `start`, failures are `error`."""
    fmt = checked_stream_format(fmt)
    stream = await open_audio_stream(
        runtime, version, request, StreamKind.sse, chunk_seconds=chunk_seconds
    )
    return AudioStreamResponse(
        stream,
        # Comments while the stream waits (for an engine slot, a slow phrase) keep
        # proxies from closing it as idle.
        with_keepalive(
            _sse_body(stream, fmt, version, request_id),
            runtime.settings.sse_keepalive_seconds,
        ),
        media_type=SSE_MEDIA_TYPE,
        headers=SSE_HEADERS,
    )

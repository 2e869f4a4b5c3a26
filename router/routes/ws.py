"""WebSocket streaming: /ws/stream and the list of open sessions, /ws/sessions.

Built per version by `build_router(version)`: each socket streams from its version's
engine and lists its version's sessions; the closure keeps the version beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, WebSocket
from pydantic import AfterValidator, ValidationError
from starlette.websockets import WebSocketDisconnect

from core.audio.stream import self_contained_chunk
from core.domain import ApiVersion
from core.errors import CosyVoiceError, InvalidInput
from core.schemas.common import describe_validation_error, single_line
from core.schemas.streaming import (
    CLIENT_MESSAGE,
    CLIENT_MESSAGE_TYPES,
    QUALITY_PROFILES,
    AudioChunkMessage,
    CancelMessage,
    ChunkMetadata,
    ErrorMessage,
    PingMessage,
    PongMessage,
    ServerMessage,
    StatusMessage,
    SynthesisCancelled,
    SynthesisComplete,
    SynthesisStart,
    TextRequest,
    WsErrorCode,
    WsSessionList,
    WsSessionPublic,
)
from core.services.streams import SessionRecord, StreamKind
from core.services.synthesis import checked_text
from core.wiring import Runtime

from ..auth import accept_websocket
from ..deps import RuntimeDep
from ..json_limits import checked_json_loads
from ..streaming import (
    AudioStream,
    checked_stream_format,
    close_shielded,
    error_code_for,
    open_audio_stream,
    stream_registry,
    to_base64,
)

log = logging.getLogger("router.ws")


class _ClientGone(Exception):
    """The socket closed while we were sending to it."""


@dataclass
class _InFlight:
    task: asyncio.Task[None]
    chunks_sent: int = 0


class StreamConnection:
    """One client's WebSocket: many synthesis requests in flight, told apart by request_id.

    The protocol, step by step:

    1. The server accepts, registers the session (GET /ws/sessions lists it) and sends
       `status` (`connected`, with `session_id` and `client_id`).
    2. The client sends JSON text frames, each with a `message_type`:
       - `ping` → `pong` with the same `request_id`;
       - `text_request` → `synthesis_start`, then `audio_chunk`s (base64 audio plus
         `metadata`: 1-based `chunk_index`, `chunk_size` in bytes, `sample_rate`,
         `channels`, `is_final`), then `synthesis_complete`; or one `error` in place of
         whatever had not been sent yet. Each request runs on its own, so the frames of
         several requests interleave; every frame carries its `request_id`;
       - `cancel` (with the `request_id` of a request in flight) stops that request's
         synthesis and is answered by `synthesis_cancelled`; nothing more is sent for it.
    3. A frame that is not JSON (`INVALID_JSON`), has an unknown `message_type`
       (`UNKNOWN_MESSAGE_TYPE`) or bad fields (`INVALID_REQUEST`) gets an `error`; the
       socket stays open. A request the server cannot take now gets `BUSY`.
    4. When the client closes, every request still in flight is cancelled (its engine
       work stops) and the session disappears from the list.

    Frames go out one at a time through one lock; a slow reader makes the senders wait
    (and through them the engine), so nothing piles up in memory.
    """

    def __init__(
        self, websocket: WebSocket, runtime: Runtime, version: ApiVersion, client_id: str | None
    ) -> None:
        self._ws = websocket
        self._runtime = runtime
        self._version = version
        self._client_id = client_id
        self._registry = stream_registry(runtime)
        self._send_lock = asyncio.Lock()
        self._in_flight: dict[str, _InFlight] = {}
        self._session: SessionRecord | None = None

    async def serve(self) -> None:
        if not await accept_websocket(self._ws, self._runtime.settings.ws_auth_timeout):
            return  # closed: no valid key in the handshake or the first message
        self._session = self._registry.open_session(self._client_id, self._version.value)
        try:
            await self._send(
                StatusMessage(
                    session_id=self._session.session_id, client_id=self._session.client_id
                )
            )
            while (frame := await self._receive()) is not None:
                await self._handle(frame)
        except _ClientGone:
            pass
        finally:
            await self._cancel_all()
            self._registry.close_session(self._session.session_id)

    # --- receiving -------------------------------------------------------------------

    async def _receive(self) -> str | None:
        """The next frame's text; None when the client has closed."""
        try:
            message = await self._ws.receive()
        except (WebSocketDisconnect, RuntimeError, OSError):
            return None
        if message["type"] == "websocket.disconnect":
            return None
        if message.get("text") is not None:
            return str(message["text"])
        return bytes(message.get("bytes") or b"").decode("utf-8", errors="replace")

    async def _handle(self, frame: str) -> None:
        try:
            raw: Any = checked_json_loads(frame, self._runtime.settings.max_json_depth)
        except InvalidInput as exc:
            await self._error(None, WsErrorCode.INVALID_JSON, exc.detail)
            return
        except (ValueError, RecursionError):
            await self._error(None, WsErrorCode.INVALID_JSON, "The message is not valid JSON")
            return
        if not isinstance(raw, dict):
            await self._error(None, WsErrorCode.INVALID_JSON, "The message must be a JSON object")
            return
        request_id = raw.get("request_id") if isinstance(raw.get("request_id"), str) else None
        kind = raw.get("message_type")
        if kind not in CLIENT_MESSAGE_TYPES:
            await self._error(
                request_id,
                WsErrorCode.UNKNOWN_MESSAGE_TYPE,
                f"Unknown message_type {kind!r}; expected one of "
                + ", ".join(CLIENT_MESSAGE_TYPES),
            )
            return
        try:
            message = CLIENT_MESSAGE.validate_python(raw)
        except ValidationError as exc:
            await self._error(request_id, WsErrorCode.INVALID_REQUEST, _describe(exc))
            return
        if isinstance(message, PingMessage):
            await self._send(PongMessage(request_id=message.request_id))
        elif isinstance(message, CancelMessage):
            await self._cancel(message.request_id)
        else:
            await self._start(message)

    # --- requests --------------------------------------------------------------------

    async def _start(self, message: TextRequest) -> None:
        if message.request_id in self._in_flight:
            await self._error(
                message.request_id,
                WsErrorCode.INVALID_REQUEST,
                f"Request {message.request_id} is already in flight on this socket",
            )
            return
        task = asyncio.create_task(self._serve_request(message))
        self._in_flight[message.request_id] = _InFlight(task)
        self._active_ids_changed()
        task.add_done_callback(lambda _: self._finished(message.request_id, task))

    def _finished(self, request_id: str, task: asyncio.Task[None]) -> None:
        entry = self._in_flight.get(request_id)
        if entry is not None and entry.task is task:
            del self._in_flight[request_id]
            self._active_ids_changed()

    def _active_ids_changed(self) -> None:
        if self._session is not None:
            self._session.active_requests = list(self._in_flight)

    async def _serve_request(self, message: TextRequest) -> None:
        request_id = message.request_id
        stream: AudioStream | None = None
        try:
            fmt = checked_stream_format(message.format)
            profile = QUALITY_PROFILES[message.quality]
            request = await self._runtime.synthesis.request_for_voice(
                self._version,
                message.voice_id,
                checked_text(message.text, self._runtime.settings.max_text_length),
                speed=message.speed,
                instruct_text=(message.instruct_text or "").strip() or None,
                sample_rate=profile.sample_rate,
            )
            stream = await open_audio_stream(
                self._runtime,
                self._version,
                request,
                StreamKind.websocket,
                chunk_seconds=profile.chunk_seconds,
            )
            await self._send(
                SynthesisStart(
                    request_id=request_id,
                    text=request.text,
                    voice_id=message.voice_id,
                    format=fmt,
                    sample_rate=stream.sample_rate,
                )
            )
            async for piece in stream.pieces():
                audio = self_contained_chunk(piece.pcm, piece.sample_rate, fmt)
                await self._send(
                    AudioChunkMessage(
                        request_id=request_id,
                        audio_data=to_base64(audio),
                        metadata=ChunkMetadata(
                            chunk_index=piece.index,
                            chunk_size=len(audio),
                            sample_rate=piece.sample_rate,
                            is_final=piece.is_final,
                            duration=round(piece.duration, 4),
                            format=fmt,
                        ),
                    )
                )
                self._in_flight[request_id].chunks_sent += 1
            await self._send(
                SynthesisComplete(
                    request_id=request_id,
                    total_chunks=stream.pieces_sent,
                    total_duration=stream.audio_seconds,
                    synthesis_time=stream.elapsed,
                )
            )
            if self._session is not None:
                self._session.requests_served += 1
        except _ClientGone:
            pass
        except CosyVoiceError as exc:
            await self._error_quietly(request_id, error_code_for(exc), exc.detail)
        except Exception:
            log.exception("WebSocket request %s failed", request_id)
            await self._error_quietly(
                request_id, WsErrorCode.SYNTHESIS_ERROR, "Internal error during synthesis"
            )
        finally:
            if stream is not None:
                await close_shielded(stream)

    async def _cancel(self, request_id: str) -> None:
        entry = self._in_flight.get(request_id)
        if entry is None or entry.task.done():
            await self._error(
                request_id,
                WsErrorCode.INVALID_REQUEST,
                f"No request {request_id} in flight on this socket",
            )
            return
        entry.task.cancel()
        await asyncio.wait([entry.task])
        if entry.task.cancelled():
            await self._send(
                SynthesisCancelled(request_id=request_id, chunks_sent=entry.chunks_sent)
            )
        # Otherwise it finished first, and its last frame already told the client so.

    async def _cancel_all(self) -> None:
        tasks = [entry.task for entry in self._in_flight.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            with anyio.CancelScope(shield=True):
                await asyncio.wait(tasks)

    # --- sending ---------------------------------------------------------------------

    async def _send(self, message: ServerMessage) -> None:
        text = message.model_dump_json()
        async with self._send_lock:
            try:
                await self._ws.send_text(text)
            except (WebSocketDisconnect, RuntimeError, OSError):
                raise _ClientGone from None

    async def _error(self, request_id: str | None, code: WsErrorCode, text: str) -> None:
        await self._send(ErrorMessage(request_id=request_id, error_code=code, error_message=text))

    async def _error_quietly(self, request_id: str, code: WsErrorCode, text: str) -> None:
        with contextlib.suppress(_ClientGone):
            await self._error(request_id, code, text)


def _describe(exc: ValidationError) -> str:
    # The union's tag (the message type) leads each location; it names no field.
    return describe_validation_error(
        exc.errors(), skip=CLIENT_MESSAGE_TYPES, unnamed="message", fallback="invalid message"
    )


def _client_id(value: str | None) -> str | None:
    """One line without control characters; an empty one is none (the server names it)."""
    return single_line(value) if value and value.strip() else None


def build_router(version: ApiVersion) -> APIRouter:
    router = APIRouter(prefix="/ws", tags=[f"{version.value} websocket"])

    @router.websocket("/stream")
    async def stream(
        websocket: WebSocket,
        client_id: Annotated[
            str | None,
            Query(max_length=128, description="Your name for this client, in /ws/sessions"),
            AfterValidator(_client_id),
        ] = None,
    ) -> None:
        runtime: Runtime = websocket.app.state.runtime
        await StreamConnection(websocket, runtime, version, client_id).serve()

    @router.get(
        "/sessions",
        response_model=WsSessionList,
        summary="Open WebSocket sessions of this version",
    )
    async def sessions(runtime: RuntimeDep) -> WsSessionList:
        records = stream_registry(runtime).sessions(version.value)
        return WsSessionList(
            sessions=[
                WsSessionPublic(
                    session_id=r.session_id,
                    client_id=r.client_id,
                    version=r.version,
                    connected_at=r.connected_at,
                    requests_served=r.requests_served,
                    active_requests=list(r.active_requests),
                )
                for r in records
            ],
            total=len(records),
            version=version.value,
        )

    return router

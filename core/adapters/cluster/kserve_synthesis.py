"""The synthesis port served by a KServe predictor over HTTP (V1 `:predict`, streamed).

Every synthesis asks the predictor for a stream of PCM frames (`core.schemas.predictor`)
and passes each chunk on as it arrives, so the first audio leaves the router as soon as
the engine made it; closing the iterator closes the connection, and the predictor
cancels the synthesis.

Time-outs: the predictor may be scaled to zero, and then the first request waits while a
GPU pod starts and loads the model (Knative's activator holds it meanwhile), so reads may
take `timeout` (default 600 s) while connecting must succeed within seconds.

Retries, only where they cannot duplicate audio: a request is repeated only before any
of its audio was passed on, and only when the predictor did not work on it — it could not
be reached, the connection dropped before an answer, a gateway answered 502/504, or the
model answered "not ready" (still loading) — never after an answer of the model itself.

A predictor whose queue is full answers 503 with Retry-After: a synchronous or streaming
request passes that on at once (`Overloaded`, the same 503 and Retry-After to its
client); background work (a task render) waits as told and asks again, until its
deadline.

Readiness without waking: `ready()` reports the last state learned from real traffic or
an explicit probe, so `/health` never starts a predictor that scaled to zero; only
`ready(deep=True)` asks the predictor. A predictor last seen unreachable or not ready is
probed again (it is not asleep, so nothing is woken) once the state is a few seconds old.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import time
from collections.abc import AsyncGenerator

import httpx
import soundfile as sf
from pydantic import ValidationError

from ... import metrics
from ...errors import (
    AudioRejected,
    BackendUnavailable,
    CosyVoiceError,
    EngineNotReady,
    InvalidInput,
    Overloaded,
    SynthesisFailed,
)
from ...ports import AudioChunk, Clip, EngineInfo, SynthesisRequest, VoicePrompt
from ...request_id import HEADER as REQUEST_ID_HEADER
from ...request_id import current_request_id
from ...schemas.common import describe_validation_error
from ...schemas.predictor import (
    AUDIO,
    ERROR,
    FrameProtocolError,
    FrameReader,
    PredictorMetadata,
    PredictRequest,
    SynthesisInstance,
    VoiceSpec,
    error_from_wire,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
PROBE_TIMEOUT = 5.0
RECHECK_AFTER = 5.0  # seconds before a "down" state is probed again
CONNECT_ATTEMPTS = 3
DROPPED_ATTEMPTS = 3
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 5.0
GATEWAY_STATUSES = frozenset({502, 504})
_JSON = {"content-type": "application/json"}


class KServeSynthesis:
    """`SynthesisClient` over a KServe predictor serving one model."""

    remote = True
    missing_reason: str | None = None  # a predictor that is down may come back

    def __init__(
        self,
        url: str,
        model_name: str,
        *,
        timeout: float = 600.0,
        connect_timeout: float = CONNECT_TIMEOUT,
        probe_timeout: float = PROBE_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._base = url.rstrip("/")
        self._model = model_name
        self._timeout = timeout
        self._probe_timeout = min(probe_timeout, timeout)
        self._http_timeout = httpx.Timeout(timeout, connect=min(connect_timeout, timeout))
        self._transport = transport
        self._predict_url = f"{self._base}/v1/models/{model_name}:predict"
        self._metadata_url = f"{self._base}/v1/models/{model_name}/metadata"
        self._http: httpx.AsyncClient | None = None
        self._info = _placeholder_info(model_name)
        self._info_known = False
        self._refresh: asyncio.Task[bool] | None = None
        self._ready: bool | None = None  # last known; None = never heard from it
        self._ready_at = 0.0
        self.detail: str | None = None  # why it is not ready, when known
        self.warning: str | None = None  # the predictor's own, e.g. a fallback engine
        # The engine's time to first audio as the predictor measured it (warm-up, calls).
        self.first_chunk_seconds: float | None = None

    # --- SynthesisClient ----------------------------------------------------------------

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def url(self) -> str:
        return self._base

    async def start(self) -> None:
        """Learn what the predictor serves; never fails, because a predictor that scaled
        to zero (or is not deployed yet) must not keep the API from starting."""
        self._client()
        try:
            await self._probe()
        except Exception as exc:  # a start-up probe is best effort by design
            log.warning("predictor %s: first contact failed: %s", self._base, exc)
        if not self._info_known:
            log.info(
                "predictor %s (%s): not reached yet; will describe it later",
                self._base,
                self._model,
            )

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def ready(self, deep: bool = False) -> bool:
        if deep:
            return await self._probe()
        if self._ready is False and time.monotonic() - self._ready_at > RECHECK_AFTER:
            # Last seen down: asking again cannot wake a sleeping predictor.
            return await self._probe()
        return self._ready is not False

    def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[AudioChunk, None]:
        return self._synthesize(request)

    # --- synthesis ----------------------------------------------------------------------

    async def _synthesize(self, request: SynthesisRequest) -> AsyncGenerator[AudioChunk, None]:
        """The audio, counting a predictor that failed us on `/metrics`."""
        try:
            async with contextlib.aclosing(self._stream(request)) as chunks:
                async for chunk in chunks:
                    yield chunk
        except (BackendUnavailable, EngineNotReady):
            metrics.count_backend_error("predictor")
            raise

    async def _stream(self, request: SynthesisRequest) -> AsyncGenerator[AudioChunk, None]:
        body = await self._body(request)
        response = await self._open(body, background=request.background)
        reader = FrameReader()
        ended = False
        failure: CosyVoiceError | None = None
        try:
            async for data in response.aiter_raw():
                if ended:
                    continue  # the body's last bytes: read them so the connection is reused
                for frame in reader.feed(data):
                    if frame.kind == AUDIO:
                        samples = frame.samples()
                        if samples.size:
                            yield AudioChunk(samples=samples, sample_rate=frame.sample_rate)
                        continue
                    ended = True
                    if frame.kind == ERROR:
                        error = frame.error()
                        failure = error_from_wire(error.type, error.error)
                    break
        except httpx.TimeoutException:
            raise BackendUnavailable(
                f"the {self._model} predictor sent no audio for {self._timeout:g} s"
            ) from None
        except httpx.TransportError as exc:
            self._mark(False, f"connection lost mid-stream: {_reason(exc)}")
            raise BackendUnavailable(
                f"the connection to the {self._model} predictor broke mid-stream ({_reason(exc)})"
            ) from None
        except (FrameProtocolError, ValidationError) as exc:
            problem = (
                describe_validation_error(exc.errors())
                if isinstance(exc, ValidationError)
                else str(exc)
            )
            raise BackendUnavailable(
                f"the {self._model} predictor at {self._base} sent an unreadable stream: {problem}"
            ) from None
        finally:
            await response.aclose()
        if failure is not None:
            raise failure
        if ended:
            return
        raise BackendUnavailable(
            f"the {self._model} predictor ended the stream before the end of the audio "
            "(it may have restarted)"
        )

    async def _body(self, request: SynthesisRequest) -> bytes:
        instance = SynthesisInstance(
            text=request.text,
            mode=request.mode,
            voice=await _voice_spec(request.voice),
            instruct_text=request.instruct_text,
            speed=request.speed,
            language=request.language,
            sample_rate=request.sample_rate,
            stream=True,  # frames whatever the engine's path: they pass on as they come
            low_latency=request.stream,
        )
        return PredictRequest(instances=[instance]).model_dump_json(exclude_none=True).encode()

    async def _open(self, body: bytes, *, background: bool = False) -> httpx.Response:
        """POST the request and return the streaming answer once it is a 200."""
        http = self._client()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        connect_failures = dropped = 0
        delay = BACKOFF_FIRST
        request_id = current_request_id()  # the predictor logs it with its own lines
        headers = _JSON if request_id is None else {**_JSON, REQUEST_ID_HEADER: request_id}
        while True:
            failure: CosyVoiceError
            pause = delay
            try:
                response = await http.send(
                    http.build_request("POST", self._predict_url, content=body, headers=headers),
                    stream=True,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                connect_failures += 1
                failure = self._unreachable(exc)
                if connect_failures >= CONNECT_ATTEMPTS:
                    raise failure from None
            except httpx.TimeoutException:
                raise BackendUnavailable(
                    f"the {self._model} predictor at {self._base} did not answer within "
                    f"{self._timeout:g} s"
                ) from None
            except httpx.TransportError as exc:
                # The connection dropped before any answer (a pod going away, a stale
                # pooled connection): the model never started on it.
                dropped += 1
                failure = BackendUnavailable(
                    f"the {self._model} predictor at {self._base} dropped the connection "
                    f"({_reason(exc)})"
                )
                if dropped >= DROPPED_ATTEMPTS:
                    raise failure from None
            else:
                if response.status_code == 200:
                    self._mark(True)
                    self._describe_soon()
                    return response
                failure, retry = await self._refusal(response)
                if isinstance(failure, Overloaded):
                    if not background:
                        raise failure
                    pause = failure.retry_after  # queued work waits its turn, as told
                elif not retry:
                    raise failure
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise failure
            await asyncio.sleep(min(pause, remaining))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _refusal(self, response: httpx.Response) -> tuple[CosyVoiceError, bool]:
        """The error an answer other than 200 stands for, and whether to try again."""
        try:
            await response.aread()
        finally:
            await response.aclose()
        status = response.status_code
        kind, detail = _error_body(response)
        retry_after = _retry_after(response)
        if status == 503 and retry_after is not None:
            return Overloaded(detail, retry_after), False
        if kind is not None:
            # The model itself answered: repeating the request would get the same answer.
            return error_from_wire(kind, detail), False
        if status == 503:
            self._mark(False, detail)
            load_error = await self._load_error()
            if load_error:
                return EngineNotReady(
                    f"the {self._model} predictor failed to load its engine: {load_error}"
                ), False
            return EngineNotReady(f"the {self._model} predictor is not ready yet: {detail}"), True
        if status in GATEWAY_STATUSES:
            return BackendUnavailable(
                f"the {self._model} predictor at {self._base} is unavailable "
                f"(HTTP {status}: {detail})"
            ), True
        if status == 400:
            return InvalidInput(detail), False
        if status == 422:
            return AudioRejected(detail), False
        if status == 404:
            return BackendUnavailable(
                f"the predictor at {self._base} serves no model named {self._model!r} ({detail})"
            ), False
        return SynthesisFailed(
            f"the {self._model} predictor failed (HTTP {status}): {detail}"
        ), False

    # --- readiness and description ------------------------------------------------------

    async def _probe(self) -> bool:
        """Ask the predictor; updates the last known state and the engine description."""
        http = self._client()
        try:
            response = await http.get(self._metadata_url, timeout=self._probe_timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            self._unreachable(exc)
            return False
        except httpx.TimeoutException:
            # Most likely a cold start in progress: nothing learned, nothing changed.
            return False
        except httpx.TransportError as exc:
            self._mark(False, f"connection dropped: {_reason(exc)}")
            return False
        if response.status_code != 200:
            _, detail = _error_body(response)
            self._mark(False, f"HTTP {response.status_code}: {detail}")
            return False
        try:
            metadata = PredictorMetadata.model_validate_json(response.content)
        except ValidationError as exc:
            self._mark(False, f"unreadable metadata: {describe_validation_error(exc.errors())}")
            return False
        self._info = metadata.engine.to_info()
        self._info_known = True
        self.warning = metadata.warning
        if metadata.synthesis.first_chunk_seconds is not None:
            self.first_chunk_seconds = metadata.synthesis.first_chunk_seconds
        self._mark(metadata.ready, metadata.load_error or (None if metadata.ready else "loading"))
        return metadata.ready

    async def _load_error(self) -> str | None:
        """Why a predictor answering "not ready" is not: None while it is still loading."""
        await self._probe()
        return self.detail if self.detail and self.detail != "loading" else None

    def _describe_soon(self) -> None:
        # The predictor is awake now: learn what it serves, if start() could not.
        if self._info_known or (self._refresh is not None and not self._refresh.done()):
            return
        self._refresh = asyncio.create_task(self._probe())
        self._refresh.add_done_callback(_log_failure)

    def _mark(self, ready: bool, detail: str | None = None) -> None:
        if ready != self._ready:
            log.info(
                "predictor %s (%s) is %s%s",
                self._base,
                self._model,
                "ready" if ready else "not ready",
                f": {detail}" if detail else "",
            )
        self._ready = ready
        self._ready_at = time.monotonic()
        self.detail = None if ready else detail

    def _unreachable(self, exc: Exception) -> BackendUnavailable:
        detail = f"cannot be reached ({_reason(exc)})"
        self._mark(False, detail)
        return BackendUnavailable(f"the {self._model} predictor at {self._base} {detail}")

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=self._http_timeout,
                limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
                transport=self._transport,
            )
        return self._http


async def _voice_spec(voice: VoicePrompt) -> VoiceSpec:
    """A stored voice travels by reference; an uploaded clip travels inline."""
    common = {"sha256": voice.sha256, "prompt_text": voice.prompt_text, "language": voice.language}
    if voice.sample_key and voice.voice_id:
        return VoiceSpec(voice_id=voice.voice_id, sample_key=voice.sample_key, **common)
    if voice.clip is None:
        raise InvalidInput("the voice has neither an uploaded clip nor a stored sample")
    audio = await asyncio.to_thread(_clip_file, voice.clip)
    return VoiceSpec(audio=base64.b64encode(audio).decode("ascii"), **common)


def _clip_file(clip: Clip) -> bytes:
    """The decoded clip as a float WAV file: exactly the samples the router decoded."""
    buffer = io.BytesIO()
    sf.write(buffer, clip.samples, clip.sample_rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def _error_body(response: httpx.Response) -> tuple[str | None, str]:
    """(error class, detail) from a KServe or predictor error answer."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return None, text[:300] or response.reason_phrase
    if not isinstance(body, dict):
        return None, str(body)[:300]
    detail = str(body.get("error") or body.get("detail") or response.reason_phrase)
    kind = body.get("type")
    return (kind if isinstance(kind, str) else None), detail


def _retry_after(response: httpx.Response) -> float | None:
    """The Retry-After of an answer, in seconds (the delta-seconds form); None if absent."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 1.0)
    except ValueError:
        return 1.0  # an HTTP date: any wait will do, the estimate is rough anyway


def _log_failure(task: asyncio.Task[bool]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("describing the predictor failed: %s", task.exception())


def _reason(exc: Exception) -> str:
    return str(exc).strip() or type(exc).__name__


def _placeholder_info(model_name: str) -> EngineInfo:
    """What the API says about a predictor it has not heard from yet."""
    return EngineInfo(
        engine="remote",
        model=f"{model_name} (KServe predictor, not reached yet)",
        real_model=False,
        sample_rate=24000,
        languages=(),
    )

"""Runs a synchronous engine safely under asyncio.

An engine is a blocking generator that may hold a GPU for seconds. The runner puts a
fair queue in front of it (at most `concurrency` calls at once, first come first
served), runs each call in a worker thread of its own pool, and hands chunks to the
event loop through a small credit window: when the consumer (an HTTP stream, a
WebSocket) is slow, the engine thread waits instead of piling audio up in memory. An
engine in a process of its own (`EngineProcess`) needs no thread: the event loop reads
its chunks and asks for each next one, with the same window.

When the consumer stops (client gone, `aclose()`, task cancelled) or the deadline
passes, the call's cancel flag is set; the engine thread notices it at the next chunk,
closes the engine's generator (which releases what it holds) and only then gives its
slot back, so a cancelled call never overlaps with the one admitted after it.

Admission: at most `max_queued` calls wait for a slot. Beyond that a new call is refused
at once with `Overloaded` (503 with a Retry-After estimated from the queue and the
measured time of a call) instead of joining a queue that would outlast its client and
hold its memory meanwhile. Background calls (task renders) are never refused: their
queue is the task queue, and they only wait here for their turn.

Deadlines: a call that is still waiting for a slot when its deadline passes raises
`Busy` (503: the engine is saturated); a call whose engine work overruns it raises
`SynthesisFailed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Any

import numpy as np
import soxr

from .. import metrics
from ..audio.encode import as_float32, float_to_pcm16
from ..errors import (
    Busy,
    CosyVoiceError,
    EngineNotReady,
    Overloaded,
    SynthesisFailed,
    as_synthesis_error,
)
from ..ports import AudioChunk, Clip, EngineInfo, SynthesisRequest
from .base import Engine, EngineRequest
from .engine_process import EngineProcess
from .features import FeatureCache
from .slots import default_concurrency
from .warmup import time_to_first_chunk

logger = logging.getLogger(__name__)

ClipLoader = Callable[[], Awaitable[Clip]]

_CREDIT_POLL_SECONDS = 0.05
_LATENCY_SMOOTHING = 0.2  # weight of the newest sample in the first-chunk average
_CALL_SMOOTHING = 0.2  # weight of the newest call in the call-duration average


class EngineRunner:
    """One engine, its feature cache, and the admission rules of the calls to it."""

    def __init__(
        self,
        engine: Engine,
        *,
        concurrency: int | None,
        timeout: float,
        feature_cache: FeatureCache,
        buffered_chunks: int = 4,
        stop_grace: float = 30.0,
        max_queued: int | None = None,
        warm_up: bool = False,
    ) -> None:
        if concurrency is None:
            concurrency = default_concurrency(engine)  # SYNTHESIS_CONCURRENCY unset
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_queued is not None and max_queued < 0:
            raise ValueError("max_queued must not be negative")
        self._engine = engine
        self._timeout = timeout
        self._feature_cache = feature_cache
        self._buffered_chunks = max(buffered_chunks, 1)
        self._stop_grace = stop_grace
        self._slots = _FifoSlots(concurrency)
        self._calls: set[_Call] = set()
        self._numbers = itertools.count(1)
        self.concurrency = concurrency
        self.max_queued = max_queued  # None = no bound
        self._warm_up_at_start = warm_up
        self.ready = False
        self.load_error: str | None = None
        self.active = 0
        self.queued = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.stuck = 0  # engine threads that ignored a stop request (see `_abandon`)
        self.first_chunk_seconds: float | None = None
        self.call_seconds: float | None = None  # average time a call holds its slot
        self.refused = 0
        metrics.watch_engine(self)  # slots and queue, read when /metrics is scraped

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def info(self) -> EngineInfo:
        return self._engine.info

    @property
    def feature_cache(self) -> FeatureCache:
        return self._feature_cache

    async def start(self) -> None:
        """Load the engine in a thread; a failure is recorded, not raised, so the API
        still starts and reports the reason on /health and in 503 answers."""
        self.ready = False
        self.load_error = None
        try:
            await asyncio.to_thread(self._engine.load)
        except CosyVoiceError as exc:
            self.load_error = exc.detail
        except Exception as exc:
            logger.exception("engine %s failed to load", type(self._engine).__name__)
            self.load_error = f"{type(exc).__name__}: {exc}"
        else:
            if self._warm_up_at_start:
                await self.warm_up()
            self.ready = True
        if self.load_error:
            logger.error("engine not ready: %s", self.load_error)

    async def warm_up(self) -> None:
        """One short synthesis (see `warmup.py`); its time to first audio is the first
        `first_chunk_seconds`. A failure is logged, never raised: the engine loaded."""
        try:
            seconds = await asyncio.to_thread(time_to_first_chunk, self._engine)
        except Exception as exc:
            logger.warning("warm-up synthesis failed, latency unknown until a call: %s", exc)
            return
        self._record_first_chunk(seconds)
        logger.info("engine warmed up: first audio after %.0f ms", seconds * 1000)

    async def close(self) -> None:
        """Stop every running call and give the engine threads time to finish a chunk."""
        self.ready = False
        calls = list(self._calls)
        for call in calls:
            call.cancel.set()
        await asyncio.to_thread(_wait_all, calls, self._stop_grace)
        if isinstance(self._engine, EngineProcess):
            await asyncio.to_thread(self._engine.close)

    def synthesize(
        self, request: SynthesisRequest, clip_loader: ClipLoader
    ) -> AsyncGenerator[AudioChunk, None]:
        """The call's chunks. A full queue refuses here, before anything starts, so a
        stream can still answer 503; the generator checks again when it queues."""
        self._admit(request)
        return self._run(request, clip_loader)

    def retry_after(self) -> float:
        """Seconds until the queue ahead of a newcomer has likely drained (at least 1)."""
        per_call = self.call_seconds or 1.0
        ahead = self.queued + self.active
        return max(1.0, math.ceil(per_call * ahead / self.concurrency))

    def _admit(self, request: SynthesisRequest) -> None:
        if not self.ready:
            raise EngineNotReady(self.load_error or "the engine is still loading")
        if (
            request.background
            or self.max_queued is None
            or not self._slots.would_wait
            or self.queued < self.max_queued
        ):
            return
        self.refused += 1
        raise Overloaded(
            f"The server is busy: {self.queued} syntheses are waiting for the "
            f"{self.concurrency} engine slot(s) (MAX_QUEUED_SYNTHESES={self.max_queued}); "
            "try again later",
            self.retry_after(),
        )

    async def _run(
        self, request: SynthesisRequest, clip_loader: ClipLoader
    ) -> AsyncGenerator[AudioChunk, None]:
        self._admit(request)
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self._timeout

        self.queued += 1
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise Busy(
                f"no synthesis slot became free within {self._timeout:g} s; try again later"
            ) from None
        finally:
            self.queued -= 1

        self.active += 1
        admitted = loop.time()
        try:
            clip, features = await self._features(request, clip_loader, deadline)
        except BaseException:
            self._free_slot()
            self.failed += 1
            raise
        native_rate = self._engine.info.sample_rate
        rate = request.sample_rate or native_rate
        resampler = _ChunkResampler(native_rate, rate)
        engine_request = _engine_request(request, clip, features)
        call: _Call | None = None
        if isinstance(self._engine, EngineProcess):
            # The engine's own process does the work; its chunks come to this loop.
            chunks = self._from_child(
                self._engine, engine_request, resampler, rate, request.stream, deadline
            )
        else:
            # From here on the engine thread owns the slot: it is given back when the
            # thread has closed the engine's generator, not when the consumer leaves.
            # Resampled (and, for a stream, made 16-bit PCM) in the engine thread: the
            # event loop does no signal work.
            call = _Call(
                loop,
                self._buffered_chunks,
                next(self._numbers),
                resampler,
                rate,
                pcm16=request.stream,
            )
            self._calls.add(call)
            call.start(
                self._engine.synthesize,
                engine_request,
                lambda: _call_soon(loop, self._return_slot, call),
            )
            chunks = self._consume(call, deadline)
        produced = 0
        first = True
        try:
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    if first:
                        first = False
                        self._record_first_chunk(loop.time() - started)
                    produced += chunk.samples.size
                    yield chunk
        except (GeneratorExit, asyncio.CancelledError):
            self.cancelled += 1
            raise
        except BaseException:
            self.failed += 1
            raise
        else:
            self.completed += 1
            held = loop.time() - admitted
            self._record_call(held)
            info = self._engine.info
            metrics.record_real_time_factor(info.engine, info.model, held, produced / rate)
        finally:
            if call is not None:
                call.cancel.set()
                if not call.finished.is_set():
                    call.watchdog = loop.call_later(self._stop_grace, self._abandon, call)

    async def _features(
        self, request: SynthesisRequest, clip_loader: ClipLoader, deadline: float
    ) -> tuple[Clip, Any]:
        try:
            async with asyncio.timeout_at(deadline):
                return await self._feature_cache.get(request.voice, clip_loader)
        except TimeoutError:
            raise SynthesisFailed(
                f"preparing the voice took longer than the {self._timeout:g} s deadline"
            ) from None

    async def _from_child(
        self,
        engine: EngineProcess,
        engine_request: EngineRequest,
        resampler: _ChunkResampler,
        rate: int,
        pcm16: bool,
        deadline: float,
    ) -> AsyncGenerator[AudioChunk, None]:
        """A call to an engine in its own process, read on this loop, with no thread in
        between: the child renders up to `buffered_chunks` ahead of the consumer (one
        more is asked for as each is taken), as an engine thread would. The slot is given
        back once the child was told to stop: it reads that before any later call's
        start, so calls never overlap in it."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def deliver(kind: str, payload: Any) -> None:
            # Runs in the engine process's reader thread, which makes each chunk off the
            # loop (resampled, with a stream's PCM) as an engine thread makes its own.
            # A call's answers all come through that one thread, in order, so the
            # resampler's state is its alone; "tail" is what the resampler still held.
            try:
                if kind == "chunk":
                    payload = _chunk(resampler.push(payload), rate, pcm16=pcm16)
                elif kind == "end" and (tail := resampler.flush()).size:
                    _call_soon(loop, inbox.put_nowait, ("tail", _chunk(tail, rate, pcm16=pcm16)))
            except Exception as exc:
                kind, payload = "error", exc
            _call_soon(loop, inbox.put_nowait, (kind, payload))

        try:
            if engine.pid is None:  # its child died: a new one loads off the loop
                await asyncio.to_thread(engine.load)
            child_call = engine.open_call(
                engine_request,
                deliver,
                ahead=self._buffered_chunks,
                pcm16=pcm16 and resampler.passes_through,
            )
        except BaseException:
            self._free_slot()
            raise
        expiry = _expiry(inbox, deadline)
        try:
            while True:
                kind, payload = await self._next_answer(inbox)
                if kind == "error":
                    raise as_synthesis_error(payload)
                if kind == "end":
                    break
                if kind == "chunk":
                    child_call.request_next()
                if payload.samples.size:
                    yield payload
        finally:
            expiry.cancel()
            try:
                child_call.stop()
            finally:
                self._free_slot()

    async def _next_answer(self, inbox: asyncio.Queue[tuple[str, Any]]) -> tuple[str, Any]:
        """A call's next answer; SynthesisFailed once its `_expiry` has come (the answers
        that came before it are still taken, as a timed wait would have taken them)."""
        answer = await inbox.get()
        if answer[0] == "expired":
            raise SynthesisFailed(
                f"synthesis did not finish within the {self._timeout:g} s deadline"
            )
        return answer

    async def _consume(self, call: _Call, deadline: float) -> AsyncGenerator[AudioChunk, None]:
        expiry = _expiry(call.inbox, deadline)
        try:
            while True:
                kind, payload = await self._next_answer(call.inbox)
                if kind == "error":
                    raise as_synthesis_error(payload)
                if kind == "end":
                    return
                call.credits.release()
                yield payload
        finally:
            expiry.cancel()
            call.cancel.set()

    def _record_first_chunk(self, seconds: float) -> None:
        previous = self.first_chunk_seconds
        self.first_chunk_seconds = (
            seconds if previous is None else previous + _LATENCY_SMOOTHING * (seconds - previous)
        )

    def _record_call(self, seconds: float) -> None:
        previous = self.call_seconds
        self.call_seconds = (
            seconds if previous is None else previous + _CALL_SMOOTHING * (seconds - previous)
        )

    def _return_slot(self, call: _Call) -> None:
        """The engine thread has ended."""
        self._calls.discard(call)
        if call.watchdog is not None:
            call.watchdog.cancel()
        if call.abandoned:
            self.stuck -= 1  # its slot was given back already
            return
        self._free_slot()

    def _abandon(self, call: _Call) -> None:
        """An engine thread still running long after it was told to stop.

        Upstream CosyVoice can wait forever for an LLM thread that died. Such a thread
        cannot be killed; its slot is given back so the service keeps serving, and
        `stuck` counts it so health reporting can ask for a restart.
        """
        if call.finished.is_set() or call.abandoned:
            return
        call.abandoned = True
        self.stuck += 1
        logger.error(
            "engine call %d did not stop %g s after it was cancelled; giving its slot back",
            call.number,
            self._stop_grace,
        )
        self._free_slot()

    def _free_slot(self) -> None:
        self.active -= 1
        self._slots.release()


class _Call:
    """The two ends of one synthesis: the engine thread and the event-loop consumer."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        window: int,
        number: int,
        resampler: _ChunkResampler,
        sample_rate: int,
        *,
        pcm16: bool,
    ) -> None:
        self._loop = loop
        self.number = number
        self.inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.credits = threading.Semaphore(window)
        self.cancel = threading.Event()
        self.finished = threading.Event()
        self.abandoned = False
        self.watchdog: asyncio.TimerHandle | None = None
        self.resampler = resampler
        self.sample_rate = sample_rate  # after resampling
        self.pcm16 = pcm16  # streams send PCM; whole renders join the float samples

    def start(
        self,
        synthesize: Callable[[EngineRequest], Iterator[np.ndarray]],
        request: EngineRequest,
        on_exit: Callable[[], None],
    ) -> None:
        _ENGINE_THREADS.run(lambda: self._main(synthesize, request, on_exit))

    def _main(
        self,
        synthesize: Callable[[EngineRequest], Iterator[np.ndarray]],
        request: EngineRequest,
        on_exit: Callable[[], None],
    ) -> None:
        try:
            self.produce(synthesize, request)
        finally:
            self.finished.set()
            on_exit()

    def produce(
        self,
        synthesize: Callable[[EngineRequest], Iterator[np.ndarray]],
        request: EngineRequest,
    ) -> None:
        """Runs in the worker thread: pull chunks while the consumer wants them."""
        chunks: Iterator[np.ndarray] | None = None
        try:
            chunks = synthesize(request)
            for samples in chunks:
                audio = self.resampler.push(samples)
                if audio.size == 0:
                    continue
                if not self._wait_for_credit():
                    return
                self._post_chunk(audio)
            tail = self.resampler.flush()
            if tail.size:
                if not self._wait_for_credit():
                    return
                self._post_chunk(tail)
            self._post(("end", None))
        except BaseException as exc:
            self._post(("error", exc))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                try:
                    close()  # the engine's `finally` blocks run here, in this thread
                except Exception:
                    logger.exception("engine generator failed to close")

    def _wait_for_credit(self) -> bool:
        while not self.credits.acquire(timeout=_CREDIT_POLL_SECONDS):
            if self.cancel.is_set():
                return False
        if self.cancel.is_set():
            return False
        return True

    def _post_chunk(self, audio: np.ndarray) -> None:
        self._post(("chunk", _chunk(audio, self.sample_rate, pcm16=self.pcm16)))

    def _post(self, item: tuple[str, Any]) -> None:
        if not self.cancel.is_set():
            _call_soon(self._loop, self.inbox.put_nowait, item)


class _FifoSlots:
    """A counting semaphore that hands a freed slot to the longest waiter directly.

    Handing over (instead of incrementing and waking) means a newcomer can never take a
    slot ahead of someone already queued.
    """

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def would_wait(self) -> bool:
        """True when a newcomer could not take a slot at once."""
        return self._free <= 0 or bool(self._waiters)

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot reached us as we gave up: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class _ChunkResampler:
    """Streaming resampler: one filter state across chunks, so seams stay inaudible."""

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self._stream = (
            None
            if from_rate == to_rate
            else soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32", quality="HQ")
        )

    @property
    def passes_through(self) -> bool:
        """True when the rates are the same: the audio leaves as it came."""
        return self._stream is None

    def push(self, samples: np.ndarray) -> np.ndarray:
        """The audio at the new rate, float32; 16-bit PCM that needs no resampling (an
        engine process makes it for a stream) passes as it is."""
        if self._stream is None and samples.dtype == np.int16:
            return samples.reshape(-1)
        audio = np.ascontiguousarray(as_float32(samples))
        if self._stream is None:
            return audio
        resampled: np.ndarray = self._stream.resample_chunk(audio, last=False)
        return resampled

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        rest: np.ndarray = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        return rest


def _engine_request(request: SynthesisRequest, clip: Clip, features: Any) -> EngineRequest:
    return EngineRequest(
        text=request.text,
        mode=request.mode,
        clip=clip,
        features=features,
        voice_key=request.voice.sha256,
        prompt_text=request.voice.prompt_text,
        instruct_text=request.instruct_text,
        speed=request.speed,
        language=request.language,
        stream=request.stream,
    )


def _chunk(audio: np.ndarray, sample_rate: int, *, pcm16: bool) -> AudioChunk:
    """A chunk for the consumer; a stream's 16-bit PCM is made here, once, where the
    chunk is made (in the engine thread, or the engine process's reader thread), unless
    the audio came as 16-bit PCM already."""
    if audio.dtype == np.int16:
        return AudioChunk(samples=as_float32(audio), sample_rate=sample_rate, pcm16=audio)
    return AudioChunk(
        samples=audio, sample_rate=sample_rate, pcm16=float_to_pcm16(audio) if pcm16 else None
    )


def _expiry(inbox: asyncio.Queue[tuple[str, Any]], deadline: float) -> asyncio.TimerHandle:
    """Puts ("expired", None) in a call's inbox at its deadline (loop time). One timer per
    call, where a timeout around every wait for an answer made and cancelled a timer and
    a context per answer (7 µs under uvloop even when the answer was already there)."""
    return asyncio.get_running_loop().call_at(deadline, inbox.put_nowait, ("expired", None))


def _wait_all(calls: list[_Call], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for call in calls:
        call.finished.wait(max(deadline - time.monotonic(), 0.0))


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    # The loop may be closed when a worker thread finishes during shutdown.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


class _EngineThreads:
    """Engine threads, reused from call to call.

    Starting a thread blocks the event loop until the new thread runs, which on a busy
    machine costs as much as a short synthesis; a finished thread waits for the next call
    instead. A thread stuck inside engine code never finishes its job, so it is never
    handed another one: later calls get a fresh thread rather than queueing behind it.
    """

    def __init__(self) -> None:
        self._idle: list[queue.SimpleQueue[Callable[[], None]]] = []
        self._lock = threading.Lock()
        self._count = 0

    def run(self, job: Callable[[], None]) -> None:
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
            if inbox is None:
                self._count += 1
                number = self._count
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(
                target=self._serve, args=(inbox,), name=f"engine-{number}", daemon=True
            ).start()
        inbox.put(job)

    def _serve(self, inbox: queue.SimpleQueue[Callable[[], None]]) -> None:
        while True:
            job = inbox.get()
            try:
                job()
            except BaseException:  # a job reports its own errors; the thread lives on
                logger.exception("engine thread job failed")
            with self._lock:
                self._idle.append(inbox)


_ENGINE_THREADS = _EngineThreads()

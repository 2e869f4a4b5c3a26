"""EngineRunner: admission, ordering, backpressure, cancellation and deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from core.domain import SynthesisMode
from core.engines.base import EngineRequest
from core.engines.features import FeatureCache
from core.engines.runner import EngineRunner
from core.errors import Busy, EngineNotReady, InvalidInput, SynthesisFailed
from core.ports import AudioChunk, Clip, EngineInfo, SynthesisRequest, VoicePrompt

RATE = 24000
CHUNK = np.full(2400, 0.25, dtype=np.float32)  # 0.1 s


class FakeEngine:
    """A controllable engine: chunks on demand, with a record of what happened."""

    def __init__(
        self,
        *,
        chunks: int = 3,
        delay: float = 0.0,
        fail_with: Exception | None = None,
        load_error: Exception | None = None,
    ) -> None:
        self.chunks = chunks
        self.delay = delay
        self.fail_with = fail_with
        self.load_error = load_error
        self.produced = 0
        self.started: list[str] = []
        self.closed = threading.Event()
        self.finished = threading.Event()
        self.requests: list[EngineRequest] = []
        self._lock = threading.Lock()
        self.running = 0
        self.most_running = 0
        self.gate: threading.Event | None = None  # when set, the first chunk waits on it

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            engine="fake", model="fake", real_model=False, sample_rate=RATE, languages=("en",)
        )

    def load(self) -> None:
        if self.load_error:
            raise self.load_error

    def extract_features(self, clip: Clip, prompt_text: str | None) -> Any:
        return {"prompt_text": prompt_text}

    def serialize_features(self, features: Any) -> bytes:
        return repr(features).encode()

    def deserialize_features(self, data: bytes) -> Any:
        return {"restored": data.decode()}

    def synthesize(self, request: EngineRequest) -> Iterator[np.ndarray]:
        with self._lock:
            self.requests.append(request)
            self.started.append(request.text)
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            if self.gate is not None:
                self.gate.wait(5)
            for _ in range(self.chunks):
                if self.delay:
                    time.sleep(self.delay)
                if self.fail_with:
                    raise self.fail_with
                self.produced += 1
                yield CHUNK
            self.finished.set()
        except GeneratorExit:
            self.closed.set()
            raise
        finally:
            with self._lock:
                self.running -= 1


def voice(sha: str = "a" * 64, prompt_text: str | None = "hello") -> VoicePrompt:
    clip = Clip(samples=np.zeros(16000, dtype=np.float32), sample_rate=16000)
    return VoicePrompt(sha256=sha, clip=clip, prompt_text=prompt_text)


def request(text: str = "Hello there.", **changes: Any) -> SynthesisRequest:
    return SynthesisRequest(text=text, voice=changes.pop("voice", voice()), **changes)


async def no_clip() -> Clip:
    raise AssertionError("inline clips never need loading")


async def make_runner(
    engine: FakeEngine, *, concurrency: int = 2, deadline: float = 5.0, **options: Any
) -> EngineRunner:
    cache = FeatureCache(engine, "fake", None, capacity=8)
    runner = EngineRunner(
        engine, concurrency=concurrency, timeout=deadline, feature_cache=cache, **options
    )
    await runner.start()
    return runner


async def collect(runner: EngineRunner, req: SynthesisRequest) -> list[AudioChunk]:
    return [chunk async for chunk in runner.synthesize(req, no_clip)]


async def wait_until(predicate: Any, seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_chunks_arrive_at_the_engine_rate_and_the_call_is_counted() -> None:
    runner = await make_runner(FakeEngine(chunks=3))
    chunks = await collect(runner, request())
    assert [c.sample_rate for c in chunks] == [RATE] * 3
    assert all(c.samples.dtype == np.float32 for c in chunks)
    assert sum(len(c.samples) for c in chunks) == 3 * len(CHUNK)
    assert runner.completed == 1
    assert runner.first_chunk_seconds is not None and runner.first_chunk_seconds >= 0
    await wait_until(lambda: runner.active == 0)
    await runner.close()


async def test_requested_sample_rate_is_honoured_without_losing_audio() -> None:
    runner = await make_runner(FakeEngine(chunks=5))
    chunks = await collect(runner, request(sample_rate=16000))
    assert {c.sample_rate for c in chunks} == {16000}
    total = sum(len(c.samples) for c in chunks)
    assert abs(total - 5 * len(CHUNK) * 16000 / RATE) <= 2
    await runner.close()


async def test_engine_request_carries_the_voice_and_the_options() -> None:
    engine = FakeEngine(chunks=1)
    runner = await make_runner(engine)
    await collect(
        runner,
        request(
            "Speak.",
            mode=SynthesisMode.instruct,
            instruct_text="slowly",
            speed=1.5,
            language="en",
        ),
    )
    sent = engine.requests[0]
    assert sent.voice_key == "a" * 64
    assert sent.prompt_text == "hello"
    assert sent.instruct_text == "slowly"
    assert sent.mode is SynthesisMode.instruct
    assert sent.speed == 1.5 and sent.language == "en"
    assert sent.features == {"prompt_text": "hello"}
    assert sent.clip.sample_rate == 16000
    await runner.close()


async def test_no_more_than_concurrency_calls_run_at_once() -> None:
    engine = FakeEngine(chunks=3, delay=0.03)
    runner = await make_runner(engine, concurrency=2)
    results = await asyncio.gather(*(collect(runner, request(f"n{i}")) for i in range(6)))
    assert all(len(chunks) == 3 for chunks in results)
    assert engine.most_running == 2
    assert runner.completed == 6
    await runner.close()


async def test_waiting_calls_are_served_first_come_first_served() -> None:
    engine = FakeEngine(chunks=1)
    engine.gate = threading.Event()
    runner = await make_runner(engine, concurrency=1)
    first = asyncio.create_task(collect(runner, request("first")))
    await wait_until(lambda: engine.started == ["first"])
    waiting = []
    for name in ("second", "third", "fourth", "fifth"):
        waiting.append(asyncio.create_task(collect(runner, request(name))))
        await asyncio.sleep(0.01)  # a definite arrival order
    assert runner.queued == 4
    engine.gate.set()
    await asyncio.gather(first, *waiting)
    assert engine.started == ["first", "second", "third", "fourth", "fifth"]
    assert runner.queued == 0
    await runner.close()


async def test_a_slow_consumer_pauses_the_engine() -> None:
    engine = FakeEngine(chunks=200)
    runner = await make_runner(engine, buffered_chunks=3)
    stream = runner.synthesize(request(), no_clip)
    await anext(stream)
    await asyncio.sleep(0.3)  # the consumer dawdles; the engine must not run ahead
    assert engine.produced <= 1 + 3 + 1
    await stream.aclose()
    await runner.close()


async def test_closing_the_stream_stops_and_closes_the_engine_generator() -> None:
    engine = FakeEngine(chunks=1000, delay=0.01)
    runner = await make_runner(engine, concurrency=1)
    stream = runner.synthesize(request(), no_clip)
    await anext(stream)
    await stream.aclose()
    assert await asyncio.to_thread(engine.closed.wait, 1.0), "engine generator not closed"
    assert not engine.finished.is_set()
    assert engine.produced < 1000
    # The slot comes back only once the engine thread has let go of it.
    await wait_until(lambda: runner.active == 0)
    assert runner.cancelled == 1
    engine.chunks, engine.delay = 2, 0.0
    assert len(await collect(runner, request())) == 2  # the freed slot serves the next call
    await runner.close()


async def test_a_cancelled_consumer_task_stops_the_engine() -> None:
    engine = FakeEngine(chunks=1000, delay=0.01)
    runner = await make_runner(engine, concurrency=1)

    async def consume() -> None:
        async for _ in runner.synthesize(request(), no_clip):
            pass

    task = asyncio.create_task(consume())
    await wait_until(lambda: engine.produced >= 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(engine.closed.wait, 1.0), "engine generator not closed"
    await wait_until(lambda: runner.active == 0)
    await runner.close()


async def test_an_engine_that_overruns_the_deadline_fails_and_is_stopped() -> None:
    engine = FakeEngine(chunks=100, delay=0.05)
    runner = await make_runner(engine, deadline=0.3)
    with pytest.raises(SynthesisFailed, match="deadline"):
        await collect(runner, request())
    assert await asyncio.to_thread(engine.closed.wait, 1.0)
    await runner.close()


async def test_a_call_that_cannot_get_a_slot_in_time_is_busy() -> None:
    engine = FakeEngine(chunks=1)
    engine.gate = threading.Event()
    runner = await make_runner(engine, concurrency=1, deadline=0.3)
    holder = asyncio.create_task(collect(runner, request("holder")))
    await wait_until(lambda: engine.started == ["holder"])
    with pytest.raises(Busy):
        await collect(runner, request("late"))
    assert runner.queued == 0
    engine.gate.set()
    with pytest.raises(SynthesisFailed):  # the holder overran the deadline meanwhile
        await holder
    await runner.close()


async def test_an_engine_thread_that_ignores_the_stop_loses_its_slot() -> None:
    engine = FakeEngine(chunks=1)
    hang = threading.Event()
    engine.gate = hang  # the engine blocks inside a chunk, deaf to the cancel flag
    runner = await make_runner(engine, concurrency=1, deadline=0.2, stop_grace=0.2)
    with pytest.raises(SynthesisFailed, match="deadline"):
        await collect(runner, request("hangs"))
    await wait_until(lambda: runner.stuck == 1)
    assert runner.active == 0
    engine.gate = None
    assert len(await collect(runner, request("next"))) == 1  # served despite the hang
    hang.set()  # the stuck thread ends at last: it is no longer counted
    await wait_until(lambda: runner.stuck == 0)
    assert runner.active == 0
    await runner.close()


async def test_engine_errors_become_synthesis_failed_with_the_engine_message() -> None:
    runner = await make_runner(FakeEngine(fail_with=RuntimeError("CUDA out of memory")))
    with pytest.raises(SynthesisFailed, match="CUDA out of memory"):
        await collect(runner, request())
    assert runner.failed == 1
    await wait_until(lambda: runner.active == 0)
    await runner.close()


async def test_platform_errors_from_the_engine_pass_through() -> None:
    runner = await make_runner(FakeEngine(fail_with=InvalidInput("nothing to speak")))
    with pytest.raises(InvalidInput, match="nothing to speak"):
        await collect(runner, request())
    await runner.close()


async def test_a_failed_load_is_reported_and_refuses_calls() -> None:
    engine = FakeEngine(load_error=EngineNotReady("weights missing in /models"))
    runner = await make_runner(engine)
    assert runner.ready is False
    assert runner.load_error == "weights missing in /models"
    with pytest.raises(EngineNotReady, match="weights missing"):
        await collect(runner, request())
    await runner.close()


async def test_an_unexpected_load_error_is_recorded_with_its_type() -> None:
    runner = await make_runner(FakeEngine(load_error=OSError("disk gone")))
    assert runner.ready is False
    assert runner.load_error == "OSError: disk gone"
    await runner.close()


async def test_features_are_extracted_once_per_voice() -> None:
    engine = FakeEngine(chunks=1)
    runner = await make_runner(engine)
    await collect(runner, request())
    await collect(runner, request())
    assert runner.feature_cache.extractions == 1
    assert runner.feature_cache.hits == 1
    await runner.close()

"""EngineProcess: an engine in a child process of its own, and the runner that reads it.

The children here are real processes: the espeak engine, and `ScriptedEngine` below,
whose text says what to do ("count 3", "slow /path/marker", "invalid", "crash").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.audio.encode import as_float32
from core.domain import SynthesisMode
from core.engines.base import EngineRequest, FinalChunk
from core.engines.channel import Channel
from core.engines.engine_child import NICENESS, serve
from core.engines.engine_process import EngineProcess
from core.engines.espeak import EspeakEngine
from core.engines.features import FeatureCache
from core.engines.runner import EngineRunner
from core.errors import EngineNotReady, InvalidInput, SynthesisFailed
from core.ports import Clip, EngineInfo, SynthesisRequest, VoicePrompt
from tests.e2e.watch import gone

RATE = 1000  # ScriptedEngine's: a chunk of 100 samples is 0.1 s
CLIP = Clip(samples=np.zeros(16000, dtype=np.float32), sample_rate=16000)


STEP = 1 / 1024  # a chunk's samples are its index times this (heard again through 16 bits)


def index_of(samples: np.ndarray) -> int:
    return round(float(samples[0]) / STEP)


class ScriptedEngine:
    """Does what its request's text says: "count N" yields N chunks of 0.1 s whose
    samples tell their index (`index_of`; "final N" marks the last one as the last); "progress
    PATH" yields 50 such chunks, writing each one's index to PATH as it is made; "slow
    PATH" yields a chunk every 20 ms until closed, and then writes PATH; "invalid" and
    "crash" fail."""

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            engine="scripted", model="scripted", real_model=False, sample_rate=RATE, languages=()
        )

    def load(self) -> None:
        pass

    def extract_features(self, clip: Clip, prompt_text: str | None) -> Any:
        return {"seconds": clip.duration}

    def serialize_features(self, features: Any) -> bytes:
        return repr(features).encode()

    def deserialize_features(self, data: bytes) -> Any:
        return data

    def synthesize(self, request: EngineRequest) -> Iterator[np.ndarray]:
        command, _, argument = request.text.partition(" ")
        if command == "count":
            for index in range(int(argument)):
                yield np.full(100, index * STEP, dtype=np.float32)
        elif command == "final":  # as "count", its last chunk marked as the last
            for index in range(int(argument)):
                samples = np.full(100, index * STEP, dtype=np.float32)
                yield samples.view(FinalChunk) if index == int(argument) - 1 else samples
        elif command == "progress":
            for index in range(50):
                Path(argument).write_text(str(index))
                yield np.full(100, index * STEP, dtype=np.float32)
        elif command == "slow":
            try:
                while True:
                    time.sleep(0.02)
                    yield np.zeros(100, dtype=np.float32)
            finally:
                Path(argument).write_text("closed")
        elif command == "invalid":
            raise InvalidInput("the text has nothing that can be spoken")
        else:
            raise RuntimeError("the model fell over")


class UnloadableEngine(ScriptedEngine):
    def load(self) -> None:
        raise EngineNotReady("no weights in /models/nowhere")


def engine_request(text: str, features: Any = None) -> EngineRequest:
    return EngineRequest(
        text=text,
        mode=SynthesisMode.cross_lingual,
        clip=CLIP,
        features=features if features is not None else {"seconds": 1.0},
        voice_key="v",
        language="en",
    )


@pytest.fixture(scope="module")
def scripted() -> Iterator[EngineProcess]:
    engine = EngineProcess(ScriptedEngine)
    engine.load()
    yield engine
    engine.close()


# --- the child as an engine ----------------------------------------------------------


def test_the_child_speaks_exactly_as_the_engine_in_this_process() -> None:
    local = EspeakEngine()
    local.load()
    child = EngineProcess(EspeakEngine)
    child.load()
    try:
        features = local.extract_features(CLIP, None)
        request = engine_request("Hello from the child. It has a second sentence.", features)
        here = list(local.synthesize(request))
        there = list(child.synthesize(request))
        assert len(there) == len(here) == 2  # a chunk per sentence
        for ours, theirs in zip(here, there, strict=True):
            assert theirs.dtype == np.float32
            np.testing.assert_array_equal(ours, theirs)
        assert child.info.engine == "espeak" and child.info.sample_rate == 22050
        assert child.pid is not None and child.pid != os.getpid()
    finally:
        child.close()


def test_concurrent_calls_each_get_their_own_audio(scripted: EngineProcess) -> None:
    results: dict[int, list[np.ndarray]] = {}

    def call(n: int) -> None:
        results[n] = list(scripted.synthesize(engine_request(f"count {n}")))

    threads = [threading.Thread(target=call, args=(n,)) for n in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    for n in range(1, 9):
        assert [index_of(chunk) for chunk in results[n]] == list(range(n))
        assert all(len(chunk) == 100 for chunk in results[n])


def test_the_platforms_errors_keep_their_class_and_others_become_synthesis_failed(
    scripted: EngineProcess,
) -> None:
    with pytest.raises(InvalidInput, match="nothing that can be spoken"):
        list(scripted.synthesize(engine_request("invalid")))
    with pytest.raises(SynthesisFailed, match="synthesis failed: the model fell over"):
        list(scripted.synthesize(engine_request("crash")))
    assert [len(c) for c in scripted.synthesize(engine_request("count 2"))] == [100, 100]


def test_a_child_that_cannot_load_says_why() -> None:
    engine = EngineProcess(UnloadableEngine)
    with pytest.raises(EngineNotReady, match="no weights in /models/nowhere"):
        engine.load()
    assert engine.pid is None


def test_closing_a_call_midway_closes_the_engines_generator_in_the_child(
    scripted: EngineProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "closed"
    chunks = scripted.synthesize(engine_request(f"slow {marker}"))
    next(chunks)
    next(chunks)
    chunks.close()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.read_text() == "closed"
    assert len(list(scripted.synthesize(engine_request("count 3")))) == 3  # still serving


def test_a_killed_child_fails_the_calls_in_flight_and_the_next_call_starts_another(
    tmp_path: Path,
) -> None:
    engine = EngineProcess(ScriptedEngine)
    engine.load()
    try:
        first = engine.pid
        assert first is not None
        chunks = engine.synthesize(engine_request(f"slow {tmp_path / 'marker'}"))
        next(chunks)
        os.kill(first, signal.SIGKILL)
        with pytest.raises(SynthesisFailed, match="engine process ended"):
            for _ in range(1000):  # chunks already on their way may still come
                next(chunks)
        assert len(list(engine.synthesize(engine_request("count 2")))) == 2
        assert engine.pid not in (None, first)
    finally:
        engine.close()


def test_the_child_leaves_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import time
                from core.engines.engine_process import EngineProcess
                from core.engines.espeak import EspeakEngine
                engine = EngineProcess(EspeakEngine)
                engine.load()
                print(engine.pid, flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    with parent:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.kill()  # no chance to say goodbye
        parent.wait(10)
        assert gone(child, 10.0), "the engine process outlived its parent"


def test_the_child_outlasts_the_signals_meant_for_its_server(scripted: EngineProcess) -> None:
    pid = scripted.pid
    assert pid is not None
    os.kill(pid, signal.SIGTERM)  # a service manager stopping every process of the service
    os.kill(pid, signal.SIGINT)  # Ctrl-C in the terminal of `make serve`
    time.sleep(0.2)
    assert len(list(scripted.synthesize(engine_request("count 2")))) == 2
    assert scripted.pid == pid


def test_close_stops_the_child() -> None:
    engine = EngineProcess(ScriptedEngine)
    engine.load()
    pid = engine.pid
    assert pid is not None
    engine.close()
    assert gone(pid, seconds=1.0)
    assert engine.pid is None


def test_the_child_yields_the_cpu_to_its_server(scripted: EngineProcess) -> None:
    """Its niceness is NICENESS above the server's (at most 19, the lowest priority)."""
    assert scripted.pid is not None
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, scripted.pid) == min(ours + NICENESS, 19)


# --- the child's turns -----------------------------------------------------------------


@contextlib.contextmanager
def serving() -> Iterator[Channel]:
    """The parent's end of a socket pair whose other end the child's loop serves (in a
    thread here, to speak its protocol directly), once it has said it is ready."""
    ours, theirs = socket.socketpair()
    parent, child = Channel(ours), Channel(theirs)
    server = threading.Thread(target=serve, args=(child, ScriptedEngine), daemon=True)
    server.start()
    try:
        assert parent.receive()[0][0] == "ready"
        yield parent
    finally:
        parent.close()
        server.join(5)
        child.close()


def test_a_new_call_goes_before_a_call_with_audio_in_hand() -> None:
    """Earliest deadline first: a call that already has 0.3 s of audio waits while a
    new one gets its first three chunks (round robin would alternate them)."""
    with serving() as parent:
        parent.send(("start", 1, engine_request("count 6"), 3, False))
        assert [receive(parent) for _ in range(3)] == [(1, 0), (1, 1), (1, 2)]
        parent.send(("start", 2, engine_request("count 3"), 3, False))
        for _ in range(3):
            parent.send(("next", 1))
        order = [receive(parent) for _ in range(6)]
        assert order == [(2, 0), (2, 1), (2, 2), (1, 3), (1, 4), (1, 5)]


def test_a_call_ends_with_the_chunk_its_engine_marks_as_the_last() -> None:
    """Unmarked, a call's end is found when it is asked for one more chunk (at its next
    turn); after a FinalChunk the end follows at once, unasked."""
    with serving() as parent:
        parent.send(("start", 1, engine_request("count 2"), 2, False))
        assert [receive(parent) for _ in range(2)] == [(1, 0), (1, 1)]
        assert not parent.poll(0.3)
        parent.send(("next", 1))
        assert parent.receive() == (("end", 1), None)

        parent.send(("start", 2, engine_request("final 2"), 2, False))
        assert [receive(parent) for _ in range(2)] == [(2, 0), (2, 1)]
        assert parent.poll(5) and parent.receive() == (("end", 2), None)


def test_a_call_that_asks_for_16_bit_pcm_gets_it_from_the_child() -> None:
    """Half the bytes through the socket: the child converts, the parent reads int16."""
    with serving() as parent:
        parent.send(("start", 1, engine_request("count 3"), 3, True))
        for index in range(3):
            (kind, number), samples = parent.receive()
            assert (kind, number) == ("chunk", 1)
            assert samples is not None and samples.dtype == np.int16 and len(samples) == 100
            assert index_of(as_float32(samples)) == index


def receive(channel: Channel) -> tuple[int, int]:
    """The next chunk's call and index (ScriptedEngine's samples tell it)."""
    (kind, number), samples = channel.receive()
    assert kind == "chunk" and samples is not None
    return number, index_of(samples)


# --- the runner reading the child on its event loop -------------------------------------


def synthesis_request(text: str) -> SynthesisRequest:
    return SynthesisRequest(text=text, voice=VoicePrompt(sha256="a" * 64, clip=CLIP))


async def no_clip() -> Clip:
    raise AssertionError("inline clips never need loading")


async def runner_for(engine: EngineProcess, **options: Any) -> EngineRunner:
    cache = FeatureCache(engine, "scripted", None, capacity=8)
    runner = EngineRunner(
        engine,
        concurrency=options.pop("concurrency", 2),
        timeout=options.pop("deadline", 5.0),
        feature_cache=cache,
        **options,
    )
    await runner.start()
    return runner


async def test_the_runner_streams_the_childs_chunks_as_pcm() -> None:
    engine = EngineProcess(ScriptedEngine)
    runner = await runner_for(engine)
    assert runner.ready and engine.pid is not None
    chunks = [c async for c in runner.synthesize(synthesis_request("count 4"), no_clip)]
    assert [index_of(c.samples) for c in chunks] == [0, 1, 2, 3]
    assert all(c.pcm16 is not None and c.pcm16.dtype == np.int16 for c in chunks)
    assert runner.completed == 1 and runner.active == 0
    assert runner.first_chunk_seconds is not None
    pid = engine.pid
    await runner.close()
    assert await asyncio.to_thread(gone, pid, 2.0)


async def test_the_runner_resamples_the_childs_chunks_to_the_rate_asked_for() -> None:
    """At another rate the child sends float32, and the runner resamples with one filter
    state across the chunks (the PCM made after it)."""
    engine = EngineProcess(ScriptedEngine)
    runner = await runner_for(engine)
    request = replace(synthesis_request("count 4"), sample_rate=RATE * 2)
    chunks = [c async for c in runner.synthesize(request, no_clip)]
    assert all(c.sample_rate == RATE * 2 and c.pcm16 is not None for c in chunks)
    assert abs(sum(len(c.samples) for c in chunks) - 800) <= 2  # 0.4 s at twice the rate
    assert all(len(c.pcm16) == len(c.samples) for c in chunks if c.pcm16 is not None)
    await runner.close()


async def test_a_consumer_that_leaves_frees_its_slot_and_stops_the_call(tmp_path: Path) -> None:
    engine = EngineProcess(ScriptedEngine)
    runner = await runner_for(engine, concurrency=1)
    marker = tmp_path / "closed"
    stream = runner.synthesize(synthesis_request(f"slow {marker}"), no_clip)
    await anext(stream)
    await stream.aclose()
    assert runner.active == 0 and runner.cancelled == 1
    chunks = [c async for c in runner.synthesize(synthesis_request("count 2"), no_clip)]
    assert len(chunks) == 2  # the slot served the next call
    assert marker.read_text() == "closed"  # read by the child before that call's start
    await runner.close()


async def test_a_call_past_its_deadline_fails_and_is_stopped(tmp_path: Path) -> None:
    engine = EngineProcess(ScriptedEngine)
    runner = await runner_for(engine, deadline=0.3, buffered_chunks=1)
    marker = tmp_path / "closed"
    with pytest.raises(SynthesisFailed, match="deadline"):
        async for _ in runner.synthesize(synthesis_request(f"slow {marker}"), no_clip):
            pass
    assert runner.failed == 1 and runner.active == 0
    await runner.close()
    assert marker.read_text() == "closed"


async def test_a_slow_consumer_holds_the_child_to_its_window(tmp_path: Path) -> None:
    engine = EngineProcess(ScriptedEngine)
    runner = await runner_for(engine, buffered_chunks=2)
    progress = tmp_path / "progress"
    stream = runner.synthesize(synthesis_request(f"progress {progress}"), no_clip)
    first = await anext(stream)
    await asyncio.sleep(0.3)  # the consumer dawdles; the child must not run ahead
    assert int(progress.read_text()) <= 2  # the chunk taken and the two of the window
    rest = [c async for c in stream]
    assert [index_of(c.samples) for c in [first, *rest]] == list(range(50))
    await runner.close()


async def test_the_runner_starts_a_new_child_when_one_died() -> None:
    engine = EngineProcess(ScriptedEngine)
    runner = await runner_for(engine)
    first = engine.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert await asyncio.to_thread(gone, first, 5.0)
    await asyncio.sleep(0.2)  # the reader notices the end of the socket
    chunks = [c async for c in runner.synthesize(synthesis_request("count 3"), no_clip)]
    assert len(chunks) == 3
    assert engine.pid not in (None, first)
    await runner.close()

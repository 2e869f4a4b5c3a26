"""The warm-up after an engine loads: a measured time to first audio before any call."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from core.engines.base import EngineRequest
from core.engines.espeak import EspeakEngine
from core.engines.features import FeatureCache
from core.engines.runner import EngineRunner
from core.engines.warmup import time_to_first_chunk, warm_up_clip
from core.ports import Clip, EngineInfo
from core.services.streams import StreamRegistry


class BrokenEngine:
    """Loads, but cannot synthesize anything."""

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            engine="broken", model="broken", real_model=False, sample_rate=16000, languages=()
        )

    def load(self) -> None:
        return None

    def extract_features(self, clip: Clip, prompt_text: str | None) -> Any:
        return None

    def serialize_features(self, features: Any) -> bytes:
        return b""

    def deserialize_features(self, data: bytes) -> Any:
        return None

    def synthesize(self, request: EngineRequest) -> Iterator[np.ndarray]:
        raise RuntimeError("no voice today")
        yield np.zeros(0, np.float32)


def runner_for(engine: Any, *, warm_up: bool) -> EngineRunner:
    cache = FeatureCache(engine, engine.info.model, None, capacity=4)
    return EngineRunner(engine, concurrency=1, timeout=30, feature_cache=cache, warm_up=warm_up)


def test_the_warm_up_voice_is_two_seconds_of_audible_signal() -> None:
    clip = warm_up_clip()
    assert clip.duration == 2.0
    assert 0.05 < float(np.sqrt(np.mean(clip.samples**2))) < 0.5


def test_the_development_engine_measures_its_first_chunk() -> None:
    engine = EspeakEngine()
    engine.load()
    assert 0 < time_to_first_chunk(engine) < 10


async def test_a_warmed_runner_knows_its_latency_before_any_call() -> None:
    runner = runner_for(EspeakEngine(), warm_up=True)
    await runner.start()
    assert runner.ready
    assert runner.first_chunk_seconds is not None and 0 < runner.first_chunk_seconds < 10
    assert runner.completed == 0  # the warm-up is no client's call
    await runner.close()


async def test_without_warm_up_nothing_is_measured_until_a_call() -> None:
    runner = runner_for(EspeakEngine(), warm_up=False)
    await runner.start()
    assert runner.first_chunk_seconds is None
    await runner.close()


async def test_a_failed_warm_up_leaves_the_engine_ready_and_the_latency_unknown() -> None:
    runner = runner_for(BrokenEngine(), warm_up=True)
    await runner.start()
    assert runner.ready and runner.load_error is None
    assert runner.first_chunk_seconds is None
    await runner.close()


def test_reported_latency_is_the_engines_until_streams_ran() -> None:
    registry = StreamRegistry(4)
    assert registry.reported_latency_ms(None) is None
    assert registry.reported_latency_ms(0.25) == 250.0
    registry.record_first_audio(0.04)
    registry.record_first_audio(0.06)
    assert registry.reported_latency_ms(0.25) == 50.0

"""An engine that does no work: a short, quiet tone per sentence, at once.

It measures the plumbing (queues, encoders, HTTP streaming, storage) without any
synthesis cost, so a benchmark shows what the platform itself adds per request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..ports import Clip, EngineInfo
from .base import EngineRequest
from .text import SUPPORTED_LANGUAGES, split_sentences

_SAMPLE_RATE = 24000
_TONE_HZ = 220.0
_LEVEL = 0.05  # about -29 dBFS: audible, never loud
_SECONDS_PER_CHAR = 0.04
_MIN_SECONDS, _MAX_SECONDS = 0.2, 3.0


class NoopEngine:
    def __init__(self) -> None:
        self._info = EngineInfo(
            engine="noop",
            model="noop (plumbing benchmark, no speech)",
            real_model=False,
            sample_rate=_SAMPLE_RATE,
            languages=SUPPORTED_LANGUAGES,
            instruct_support=True,
        )

    @property
    def info(self) -> EngineInfo:
        return self._info

    def load(self) -> None:
        return None

    def extract_features(self, clip: Clip, prompt_text: str | None) -> Any:
        samples = np.asarray(clip.samples, dtype=np.float64)
        rms = float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0
        return {"duration": clip.duration, "rms": rms}

    def serialize_features(self, features: Any) -> bytes:
        return json.dumps(features).encode()

    def deserialize_features(self, data: bytes) -> Any:
        return json.loads(data)

    def synthesize(self, request: EngineRequest) -> Iterator[np.ndarray]:
        speed = request.speed if request.speed > 0 else 1.0
        for sentence in split_sentences(request.text):
            seconds = min(max(len(sentence) * _SECONDS_PER_CHAR, _MIN_SECONDS), _MAX_SECONDS)
            yield _tone(seconds / speed)


def _tone(seconds: float) -> np.ndarray:
    count = int(seconds * _SAMPLE_RATE)
    t = np.arange(count, dtype=np.float32) / _SAMPLE_RATE
    tone = _LEVEL * np.sin(2 * np.pi * _TONE_HZ * t)
    fade = min(count // 2, _SAMPLE_RATE // 100)  # 10 ms ramps: no clicks between chunks
    if fade:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        tone[:fade] *= ramp
        tone[-fade:] *= ramp[::-1]
    return tone.astype(np.float32)

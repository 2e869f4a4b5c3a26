"""One short synthesis right after an engine loads.

It pays the engine's first-call costs (kernel compilation, caches, lazily built tables)
before a client would, and it measures the engine's time to first audio, so the
streaming latency the API reports is a measured number from the start rather than
unknown until the first stream.

The voice is synthetic (a voiced, syllable-paced signal): every engine can extract
features from it, and no clip has to ship with the service.
"""

from __future__ import annotations

import time

import numpy as np

from ..domain import SynthesisMode
from ..ports import Clip
from .base import Engine, EngineRequest

WARM_UP_TEXT = "Hello, this short sentence warms up the engine."
_CLIP_RATE = 16000
_CLIP_SECONDS = 2.0
_PITCH_HZ = 120.0
_SYLLABLES_PER_SECOND = 4.0


def warm_up_clip() -> Clip:
    """Two seconds of a voice-like signal: a gliding pitch with harmonics, in syllables."""
    t = np.arange(int(_CLIP_RATE * _CLIP_SECONDS)) / _CLIP_RATE
    pitch = _PITCH_HZ + 20.0 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / _CLIP_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    syllables = 0.5 - 0.5 * np.cos(2 * np.pi * _SYLLABLES_PER_SECOND * t)
    return Clip(samples=(0.2 * voiced * syllables).astype(np.float32), sample_rate=_CLIP_RATE)


def time_to_first_chunk(engine: Engine) -> float:
    """Seconds from the start of a synthesis to the engine's first chunk.

    Blocking: run it in a worker thread. The synthesis is run to its end (not closed
    early), so the engine finishes the call as it would for a client.
    """
    clip = warm_up_clip()
    request = EngineRequest(
        text=WARM_UP_TEXT,
        mode=SynthesisMode.cross_lingual,
        clip=clip,
        features=engine.extract_features(clip, None),
        voice_key="warm-up",
        language="en",
    )
    started = time.perf_counter()
    first: float | None = None
    for samples in engine.synthesize(request):
        if first is None and np.asarray(samples).size:
            first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the warm-up synthesis produced no audio")
    return first

"""The engine interface: what a TTS model must offer to be served.

An engine is synchronous and single-process: the in-process synthesis adapter and the
KServe predictor run it in worker threads and bridge its iterator to asyncio. Engines
never see HTTP, files or the blob store: they get decoded clips and return float audio.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..domain import SynthesisMode
from ..ports import Clip, EngineInfo


@dataclass(frozen=True)
class EngineRequest:
    text: str
    mode: SynthesisMode
    clip: Clip  # the reference clip, mono float32 at its own rate
    features: Any  # what `extract_features` returned for this clip and prompt text
    voice_key: str  # stable id of these features (content hash): engines may cache by it
    prompt_text: str | None = None
    instruct_text: str | None = None
    speed: float = 1.0
    language: str | None = None  # None = detect from the text's script
    # Whether the caller plays chunks as they come: an engine may then trade total time
    # for an early first chunk (CosyVoice's streaming path); otherwise it renders whole.
    stream: bool = True


class FinalChunk(np.ndarray):
    """A chunk that its engine knows to be the call's last, yielded as
    `samples.view(FinalChunk)` (no copy; to everyone else it is an ordinary array).

    Optional: without it a call ends when its generator is asked once more and stops.
    An engine in a process of its own is asked only at its call's next turn, after the
    turns of calls that need audio sooner; with it, the call ends with its last chunk,
    and a client downloading the whole stream is not kept waiting for the end.
    """


class Engine(Protocol):
    @property
    def info(self) -> EngineInfo: ...

    def load(self) -> None:
        """Load weights and warm up; raise EngineNotReady with the reason on failure."""

    def extract_features(self, clip: Clip, prompt_text: str | None) -> Any:
        """What the engine derives from a clip once per voice (speaker embedding, pitch...)."""

    def serialize_features(self, features: Any) -> bytes: ...

    def deserialize_features(self, data: bytes) -> Any: ...

    def synthesize(self, request: EngineRequest) -> Iterator[np.ndarray]:
        """Mono float32 chunks at `info.sample_rate`, one per phrase or stream hop.

        The caller may stop iterating at any time (client gone): the generator is closed
        and must release what it holds. After a `FinalChunk` the caller may close it
        rather than ask once more (the engine process does; an engine thread asks).
        """

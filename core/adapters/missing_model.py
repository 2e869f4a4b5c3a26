"""The synthesis port for a model this server does not have.

With `ENGINE=cosyvoice` a slot whose weights (or code) are missing cannot be served, and
falling back to the development engine is exactly what that setting forbids. The other
slot still serves: this client stands in for the missing one, so its routes answer 503
with the reason and /health reports the slot not ready (status `degraded`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from ..errors import EngineNotReady
from ..ports import AudioChunk, EngineInfo, SynthesisRequest

_NOMINAL_SAMPLE_RATE = 24000  # CosyVoice's own rate; nothing is ever produced at it


class MissingModelSynthesis:
    """`SynthesisClient` that refuses every request with why its model is missing."""

    remote = False
    first_chunk_seconds: float | None = None  # nothing to measure

    def __init__(self, model: str, reason: str) -> None:
        self.detail = reason
        self.warning = reason  # /health shows it beside the slot
        self._info = EngineInfo(
            engine="unavailable",
            model=model,
            real_model=False,
            sample_rate=_NOMINAL_SAMPLE_RATE,
            languages=(),
        )

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def missing_reason(self) -> str | None:
        return self.detail

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ready(self, deep: bool = False) -> bool:
        """Never ready. Raises instead of answering False, so that a request checking
        readiness first (every synthesis and stream) gets the reason, not "try again
        shortly": the model will not appear while the server runs."""
        raise EngineNotReady(self.detail)

    def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[AudioChunk, None]:
        return self._refuse()

    async def _refuse(self) -> AsyncGenerator[AudioChunk, None]:
        raise EngineNotReady(self.detail)
        yield  # an async generator, like every client's synthesize  # pragma: no cover

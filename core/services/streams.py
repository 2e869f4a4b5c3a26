"""What is streaming right now: a capped count of streams, the open WebSocket sessions,
and the measured time to first audio.

One registry per server process. The cap exists so that the N+1st stream is refused
(`Busy`, 503) instead of slowing every stream already playing: a listener notices a
stalled stream far more than a refused one. HTTP, SSE and each WebSocket request count
alike, because each holds an engine call and a client's buffer.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from .. import metrics
from ..domain import utcnow
from ..errors import Busy

LATENCY_WINDOW = 100  # recent streams the reported first-audio latency is the median of


class StreamKind(StrEnum):
    http = "http"
    sse = "sse"
    websocket = "websocket"


class StreamTicket:
    """One admitted stream. Releasing is idempotent, so every exit path may do it."""

    def __init__(self, registry: StreamRegistry, kind: StreamKind) -> None:
        self._registry = registry
        self.kind = kind
        self.opened = time.perf_counter()
        self._first_audio_recorded = False
        self.released = False

    def first_audio(self) -> None:
        """Mark the moment the first audio of this stream leaves (measured once)."""
        if not self._first_audio_recorded:
            self._first_audio_recorded = True
            seconds = time.perf_counter() - self.opened
            self._registry.record_first_audio(seconds)
            metrics.record_first_audio(self.kind.value, seconds)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._registry._release(self)

    def __enter__(self) -> StreamTicket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class SessionRecord:
    """One open WebSocket and the requests it carries."""

    client_id: str
    version: str
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    connected_at: datetime = field(default_factory=utcnow)
    requests_served: int = 0
    active_requests: list[str] = field(default_factory=list)


class StreamRegistry:
    def __init__(self, max_streams: int, latency_window: int = LATENCY_WINDOW) -> None:
        if max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        self.max_streams = max_streams
        self._active: Counter[StreamKind] = Counter()
        self._latencies: deque[float] = deque(maxlen=latency_window)
        self._sessions: dict[str, SessionRecord] = {}

    # --- streams -------------------------------------------------------------------

    def acquire(self, kind: StreamKind) -> StreamTicket:
        """Admit one more stream, or raise Busy when the cap is reached."""
        if self.active_streams >= self.max_streams:
            raise Busy(
                f"the server is already streaming {self.max_streams} streams "
                "(MAX_CONCURRENT_STREAMS); try again shortly"
            )
        self._active[kind] += 1
        return StreamTicket(self, kind)

    def _release(self, ticket: StreamTicket) -> None:
        self._active[ticket.kind] -= 1

    @property
    def active_streams(self) -> int:
        return sum(self._active.values())

    def active_by_kind(self) -> dict[str, int]:
        return {kind.value: self._active[kind] for kind in StreamKind}

    # --- latency -------------------------------------------------------------------

    def record_first_audio(self, seconds: float) -> None:
        self._latencies.append(seconds)

    @property
    def latency_ms(self) -> float | None:
        """Median time from a stream's admission to its first audio, recent streams."""
        if not self._latencies:
            return None
        return round(statistics.median(self._latencies) * 1000.0, 2)

    def reported_latency_ms(self, engine_first_chunk_seconds: float | None) -> float | None:
        """The streaming latency the API reports: the median of recent streams, or before
        any stream ran, the engine's own measured time to first audio (its warm-up)."""
        if self._latencies or engine_first_chunk_seconds is None:
            return self.latency_ms
        return round(engine_first_chunk_seconds * 1000.0, 2)

    # --- WebSocket sessions ----------------------------------------------------------

    def open_session(self, client_id: str | None, version: str) -> SessionRecord:
        record = SessionRecord(client_id="", version=version)
        record.client_id = client_id or f"client_{record.session_id[:8]}"
        self._sessions[record.session_id] = record
        return record

    def close_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def sessions(self, version: str | None = None) -> list[SessionRecord]:
        """Open sessions, oldest first; only those of `version` when given."""
        return [s for s in self._sessions.values() if version is None or s.version == version]

    @property
    def session_count(self) -> int:
        return len(self._sessions)

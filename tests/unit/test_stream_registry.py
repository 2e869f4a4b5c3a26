"""The stream registry: the cap, the counts, the measured latency, the sessions."""

from __future__ import annotations

import pytest

from core.errors import Busy
from core.services.streams import StreamKind, StreamRegistry


def test_streams_beyond_the_cap_are_refused_as_busy() -> None:
    registry = StreamRegistry(max_streams=2)
    first = registry.acquire(StreamKind.http)
    registry.acquire(StreamKind.websocket)
    with pytest.raises(Busy, match="MAX_CONCURRENT_STREAMS"):
        registry.acquire(StreamKind.sse)
    first.release()
    registry.acquire(StreamKind.sse)
    assert registry.active_streams == 2


def test_release_is_idempotent() -> None:
    registry = StreamRegistry(max_streams=4)
    ticket = registry.acquire(StreamKind.http)
    ticket.release()
    ticket.release()
    assert registry.active_streams == 0
    with registry.acquire(StreamKind.sse):
        assert registry.active_streams == 1
    assert registry.active_streams == 0


def test_counts_by_protocol() -> None:
    registry = StreamRegistry(max_streams=10)
    registry.acquire(StreamKind.http)
    registry.acquire(StreamKind.websocket)
    registry.acquire(StreamKind.websocket)
    assert registry.active_by_kind() == {"http": 1, "sse": 0, "websocket": 2}
    assert registry.active_streams == 3


def test_latency_is_the_median_of_measured_first_audio() -> None:
    registry = StreamRegistry(max_streams=10, latency_window=3)
    assert registry.latency_ms is None
    for seconds in (0.010, 0.500, 0.020, 0.030):  # the oldest falls out of the window
        registry.record_first_audio(seconds)
    assert registry.latency_ms == pytest.approx(30.0)


def test_first_audio_is_measured_once_per_stream() -> None:
    registry = StreamRegistry(max_streams=10)
    ticket = registry.acquire(StreamKind.http)
    ticket.first_audio()
    ticket.first_audio()
    assert registry.latency_ms is not None
    assert len(registry._latencies) == 1


def test_sessions_are_listed_by_version_until_closed() -> None:
    registry = StreamRegistry(max_streams=10)
    named = registry.open_session("browser-1", "v3")
    anonymous = registry.open_session(None, "v3")
    other = registry.open_session("old-client", "v2")
    assert anonymous.client_id.startswith("client_")
    assert {s.client_id for s in registry.sessions("v3")} == {"browser-1", anonymous.client_id}
    assert [s.session_id for s in registry.sessions("v2")] == [other.session_id]
    assert registry.session_count == 3
    registry.close_session(named.session_id)
    registry.close_session(named.session_id)
    assert registry.session_count == 2
    assert named not in registry.sessions()


def test_a_cap_below_one_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        StreamRegistry(max_streams=0)

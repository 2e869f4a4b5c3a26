"""A 100,000-character task as checkpointed segment jobs: flat memory, and a crash
costs only the segments in flight.

The server renders the task's segment jobs, storing each one; it is killed (SIGKILL)
about a third of the way through and started again on the same data folder. The new
process renders only the segments the first one had not stored, assembles the output,
and every segment was rendered once (a segment in flight at the kill, at most one per
render slot, twice). Both processes stay under 300 MB while rendering and assembling.
"""

from __future__ import annotations

import signal
import struct
import time

import httpx
import pytest

from tests.e2e.conftest import PROFILE, ServerFactory, create_voice
from tests.e2e.texts import long_text
from tests.e2e.watch import ServerWatch
from tests.render_pods import segments_in_log

pytestmark = [
    pytest.mark.quiet,
    pytest.mark.skipif(
        PROFILE != "embedded",
        reason="kills the embedded server mid-render (two hours of audio): embedded profile only",
    ),
]

CHARS = 100_000
SLOTS = 2
MAX_RSS_MB = 300


def wav_seconds(head: bytes) -> float:
    """The duration a WAV header declares (its data chunk's length)."""
    assert head[:4] == b"RIFF" and head[8:12] == b"WAVE", head[:12]
    channels, rate = struct.unpack_from("<HI", head, 22)
    bits = struct.unpack_from("<H", head, 34)[0]
    data = head.index(b"data")
    size = struct.unpack_from("<I", head, data + 4)[0]
    return size / (rate * channels * bits // 8)


def task_status(http: httpx.Client, task_id: str) -> dict:
    reply = http.get(f"/api/v3/cross-lingual/task/{task_id}")
    assert reply.status_code == 200, reply.text
    return reply.json()


@pytest.mark.timeout(900)
def test_killed_100k_task_reuses_its_segments_in_flat_memory(
    server_factory: ServerFactory, english_clip: bytes
) -> None:
    server = server_factory(WORKER_CONCURRENCY=str(SLOTS), TASK_LEASE_SECONDS="3")
    with httpx.Client(base_url=server.url, timeout=60) as http:
        voice = create_voice(http, english_clip, prefix="long")
        with ServerWatch(server) as first:
            created = http.post(
                "/api/v3/cross-lingual/task",
                json={"text": long_text(CHARS), "voice_id": voice, "format": "wav"},
            )
            assert created.status_code == 200, created.text
            task_id = created.json()["task_id"]
            deadline = time.monotonic() + 600
            while task_status(http, task_id)["progress"] < 0.3:
                assert time.monotonic() < deadline, task_status(http, task_id)
                time.sleep(0.2)
    killed_at = server.log_path.stat().st_size
    server.stop(signal.SIGKILL)
    before = segments_in_log(server.log_path.read_text(errors="replace")[:killed_at], task_id)

    server.start()
    with httpx.Client(base_url=server.url, timeout=60) as http:
        with ServerWatch(server) as second:
            deadline = time.monotonic() + 840
            while (status := task_status(http, task_id))["status"] not in (
                "completed",
                "failed",
                "cancelled",
            ):
                assert time.monotonic() < deadline, status
                time.sleep(0.5)
        assert status["status"] == "completed", status
        assert status["progress"] == 1.0
        # Two hours of WAV: its header (written last, with the real length) is enough.
        head = http.get(status["audio_url"], headers={"Range": "bytes=0-4095"})
        assert head.status_code == 206, head.status_code
        seconds = wav_seconds(head.content)

    log = server.log_path.read_text(errors="replace")
    after = segments_in_log(log[killed_at:], task_id)
    total = int(log.split(f"task {task_id}: segment 1/")[1].split(" ")[0])
    print(
        f"{total} segments: {len(before)} before the kill, {len(after)} after; "
        f"peak {first.peak_mb:.0f} MB then {second.peak_mb:.0f} MB"
    )
    assert total > 200
    assert sorted(set(before) | set(after)) == list(range(total))
    assert len(set(before) & set(after)) <= SLOTS, "stored segments were rendered again"
    assert len(before) >= 0.3 * total - SLOTS and len(after) < 0.75 * total
    first.assert_healthy(max_rss_mb=MAX_RSS_MB, max_health_s=1.0)
    second.assert_healthy(max_rss_mb=MAX_RSS_MB, max_health_s=1.0)

    assert CHARS / 20 < status["duration"] < CHARS / 8, status["duration"]
    assert abs(seconds - status["duration"]) < 1.0, (seconds, status["duration"])
    # The segments are removed just after the completion is written: give it a moment.
    segments = server.data_dir / "outputs" / ".segments"
    deadline = time.monotonic() + 15
    while any(segments.glob("*/*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(segments.glob("*/*")), "segments left"

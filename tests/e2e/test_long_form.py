"""A 100,000-character task renders in flat memory while the API stays responsive.

Segments are encoded into the output as they are synthesized, off the event loop: the
server's peak memory stays low, /health and a status request answer within a second
throughout, and the file holds all the speech (espeak says 12-15 characters a second).
"""

from __future__ import annotations

import io
import time

import httpx
import pytest
import soundfile as sf

from tests.e2e.conftest import PROFILE, ApiServer, ServerFactory, create_voice
from tests.e2e.texts import long_text
from tests.e2e.watch import ServerWatch

pytestmark = [
    pytest.mark.quiet,
    pytest.mark.skipif(
        PROFILE != "embedded",
        reason="renders two hours of audio (over 60 s): embedded profile only",
    ),
]

CHARS = 100_000


@pytest.fixture(scope="module")
def long_server(server_factory: ServerFactory) -> ApiServer:
    return server_factory()


@pytest.fixture(scope="module")
def long_voice(long_server: ApiServer, english_clip: bytes) -> str:
    with httpx.Client(base_url=long_server.url, timeout=60) as http:
        return create_voice(http, english_clip, prefix="long")


@pytest.mark.timeout(900)
def test_100k_character_tasks_render_in_flat_memory(
    long_server: ApiServer, long_voice: str
) -> None:
    """An mp3 task of 100,000 characters (the slowest format to encode; a long wav task is
    rendered, and killed halfway, in test_long_form_segments)."""
    text = long_text(CHARS)
    slowest_status = 0.0
    with httpx.Client(base_url=long_server.url, timeout=30) as http:
        with ServerWatch(long_server) as watch:
            paths = {}
            for fmt in ("mp3",):
                created = http.post(
                    "/api/v3/cross-lingual/task",
                    json={"text": text, "voice_id": long_voice, "format": fmt},
                )
                assert created.status_code == 200, created.text
                paths[fmt] = f"/api/v3/cross-lingual/task/{created.json()['task_id']}"
            finished: dict[str, dict] = {}
            deadline = time.monotonic() + 840
            while len(finished) < len(paths):
                for fmt, path in paths.items():
                    asked = time.monotonic()
                    status = http.get(path)
                    slowest_status = max(slowest_status, time.monotonic() - asked)
                    assert status.status_code == 200, status.text
                    body = status.json()
                    if body["status"] in ("completed", "failed", "cancelled"):
                        finished[fmt] = body
                assert time.monotonic() < deadline, f"unfinished after 840 s: {paths}"
                time.sleep(0.5)
        audio = {fmt: http.get(body["audio_url"]) for fmt, body in finished.items()}

    print(
        f"peak {watch.peak_mb:.0f} MB, /health {watch.slowest_health:.2f} s, "
        f"status {slowest_status:.2f} s"
    )
    watch.assert_healthy(max_rss_mb=400, max_health_s=1.0)
    assert slowest_status < 1.0, f"a status request took {slowest_status:.2f} s while rendering"
    for fmt, body in finished.items():
        assert body["status"] == "completed", body
        assert audio[fmt].status_code == 200
        seconds = sf.info(io.BytesIO(audio[fmt].content)).duration
        opening, _ = sf.read(io.BytesIO(audio[fmt].content), frames=22050 * 30, dtype="float32")
        assert float(abs(opening).max()) > 0.05, f"{fmt}: silent"
        assert CHARS / 20 < seconds < CHARS / 8, f"{fmt}: {seconds:.0f} s for {CHARS} characters"
        assert abs(seconds - body["duration"]) < 1.0, (fmt, seconds, body["duration"])

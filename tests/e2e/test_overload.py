"""A burst far beyond the synthesis queue: refused at once with 503 and Retry-After, while
the requests admitted are served in full and the server stays small and responsive."""

from __future__ import annotations

import asyncio
import io

import httpx
import pytest
import soundfile as sf

from tests.e2e.conftest import PROFILE, ApiServer, ServerFactory, create_voice
from tests.e2e.texts import SENTENCE
from tests.e2e.watch import ServerWatch

pytestmark = [
    pytest.mark.quiet,
    pytest.mark.skipif(
        PROFILE == "predictor",
        reason="the session's shared predictors keep the default MAX_QUEUED_SYNTHESES, so a "
        "burst there renders dozens of 2,000-character requests (minutes)",
    ),
]

BURST = 200
TEXT = (SENTENCE * 30)[:2000].strip()


@pytest.fixture(scope="module")
def busy_server(server_factory: ServerFactory) -> ApiServer:
    return server_factory(MAX_QUEUED_SYNTHESES="2", SYNTHESIS_CONCURRENCY="2")


@pytest.fixture(scope="module")
def busy_voice(busy_server: ApiServer, english_clip: bytes) -> str:
    with httpx.Client(base_url=busy_server.url, timeout=60) as http:
        return create_voice(http, english_clip, prefix="busy")


async def _burst(url: str, voice_id: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=BURST + 10, max_keepalive_connections=BURST + 10)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:

        async def one() -> httpx.Response:
            return await http.post(
                "/api/v3/cross-lingual/with-cache",
                json={"text": TEXT, "voice_id": voice_id, "format": "mp3"},
            )

        return await asyncio.gather(*(one() for _ in range(BURST)))


def test_a_burst_beyond_the_queue_is_refused_with_retry_after(
    busy_server: ApiServer, busy_voice: str
) -> None:
    with ServerWatch(busy_server) as watch:
        replies = asyncio.run(_burst(busy_server.url, busy_voice))
        served = [reply for reply in replies if reply.status_code == 200]
        refused = [reply for reply in replies if reply.status_code == 503]
        with httpx.Client(base_url=busy_server.url, timeout=60) as http:
            files = [http.get(reply.json()["audio_url"]) for reply in served]

    others = sorted({reply.status_code for reply in replies} - {200, 503})
    assert not others, f"unexpected statuses {others}: {replies[0].text}"
    assert served, "nothing was admitted"
    assert refused, "nothing was refused beyond MAX_QUEUED_SYNTHESES=2"
    for reply in refused:
        assert int(reply.headers["Retry-After"]) >= 1
        detail = reply.json()["detail"]
        assert isinstance(detail, str) and "busy" in detail.lower()
    for reply, audio in zip(served, files, strict=True):
        assert audio.status_code == 200
        samples, rate = sf.read(io.BytesIO(audio.content), dtype="float32")
        seconds = len(samples) / rate
        assert 2000 / 20 < seconds < 2000 / 8, f"{seconds:.0f} s of audio for 2,000 characters"
        assert abs(seconds - reply.json()["duration"]) < 0.5
    print(
        f"{len(served)} served, {len(refused)} refused; peak {watch.peak_mb:.0f} MB, "
        f"/health {watch.slowest_health:.2f} s"
    )
    watch.assert_healthy(max_rss_mb=400, max_health_s=1.0)

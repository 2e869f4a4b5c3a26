"""Reference clips built to exhaust the server: it refuses them on their header, clearly,
without its memory or its /health suffering.

Every file is made here: small real audio whose header lies (FLAC STREAMINFO, WAV sizes,
an MP3 Xing frame count), and a legal MP3 far longer than a reference clip may be.
"""

from __future__ import annotations

import io
import os
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import soundfile as sf

from tests.e2e.conftest import ApiServer, ServerFactory, embedded_only
from tests.e2e.watch import ServerWatch, rss_mb
from tests.hostile_audio import (
    flac_claiming,
    flac_claiming_samples,
    long_stereo_mp3,
    mp3_claiming_frames,
    tone,
    wav_claiming_huge_data,
)

pytestmark = [
    pytest.mark.quiet,
    embedded_only("clips are refused while they are decoded in the router, before any backend"),
]

MAX_RSS_MB = 400
MAX_HEALTH_S = 1.0


@pytest.fixture(scope="module")
def hostile_server(server_factory: ServerFactory) -> ApiServer:
    """A server of its own, so its peak memory is this module's alone."""
    return server_factory()


@pytest.fixture
def http(hostile_server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hostile_server.url, timeout=60) as client:
        yield client


def upload(http: httpx.Client, data: bytes, name: str = "clip.wav") -> httpx.Response:
    voice_id = f"hostile_{uuid.uuid4().hex[:8]}"
    return http.post(
        "/api/v3/voices/",
        data={"voice_id": voice_id, "name": "Hostile", "voice_type": "cross_lingual"},
        files={"audio_file": (name, data, "application/octet-stream")},
    )


REFUSED: dict[str, tuple[Callable[[], bytes], str]] = {
    "flac_8ch_96k_10min": (
        lambda: flac_claiming(rate=96_000, channels=8, claimed_seconds=600),
        "8 channels; at most 2",
    ),
    "flac_655350hz_8ch": (
        lambda: flac_claiming(rate=655_350, channels=8, claimed_seconds=29.9),
        "8 channels; at most 2",
    ),
    "flac_655350hz_stereo": (
        lambda: flac_claiming(rate=655_350, channels=2, claimed_seconds=29.9),
        "655350 Hz; at most 48000 Hz",
    ),
    "flac_2e36_samples": (lambda: flac_claiming_samples((1 << 36) - 1), "too long"),
    "mp3_xing_2e32_frames": (mp3_claiming_frames, "too long"),
    "mp3_legal_79min_48k_stereo": (lambda: long_stereo_mp3(79), "too long"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_hostile_clip_is_refused_on_its_header(
    case: str, http: httpx.Client, hostile_server: ApiServer
) -> None:
    make, reason = REFUSED[case]
    data = make()
    with ServerWatch(hostile_server) as watch:
        response = upload(http, data)
        second = upload(http, data, name="clip.flac")  # twice: nothing accumulates
    assert response.status_code == 422, response.text[:300]
    assert reason in response.json()["detail"]
    assert second.status_code == 422
    watch.assert_healthy(max_rss_mb=MAX_RSS_MB, max_health_s=MAX_HEALTH_S)


def test_wav_claiming_four_gigabytes_is_read_for_what_it_holds(
    http: httpx.Client, hostile_server: ApiServer
) -> None:
    with ServerWatch(hostile_server) as watch:
        response = upload(http, wav_claiming_huge_data(48_000, 2))
    assert response.status_code == 201, response.text[:300]
    voice = response.json()
    assert voice["duration"] == pytest.approx(2.0, abs=0.01)
    assert voice["sample_rate"] == 48_000  # the record reports the upload
    watch.assert_healthy(max_rss_mb=MAX_RSS_MB, max_health_s=MAX_HEALTH_S)


def test_legal_48k_stereo_clip_is_stored_small_and_synthesizes(
    http: httpx.Client, hostile_server: ApiServer
) -> None:
    buffer = io.BytesIO()
    sf.write(buffer, tone(25.0, 48_000, 2), 48_000, format="FLAC", subtype="PCM_24")
    with ServerWatch(hostile_server) as watch:
        response = upload(http, buffer.getvalue())
        assert response.status_code == 201, response.text[:300]
        voice = response.json()
        synthesis = http.post(
            "/api/v3/cross-lingual/with-cache",
            json={"text": "A short sentence.", "voice_id": voice["voice_id"]},
        )
    assert voice["audio_format"] == "flac" and voice["sample_rate"] == 48_000
    assert voice["file_size"] == len(buffer.getvalue())
    assert synthesis.status_code == 200, synthesis.text[:300]
    audio = http.get(synthesis.json()["audio_url"])
    samples, _ = sf.read(io.BytesIO(audio.content))
    assert samples.size > 0
    watch.assert_healthy(max_rss_mb=MAX_RSS_MB, max_health_s=MAX_HEALTH_S)


def test_a_burst_of_large_uploads_leaves_no_memory_behind(
    http: httpx.Client, hostile_server: ApiServer
) -> None:
    """Forty uploads just under MAX_UPLOAD_BYTES at once, each a WAV of noise too long
    for a reference clip: all refused, and the server's memory goes back to where it was
    (the allocator keeps no freed blocks of upload size; without that, 150-260 MB stayed)."""
    noise = os.urandom(19_000_000)  # 198 s of 48 kHz 16-bit mono
    fmt = struct.pack("<HHIIHH", 1, 1, 48_000, 96_000, 2, 16)
    sizes = struct.pack("<I", 36 + len(noise)), struct.pack("<I", 16), struct.pack("<I", len(noise))
    wav = b"RIFF" + sizes[0] + b"WAVEfmt " + sizes[1] + fmt + b"data" + sizes[2] + noise
    before = rss_mb(hostile_server.pid)
    with ServerWatch(hostile_server) as watch, ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(lambda _: upload(http, wav), range(40)))
    time.sleep(0.5)  # the last requests' buffers are freed as their tasks end
    after = rss_mb(hostile_server.pid)
    assert {a.status_code for a in answers} == {422}, answers[0].text[:300]
    assert "too long" in answers[0].json()["detail"]
    assert after - before < 64, f"RSS {before:.0f} MB before the uploads, {after:.0f} MB after"
    watch.assert_healthy(max_rss_mb=MAX_RSS_MB, max_health_s=2 * MAX_HEALTH_S)

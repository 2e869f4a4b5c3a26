"""with-cache latency through the whole API, against the engine alone, in one run.

    python -m bench.synthesis_overhead [--requests 200]

Starts `cosyvoice-api serve` (embedded profile, espeak engine) on a free port, creates a
voice, then times N with-cache requests for a 100-character text. In the same process it
times the engine alone on the same text and voice (the baseline), so the difference is
what the platform adds: HTTP, validation, the repository, encoding and storing the file.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "A serving platform should add very little to its engine"
)
assert len(TEXT) == 100


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def engine_alone(clip_path: Path, n: int) -> list[float]:
    from core.audio.decode import decode_clip
    from core.domain import SynthesisMode
    from core.engines.base import EngineRequest
    from core.engines.espeak import EspeakEngine

    engine = EspeakEngine()
    engine.load()
    clip = decode_clip(clip_path.read_bytes())
    features = engine.extract_features(clip, None)
    request = EngineRequest(
        text=TEXT, mode=SynthesisMode.cross_lingual, clip=clip, features=features, voice_key="b"
    )
    timings = []
    for _ in range(n):
        started = time.perf_counter()
        for _chunk in engine.synthesize(request):
            pass
        timings.append(time.perf_counter() - started)
    return timings


def through_api(url: str, voice_id: str, n: int) -> list[float]:
    timings = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for _ in range(n):
            started = time.perf_counter()
            response = http.post(
                "/api/v3/cross-lingual/with-cache", json={"text": TEXT, "voice_id": voice_id}
            )
            timings.append(time.perf_counter() - started)
            response.raise_for_status()
    return timings


def main() -> None:
    from tests.conftest import TESTDATA
    from tests.e2e.conftest import ApiServer, create_voice, embedded_env

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    clip = TESTDATA / "cross_lingual_prompt.wav"
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        server = ApiServer(data, {**embedded_env(data), "LOG_LEVEL": "warning"}).start()
        try:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                voice_id = create_voice(http, clip)
            through_api(server.url, voice_id, 10)  # warm-up: feature cache, connections
            api = through_api(server.url, voice_id, args.requests)
        finally:
            server.stop()
    engine = engine_alone(clip, args.requests)
    rows = [("engine alone (baseline)", engine), ("POST with-cache (API)", api)]
    print(f"\nwith-cache latency, {len(TEXT)}-character text, {args.requests} requests, espeak")
    print(f"{'path':<26}{'p50 ms':>10}{'p95 ms':>10}{'mean ms':>10}")
    for name, values in rows:
        print(
            f"{name:<26}{percentile(values, 0.5) * 1e3:>10.2f}"
            f"{percentile(values, 0.95) * 1e3:>10.2f}"
            f"{statistics.fmean(values) * 1e3:>10.2f}"
        )
    outside = (percentile(api, 0.5) - percentile(engine, 0.5)) * 1e3
    ratio = percentile(api, 0.5) / percentile(engine, 0.5)
    print(
        f"\noutside the engine at p50: {outside:.2f} ms (target <= 10 ms); "
        f"API/engine = {ratio:.2f}x"
    )


if __name__ == "__main__":
    main()

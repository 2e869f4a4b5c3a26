"""with-cache latency through the whole API, against the engine alone, in one run.

    python -m bench.synthesis_overhead [--requests 200]

Starts `cosyvoice-api serve` (embedded profile, espeak engine) on a free port, creates a
voice, then times N with-cache requests for a 100-character text. The baseline is the
same engine with the same text and voice, called directly in this process. The two are
interleaved (one engine call, one request, ...) so both see the same machine: on a
shared 2-core VM the engine's own speed drifts by tens of percent over a minute. The
difference is what the platform adds: HTTP, validation, the repository, the engine
thread hand-off, encoding and storing the file. An empty `GET /voices/{id}` is shown as
the floor of the web stack itself.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.stats import percentile

TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "A serving platform should add very little to its engine"
)
assert len(TEXT) == 100


def engine_call(clip_path: Path) -> Callable[[], None]:
    """One synthesis by the engine alone, as the server's engine does it."""
    from core.audio.decode import decode_clip
    from core.domain import SynthesisMode
    from core.engines.base import EngineRequest
    from core.engines.espeak import EspeakEngine

    engine = EspeakEngine()
    engine.load()
    clip = decode_clip(clip_path.read_bytes())
    request = EngineRequest(
        text=TEXT,
        mode=SynthesisMode.cross_lingual,
        clip=clip,
        features=engine.extract_features(clip, None),
        voice_key="bench",
    )

    def call() -> None:
        for _chunk in engine.synthesize(request):
            pass

    return call


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    from tests.e2e.conftest import ApiServer, create_voice, embedded_env
    from tests.speech import ENGLISH, write_clips

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    clip = write_clips() / ENGLISH.filename
    engine = engine_call(clip)
    timings: dict[str, list[float]] = {"engine": [], "api": [], "floor": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        server = ApiServer(data, {**embedded_env(data), "LOG_LEVEL": "warning"}).start()
        try:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                voice_id = create_voice(http, clip)
                body = {"text": TEXT, "voice_id": voice_id}

                def synthesize() -> None:
                    http.post("/api/v3/cross-lingual/with-cache", json=body).raise_for_status()

                def floor() -> None:
                    http.get(f"/api/v3/voices/{voice_id}").raise_for_status()

                for _ in range(10):  # warm-up: feature cache, connections, engine threads
                    synthesize()
                    engine()
                for _ in range(args.requests):
                    timings["engine"].append(timed(engine))
                    timings["api"].append(timed(synthesize))
                    timings["floor"].append(timed(floor))
        finally:
            server.stop()

    rows = [
        ("engine alone (baseline)", timings["engine"]),
        ("POST with-cache (API)", timings["api"]),
        ("GET voice (web floor)", timings["floor"]),
    ]
    print(f"\nwith-cache latency, {len(TEXT)}-character text, {args.requests} requests, espeak")
    print(f"{'path':<26}{'p50 ms':>10}{'p95 ms':>10}{'mean ms':>10}")
    for name, values in rows:
        print(
            f"{name:<26}{percentile(values, 0.5) * 1e3:>10.2f}"
            f"{percentile(values, 0.95) * 1e3:>10.2f}"
            f"{statistics.fmean(values) * 1e3:>10.2f}"
        )
    api, base = percentile(timings["api"], 0.5), percentile(timings["engine"], 0.5)
    print(
        f"\noutside the engine at p50: {(api - base) * 1e3:.2f} ms (target <= 10 ms); "
        f"API/engine = {api / base:.2f}x"
    )


if __name__ == "__main__":
    main()

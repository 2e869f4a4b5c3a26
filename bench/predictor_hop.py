"""What the HTTP hop to the KServe predictor costs, against the engine in-process.

    .venv/bin/python -m bench.predictor_hop [--requests 200] [--engine espeak]

Both sides serve the same engine through the same `SynthesisClient` port the router
uses: `InProcessSynthesis` (the embedded profile) and `KServeSynthesis` talking to a
`cosyvoice-api predictor` process started here, both over one blob store holding a
stored voice. Every request is a with-cache synthesis (the voice's features are cached
after the warm-up), sent to the two sides in turn so that both see the same machine.
The predictor runs with LOG_LEVEL=warning and KServe's own logging configuration off:
the in-process side writes no line per request either, so only the hop is compared.

Measured per request: the whole synthesis (every chunk received) for a short sentence,
and the time to the first chunk of a longer, streamed text. The table shows p50/p90 of
each, the hop (predictor minus in-process, at the median) and the ratio; the target is
a hop of at most 5 ms at p50. Exit status 1 when `--check` is given and it is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.stats import percentile  # noqa: E402
from core.adapters.cluster.kserve_synthesis import KServeSynthesis  # noqa: E402
from core.adapters.embedded.inprocess_synthesis import InProcessSynthesis  # noqa: E402
from core.audio.decode import sha256_hex  # noqa: E402
from core.domain import EngineSlot  # noqa: E402
from core.engines.features import FeatureCache  # noqa: E402
from core.engines.registry import build_engine  # noqa: E402
from core.engines.runner import EngineRunner  # noqa: E402
from core.ports import SynthesisClient, SynthesisRequest, VoicePrompt  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.wiring import build_blob_store  # noqa: E402
from tests.e2e.profiles import PredictorProcess  # noqa: E402
from tests.speech import ENGLISH, write_clips  # noqa: E402

MODEL = "cosyvoice3"
SHORT_TEXT = "Hello, this is a short sentence."
LONG_TEXT = (
    "Streaming starts with the first sentence. The rest follows while it plays. "
    "A third sentence keeps the engine busy. And a fourth one ends the paragraph."
)
HOP_TARGET_MS = 5.0

Measure = Callable[[SynthesisClient], Awaitable[float]]


@dataclass
class Row:
    metric: str
    local: list[float]
    remote: list[float]

    @property
    def hop_ms(self) -> float:
        return statistics.median(self.remote) - statistics.median(self.local)

    @property
    def ratio(self) -> float:
        return statistics.median(self.remote) / statistics.median(self.local)


async def whole(client: SynthesisClient, request: SynthesisRequest) -> float:
    started = time.perf_counter()
    async for _ in client.synthesize(request):
        pass
    return (time.perf_counter() - started) * 1000


async def first_chunk(client: SynthesisClient, request: SynthesisRequest) -> float:
    started = time.perf_counter()
    stream = client.synthesize(request)
    await anext(stream)
    elapsed = (time.perf_counter() - started) * 1000
    async for _ in stream:  # drain, so the next request starts on an idle engine
        pass
    return elapsed


async def round_trip(http: httpx.AsyncClient) -> float:
    """The floor under the hop: one request through KServe's server that does nothing."""
    started = time.perf_counter()
    (await http.get(f"/v1/models/{MODEL}")).raise_for_status()
    return (time.perf_counter() - started) * 1000


async def run(requests: int, engine: str) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="predictor-hop-") as tmp:
        work = Path(tmp)
        env = {
            "BLOB_STORE_URL": f"file://{work / 'blobs'}",
            "ENGINE": engine,
            "LOG_LEVEL": "warning",
        }
        settings = Settings(blob_store_url=env["BLOB_STORE_URL"], engine=engine)
        blobs = build_blob_store(settings)
        await blobs.start()
        clip = (write_clips() / ENGLISH.filename).read_bytes()
        await blobs.put("voices/bench/sample.wav", clip, "audio/wav")
        voice = VoicePrompt(
            sha256=sha256_hex(clip), voice_id="bench", sample_key="voices/bench/sample.wav"
        )

        engine_impl, _ = build_engine(settings, EngineSlot.v3)
        runner = EngineRunner(
            engine_impl,
            concurrency=settings.synthesis_concurrency,
            timeout=settings.synthesis_timeout,
            feature_cache=FeatureCache(engine_impl, engine_impl.info.model, blobs, 16),
        )
        local = InProcessSynthesis(runner, blobs)
        predictor = PredictorProcess(
            MODEL,
            work,
            env,
            engine=engine,
            # Per-request log lines cost time the in-process side does not spend either.
            extra_args=("--enable_latency_logging", "false", "--configure_logging", "false"),
        ).start()
        url = predictor.url
        remote = KServeSynthesis(url, MODEL, timeout=120)
        try:
            await local.start()
            await remote.start()
            sides: dict[str, SynthesisClient] = {"local": local, "remote": remote}
            short = SynthesisRequest(text=SHORT_TEXT, voice=voice)
            long = SynthesisRequest(text=LONG_TEXT, voice=voice)
            for client in sides.values():  # warm-up: features cached, connections open
                for _ in range(5):
                    await whole(client, short)
                    await first_chunk(client, long)
            rows = [Row("with-cache synthesis", [], []), Row("streaming first chunk", [], [])]
            floor: list[float] = []
            async with httpx.AsyncClient(base_url=url) as http:
                for _ in range(requests):
                    for name, client in sides.items():
                        getattr(rows[0], name).append(await whole(client, short))
                        getattr(rows[1], name).append(await first_chunk(client, long))
                    floor.append(await round_trip(http))
            print(
                f"this machine's HTTP round trip to the predictor (GET /v1/models/{MODEL}): "
                f"p50 {statistics.median(floor):.2f} ms, p90 {percentile(floor, 0.9):.2f} ms"
            )
            return rows
        finally:
            await remote.close()
            await local.close()
            await blobs.close()
            predictor.stop()


def print_table(rows: list[Row], engine: str) -> bool:
    print(f"\nKServe predictor hop, engine={engine}, {len(rows[0].local)} requests each")
    header = (
        f"{'metric':<24} {'in-process p50':>15} {'p90':>8} {'predictor p50':>14} {'p90':>8}"
        f" {'hop p50':>9} {'ratio':>7}"
    )
    print(header)
    print("-" * len(header))
    within = True
    for row in rows:
        print(
            f"{row.metric:<24} {statistics.median(row.local):>12.2f} ms"
            f" {percentile(row.local, 0.9):>8.2f} {statistics.median(row.remote):>11.2f} ms"
            f" {percentile(row.remote, 0.9):>8.2f} {row.hop_ms:>6.2f} ms {row.ratio:>6.2f}x"
        )
        within = within and row.hop_ms <= HOP_TARGET_MS
    verdict = "within" if within else "OVER"
    print(f"\ntarget: the hop adds at most {HOP_TARGET_MS:g} ms at p50 -> {verdict} target")
    return within


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per side and metric")
    parser.add_argument("--engine", default="espeak", choices=["espeak", "cosyvoice", "auto"])
    parser.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop  # what the router runs on (uvicorn's default when installed)

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    rows = asyncio.run(run(args.requests, args.engine))
    if not print_table(rows, args.engine) and args.check:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

"""The CosyVoice engine served by the platform, against upstream CosyVoice called directly.

    COSYVOICE_HOME=... python -m bench.cosyvoice_engine --model DIR [--rounds 3]

Needs what `make test-upstream` needs: an upstream checkout, a Python with upstream's
requirements and this project, and a model (the tiny random-weight CosyVoice3 of
../shared/tools/cv3tiny, `model_long`: output length is exact, 20 speech tokens per
text token). Without them it says what is missing and exits.

Four ways to get the same sentence in the same zero-shot voice (the Mandarin test clip and
its transcript, its features cached on both sides), at 1, 2 and 4 at once:

- upstream, whole:  `inference_zero_shot(stream=False)` on a model in this process;
- upstream, stream: the same with `stream=True` (its shared hop reset to 25 first);
- platform, sync:   POST /api/v3/cross-lingual/with-cache (renders and stores a WAV);
- platform, stream: POST /api/v3/streaming/cross-lingual (chunked PCM, at the default
  quality's 22,050 Hz: streams have the contract's three rates, so this way includes a
  resampling pass that the others do not).

The server (`cosyvoice-api serve`, embedded profile, SAMPLE_RATE=24000) runs the same
model in a process of its own. Rounds interleave the four, so that all see the same
machine. Per cell: first audio (p50; a synchronous call's audio comes at its end), total
time (p50) and audio seconds produced per second of wall time.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

RATE = 24000
TEXT = "Add nothing."  # 180 speech tokens with the tiny model and the test voice: 7.2 s
SYSTEM = "You are a helpful assistant.<|endofprompt|>"
WAYS = ("upstream whole", "platform sync", "upstream stream", "platform stream")


@dataclass
class Cell:
    first: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    audio_seconds: float = 0.0
    wall: float = 0.0

    @property
    def rate(self) -> float:
        """Seconds of audio per second of wall time."""
        return self.audio_seconds / self.wall


# One call: returns (seconds to first audio, seconds in all, seconds of audio).
Call = Callable[[], tuple[float, float, float]]


def upstream_calls(home: Path, model_dir: Path, clip: Path, transcript: str) -> dict[str, Call]:
    for folder in (home / "third_party" / "Matcha-TTS", home):
        sys.path.insert(0, str(folder))
    from cosyvoice.cli.cosyvoice import AutoModel

    logging.getLogger().setLevel(logging.WARNING)  # upstream's import sets DEBUG on the root
    model = AutoModel(model_dir=str(model_dir))
    model.add_zero_shot_spk(SYSTEM + transcript, str(clip), "bench")

    def call(stream: bool) -> tuple[float, float, float]:
        if stream:
            model.model.token_hop_len = 25  # upstream never resets it itself
        started = time.perf_counter()
        first = None
        samples = 0
        for out in model.inference_zero_shot(TEXT, "", "", zero_shot_spk_id="bench", stream=stream):
            first = first if first is not None else time.perf_counter() - started
            samples += out["tts_speech"].shape[1]
        return first or 0.0, time.perf_counter() - started, samples / RATE

    return {"upstream whole": lambda: call(False), "upstream stream": lambda: call(True)}


def platform_calls(url: str, voice_id: str) -> dict[str, Call]:
    client = httpx.Client(base_url=url, timeout=600)  # thread-safe connection pool

    def sync() -> tuple[float, float, float]:
        started = time.perf_counter()
        response = client.post(
            "/api/v3/cross-lingual/with-cache", json={"text": TEXT, "voice_id": voice_id}
        )
        response.raise_for_status()
        elapsed = time.perf_counter() - started
        return elapsed, elapsed, float(response.json()["duration"])

    def stream() -> tuple[float, float, float]:
        started = time.perf_counter()
        first = None
        size = 0
        form = {"text": TEXT, "voice_id": voice_id, "format": "pcm"}
        with client.stream("POST", "/api/v3/streaming/cross-lingual", data=form) as response:
            response.raise_for_status()
            for piece in response.iter_raw():
                first = first if first is not None else time.perf_counter() - started
                size += len(piece)
            # The stream's rate is its quality's (medium: 22,050 Hz), not the engine's.
            rate = int(response.headers["X-Sample-Rate"])
        return first or 0.0, time.perf_counter() - started, size / 2 / rate

    return {"platform sync": sync, "platform stream": stream}


def run_batch(call: Call, clients: int, cell: Cell) -> None:
    results: list[tuple[float, float, float]] = []

    def one() -> None:
        results.append(call())

    workers = [threading.Thread(target=one) for _ in range(clients)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    cell.wall += time.perf_counter() - started
    for first, total, audio in results:
        cell.first.append(first)
        cell.total.append(total)
        cell.audio_seconds += audio


def report(cells: dict[tuple[int, str], Cell], levels: list[int], header: bool) -> None:
    if header:
        print(
            "\n| clients | way | first audio p50 (ms) | total p50 (ms) | audio s per s "
            "| platform ÷ upstream: first, total, throughput |"
        )
        print("|---|---|---|---|---|---|")
    for clients in levels:
        for way in WAYS:
            cell = cells[(clients, way)]
            first, total = statistics.median(cell.first), statistics.median(cell.total)
            rate = cell.rate
            ratio = ""
            if way.startswith("platform"):
                base = cells[(clients, "upstream whole" if "sync" in way else "upstream stream")]
                ratio = (
                    f"{first / statistics.median(base.first):.2f}×, "
                    f"{total / statistics.median(base.total):.2f}×, "
                    f"{rate / base.rate:.2f}×"
                )
            print(
                f"| {clients} | {way} | {first * 1000:.0f} | {total * 1000:.0f} "
                f"| {rate:.2f} | {ratio} |",
                flush=True,
            )


# The targets: whole renders as fast as upstream's own non-streaming call, a
# stream's first audio no later than upstream's own loop gives it, the same throughput.
TARGET_SYNC_TOTAL = 1.05  # platform sync total ÷ upstream whole total, at most
TARGET_STREAM_FIRST_MS = 10.0  # platform stream first audio - upstream stream's, at most
TARGET_THROUGHPUT = 0.95  # platform ÷ upstream audio seconds per second, at least


def verdicts(cells: dict[tuple[int, str], Cell], levels: list[int]) -> None:
    print()
    for clients in levels:
        sync, whole = cells[(clients, "platform sync")], cells[(clients, "upstream whole")]
        stream, loop = cells[(clients, "platform stream")], cells[(clients, "upstream stream")]
        total = statistics.median(sync.total) / statistics.median(whole.total)
        first_ms = (statistics.median(stream.first) - statistics.median(loop.first)) * 1000
        checks = (  # name, value shown, target, met
            (
                "sync total ÷ upstream whole",
                f"{total:.2f}×",
                f"≤ {TARGET_SYNC_TOTAL:g}×",
                total <= TARGET_SYNC_TOTAL,
            ),
            (
                "stream first audio - upstream stream",
                f"{first_ms:+.0f} ms",
                f"≤ +{TARGET_STREAM_FIRST_MS:g} ms",
                first_ms <= TARGET_STREAM_FIRST_MS,
            ),
            (
                "sync throughput ÷ upstream whole",
                f"{sync.rate / whole.rate:.2f}×",
                f"≥ {TARGET_THROUGHPUT:g}×",
                sync.rate / whole.rate >= TARGET_THROUGHPUT,
            ),
            (
                "stream throughput ÷ upstream stream",
                f"{stream.rate / loop.rate:.2f}×",
                f"≥ {TARGET_THROUGHPUT:g}×",
                stream.rate / loop.rate >= TARGET_THROUGHPUT,
            ),
        )
        for name, shown, target, met in checks:
            print(
                f"{clients} clients  {name:<38} {shown:>9}  "
                f"(target {target}) {'met' if met else 'MISSED'}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("CV3TINY_MODEL", ""))
    parser.add_argument("--home", default=os.environ.get("COSYVOICE_HOME", ""))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", default="1,2,4")
    args = parser.parse_args(argv)
    from core.engines.cosyvoice import cosyvoice_available

    problem = (
        "COSYVOICE_HOME / --home is not set"
        if not args.home
        else "no --model (or CV3TINY_MODEL)"
        if not args.model
        else cosyvoice_available(Path(args.model), Path(args.home), family="cosyvoice3")
    )
    if problem:
        print(f"bench.cosyvoice_engine skipped: {problem}")
        return 0
    levels = [int(n) for n in args.clients.split(",")]
    from tests.e2e.conftest import ApiServer, create_voice, embedded_env
    from tests.speech import MANDARIN, MANDARIN_TRANSCRIPT, write_clips

    clip = write_clips() / MANDARIN.filename
    cells = {(c, way): Cell() for c in levels for way in WAYS}
    with tempfile.TemporaryDirectory(prefix="bench-cosyvoice-") as tmp:
        env = {
            **embedded_env(Path(tmp)),
            "ENGINE": "cosyvoice",
            "MODEL_DIR_V3": str(Path(args.model).resolve()),
            "COSYVOICE_HOME": str(Path(args.home).resolve()),
            "AUTO_DOWNLOAD_MODELS": "false",
            "SAMPLE_RATE": str(RATE),
            "SYNTHESIS_CONCURRENCY": str(max(levels)),
            "LOG_LEVEL": "warning",
        }
        server = ApiServer(Path(tmp), env)
        server.start_timeout = 600.0  # importing upstream and loading take minutes on 2 busy cores
        server.start()
        try:
            with httpx.Client(base_url=server.url, timeout=600) as http:
                voice_id = create_voice(
                    http,
                    clip,
                    voice_type="zero_shot",
                    language="zh",
                    prompt_text=MANDARIN_TRANSCRIPT,
                )
            calls: dict[str, Call] = {
                **upstream_calls(Path(args.home), Path(args.model), clip, MANDARIN_TRANSCRIPT),
                **platform_calls(server.url, voice_id),
            }
            for way in WAYS:  # warm both sides: features, first-call allocations
                calls[way]()
            print(f"\ntext: {TEXT!r}, {args.rounds} rounds, model {args.model}")
            for clients in levels:
                for _ in range(args.rounds):
                    for way in WAYS:
                        run_batch(calls[way], clients, cells[(clients, way)])
                report(cells, [clients], header=clients == levels[0])
        finally:
            server.stop()
    verdicts(cells, levels)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

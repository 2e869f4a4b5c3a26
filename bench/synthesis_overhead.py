"""with-cache latency through the whole API, against the engine alone, in one run.

    python -m bench.synthesis_overhead [--requests 200] [--against REV]

Starts `cosyvoice-api serve` (embedded profile, espeak engine) on a free port, creates a
voice, then times N with-cache requests for a 100-character text. The baseline is the
same engine with the same text and voice, called directly from this process, built as the
server builds it (the development engine in a process of its own). The two are
interleaved (one engine call, one request, ...) so both see the same machine: on a
shared 2-core VM the engine's own speed drifts by tens of percent over a minute. The
difference is what the platform adds: HTTP, validation, the repository, handing the
engine's chunks to the event loop, encoding and storing the file. An empty
`GET /voices/{id}` is shown as the floor of the web stack itself.

`--against REV` also starts the API of another commit (a temporary git worktree, the same
virtual environment) and interleaves its requests with this checkout's: the cost of a
change on the happy path, measured before and after in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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
    from core.domain import EngineSlot, SynthesisMode
    from core.engines.base import EngineRequest
    from core.engines.registry import build_engine
    from core.settings import Settings

    engine, _ = build_engine(Settings(engine="espeak"), EngineSlot.v3)
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


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """Another commit of this repository, checked out beside it for the run."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(root), "worktree", "add", "--detach", str(tree), rev],
            check=True,
            capture_output=True,
        )
        try:
            yield tree
        finally:
            subprocess.run(
                ["git", "-C", str(root), "worktree", "remove", "--force", str(tree)],
                check=False,
                capture_output=True,
            )


def main() -> None:
    from tests.e2e.conftest import ApiServer, create_voice, embedded_env
    from tests.speech import ENGLISH, write_clips

    class CheckoutServer(ApiServer):
        """`serve` from another checkout: its packages first on the path."""

        def __init__(self, data_dir: Path, env: dict[str, str], tree: Path) -> None:
            super().__init__(data_dir, {**env, "PYTHONPATH": str(tree)})
            self.tree = tree

        def command(self) -> list[str]:
            module = "cli.main" if (self.tree / "cli" / "main.py").exists() else "router.cli"
            args = ["serve", "--host", "127.0.0.1", "--port", str(self.port)]
            return [sys.executable, "-m", module, *args]

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--against", metavar="REV", help="also time the API of this commit")
    args = parser.parse_args()
    clip = write_clips() / ENGLISH.filename
    engine = engine_call(clip)
    timings: dict[str, list[float]] = {"engine": [], "api": [], "floor": [], "against": []}
    with contextlib.ExitStack() as stack:
        data = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        env = {"LOG_LEVEL": "warning"}
        servers = {"api": ApiServer(data / "api", {**embedded_env(data / "api"), **env})}
        if args.against:
            tree = stack.enter_context(worktree(args.against))
            other = data / "against"
            servers["against"] = CheckoutServer(other, {**embedded_env(other), **env}, tree)
        for server in servers.values():
            server.start()
            stack.callback(server.stop)
        clients = {
            name: stack.enter_context(httpx.Client(base_url=server.url, timeout=60))
            for name, server in servers.items()
        }
        voices = {name: create_voice(http, clip) for name, http in clients.items()}

        def synthesize(name: str) -> Callable[[], None]:
            http, body = clients[name], {"text": TEXT, "voice_id": voices[name]}

            def call() -> None:
                http.post("/api/v3/cross-lingual/with-cache", json=body).raise_for_status()

            return call

        def floor() -> None:
            clients["api"].get(f"/api/v3/voices/{voices['api']}").raise_for_status()

        calls = {name: synthesize(name) for name in clients}
        for _ in range(10):  # warm-up: feature cache, connections, engine threads
            engine()
            for call in calls.values():
                call()
        for _ in range(args.requests):
            timings["engine"].append(timed(engine))
            for name, call in calls.items():
                timings[name].append(timed(call))
            timings["floor"].append(timed(floor))

    rows = [
        ("engine alone (baseline)", timings["engine"]),
        ("POST with-cache (API)", timings["api"]),
        ("GET voice (web floor)", timings["floor"]),
    ]
    if args.against:
        rows.append((f"POST with-cache @ {args.against}", timings["against"]))
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
    if args.against:
        then = percentile(timings["against"], 0.5)
        print(
            f"{args.against} outside the engine at p50: {(then - base) * 1e3:.2f} ms; "
            f"this checkout / {args.against} = {api / then:.2f}x"
        )


if __name__ == "__main__":
    main()

"""Time to first audio byte over HTTP chunked, SSE and WebSocket, against the engine.

    python -m bench.streaming_latency [--rounds 8] [--clients 1,16] [--engine espeak]

Starts `cosyvoice-api serve` in a process of its own (the e2e tests' ApiServer), makes a
voice from the English test clip, and measures, at each concurrency, the time from
sending a request on an open connection to the first byte of audio:

- http: POST /api/v3/streaming/cross-lingual, the first byte of the chunked body;
- sse:  GET  /api/v3/streaming/cross-lingual/sse, the first `audio_chunk` event;
- ws:   a `text_request` on an open /api/v3/ws/stream, the first `audio_chunk` frame.

Next to them, the baseline: the same engine called directly in this process
(`Engine.synthesize`, no server in between), timed to its first chunk, at the same
concurrency (N threads at once). The gap between the two is what the serving path adds.

Clients speak HTTP over bare asyncio sockets so that the client's own cost, on the same
cores as the server, stays out of the figures as far as possible.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx
from websockets.asyncio.client import connect

from core.audio.decode import decode_clip
from core.domain import EngineSlot, SynthesisMode
from core.engines.base import Engine, EngineRequest
from core.engines.registry import build_engine
from core.settings import Settings
from tests.conftest import TESTDATA
from tests.e2e.conftest import ApiServer, create_voice, embedded_env

TEXT = "Hello, this is a latency test of the streaming voice. It has a second sentence."
TARGET_GAP_MS = 10.0
TARGET_CONCURRENCY_RATIO = 2.0

Probe = Callable[[], Awaitable[float]]


# --- the engine in-process ---------------------------------------------------------------


def engine_first_chunk(engine: Engine, request: EngineRequest) -> float:
    """Time to the first chunk of a whole synthesis (the rest is rendered too, as the
    server renders it, so concurrent calls compete for the engine as they do there)."""
    started = time.perf_counter()
    first: float | None = None
    for _ in engine.synthesize(request):
        if first is None:
            first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the engine produced no audio")
    return first


def engine_baseline(engine: Engine, request: EngineRequest, clients: int, rounds: int) -> list[float]:
    """First-chunk times of `clients` threads calling the engine at once, `rounds` times."""
    samples: list[float] = []
    lock = threading.Lock()
    for _ in range(rounds):
        barrier = threading.Barrier(clients)

        def one() -> None:
            barrier.wait()
            seconds = engine_first_chunk(engine, request)
            with lock:
                samples.append(seconds)

        threads = [threading.Thread(target=one) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return samples


def load_engine(settings: Settings, clip_bytes: bytes) -> tuple[Engine, EngineRequest]:
    engine, _ = build_engine(settings, EngineSlot.v3)
    engine.load()
    clip = decode_clip(clip_bytes)
    features = engine.extract_features(clip, None)
    request = EngineRequest(
        text=TEXT,
        mode=SynthesisMode.cross_lingual,
        clip=clip,
        features=features,
        voice_key="bench",
        language="en",
    )
    return engine, request


# --- clients -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    voice_id: str


async def _read_headers(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    if status != b"200":
        raise RuntimeError(f"status {status.decode()}: {head.decode(errors='replace')}")


async def _drain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(65536):
        pass
    writer.close()


def http_probe(target: Target) -> Probe:
    boundary = uuid.uuid4().hex
    fields = {"text": TEXT, "voice_id": target.voice_id, "format": "wav", "quality": "medium"}
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ) + f"--{boundary}--\r\n".encode()
    request = (
        f"POST /api/v3/streaming/cross-lingual HTTP/1.1\r\nHost: {target.host}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body

    async def probe() -> float:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        started = time.perf_counter()
        writer.write(request)
        await _read_headers(reader)
        await reader.readline()  # the first chunk's size line
        await reader.readexactly(1)
        seconds = time.perf_counter() - started
        await _drain(reader, writer)
        return seconds

    return probe


def sse_probe(target: Target) -> Probe:
    query = urlencode({"text": TEXT, "voice_id": target.voice_id, "format": "wav"})
    request = (
        f"GET /api/v3/streaming/cross-lingual/sse?{query} HTTP/1.1\r\nHost: {target.host}\r\n"
        "Accept: text/event-stream\r\nConnection: close\r\n\r\n"
    ).encode()

    async def probe() -> float:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        started = time.perf_counter()
        writer.write(request)
        await _read_headers(reader)
        while b"event: audio_chunk" not in await reader.readline():
            pass
        seconds = time.perf_counter() - started
        await _drain(reader, writer)
        return seconds

    return probe


def ws_probe(target: Target) -> Probe:
    url = f"ws://{target.host}:{target.port}/api/v3/ws/stream"

    async def probe() -> float:
        async with connect(url, max_size=None) as ws:
            await ws.recv()  # status: connected
            request_id = uuid.uuid4().hex
            message = {"message_type": "text_request", "request_id": request_id,
                       "text": TEXT, "voice_id": target.voice_id, "format": "wav"}
            started = time.perf_counter()
            await ws.send(json.dumps(message))
            seconds = None
            while True:
                frame = json.loads(await ws.recv())
                kind = frame["message_type"]
                if kind == "audio_chunk" and seconds is None:
                    seconds = time.perf_counter() - started
                elif kind in ("synthesis_complete", "error"):
                    break
            if seconds is None:
                raise RuntimeError(f"no audio: {frame}")
            return seconds

    return probe


async def measure(probe: Probe, clients: int, rounds: int) -> list[float]:
    samples: list[float] = []
    for _ in range(rounds):
        samples.extend(await asyncio.gather(*(probe() for _ in range(clients))))
    return samples


# --- report ------------------------------------------------------------------------------


def ms(seconds: float) -> float:
    return seconds * 1000.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Row:
    protocol: str
    clients: int
    samples: list[float]
    engine_p50: float

    @property
    def p50(self) -> float:
        return statistics.median(self.samples)

    @property
    def gap(self) -> float:
        return self.p50 - self.engine_p50


def print_report(rows: list[Row], engine: dict[int, list[float]], clients: list[int]) -> bool:
    print()
    print(f"text: {TEXT!r}")
    print(f"{'path':<8}{'clients':>8}{'n':>6}{'p50 ms':>10}{'p90 ms':>10}"
          f"{'engine p50':>12}{'gap p50':>10}  target gap <= {TARGET_GAP_MS:g} ms")
    for n in clients:
        values = engine[n]
        print(f"{'engine':<8}{n:>8}{len(values):>6}{ms(statistics.median(values)):>10.2f}"
              f"{ms(percentile(values, 0.9)):>10.2f}{'':>12}{'':>10}")
    ok = True
    for row in rows:
        met = ms(row.gap) <= TARGET_GAP_MS
        ok &= met
        print(f"{row.protocol:<8}{row.clients:>8}{len(row.samples):>6}{ms(row.p50):>10.2f}"
              f"{ms(percentile(row.samples, 0.9)):>10.2f}{ms(row.engine_p50):>12.2f}"
              f"{ms(row.gap):>10.2f}  {'ok' if met else 'MISSED'}")
    if len(clients) > 1:
        low, high = min(clients), max(clients)
        print()
        print(f"ratios, {high} clients / {low} client (target <= {TARGET_CONCURRENCY_RATIO:g}x):")
        by_key = {(r.protocol, r.clients): r for r in rows}
        engine_ratio = statistics.median(engine[high]) / statistics.median(engine[low])
        print(f"  engine  first chunk p50 {engine_ratio:6.2f}x")
        for protocol in ("http", "sse", "ws"):
            one, many = by_key.get((protocol, low)), by_key.get((protocol, high))
            if one is None or many is None:
                continue
            ratio = many.p50 / one.p50
            gap_ratio = max(many.gap, 0.0) / max(one.gap, 1e-4)
            met = ratio <= TARGET_CONCURRENCY_RATIO
            ok &= met
            print(f"  {protocol:<7} first byte p50 {ratio:6.2f}x   serving gap "
                  f"{ms(one.gap):.2f} -> {ms(many.gap):.2f} ms ({gap_ratio:.2f}x)"
                  f"  {'ok' if met else 'MISSED'}")
    return ok


# --- main --------------------------------------------------------------------------------


async def run(args: argparse.Namespace, target: Target) -> list[Row]:
    rows: list[Row] = []
    probes = {"http": http_probe(target), "sse": sse_probe(target), "ws": ws_probe(target)}
    for probe in probes.values():  # warm every path (voice features, first connections)
        await measure(probe, 1, 3)
    for clients in args.clients:
        rounds = max(args.rounds, 1) if clients > 1 else max(args.rounds * 4, 8)
        for name, probe in probes.items():
            rows.append(Row(name, clients, await measure(probe, clients, rounds), 0.0))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="rounds at each concurrency")
    parser.add_argument(
        "--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16]
    )
    parser.add_argument("--engine", default="espeak", help="ENGINE of the server and baseline")
    parser.add_argument(
        "--synthesis-concurrency",
        type=int,
        default=0,
        help="SYNTHESIS_CONCURRENCY of the server (default: the most clients, so the engine "
        "takes calls as the in-process baseline does and only the serving path differs)",
    )
    args = parser.parse_args(argv)

    clip = (TESTDATA / "cross_lingual_prompt.wav").read_bytes()
    settings = Settings(engine=args.engine)  # type: ignore[arg-type]
    engine, engine_request = load_engine(settings, clip)
    engine_first_chunk(engine, engine_request)  # warm

    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp:
        data_dir = Path(tmp)
        env = {
            **embedded_env(data_dir),
            "ENGINE": args.engine,
            "LOG_LEVEL": "warning",
            "MAX_CONCURRENT_STREAMS": str(max(args.clients) * 2),
            "SYNTHESIS_CONCURRENCY": str(args.synthesis_concurrency or max(args.clients)),
        }
        server = ApiServer(data_dir, env).start()
        try:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                voice_id = create_voice(http, TESTDATA / "cross_lingual_prompt.wav",
                                        language="en", prefix="bench")
            target = Target("127.0.0.1", server.port, voice_id)
            rows = asyncio.run(run(args, target))
            health = httpx.get(f"{server.url}/api/v3/streaming/health").json()
        finally:
            server.stop()

    # The baseline runs with the server idle, so both sides had the cores to themselves.
    engine_samples = {
        n: engine_baseline(engine, engine_request, n, 8 if n == 1 else args.rounds)
        for n in args.clients
    }
    for row in rows:
        row.engine_p50 = statistics.median(engine_samples[row.clients])
    ok = print_report(rows, engine_samples, args.clients)
    print(f"\nserver-measured latency_ms (/streaming/health): {health['latency_ms']}")
    print("all targets met" if ok else "some targets missed (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

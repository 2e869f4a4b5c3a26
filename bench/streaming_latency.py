"""Time to first audio byte over HTTP chunked, SSE and WebSocket, against the engine.

    python -m bench.streaming_latency [--requests 8] [--clients 16] [--engine espeak]

Starts `cosyvoice-api serve` in a process of its own (the e2e tests' ApiServer), makes a
voice from the English test clip, and measures the time from sending a request on an
open connection to the first byte of audio:

- http: POST /api/v3/streaming/cross-lingual, the first byte of the chunked body;
- sse:  GET  /api/v3/streaming/cross-lingual/sse, the first `audio_chunk` event;
- ws:   a `text_request` on an open /api/v3/ws/stream, the first `audio_chunk` frame.

Three loads:

- 1 client: one request after another;
- N listeners: N clients at once, each playing what it gets, as a voice assistant or a
  reader would: it asks for the next utterance when the last one has finished playing,
  the N clients starting at even offsets across one utterance, so N streams are always
  under way together;
- N burst: N requests sent in the same instant, again and again (a stress figure: on a
  small machine it measures how long N requests queue for the CPU).

Next to them, the baseline: the same engine called directly in this process
(`Engine.synthesize`, no server in between), timed to its first chunk under the same
load (one thread per client). The gap between the two is what serving adds. The server
is given SYNTHESIS_CONCURRENCY = N so that it admits engine calls as the baseline does.

Clients speak HTTP over bare asyncio sockets so that the client's own work, on the same
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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx
from websockets.asyncio.client import connect

from bench.stats import percentile
from core.audio.decode import decode_clip
from core.domain import EngineSlot, SynthesisMode
from core.engines.base import Engine, EngineRequest
from core.engines.registry import build_engine
from core.settings import Settings
from tests.e2e.conftest import ApiServer, create_voice, embedded_env
from tests.speech import ENGLISH, write_clips

TEXT = "Hello, this is a latency test of the streaming voice. It has a second sentence."
TARGET_GAP_MS = 10.0
TARGET_CONCURRENCY_RATIO = 2.0

Request = Callable[[], Awaitable[float]]
"""Sends one synthesis request and returns the seconds to its first audio byte."""
Client = Callable[[], AbstractAsyncContextManager[Request]]
"""Opens one client (a WebSocket keeps its socket across its requests)."""


@dataclass(frozen=True)
class Load:
    name: str  # "1 client", "16 listeners", "16 burst"
    clients: int
    requests: int  # per client
    paced: bool  # wait for the utterance to finish playing before the next request


def listener_schedule(load: Load, audio_seconds: float) -> list[float]:
    """When each client starts: all at once for a burst, evenly spread for listeners."""
    if not load.paced:
        return [0.0] * load.clients
    return [i * audio_seconds / load.clients for i in range(load.clients)]


# --- the engine in-process ---------------------------------------------------------------


def engine_first_chunk(engine: Engine, request: EngineRequest) -> float:
    """Seconds to the first chunk of a whole synthesis (the rest is rendered too, as the
    server renders it, so concurrent calls compete for the engine as they do there)."""
    started = time.perf_counter()
    first: float | None = None
    for _ in engine.synthesize(request):
        if first is None:
            first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the engine produced no audio")
    return first


def engine_under_load(
    engine: Engine, request: EngineRequest, load: Load, audio_seconds: float
) -> list[float]:
    """First-chunk times with one thread per client, on the same schedule as the clients."""
    samples: list[float] = []
    lock = threading.Lock()
    offsets = listener_schedule(load, audio_seconds)
    barrier = threading.Barrier(load.clients)

    def client(offset: float) -> None:
        barrier.wait()
        time.sleep(offset)
        for _ in range(load.requests):
            started = time.perf_counter()
            seconds = engine_first_chunk(engine, request)
            with lock:
                samples.append(seconds)
            if load.paced:
                time.sleep(max(0.0, started + audio_seconds - time.perf_counter()))
            elif load.clients > 1:
                barrier.wait()  # a burst: everyone sends the next request together

    threads = [threading.Thread(target=client, args=(offset,)) for offset in offsets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return samples


def load_engine(settings: Settings, clip_bytes: bytes) -> tuple[Engine, EngineRequest, float]:
    """The engine, a request like the clients', and the seconds of audio it makes."""
    engine, _ = build_engine(settings, EngineSlot.v3)
    engine.load()
    clip = decode_clip(clip_bytes)
    request = EngineRequest(
        text=TEXT,
        mode=SynthesisMode.cross_lingual,
        clip=clip,
        features=engine.extract_features(clip, None),
        voice_key="bench",
        language="en",
    )
    audio_seconds = sum(len(c) for c in engine.synthesize(request)) / engine.info.sample_rate
    return engine, request, audio_seconds


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


def _connection_per_request(
    target: Target,
    request: bytes,
    first_audio: Callable[[asyncio.StreamReader], Awaitable[None]],
) -> Client:
    """Each request on a new connection, timed from sending `request` until `first_audio`
    has read the first audio of the answer; the rest is read and dropped."""

    async def send() -> float:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        started = time.perf_counter()
        writer.write(request)
        await _read_headers(reader)
        await first_audio(reader)
        seconds = time.perf_counter() - started
        await _drain(reader, writer)
        return seconds

    @asynccontextmanager
    async def client() -> AsyncIterator[Request]:
        yield send

    return client


def http_client(target: Target) -> Client:
    boundary = uuid.uuid4().hex
    fields = {"text": TEXT, "voice_id": target.voice_id, "format": "wav", "quality": "medium"}
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in fields.items()
        )
        + f"--{boundary}--\r\n".encode()
    )
    request = (
        f"POST /api/v3/streaming/cross-lingual HTTP/1.1\r\nHost: {target.host}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body

    async def first_chunk(reader: asyncio.StreamReader) -> None:
        await reader.readline()  # the first chunk's size line
        await reader.readexactly(1)

    return _connection_per_request(target, request, first_chunk)


def sse_client(target: Target) -> Client:
    query = urlencode({"text": TEXT, "voice_id": target.voice_id, "format": "wav"})
    request = (
        f"GET /api/v3/streaming/cross-lingual/sse?{query} HTTP/1.1\r\nHost: {target.host}\r\n"
        "Accept: text/event-stream\r\nConnection: close\r\n\r\n"
    ).encode()

    async def first_audio_event(reader: asyncio.StreamReader) -> None:
        while b"event: audio_chunk" not in await reader.readline():
            pass

    return _connection_per_request(target, request, first_audio_event)


def ws_client(target: Target) -> Client:
    url = f"ws://{target.host}:{target.port}/api/v3/ws/stream"

    @asynccontextmanager
    async def client() -> AsyncIterator[Request]:
        async with connect(url, max_size=None) as ws:
            await ws.recv()  # status: connected

            async def send() -> float:
                message = {
                    "message_type": "text_request",
                    "request_id": uuid.uuid4().hex,
                    "text": TEXT,
                    "voice_id": target.voice_id,
                    "format": "wav",
                }
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

            yield send

    return client


async def run_load(client: Client, load: Load, audio_seconds: float) -> list[float]:
    samples: list[float] = []
    ready = asyncio.Barrier(load.clients)

    async def one(offset: float) -> None:
        async with client() as send:
            await ready.wait()
            await asyncio.sleep(offset)
            for _ in range(load.requests):
                started = time.perf_counter()
                samples.append(await send())
                if load.paced:
                    await asyncio.sleep(max(0.0, started + audio_seconds - time.perf_counter()))
                elif load.clients > 1:
                    await ready.wait()  # a burst: everyone sends the next request together

    await asyncio.gather(*(one(offset) for offset in listener_schedule(load, audio_seconds)))
    return samples


# --- report ------------------------------------------------------------------------------


def ms(seconds: float) -> float:
    return seconds * 1000.0


def p50(values: list[float]) -> float:
    return statistics.median(values)


def p90(values: list[float]) -> float:
    return percentile(values, 0.9)


def print_report(
    loads: list[Load],
    engine: dict[str, list[float]],
    served: dict[tuple[str, str], list[float]],
) -> bool:
    print(f"\ntext: {TEXT!r}")
    print(
        f"{'path':<7}{'load':<14}{'n':>5}{'p50 ms':>9}{'p90 ms':>9}{'engine p50':>12}{'gap p50':>9}"
    )
    for load in loads:
        values = engine[load.name]
        print(
            f"{'engine':<7}{load.name:<14}{len(values):>5}{ms(p50(values)):>9.2f}"
            f"{ms(p90(values)):>9.2f}"
        )
    for (protocol, name), values in served.items():
        base = p50(engine[name])
        print(
            f"{protocol:<7}{name:<14}{len(values):>5}{ms(p50(values)):>9.2f}"
            f"{ms(p90(values)):>9.2f}{ms(base):>12.2f}{ms(p50(values) - base):>9.2f}"
        )

    single, others = loads[0], loads[1:]
    ok = True
    print(
        f"\ntarget 1: first byte at most {TARGET_GAP_MS:g} ms after the engine's first "
        f"chunk (p50, {single.name})"
    )
    for protocol in PROTOCOLS:
        gap = ms(p50(served[protocol, single.name]) - p50(engine[single.name]))
        met = gap <= TARGET_GAP_MS
        ok &= met
        print(f"  {protocol:<5} gap {gap:6.2f} ms  {'met' if met else 'MISSED'}")
    print(
        f"\ntarget 2: with more clients, first byte p50 at most {TARGET_CONCURRENCY_RATIO:g}x "
        f"the {single.name} figure"
    )
    for load in others:
        stress = not load.paced
        ratio = p50(engine[load.name]) / p50(engine[single.name])
        print(f"  {'engine':<6} {load.name:<13} {ratio:6.2f}x  (the engine alone)")
        for protocol in PROTOCOLS:
            ratio = p50(served[protocol, load.name]) / p50(served[protocol, single.name])
            met = ratio <= TARGET_CONCURRENCY_RATIO
            if not stress:
                ok &= met
            verdict = "met" if met else "MISSED"
            if stress:
                verdict += " (stress figure, not a target)"
            print(f"  {protocol:<6} {load.name:<13} {ratio:6.2f}x  {verdict}")
    return ok


# --- main --------------------------------------------------------------------------------

PROTOCOLS = ("http", "sse", "ws")


async def serve_loads(target: Target, loads: list[Load], audio_seconds: float) -> dict:
    clients = {"http": http_client(target), "sse": sse_client(target), "ws": ws_client(target)}
    warm = Load("warm", 1, 3, paced=False)
    for client in clients.values():  # voice features, first connections, code paths
        await run_load(client, warm, audio_seconds)
    served: dict[tuple[str, str], list[float]] = {}
    for load in loads:
        for protocol, client in clients.items():
            served[protocol, load.name] = await run_load(client, load, audio_seconds)
    return served


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6, help="requests per client and load")
    parser.add_argument("--clients", type=int, default=16, help="clients of the concurrent loads")
    parser.add_argument("--engine", default="espeak", help="ENGINE of the server and baseline")
    args = parser.parse_args(argv)
    loads = [
        Load("1 client", 1, max(args.requests * 4, 16), paced=False),
        Load(f"{args.clients} listeners", args.clients, args.requests, paced=True),
        Load(f"{args.clients} burst", args.clients, args.requests, paced=False),
    ]

    clip_path = write_clips() / ENGLISH.filename
    clip = clip_path.read_bytes()
    engine, engine_request, audio_seconds = load_engine(Settings(engine=args.engine), clip)
    print(
        f"{engine.info.model}; {audio_seconds:.2f} s of audio per request; "
        f"{args.clients} clients x {args.requests} requests per concurrent load"
    )

    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp:
        data_dir = Path(tmp)
        env = {
            **embedded_env(data_dir),
            "ENGINE": args.engine,
            "LOG_LEVEL": "warning",
            "MAX_CONCURRENT_STREAMS": str(args.clients * 2),
            "SYNTHESIS_CONCURRENCY": str(args.clients),
        }
        server = ApiServer(data_dir, env).start()
        try:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                voice_id = create_voice(http, clip_path, language="en", prefix="bench")
            target = Target("127.0.0.1", server.port, voice_id)
            served = asyncio.run(serve_loads(target, loads, audio_seconds))
            health = httpx.get(f"{server.url}/api/v3/streaming/health").json()
        finally:
            server.stop()

    # The baseline runs with the server stopped, so each side had the cores to itself.
    engine_first_chunk(engine, engine_request)
    engine_samples = {
        load.name: engine_under_load(engine, engine_request, load, audio_seconds) for load in loads
    }
    ok = print_report(loads, engine_samples, served)
    print(f"\nserver-measured latency_ms (/streaming/health): {health['latency_ms']}")
    print("all targets met" if ok else "some targets missed (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

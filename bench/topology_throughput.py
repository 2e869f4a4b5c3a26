"""Renders per second through the function topology, against what its servers allow.

    python -m bench.topology_throughput [--tasks 200] [--in-flight 4]

Starts the MongoDB-, S3- and NATS-speaking test servers (tests/servers.py) and, as
processes of their own as in the chart's Knative shape, the render function and its
JetStream source (`cosyvoice-api jetstream-source`, K_SINK = the function). Jobs are put
on `cosyvoice.render.submit` as an external producer would; each one travels

    NATS → source → render function (creates the task, queues its render)
         → NATS → source → render function (claims, renders, stores, completes)

The render function runs the no-op engine (ENGINE cannot select it, so this module
starts the function itself with the engine registry answering no-op): what is timed is
the platform's plumbing, every HTTP hop, repository call, object put and bus message,
not speech. The clock runs from the first publish to the last task completed; every
task must end `completed`, or the run fails.

The ceiling is measured in the same run with `bench.cluster_throughput.ceilings`: the
operations one render needs sent straight to each server with its own client, the
slowest server being the limit. The stand-ins are much slower than MongoDB, MinIO and
NATS themselves, so only the ratio carries over.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.cluster_throughput import (
    Measured,
    Servers,
    build_noop_runtime,
    ceilings,
    cluster_servers,
    s3_credentials,
)

NOOP_FUNCTION_FLAG = "--noop-function"
TEXT = "Job {n}."
SECRET = "bench-signing-key"


def serve_noop_function(argv: list[str]) -> None:
    """`cosyvoice-api function ...` with every in-process engine the no-op engine."""
    from core.engines import registry
    from core.engines.noop import NoopEngine

    def noop_engine(settings: object, slot: object) -> tuple[NoopEngine, None]:
        return NoopEngine(), None

    # core.wiring imports it when it builds the engines, so the no-op one is found there.
    registry.build_engine = noop_engine
    from cli.function import run

    run(argv)


def wait_ready(url: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready within {timeout}s")


async def publish_jobs(url: str, voice_id: str, count: int) -> list[str]:
    import nats

    connection = await nats.connect(url)
    ids = [str(uuid.uuid4()) for _ in range(count)]
    try:
        jetstream = connection.jetstream()
        for n, task_id in enumerate(ids):
            headers = {
                "ce-specversion": "1.0",
                "ce-type": "ai.cosyvoice.render.submit.v1",
                "ce-source": "bench",
                "ce-id": f"bench-{task_id}",
                "Nats-Msg-Id": f"bench-{task_id}",
                "content-type": "application/json",
            }
            body = {"task_id": task_id, "text": TEXT.format(n=n), "voice_id": voice_id}
            await jetstream.publish(
                "cosyvoice.render.submit", json.dumps(body).encode(), headers=headers
            )
    finally:
        await connection.close()
    return ids


def start_processes(
    env: dict[str, str], port: int, in_flight: int, root: Path
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """The render function (no-op engine) on `port`, and its JetStream source."""
    with (root / "function.log").open("ab") as log:
        function = subprocess.Popen(
            [sys.executable, "-m", "bench.topology_throughput", NOOP_FUNCTION_FLAG, "render"],
            env={**env, "LISTEN_ADDRESS": f"127.0.0.1:{port}"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    with (root / "source.log").open("ab") as log:
        source = subprocess.Popen(
            [str(Path(sys.executable).parent / "cosyvoice-api"), "jetstream-source"],
            env={
                **env,
                "K_SINK": f"http://127.0.0.1:{port}",
                "JETSTREAM_SUBJECTS": "cosyvoice.render.requested.*,cosyvoice.render.submit",
                "JETSTREAM_MAX_IN_FLIGHT": str(in_flight),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return function, source


def stop_processes(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(20)


async def through_functions(
    servers: Servers, env: dict[str, str], clip: bytes, count: int, in_flight: int, root: Path
) -> tuple[Measured, int]:
    """Renders/s of the topology and the size of one stored output."""
    from core.domain import VoiceType, output_key
    from core.services.voices import NewVoice
    from core.settings import Settings
    from tests.servers import free_port

    settings = Settings(
        database_url=servers.database_url,
        blob_store_url=servers.blob_store_url,
        event_bus_url=servers.event_bus_url,
        worker_concurrency=0,
        log_level="warning",
        webhook_secret=SECRET,
    )
    runtime = build_noop_runtime(settings)  # the voice, and reading the results
    await runtime.start()
    port = free_port()
    function, source = start_processes(env, port, in_flight, root)
    try:
        await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}/health/readiness")
        voice = await runtime.voices.create(
            NewVoice(voice_id="bench", name="Bench", voice_type=VoiceType.cross_lingual), clip
        )
        started = time.perf_counter()
        ids = await publish_jobs(servers.event_bus_url, voice.voice_id, count)
        while True:
            counts = (await runtime.store.count_tasks())["status"]
            if counts.get("completed", 0) + counts.get("failed", 0) >= count:
                break
            if function.poll() is not None or source.poll() is not None:
                raise RuntimeError(f"a process exited; see {root}")
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - started
        if counts.get("completed", 0) != count:
            raise RuntimeError(f"not every task completed: {counts}")
        task = await runtime.store.get_task(ids[0])
        size = (await runtime.blobs.stat(output_key(task.filename))).size
        return Measured(
            "topology: submit → source → render function", count, seconds, in_flight
        ), size
    finally:
        await asyncio.to_thread(stop_processes, source, function)
        await runtime.close()


def report(platform: Measured, limits: list[Measured]) -> None:
    ceiling = min(limits, key=lambda row: row.rate)
    print(f"\nrenders through the function topology, no-op engine, {platform.renders} jobs")
    print(f"{'path':<48}{'at once':>8}{'renders/s':>11}{'ms/render':>11}{'of ceiling':>12}")
    for row in [platform, *limits]:
        print(
            f"{row.name:<48}{row.lanes:>8}{row.rate:>11.1f}{1e3 / row.rate:>11.1f}"
            f"{row.rate / ceiling.rate:>12.0%}"
        )
    print(f"\nceiling = the slowest server alone: {ceiling.rate:.1f} renders/s")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == NOOP_FUNCTION_FLAG:
        serve_noop_function(sys.argv[2:])
        return
    from tests.speech import ENGLISH, write_clips

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=4)
    args = parser.parse_args()
    clip = (write_clips() / ENGLISH.filename).read_bytes()
    with tempfile.TemporaryDirectory() as tmp, cluster_servers(Path(tmp)) as servers:
        root = Path(tmp)
        env = {
            **os.environ,
            **s3_credentials(),
            "DATABASE_URL": servers.database_url,
            "BLOB_STORE_URL": servers.blob_store_url,
            "EVENT_BUS_URL": servers.event_bus_url,
            "WEBHOOK_SECRET": SECRET,
            "LOG_LEVEL": "warning",
        }

        async def run() -> tuple[Measured, list[Measured]]:
            platform, size = await through_functions(
                servers, env, clip, args.tasks, args.in_flight, root
            )
            return platform, await ceilings(servers, size, args.tasks, args.in_flight, 20)

        platform, limits = asyncio.run(run())
    report(platform, limits)


if __name__ == "__main__":
    main()

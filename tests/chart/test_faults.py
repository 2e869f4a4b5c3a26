"""The chart's topology under faults: nothing is lost, nothing is done twice.

Every workload the chart renders runs as a local process (tests/chart/topology.py) in
front of real NATS, S3 and MongoDB-wire servers. Over a hundred tasks arrive through the
three ways in (the task API, the scheduler, `cosyvoice.render.submit` on NATS), several
of them long-form texts that are rendered in segments. While they render, the render
function is SIGKILLed three times and started again, the predictor is stopped for 20 s,
NATS is restarted, and the webhook receiver is down for a while. Then every task must
have completed with its audio downloadable, each output object must have been written
once (the bucket keeps every version), and each task's callback must have arrived once,
signed with the chart's key.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from minio import Minio
from minio.versioningconfig import ENABLED, VersioningConfig

from core.services.webhooks import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.audio_checks import assert_speech
from tests.chart.test_topology import API_KEY, WEBHOOK_SECRET, chart_values, cluster_secrets
from tests.chart.topology import Topology
from tests.e2e.conftest import create_voice
from tests.servers import HOST, MongoServer, NatsServer, S3Server, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

BUCKET = "cosyvoice"
FINAL = ("completed", "failed", "cancelled")
SHORT = "Every task survives the faults of the platform. Number {n} ends once."
LONG_SENTENCE = (
    "Chapter {n} goes on, sentence after sentence, so that the text is split into "
    "segments that any render pod may take. "
)
TASKS_PER_PATH = {"task": 40, "schedule": 30, "submit": 32}
LONG_FORM_EVERY = 10  # one task in ten is a few thousand characters long


@dataclass
class Submitted:
    task_id: str
    path: str
    long_form: bool

    @property
    def status_url(self) -> str:
        if self.path == "task":
            return f"/api/v3/cross-lingual/task/{self.task_id}"
        return f"/api/v3/schedule/status/{self.task_id}"


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver on a fixed port that can go away and come back."""

    port: int = field(default_factory=free_port)
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hooks/tts"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    receiver.deliveries.append(Delivery(headers, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def received(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)


def long_text(n: int) -> str:
    return "".join(LONG_SENTENCE.format(n=n) for _ in range(24))  # about 3,000 characters


def versioned_bucket(s3: S3Server) -> Minio:
    """The platform's bucket, made before it starts, keeping every version of a key."""
    client = Minio(
        s3.url.removeprefix("s3://"),
        access_key=S3Server.access_key,
        secret_key=S3Server.secret_key,
        secure=False,
        region=S3Server.region,
    )
    client.make_bucket(BUCKET)
    client.set_bucket_versioning(BUCKET, VersioningConfig(ENABLED))
    return client


@dataclass
class Cluster:
    topology: Topology
    nats: NatsServer
    s3: Minio
    receiver: Receiver
    api: httpx.Client


@pytest.fixture(scope="module")
def cluster(chart: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("faults")
    with ExitStack() as stack:
        mongo, s3, nats_server = (
            MongoServer(root / "mongo"),
            S3Server(root / "s3"),
            NatsServer(root / "nats"),
        )
        for server in (mongo, s3, nats_server):
            stack.callback(server.stop)
            server.launch()
        for server in (mongo, s3, nats_server):
            server.wait_until_ready()
        bucket = versioned_bucket(s3)
        values = chart_values(nats_server, s3)
        values["webhook"] = {**values["webhook"], "maxAttempts": 8}
        values["config"] = {
            **values["config"],
            "extraEnv": {
                # A killed render's lease runs out soon, so the test need not wait minutes.
                "TASK_LEASE_SECONDS": "6",
                # A task retaken after a kill is the first to run again, so it is often
                # the one in flight at the next kill: three kills of one task are what
                # the default of three attempts fails as a task that kills its worker.
                "TASK_MAX_ATTEMPTS": "5",
                "JETSTREAM_SINK_BACKOFF_MAX": "2",
            },
        }
        secrets = cluster_secrets(chart.values, mongo)
        running = Topology(chart, values, secrets, root / "pods")
        stack.enter_context(running)
        receiver = Receiver()
        receiver.start()
        stack.callback(receiver.stop)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        api = stack.enter_context(
            httpx.Client(base_url=running.url("router"), headers=headers, timeout=60)
        )
        yield Cluster(running, nats_server, bucket, receiver, api)


# --- the work ------------------------------------------------------------------------


def submit_all(cluster: Cluster, voice: str) -> list[Submitted]:
    api, callback = cluster.api, cluster.receiver.url()
    submitted: list[Submitted] = []
    n = 0

    def text_for(number: int) -> tuple[str, bool]:
        long_form = number % LONG_FORM_EVERY == 0
        return (long_text(number) if long_form else SHORT.format(n=number)), long_form

    for _ in range(TASKS_PER_PATH["task"]):
        n += 1
        text, long_form = text_for(n)
        body = {"text": text, "voice_id": voice, "callback_url": callback}
        created = api.post("/api/v3/cross-lingual/task", json=body)
        assert created.status_code == 200, created.text
        submitted.append(Submitted(created.json()["task_id"], "task", long_form))
    for _ in range(TASKS_PER_PATH["schedule"]):
        n += 1
        text, long_form = text_for(n)
        body = {"text": text, "voice_id": voice, "callback_url": callback, "priority": "high"}
        registered = api.post("/api/v3/schedule/register", json=body)
        assert registered.status_code == 200, registered.text
        submitted.append(Submitted(registered.json()["task_id"], "schedule", long_form))
    rendering = api.post("/api/v3/schedule/render-all", params={"max_tasks": 1000})
    assert rendering.status_code == 200, rendering.text

    specs = []
    for _ in range(TASKS_PER_PATH["submit"]):
        n += 1
        text, long_form = text_for(n)
        task_id = str(uuid.uuid4())
        specs.append(
            {"task_id": task_id, "text": text, "voice_id": voice, "callback_url": callback}
        )
        submitted.append(Submitted(task_id, "submit", long_form))
    asyncio.run(publish_submissions(cluster.nats.url, specs))
    return submitted


async def publish_submissions(url: str, specs: list[dict[str, Any]]) -> None:
    connection = await nats.connect(url)
    try:
        jetstream = connection.jetstream()
        for spec in specs:
            event_id = f"faults-{spec['task_id']}"
            headers = {
                "ce-specversion": "1.0",
                "ce-type": "ai.cosyvoice.render.submit.v1",
                "ce-source": "fault-test",
                "ce-id": event_id,
                "Nats-Msg-Id": event_id,
                "content-type": "application/json",
            }
            await jetstream.publish(
                "cosyvoice.render.submit", json.dumps(spec).encode(), headers=headers
            )
    finally:
        await connection.close()


def statuses(api: httpx.Client, tasks: list[Submitted]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for task in tasks:
        reply = api.get(task.status_url)
        found[task.task_id] = reply.json() if reply.status_code == 200 else {"status": "absent"}
    return found


def wait_until_processing(api: httpx.Client, timeout: float = 30) -> None:
    """Until some task is being rendered, so a kill lands mid-render."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for listing in ("/api/v3/cross-lingual/tasks", "/api/v3/schedule/tasks"):
            reply = api.get(listing, params={"status": "processing", "limit": 1})
            if reply.status_code == 200 and reply.json().get("tasks"):
                return
        time.sleep(0.2)


def kill_render_mid_flight(topology: Topology, api: httpx.Client) -> None:
    wait_until_processing(api)
    topology.kill("function-render")
    time.sleep(1.0)
    topology.start_workload("function-render")


# --- the test --------------------------------------------------------------------------


def test_every_task_completes_once_through_kills_and_outages(
    cluster: Cluster, speech_clips: Path
) -> None:
    topology, api, receiver = cluster.topology, cluster.api, cluster.receiver
    voice = create_voice(api, speech_clips / "cross_lingual_prompt.wav", language="en")
    started = time.monotonic()
    tasks = submit_all(cluster, voice)
    assert len(tasks) >= 100 and sum(t.long_form for t in tasks) >= 5

    kill_render_mid_flight(topology, api)
    receiver.stop()  # callbacks now fail until it is back
    kill_render_mid_flight(topology, api)
    topology.stop_workload("predictor-cosyvoice3")
    time.sleep(20)
    topology.start_workload("predictor-cosyvoice3")
    receiver.start()
    cluster.nats.restart()
    kill_render_mid_flight(topology, api)

    deadline = time.monotonic() + 150
    while True:
        found = statuses(api, tasks)
        waiting = {i: s["status"] for i, s in found.items() if s["status"] not in FINAL}
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(2)
    paths = {t.task_id: t.path for t in tasks}
    ended = Counter((paths[i], s["status"]) for i, s in found.items())
    problems = {i: (s["status"], s.get("error_message")) for i, s in found.items()}
    failed = {i: p for i, p in problems.items() if p[0] != "completed"}
    assert not failed, (
        f"{ended} after {time.monotonic() - started:.0f}s; not completed: "
        f"{dict(list(failed.items())[:10])}\n{topology.logs(1500)}"
    )

    # The audio of every task can be downloaded; a sample of them is decoded.
    sample = {t.task_id for t in tasks if t.long_form} | {t.task_id for t in tasks[::25]}
    for task in tasks:
        audio = api.get(found[task.task_id]["audio_url"])
        assert audio.status_code == 200, (task, audio.text[:200])
        if task.task_id in sample:
            heard = assert_speech(audio.content, fmt="wav")
            if task.long_form:
                assert heard.duration > 60, (task, heard.duration)

    # Each output object was written by exactly one successful claim.
    outputs = {"outputs/" + Path(found[t.task_id]["file_path"]).name: t.task_id for t in tasks}
    versions = Counter(
        item.object_name
        for item in cluster.s3.list_objects(
            BUCKET, prefix="outputs/", recursive=True, include_version=True
        )
        if item.object_name in outputs
    )
    written_twice = {key: n for key, n in versions.items() if n != 1}
    assert set(versions) == set(outputs), set(outputs) - set(versions)
    assert not written_twice, written_twice

    # Each task's callback arrived once per idempotency key, signed with the chart's key.
    deadline = time.monotonic() + 60
    while True:
        deliveries = receiver.received()
        told = {json.loads(d.body)["task_id"] for d in deliveries}
        if told >= set(outputs.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    time.sleep(2)  # a duplicate would arrive about now
    deliveries = receiver.received()
    keys = Counter(d.headers[IDEMPOTENCY_HEADER.lower()] for d in deliveries)
    assert all(n == 1 for n in keys.values()), {k: n for k, n in keys.items() if n > 1}
    per_task = Counter(json.loads(d.body)["task_id"] for d in deliveries)
    missing = set(outputs.values()) - set(per_task)
    assert not missing, f"{len(missing)} tasks without a callback: " + "\n".join(
        f"{i}: {statuses(api, [t for t in tasks if t.task_id == i])[i].get('webhook')}\n"
        f"{topology.mentions(i)}"
        for i in list(missing)[:3]
    )
    assert all(n == 1 for n in per_task.values()), per_task.most_common(3)
    for delivery in deliveries:
        assert verify(
            WEBHOOK_SECRET,
            delivery.headers[TIMESTAMP_HEADER.lower()],
            delivery.body,
            delivery.headers[SIGNATURE_HEADER.lower()],
            tolerance=3600,
        )
        assert json.loads(delivery.body)["status"] == "completed"

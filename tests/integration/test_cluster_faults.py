"""The cluster profile under faults: the API against real MongoDB-, S3- and NATS-speaking
servers that are stopped and restarted while it works.

Each test gets its own three servers (a fault in one test never leaks into the next) and
its own `cosyvoice-api serve` process with the espeak engine; what is checked is what a
client sees (status codes, details, task states, stored objects, bus subjects).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from minio import Minio

from core.adapters.cluster.nats_bus import DLQ_DELIVERIES_HEADER, DLQ_REASON_HEADER
from tests.audio_checks import assert_speech
from tests.conftest import TESTDATA
from tests.e2e.conftest import ApiServer, create_voice, embedded_env
from tests.servers import HOST, MongoServer, NatsServer, S3Server

pytestmark = pytest.mark.cluster

BUCKET = "cosyvoice-faults"
DLQ_SUBJECTS = "cosyvoice.dlq.>"
SUBMIT_SUBJECT = "cosyvoice.render.submit"
SUBMIT_TYPE = "ai.cosyvoice.render.submit.v1"


@dataclass
class Cluster:
    """The three backing servers of one test, and how an API server reaches them."""

    root: Path
    mongo: MongoServer
    s3: S3Server
    nats: NatsServer
    apis: list[ApiServer] = field(default_factory=list)

    def env(self, **overrides: str) -> dict[str, str]:
        return {
            **embedded_env(self.root),
            "DATABASE_URL": f"{self.mongo.url}/cosyvoice",
            "BLOB_STORE_URL": f"{self.s3.url}/{BUCKET}",
            "AWS_ACCESS_KEY_ID": S3Server.access_key,
            "AWS_SECRET_ACCESS_KEY": S3Server.secret_key,
            "AWS_REGION": S3Server.region,
            "EVENT_BUS_URL": self.nats.url,
            "WEBHOOK_SECRET": "cluster-faults-webhook-secret",
            "LOG_LEVEL": "warning",
            **overrides,
        }

    def api(self, **overrides: str) -> ApiServer:
        server = ApiServer(self.root / "api", self.env(**overrides)).start()
        self.apis.append(server)
        return server

    def s3_client(self) -> Minio:
        return Minio(
            f"{HOST}:{self.s3.port}",
            access_key=S3Server.access_key,
            secret_key=S3Server.secret_key,
            region=S3Server.region,
            secure=False,
        )

    def objects(self, prefix: str) -> list[str]:
        listing = self.s3_client().list_objects(BUCKET, prefix=prefix, recursive=True)
        return [item.object_name for item in listing if item.object_name]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with ExitStack() as stack:
        running = Cluster(
            root=tmp_path,
            mongo=stack.enter_context(MongoServer(tmp_path / "mongo")),
            s3=stack.enter_context(S3Server(tmp_path / "s3")),
            nats=stack.enter_context(NatsServer(tmp_path / "nats")),
        )
        try:
            yield running
        finally:
            for api in running.apis:
                api.stop()


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:g}s (last: {value!r})")
        time.sleep(every)


def status_counts(http: httpx.Client) -> dict[str, int]:
    reply = http.get("/api/v3/schedule/tasks", params={"limit": 1})
    assert reply.status_code == 200, reply.text
    return reply.json()["status_counts"]


def all_tasks(http: httpx.Client) -> list[dict[str, Any]]:
    reply = http.get("/api/v3/schedule/tasks", params={"limit": 1000})
    assert reply.status_code == 200, reply.text
    return reply.json()["tasks"]


# --- 1. the database goes away and comes back ---------------------------------------------

BACKEND_TIMEOUT = 2.0
# A request may wait out one server selection plus one retried read before it answers.
ANSWER_WITHIN = 2 * BACKEND_TIMEOUT + 2.0


class Prober(threading.Thread):
    """Lists voices in a loop, recording (status, seconds, detail) of every answer."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.answers: list[tuple[int, float, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=3 * ANSWER_WITHIN) as http:
            while not self.halt.is_set():
                started = time.monotonic()
                try:
                    reply = http.get("/api/v3/voices/")
                except httpx.HTTPError as exc:  # a hang or a dropped connection: status 0
                    self.answers.append((0, time.monotonic() - started, repr(exc)))
                    continue
                elapsed = time.monotonic() - started
                detail = reply.json().get("detail", "") if reply.status_code != 200 else ""
                self.answers.append((reply.status_code, elapsed, str(detail)))
                time.sleep(0.05)

    def count(self, status: int) -> int:
        return sum(1 for answer in self.answers if answer[0] == status)


def test_database_outage_answers_503_quickly_and_recovers_without_a_restart(
    cluster: Cluster,
) -> None:
    api = cluster.api(BACKEND_TIMEOUT=str(BACKEND_TIMEOUT))
    with httpx.Client(base_url=api.url, timeout=30) as http:
        voice_id = create_voice(http, TESTDATA / "cross_lingual_prompt.wav", language="en")
        prober = Prober(api.url)
        prober.start()
        try:
            wait_until(lambda: prober.count(200) >= 3, 10, "voice list answered")
            cluster.mongo.stop()
            wait_until(lambda: prober.count(503) >= 3, 20, "503 while the database is down")

            started = time.monotonic()
            synthesis = http.post(
                "/api/v3/cross-lingual/with-cache",
                json={"text": "The database is down.", "voice_id": voice_id},
            )
            synthesis_seconds = time.monotonic() - started
            health = http.get("/health").json()

            cluster.mongo.start()
            wait_until(lambda: prober.answers[-1][0] == 200, 30, "voice list answered again")
        finally:
            prober.halt.set()
            prober.join(30)

        # every answer during the outage was a clear 503, never a 500 or a hang
        assert {status for status, _, _ in prober.answers} <= {200, 503}, prober.answers
        slowest = max(seconds for _, seconds, _ in prober.answers)
        assert slowest < ANSWER_WITHIN, f"a request took {slowest:.1f}s"
        outage = [detail for status, _, detail in prober.answers if status == 503]
        assert all("database" in detail.lower() for detail in outage), outage[:3]

        assert synthesis.status_code == 503, synthesis.text
        assert "database" in synthesis.json()["detail"].lower()
        assert synthesis_seconds < ANSWER_WITHIN

        assert health["status"] == "degraded", health
        assert health["services"]["database"]["ok"] is False, health
        assert health["services"]["database"]["detail"], health
        assert health["services"]["blob_store"]["ok"] is True, health

        # the same process serves again: the voice is still there and speaks
        voices = http.get("/api/v3/voices/")
        assert voices.status_code == 200, voices.text
        assert voice_id in [voice["voice_id"] for voice in voices.json()["voices"]]
        spoken = http.post(
            "/api/v3/cross-lingual/with-cache",
            json={"text": "The database is back.", "voice_id": voice_id},
        )
        assert spoken.status_code == 200, spoken.text
        assert_speech(http.get(spoken.json()["audio_url"]).content, fmt="wav")
        wait_until(lambda: http.get("/health").json()["status"] == "healthy", 15, "healthy again")
    assert api.proc is not None and api.proc.poll() is None, "the API process restarted"


# --- 2. the event bus restarts in the middle of a batch -----------------------------------

BATCH = 200
REGISTERING = 4  # requests at once: the API overlaps their database round trips


def test_event_bus_restart_mid_batch_completes_every_render_once(cluster: Cluster) -> None:
    # One API process queues (it renders nothing), a second one renders, as a router and
    # its render workers do: the whole batch is on the bus before the first render, so
    # the restart always lands in the middle however fast the workers are.
    front = cluster.api(WORKER_CONCURRENCY="0")
    with httpx.Client(base_url=front.url, timeout=60) as http:
        voice_id = create_voice(http, TESTDATA / "cross_lingual_prompt.wav", language="en")

        def register(n: int) -> httpx.Response:
            return http.post(
                "/api/v3/schedule/register",
                json={"text": f"Task {n}.", "voice_id": voice_id, "priority": "normal"},
            )

        with ThreadPoolExecutor(REGISTERING) as pool:
            registered = list(pool.map(register, range(BATCH)))
        assert all(reply.status_code == 200 for reply in registered)
        task_ids = {reply.json()["task_id"] for reply in registered}

        queued = http.post("/api/v3/schedule/render-all", params={"max_tasks": BATCH})
        assert queued.status_code == 200, queued.text
        assert set(queued.json()["task_ids"]) == task_ids
        assert status_counts(http)["scheduled"] == BATCH

        cluster.api(WORKER_CONCURRENCY="4")
        wait_until(lambda: status_counts(http)["completed"] >= 10, 60, "renders started")
        cluster.nats.restart()
        unfinished_at_restart = BATCH - status_counts(http)["completed"]

        wait_until(
            lambda: (c := status_counts(http))["completed"] + c["failed"] == BATCH,
            120,
            "every render ended",
            every=1.0,
        )
        tasks = [task for task in all_tasks(http) if task["task_id"] in task_ids]

    assert unfinished_at_restart >= BATCH // 2, f"only {unfinished_at_restart} left at the restart"
    assert len(tasks) == BATCH
    failed = [task for task in tasks if task["status"] != "completed"]
    assert not failed, failed[:3]
    attempts = sorted(task["attempts"] for task in tasks)
    assert attempts[-1] == 1, f"some renders were started more than once: {attempts[-10:]}"
    outputs = cluster.objects("outputs/")
    assert len(outputs) == BATCH
    assert sorted(outputs) == sorted(task["file_path"] for task in tasks)


# --- 3. a render that always fails ends in the dead-letter subject --------------------------

MAX_ATTEMPTS = 2
# Two deliveries, each retried after about a second, then the copy to the DLQ.
DLQ_WITHIN = 15.0


async def test_a_render_that_always_fails_is_dead_lettered_and_the_task_failed(
    cluster: Cluster,
) -> None:
    api = cluster.api(WORKER_CONCURRENCY="1", TASK_MAX_ATTEMPTS=str(MAX_ATTEMPTS))
    async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
        voice_id = await asyncio.to_thread(
            create_voice_sync, api.url, TESTDATA / "cross_lingual_prompt.wav"
        )
        registered = await http.post(
            "/api/v3/schedule/register",
            json={"text": "This render can never succeed.", "voice_id": voice_id},
        )
        assert registered.status_code == 200, registered.text
        task_id = registered.json()["task_id"]

        # The voice record stays; only its stored sample disappears, so every render fails.
        samples = await asyncio.to_thread(cluster.objects, f"voices/{voice_id}/samples/")
        assert len(samples) == 1, samples
        await asyncio.to_thread(cluster.s3_client().remove_object, BUCKET, samples[0])

        connection = await nats.connect(cluster.nats.url)
        try:
            dead_letters = await connection.subscribe(DLQ_SUBJECTS)
            rendered = await http.post(f"/api/v3/schedule/render/{task_id}")
            assert rendered.status_code == 200, rendered.text
            try:
                message = await dead_letters.next_msg(timeout=DLQ_WITHIN)
            except nats.errors.TimeoutError:
                status = (await http.get(f"/api/v3/schedule/status/{task_id}")).json()
                pytest.fail(f"nothing arrived on {DLQ_SUBJECTS}; the task is {status}")
        finally:
            await connection.close()

        assert message.subject == "cosyvoice.dlq.cosyvoice.render.requested.normal"
        assert json.loads(message.data)["task_id"] == task_id
        assert message.headers is not None
        assert message.headers["ce-type"] == "ai.cosyvoice.render.requested.v1"
        assert message.headers[DLQ_DELIVERIES_HEADER] == str(MAX_ATTEMPTS)
        assert "sample" in message.headers[DLQ_REASON_HEADER]

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while True:
            status = (await http.get(f"/api/v3/schedule/status/{task_id}")).json()
            if status["status"] == "failed" or loop.time() > deadline:
                break
            await asyncio.sleep(0.2)
        assert status["status"] == "failed", status
        assert "sample" in (status["error_message"] or ""), status


def create_voice_sync(url: str, clip: Path) -> str:
    with httpx.Client(base_url=url, timeout=60) as http:
        return create_voice(http, clip, language="en")


# --- 4. an external producer puts render jobs straight on the bus ---------------------------

EVENTS = 100
DUPLICATES = 10


def test_external_producer_events_become_one_task_each(cluster: Cluster) -> None:
    api = cluster.api(WORKER_CONCURRENCY="4")
    with httpx.Client(base_url=api.url, timeout=60) as http:
        voice_id = create_voice(http, TESTDATA / "cross_lingual_prompt.wav", language="en")

    unique = EVENTS - DUPLICATES
    events: list[tuple[str, dict[str, Any]]] = []
    for n in range(unique):
        body: dict[str, Any] = {"text": f"Produced {n}.", "voice_id": voice_id}
        if n % 2 == 0:  # half name their task, half let the event id name it
            body["task_id"] = str(uuid.uuid4())
        events.append((f"producer-{uuid.uuid4()}", body))
    events += events[:: unique // DUPLICATES][:DUPLICATES]  # a producer's retries
    assert len(events) == EVENTS

    dropped = asyncio.run(publish_submissions(cluster.nats.url, events))
    assert dropped == DUPLICATES, f"the stream dropped {dropped} repeated events"

    with httpx.Client(base_url=api.url, timeout=60) as http:
        wait_until(
            lambda: (c := status_counts(http))["completed"] + c["failed"] >= unique,
            90,
            f"{unique} submitted tasks ended",
            every=0.5,
        )
        time.sleep(1.0)  # a late duplicate would show up now
        listing = http.get("/api/v3/schedule/tasks", params={"limit": 1000}).json()
        tasks = listing["tasks"]

    assert listing["total"] == unique, f"{listing['total']} tasks for {unique} distinct events"
    assert len(tasks) == unique
    assert {task["kind"] for task in tasks} == {"scheduled"}
    named = {body["task_id"] for _, body in events if "task_id" in body}
    assert named <= {task["task_id"] for task in tasks}
    assert all(task["status"] == "completed" for task in tasks), [
        task for task in tasks if task["status"] != "completed"
    ][:3]
    assert {task["attempts"] for task in tasks} == {1}
    assert len(cluster.objects("outputs/")) == unique


async def publish_submissions(url: str, events: list[tuple[str, dict[str, Any]]]) -> int:
    """Publish binary-mode CloudEvents as a producer would; how many the stream dropped
    as repeats of an earlier event."""
    connection = await nats.connect(url)
    dropped = 0
    try:
        jetstream = connection.jetstream()
        for event_id, body in events:
            headers = {
                "ce-specversion": "1.0",
                "ce-type": SUBMIT_TYPE,
                "ce-source": "/tests/producer",
                "ce-id": event_id,
                "content-type": "application/json",
                "Nats-Msg-Id": event_id,
            }
            ack = await jetstream.publish(
                SUBMIT_SUBJECT, json.dumps(body).encode(), headers=headers
            )
            dropped += bool(ack.duplicate)
    finally:
        await connection.close()
    return dropped

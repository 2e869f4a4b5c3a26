"""The Knative topology on one machine: API → NATS → source adapter → functions.

Every part is its own process, as in the cluster: the API (rendering nothing itself),
the render and webhook functions served by the real func-python middleware, and two
JetStream source adapters POSTing CloudEvents to them (what a ContainerSource does with
K_SINK). They share SQLite and a folder as their repository and blob store.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from core.services.webhooks import verify
from tests.audio_checks import assert_speech
from tests.conftest import TESTDATA
from tests.e2e.conftest import BIN, ApiServer, create_voice, embedded_env, wait_http
from tests.servers import NatsServer, free_port

SECRET = "functions-test-secret"


class Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.received: list[tuple[dict[str, str], bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _ReceiverHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.received.append((dict(self.headers), body))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class Process:
    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, name: str) -> None:
        self.log = cwd / f"{name}.log"
        self.proc = subprocess.Popen(
            args,
            env={**os.environ, **env},
            cwd=cwd,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiServer, Receiver]]:
    root = tmp_path_factory.mktemp("functions")
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    processes: list[Process] = []
    with NatsServer(root / "nats") as nats:
        env = {
            **embedded_env(root),
            "EVENT_BUS_URL": nats.url,
            "WORKER_CONCURRENCY": "0",
            "WEBHOOK_ALLOW_PRIVATE": "true",
            "WEBHOOK_SECRET": SECRET,
            "WEBHOOK_BACKOFF_SECONDS": "0.2",
        }
        api = ApiServer(root, env).start()
        try:
            ports = {"render": free_port(), "webhook": free_port()}
            for name, port in ports.items():
                processes.append(
                    Process(
                        [
                            str(BIN / "cosyvoice-api"),
                            "function",
                            name,
                            "--listen",
                            f"127.0.0.1:{port}",
                        ],
                        env,
                        root,
                        f"function-{name}",
                    )
                )
            for port in ports.values():
                wait_http(f"http://127.0.0.1:{port}/health/readiness", 60)
            sources = {
                "render": "cosyvoice.render.requested.*,cosyvoice.render.submit",
                "webhook": "cosyvoice.task.>",
            }
            for name, subjects in sources.items():
                processes.append(
                    Process(
                        [str(BIN / "cosyvoice-api"), "jetstream-source"],
                        {
                            **env,
                            "K_SINK": f"http://127.0.0.1:{ports[name]}",
                            "JETSTREAM_SUBJECTS": subjects,
                        },
                        root,
                        f"source-{name}",
                    )
                )
            yield api, receiver
        finally:
            for process in processes:
                process.stop()
            api.stop()
            receiver.shutdown()


def wait_for_status(http: httpx.Client, task_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = http.get(f"/api/v3/schedule/status/{task_id}").json()
        if status.get("status") in ("completed", "failed", "cancelled"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not finish: {status}")


def test_task_rendered_by_the_function_with_signed_webhook(
    topology: tuple[ApiServer, Receiver],
) -> None:
    api, receiver = topology
    with httpx.Client(base_url=api.url, timeout=60) as http:
        voice_id = create_voice(http, TESTDATA / "cross_lingual_prompt.wav")
        created = http.post(
            "/api/v3/cross-lingual/task",
            json={
                "text": "Rendered by a function.",
                "voice_id": voice_id,
                "callback_url": receiver.url,
            },
        )
        assert created.status_code == 200, created.text
        task_id = created.json()["task_id"]
        status = wait_for_status(http, task_id)
        assert status["status"] == "completed", status
        assert_speech(http.get(status["audio_url"]).content, fmt="wav")

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not receiver.received:
        time.sleep(0.1)
    assert receiver.received, "no webhook arrived"
    headers, body = receiver.received[0]
    assert verify(SECRET, headers["X-CosyVoice-Timestamp"], body, headers["X-CosyVoice-Signature"])
    assert json.loads(body)["task_id"] == task_id


def test_external_producer_submission(topology: tuple[ApiServer, Receiver]) -> None:
    api, _ = topology
    with httpx.Client(base_url=api.url, timeout=60) as http:
        voice_id = create_voice(http, TESTDATA / "cross_lingual_prompt.wav")
    task_id = str(uuid.uuid4())
    nats_url = api.env["EVENT_BUS_URL"]

    async def publish() -> None:
        import nats

        connection = await nats.connect(nats_url)
        headers = {
            "ce-specversion": "1.0",
            "ce-type": "ai.cosyvoice.render.submit.v1",
            "ce-source": "tests",
            "ce-id": f"submit-{task_id}",
            "Nats-Msg-Id": f"submit-{task_id}",
            "content-type": "application/json",
        }
        body = json.dumps({"task_id": task_id, "text": "From a producer.", "voice_id": voice_id})
        for _ in range(2):  # the same event twice: one task
            await connection.jetstream().publish(
                "cosyvoice.render.submit", body.encode(), headers=headers
            )
        await connection.close()

    asyncio.run(publish())
    with httpx.Client(base_url=api.url, timeout=60) as http:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if http.get(f"/api/v3/schedule/status/{task_id}").status_code == 200:
                break
            time.sleep(0.2)
        status = wait_for_status(http, task_id)
        assert status["status"] == "completed", status
        listed = http.get("/api/v3/schedule/tasks", params={"limit": 100}).json()["tasks"]
        assert [t["task_id"] for t in listed].count(task_id) == 1

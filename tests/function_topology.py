"""The Knative function topology as processes on one machine, and a webhook recorder.

What a cluster runs as pods and ContainerSources: `cosyvoice-api function <name>`
processes serving CloudEvents over HTTP, and `cosyvoice-api jetstream-source` processes
POSTing the events of a JetStream subject to one of them (`K_SINK`).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from tests.e2e.conftest import BIN, ApiServer, embedded_env, wait_http
from tests.servers import NatsServer, free_port

RENDER_SUBJECTS = "cosyvoice.render.requested.*,cosyvoice.render.submit"
WEBHOOK_SUBJECTS = "cosyvoice.task.>"


class Process:
    """A command of its own, its output in `<cwd>/<name>.log`."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, name: str) -> None:
        self.log = cwd / f"{name}.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                args,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def function_process(name: str, port: int, env: dict[str, str], cwd: Path, log: str) -> Process:
    """The `name` function (render, webhook) listening on 127.0.0.1:`port`."""
    argv = [str(BIN / "cosyvoice-api"), "function", name, "--listen", f"127.0.0.1:{port}"]
    return Process(argv, env, cwd, log)


def source_process(
    sink_port: int, subjects: str, env: dict[str, str], cwd: Path, log: str
) -> Process:
    """A JetStream source sending the events of `subjects` to the function on `sink_port`."""
    source_env = {**env, "K_SINK": f"http://127.0.0.1:{sink_port}", "JETSTREAM_SUBJECTS": subjects}
    return Process([str(BIN / "cosyvoice-api"), "jetstream-source"], source_env, cwd, log)


@dataclass(frozen=True)
class Functions:
    api: ApiServer
    nats_url: str


@contextmanager
def render_and_webhook_functions(root: Path, webhook_secret: str) -> Iterator[Functions]:
    """NATS, the API (rendering nothing itself) and the render and webhook functions,
    each fed by its own source. Webhooks may go to loopback receivers, signed with
    `webhook_secret`, and are retried quickly."""
    processes: list[Process] = []
    with NatsServer(root / "nats") as nats_server:
        env = {
            **embedded_env(root),
            "EVENT_BUS_URL": nats_server.url,
            "WORKER_CONCURRENCY": "0",
            "WEBHOOK_ALLOW_PRIVATE": "true",
            "WEBHOOK_SECRET": webhook_secret,
            "WEBHOOK_BACKOFF_SECONDS": "0.2",
        }
        api = ApiServer(root, env).start()
        try:
            ports = {"render": free_port(), "webhook": free_port()}
            for name, port in ports.items():
                processes.append(function_process(name, port, env, root, f"function-{name}"))
            for port in ports.values():
                wait_http(f"http://127.0.0.1:{port}/health/readiness", 60)
            sources = {"render": RENDER_SUBJECTS, "webhook": WEBHOOK_SUBJECTS}
            for name, subjects in sources.items():
                processes.append(source_process(ports[name], subjects, env, root, f"source-{name}"))
            yield Functions(api, nats_server.url)
        finally:
            for process in processes:
                process.stop()
            api.stop()


def wait_for_status(http: httpx.Client, task_id: str, timeout: float = 60) -> dict:
    """The task's status once it ended (completed, failed or cancelled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = http.get(f"/api/v3/schedule/status/{task_id}").json()
        if status.get("status") in ("completed", "failed", "cancelled"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not finish: {status}")


class Receiver(ThreadingHTTPServer):
    """Records every POST (headers, body) and answers 204; `start()` serves in a thread."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RecordingHandler)
        self.received: list[tuple[dict[str, str], bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def start(self) -> Receiver:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _RecordingHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.received.append((dict(self.headers), body))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass

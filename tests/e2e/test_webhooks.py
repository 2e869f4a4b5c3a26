"""Webhooks end to end: a real receiver on loopback gets signed, retried task events."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from core.services.webhooks import verify
from tests.conftest import TESTDATA
from tests.e2e.conftest import ApiServer, ServerFactory, create_voice
from tests.e2e.test_tasks import wait_for

SECRET = "webhook-test-secret"


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)


class Receiver:
    """An HTTP server on 127.0.0.1. `/fail/<n>/<name>` answers 503 to the first n POSTs
    (per path), then 200; any other path answers 200 at once."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.failures: dict[str, int] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.deliveries.append(
                        Delivery(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    code = receiver.answer(self.path)
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path: str) -> int:
        parts = path.strip("/").split("/")
        if parts[0] == "fail":
            seen = self.failures.get(path, 0)
            self.failures[path] = seen + 1
            return 503 if seen < int(parts[1]) else 200
        return 200

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http.server_port}{path}"

    def to(self, path: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.path == path]

    def wait(self, path: str, count: int, timeout: float = 30) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while len(self.to(path)) < count:
            assert time.monotonic() < deadline, f"{len(self.to(path))} deliveries to {path}"
            time.sleep(0.05)
        return self.to(path)

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


@pytest.fixture(scope="module")
def hook_server(server_factory: ServerFactory) -> ApiServer:
    return server_factory(
        WEBHOOK_ALLOW_PRIVATE="true",
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_BACKOFF_SECONDS="0.2",
        WEBHOOK_MAX_ATTEMPTS="4",
        WEBHOOK_TIMEOUT="5",
    )


@pytest.fixture(scope="module")
def hook_client(hook_server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hook_server.url, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def hook_voice(hook_client: httpx.Client) -> str:
    return create_voice(hook_client, TESTDATA / "cross_lingual_prompt.wav", language="en")


def test_completed_event_is_signed(
    hook_client: httpx.Client, hook_voice: str, receiver: Receiver
) -> None:
    created = hook_client.post(
        "/api/v3/cross-lingual/task",
        json={
            "text": "Call me back when done.",
            "voice_id": hook_voice,
            "callback_url": receiver.url("/signed"),
            "metadata": {"order": "A-1"},
        },
    ).json()
    (delivery,) = receiver.wait("/signed", 1)
    headers = delivery.headers
    assert headers["content-type"] == "application/json"
    assert headers["x-cosyvoice-event"] == "task.completed"
    assert headers["x-cosyvoice-signature"].startswith("sha256=")
    assert verify(
        SECRET, headers["x-cosyvoice-timestamp"], delivery.body, headers["x-cosyvoice-signature"]
    )
    assert not verify(
        "wrong-secret",
        headers["x-cosyvoice-timestamp"],
        delivery.body,
        headers["x-cosyvoice-signature"],
    )
    assert headers["x-cosyvoice-idempotency-key"]

    event = delivery.json
    status = hook_client.get(f"/api/v3/cross-lingual/task/{created['task_id']}").json()
    assert event["task_id"] == created["task_id"] and event["status"] == "completed"
    assert event["metadata"] == {"order": "A-1"}
    for field in ("audio_url", "file_path", "duration", "synthesis_time", "completed_at"):
        assert event[field] == status[field]
    assert hook_client.get(event["audio_url"]).status_code == 200
    deadline = time.monotonic() + 10
    while status["webhook"]["status"] != "delivered":
        assert time.monotonic() < deadline, status["webhook"]
        time.sleep(0.05)
        status = hook_client.get(f"/api/v3/cross-lingual/task/{created['task_id']}").json()
    assert status["webhook"]["attempts"] == 1


def test_failing_receiver_gets_the_same_event_until_it_accepts(
    hook_client: httpx.Client, hook_voice: str, receiver: Receiver
) -> None:
    path = "/fail/2/flaky"
    task_id = hook_client.post(
        "/api/v3/schedule/register",
        json={"text": "Retry me.", "voice_id": hook_voice, "callback_url": receiver.url(path)},
    ).json()["task_id"]
    hook_client.post(f"/api/v3/schedule/render/{task_id}")
    deliveries = receiver.wait(path, 3)
    time.sleep(1.0)  # nothing more comes once it is accepted
    deliveries = receiver.to(path)
    assert len(deliveries) == 3
    assert len({d.headers["x-cosyvoice-idempotency-key"] for d in deliveries}) == 1
    assert {d.json["task_id"] for d in deliveries} == {task_id}
    for delivery in deliveries:
        assert verify(
            SECRET,
            delivery.headers["x-cosyvoice-timestamp"],
            delivery.body,
            delivery.headers["x-cosyvoice-signature"],
        )
    webhook = hook_client.get(f"/api/v3/schedule/status/{task_id}").json()["webhook"]
    assert webhook["status"] == "delivered" and webhook["attempts"] == 3


def test_cancelled_event(hook_client: httpx.Client, hook_voice: str, receiver: Receiver) -> None:
    task_id = hook_client.post(
        "/api/v3/schedule/register",
        json={
            "text": "Cancel me.",
            "voice_id": hook_voice,
            "callback_url": receiver.url("/cancelled"),
        },
    ).json()["task_id"]
    assert hook_client.delete(f"/api/v3/schedule/task/{task_id}").status_code == 200
    (delivery,) = receiver.wait("/cancelled", 1)
    assert delivery.headers["x-cosyvoice-event"] == "task.cancelled"
    assert delivery.json["status"] == "cancelled"
    assert wait_for(hook_client, f"/api/v3/schedule/status/{task_id}")["status"] == "cancelled"


def test_private_callbacks_are_refused_by_default(
    client: httpx.Client, voice_id: str, receiver: Receiver
) -> None:
    for url in (
        receiver.url("/never"),
        "http://localhost:8080/hook",
        "http://10.0.0.8/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
    ):
        for path in ("/api/v3/cross-lingual/task", "/api/v3/schedule/register"):
            response = client.post(
                path, json={"text": "Hi.", "voice_id": voice_id, "callback_url": url}
            )
            assert response.status_code == 400, (url, response.text)
            assert "callback_url" in response.json()["detail"]
    response = client.post(
        "/api/v2/cross-lingual/async",
        json={"text": "Hi.", "voice_id": voice_id, "callback_url": receiver.url("/never")},
    )
    assert response.status_code == 400
    assert "loopback" in response.json()["detail"]
    assert receiver.to("/never") == []

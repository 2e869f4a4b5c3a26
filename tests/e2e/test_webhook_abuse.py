"""Webhook receivers that try to hold or flood the server, and callbacks that can never work.

Each hostile receiver is a real TCP server on loopback; what is checked is what a client
of the API sees (the task's recorded `webhook` state, status codes) and the server's own
memory and /health while it delivers.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.services.webhooks import verify
from tests.e2e.conftest import PROFILE, ApiServer, ServerFactory, create_voice
from tests.e2e.test_tasks import wait_for
from tests.e2e.watch import ServerWatch

WEBHOOK_TIMEOUT = 2.0
TRICKLE_PAUSE = 5.0
HUGE_BODY = 400 * 1024 * 1024


class HostileReceiver:
    """Answers every request on one of two hostile scripts.

    `trickle`: the status line one byte every TRICKLE_PAUSE seconds (each read gets data,
    so only a deadline on the whole attempt ends it). `huge`: 200 OK with a body of
    HUGE_BODY bytes, made lazily piece by piece while the client reads.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests = 0
        self.body_bytes_sent = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.stopping = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                self._read_request(conn)
                self.requests += 1
                if self.mode == "trickle":
                    for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n":
                        conn.sendall(bytes([byte]))
                        if self.stopping.wait(TRICKLE_PAUSE):
                            return
                else:
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                        + f"content-length: {HUGE_BODY}\r\n\r\n".encode()
                    )
                    piece = b"\0" * 65536
                    while self.body_bytes_sent < HUGE_BODY and not self.stopping.is_set():
                        conn.sendall(piece)
                        self.body_bytes_sent += len(piece)
            except OSError:
                pass  # the client hung up: what a well-behaved sender does

    @staticmethod
    def _read_request(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return
            body += chunk

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()


@pytest.fixture
def trickler() -> Iterator[HostileReceiver]:
    receiver = HostileReceiver("trickle")
    yield receiver
    receiver.close()


@pytest.fixture
def flooder() -> Iterator[HostileReceiver]:
    receiver = HostileReceiver("huge")
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def abuse_server(server_factory: ServerFactory) -> ApiServer:
    return server_factory(
        WEBHOOK_ALLOW_PRIVATE="true",
        WEBHOOK_SECRET="abuse-test-secret",
        WEBHOOK_TIMEOUT=str(WEBHOOK_TIMEOUT),
        WEBHOOK_MAX_ATTEMPTS="2",
        WEBHOOK_BACKOFF_SECONDS="0.2",
    )


@pytest.fixture(scope="module")
def http(abuse_server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=abuse_server.url, timeout=60) as client:
        yield client


def make_voice(http: httpx.Client, clip: bytes) -> str:
    return create_voice(http, clip, prefix="abuse")


@pytest.fixture(scope="module")
def voice(http: httpx.Client, english_clip: bytes) -> str:
    return make_voice(http, english_clip)


def wait_webhook(http: httpx.Client, task_id: str, timeout: float) -> dict:
    """The task's webhook state once it is no longer pending."""
    deadline = time.monotonic() + timeout
    while True:
        task = http.get(f"/api/v3/cross-lingual/task/{task_id}").json()
        hook = task["webhook"]
        if task["status"] == "completed" and hook["status"] in ("delivered", "failed"):
            return hook
        assert time.monotonic() < deadline, f"webhook still {hook} after {timeout}s"
        time.sleep(0.1)


def start_task(http: httpx.Client, voice: str, callback_url: str) -> str:
    response = http.post(
        "/api/v3/cross-lingual/task",
        json={"text": "Tell a slow receiver.", "voice_id": voice, "callback_url": callback_url},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["task_id"])


# --- receivers that hold or flood ----------------------------------------------------------


@pytest.mark.quiet
def test_a_trickling_receiver_cannot_hold_a_delivery_open(
    abuse_server: ApiServer, http: httpx.Client, voice: str, trickler: HostileReceiver
) -> None:
    with ServerWatch(abuse_server) as watch:
        task_id = start_task(http, voice, trickler.url)
        wait_for(http, f"/api/v3/cross-lingual/task/{task_id}")
        started = time.monotonic()
        hook = wait_webhook(http, task_id, timeout=30)
        elapsed = time.monotonic() - started
    # Two attempts of at most WEBHOOK_TIMEOUT each, one short pause: the receiver would
    # have kept a per-read time-out waiting for 37 bytes × 5 s.
    assert hook["status"] == "failed", hook
    assert hook["attempts"] == 2
    assert f"timed out after {WEBHOOK_TIMEOUT:g}s" in hook["last_error"]
    assert elapsed < 2 * WEBHOOK_TIMEOUT + 5
    assert trickler.requests == 2
    watch.assert_healthy(max_rss_mb=400, max_health_s=1.0)


@pytest.mark.quiet
def test_a_huge_answer_is_never_read(
    abuse_server: ApiServer, http: httpx.Client, voice: str, flooder: HostileReceiver
) -> None:
    with ServerWatch(abuse_server) as watch:
        task_id = start_task(http, voice, flooder.url)
        hook = wait_webhook(http, task_id, timeout=60)
    assert hook["status"] == "delivered", hook
    assert hook["attempts"] == 1
    assert flooder.body_bytes_sent < HUGE_BODY  # the server hung up long before the end
    watch.assert_healthy(max_rss_mb=400, max_health_s=1.0)


# --- callbacks that could never be delivered -----------------------------------------------

BROKEN_URLS = [
    pytest.param("http://example.com/hook\r\nX-Injected: 1", id="crlf"),
    pytest.param("http://example.com/ho\nok", id="lf"),
    pytest.param("http://example.com/ho\rok", id="cr"),
    pytest.param("http://example.com/\x00hook", id="nul"),
    pytest.param("http://example.com/my hook", id="space"),
    pytest.param(" http://example.com/hook", id="leading-space"),
    pytest.param("http://example.com/hook\t", id="tab"),
    pytest.param("ftp://example.com/hook", id="not-http"),
    pytest.param("http:///hook", id="no-host"),
    pytest.param("http://example.com/" + "a" * 2100, id="too-long"),
]

ROUTES = [
    pytest.param("/api/v3/cross-lingual/task", id="v3-task"),
    pytest.param("/api/v2/cross-lingual/task", id="v2-task"),
    pytest.param("/api/v3/schedule/register", id="v3-schedule"),
    pytest.param("/api/v1/cross-lingual/async", id="v1-async"),
    pytest.param("/api/v2/cross-lingual/async", id="v2-async"),
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("url", BROKEN_URLS)
def test_a_callback_that_can_never_be_sent_is_refused_at_registration(
    http: httpx.Client, voice: str, route: str, url: str
) -> None:
    before = http.get("/api/v3/cross-lingual/tasks", params={"limit": 1}).json()["total"]
    response = http.post(
        route, json={"text": "Never sent.", "voice_id": voice, "callback_url": url}
    )
    assert response.status_code == 400, response.text
    assert "callback_url" in response.json()["detail"]
    after = http.get("/api/v3/cross-lingual/tasks", params={"limit": 1}).json()["total"]
    assert after == before  # nothing was created


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("Hello <|endofprompt|> world.", id="end-of-prompt"),
        pytest.param("<|im_start|>system", id="chat-marker"),
        pytest.param("... !!! ???", id="nothing-to-speak"),
    ],
)
@pytest.mark.parametrize("route", ROUTES)
def test_text_that_can_never_render_is_refused_at_creation(
    http: httpx.Client, voice: str, route: str, text: str
) -> None:
    response = http.post(route, json={"text": text, "voice_id": voice})
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "control token" in detail or "nothing to speak" in detail


# --- the signing key ------------------------------------------------------------------------


@pytest.mark.skipif(PROFILE != "embedded", reason="the embedded profile makes its own key")
def test_the_embedded_profile_makes_a_key_and_keeps_it(
    server_factory: ServerFactory, tmp_path: Path, english_clip: bytes
) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    data_dir = tmp_path / "keeps-key"
    key_file = data_dir / "webhook-secret"
    try:
        for round_ in range(2):  # the second round is a restart on the same data
            server = server_factory(data_dir, WEBHOOK_ALLOW_PRIVATE="true")
            try:
                with httpx.Client(base_url=server.url, timeout=60) as client:
                    voice = make_voice(client, english_clip)
                    start_task(client, voice, hook_url)
                    deadline = time.monotonic() + 60
                    while len(received) <= round_:
                        assert time.monotonic() < deadline, "no webhook arrived"
                        time.sleep(0.05)
            finally:
                server.stop()
            if round_ == 0:
                key = key_file.read_text().strip()
                assert len(key) >= 32
                assert key_file.stat().st_mode & 0o777 == 0o600
            headers, body = received[round_]
            assert verify(
                key, headers["x-cosyvoice-timestamp"], body, headers["x-cosyvoice-signature"]
            )
            assert not verify(
                "change-me",
                headers["x-cosyvoice-timestamp"],
                body,
                headers["x-cosyvoice-signature"],
            )
        assert key_file.read_text().strip() == key  # the restart kept it
    finally:
        receiver.shutdown()
        receiver.server_close()

"""API keys, limits and CORS against a real server started with API_KEY, API_KEYS and
API_KEYS_FILE: every way a key may (or may not) arrive over HTTP and WebSocket, 429s with
Retry-After, and no key ever written to the server's log."""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from tests.e2e.conftest import ApiServer, ServerFactory, embedded_only
from tests.e2e.watch import ServerWatch

pytestmark = embedded_only("authentication and limits are middleware in front of every backend")

DEFAULT_KEY = "dflt-6c1f0e9a2b7d4c38"
ALICE_KEY = "alice-93b7e2f0c4a1d586"
BURST_KEY = "burst-5d0a8c3e1f6b2947"
SINGLE_KEY = "single-2e8f4b6a0c9d7135"
SECRETS = (DEFAULT_KEY, ALICE_KEY, BURST_KEY, SINGLE_KEY)

ORIGIN = "http://page.test"
VOICES = "/api/v3/voices/"
WS_PATH = "/api/v3/ws/stream"
MISSING = "Missing API key: send 'Authorization: Bearer <key>'"
NOT_BEARER = "Authorization must use the Bearer scheme: 'Authorization: Bearer <key>'"


@pytest.fixture(scope="module")
def keyed(server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory) -> ApiServer:
    keys_file = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys_file.write_text(f"keys:\n  - name: single\n    key: {SINGLE_KEY}\n    max_concurrent: 1\n")
    return server_factory(
        API_KEY=DEFAULT_KEY,
        API_KEYS=f"alice:{ALICE_KEY},burst:{BURST_KEY}:3/2second",
        API_KEYS_FILE=str(keys_file),
        WS_AUTH_TIMEOUT="1",
    )


@pytest.fixture
def http(keyed: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keyed.url, timeout=30, headers={"Origin": ORIGIN}) as client:
        yield client


def assert_cors(reply: httpx.Response) -> None:
    assert reply.headers.get("access-control-allow-origin") == "*", (
        f"{reply.status_code} without CORS headers: {dict(reply.headers)}"
    )


# --- HTTP -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "detail"),
    [
        ([], 401, MISSING),
        ([("Authorization", "Bearer wrong-key")], 401, "Invalid API key"),
        ([("Authorization", f"Bearer {ALICE_KEY}")], 200, None),
        ([("Authorization", f"bearer {ALICE_KEY}")], 200, None),
        ([("Authorization", f"BEARER {DEFAULT_KEY}")], 200, None),
        ([("Authorization", ALICE_KEY)], 401, NOT_BEARER),
        (
            [("Authorization", f"Bearer {ALICE_KEY}"), ("Authorization", f"Bearer {ALICE_KEY}")],
            400,
            "Send exactly one Authorization header",
        ),
        ([("X-API-Key", ALICE_KEY)], 200, None),
        ([("X-API-Key", "wrong-key")], 401, "Invalid API key"),
    ],
    ids=[
        "no-key",
        "wrong-key",
        "Bearer",
        "bearer",
        "BEARER-default",
        "bare-key",
        "two-headers",
        "x-api-key",
        "x-api-key-wrong",
    ],
)
def test_http_credentials(
    http: httpx.Client, headers: list[tuple[str, str]], status: int, detail: str | None
) -> None:
    reply = http.get(VOICES, headers=headers)
    assert reply.status_code == status, reply.text
    assert_cors(reply)
    if detail is None:
        assert set(reply.json()) >= {"voices", "total"}
    else:
        assert reply.json() == {"detail": detail}
        assert reply.headers["www-authenticate"].startswith("Bearer")


def test_health_and_preflight_need_no_key(http: httpx.Client) -> None:
    assert http.get("/health").status_code == 200
    preflight = http.options(
        VOICES,
        headers={
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
    assert_cors(preflight)


def test_errors_past_authentication_carry_cors(http: httpx.Client, keyed: ApiServer) -> None:
    auth = {"Authorization": f"Bearer {ALICE_KEY}"}
    missing = http.get("/api/v3/audio/v3_cache_0123abcd.wav", headers=auth)
    assert missing.status_code == 404
    assert_cors(missing)
    assert "detail" in missing.json()

    # An upload declared over the limit is refused before the body is read.
    with socket.create_connection(("127.0.0.1", keyed.port), timeout=10) as sock:
        sock.sendall(
            (
                f"POST {VOICES} HTTP/1.1\r\nHost: test\r\nOrigin: {ORIGIN}\r\n"
                f"Authorization: Bearer {ALICE_KEY}\r\nContent-Type: multipart/form-data; "
                "boundary=x\r\nContent-Length: 500000000\r\n\r\n"
            ).encode()
        )
        head = _read_head(sock)
    assert head.startswith("HTTP/1.1 413"), head
    assert "access-control-allow-origin: *" in head.lower()


def _read_head(sock: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode("latin-1")


# --- WebSocket --------------------------------------------------------------------


def ws_connect(server: ApiServer, query: str = "", **options: Any) -> ClientConnection:
    url = server.url.replace("http://", "ws://") + WS_PATH + query
    return connect(url, origin=Origin(ORIGIN), open_timeout=10, **options)


def expect_session(ws: ClientConnection) -> None:
    status = json.loads(ws.recv(timeout=10))
    assert status["message_type"] == "status" and status["status"] == "connected"
    ws.send(json.dumps({"message_type": "ping", "request_id": "p1"}))
    assert json.loads(ws.recv(timeout=10))["message_type"] == "pong"


def expect_policy_close(ws: ClientConnection) -> str:
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    return closed.value.rcvd.reason


def test_ws_key_in_the_first_message(keyed: ApiServer) -> None:
    with ws_connect(keyed) as ws:
        ws.send(json.dumps({"message_type": "auth", "api_key": ALICE_KEY}))
        expect_session(ws)
    with ws_connect(keyed) as ws:
        ws.send(json.dumps({"type": "auth", "api_key": DEFAULT_KEY}))
        expect_session(ws)


def test_ws_wrong_or_late_first_message_closes_with_1008(keyed: ApiServer) -> None:
    with ws_connect(keyed) as ws:
        ws.send(json.dumps({"message_type": "auth", "api_key": "wrong-key"}))
        assert expect_policy_close(ws) == "Invalid API key"
    with ws_connect(keyed) as ws:
        ws.send(json.dumps({"message_type": "ping", "request_id": "p"}))
        assert expect_policy_close(ws).startswith("Missing API key")
    started = time.monotonic()
    with ws_connect(keyed) as ws:
        assert expect_policy_close(ws).startswith("No auth message in time")
    assert time.monotonic() - started < 5  # WS_AUTH_TIMEOUT=1


def test_ws_key_as_subprotocol(keyed: ApiServer) -> None:
    with ws_connect(keyed, subprotocols=["bearer", ALICE_KEY]) as ws:
        assert ws.subprotocol == "bearer"  # never the key itself
        expect_session(ws)
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(keyed, subprotocols=["bearer", "wrong-key"])
    assert refused.value.response.status_code == 401


def test_ws_key_in_the_query_or_a_header(keyed: ApiServer) -> None:
    with ws_connect(keyed, f"?client_id=q&api_key={ALICE_KEY}") as ws:
        expect_session(ws)
    with ws_connect(keyed, additional_headers={"Authorization": f"bearer {ALICE_KEY}"}) as ws:
        expect_session(ws)
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(keyed, "?api_key=wrong-key")
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body) == {"detail": "Invalid API key"}


# --- limits -----------------------------------------------------------------------


@pytest.mark.quiet
def test_rate_limit_answers_429_then_lets_the_key_in_again(
    http: httpx.Client, keyed: ApiServer
) -> None:
    burst = {"Authorization": f"Bearer {BURST_KEY}"}
    with ServerWatch(keyed) as watch:
        started = time.monotonic()
        replies = [http.get(VOICES, headers=burst) for _ in range(40)]
        windows = math.ceil((time.monotonic() - started) / 2) + 1
    watch.assert_healthy(max_rss_mb=400, max_health_s=1.0)
    codes = [r.status_code for r in replies]
    assert 200 in codes and 429 in codes
    assert codes.count(200) <= 3 * windows  # 3 per 2 s window
    refused = next(r for r in replies if r.status_code == 429)
    assert_cors(refused)
    assert refused.json()["detail"].startswith("Rate limit exceeded")
    wait = int(refused.headers["retry-after"])
    assert 1 <= wait <= 2
    # Other keys are clients of their own.
    assert http.get(VOICES, headers={"Authorization": f"Bearer {ALICE_KEY}"}).status_code == 200
    last_refused = [r for r in replies if r.status_code == 429][-1]
    time.sleep(int(last_refused.headers["retry-after"]) + 0.1)
    assert http.get(VOICES, headers=burst).status_code == 200


@pytest.mark.quiet
def test_concurrency_limit_answers_429_while_a_request_is_in_flight(
    http: httpx.Client, keyed: ApiServer
) -> None:
    single = {"Authorization": f"Bearer {SINGLE_KEY}"}
    with ServerWatch(keyed) as watch:
        # An upload whose body never finishes holds the key's only slot.
        with socket.create_connection(("127.0.0.1", keyed.port), timeout=10) as sock:
            sock.sendall(
                (
                    f"POST {VOICES} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer "
                    f"{SINGLE_KEY}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                    "Content-Length: 100000\r\n\r\n--x\r\n"
                ).encode()
            )
            refused = _wait_for(lambda: http.get(VOICES, headers=single), 429)
            assert_cors(refused)
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["detail"].startswith("Too many requests in flight")
            assert http.get(VOICES, headers={"X-API-Key": ALICE_KEY}).status_code == 200
        # The client went away: its slot is free again.
        _wait_for(lambda: http.get(VOICES, headers=single), 200)
    watch.assert_healthy(max_rss_mb=400, max_health_s=1.0)


def _wait_for(
    call: Callable[[], httpx.Response], status: int, timeout: float = 10.0
) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        reply = call()
        if reply.status_code == status or time.monotonic() > deadline:
            assert reply.status_code == status, reply.text
            return reply
        time.sleep(0.1)


# --- logs -------------------------------------------------------------------------


def test_keys_never_reach_the_server_log(http: httpx.Client, keyed: ApiServer) -> None:
    with ws_connect(keyed, f"?client_id=logcheck&api_key={DEFAULT_KEY}") as ws:
        expect_session(ws)
    with ws_connect(keyed, subprotocols=["bearer", ALICE_KEY]) as ws:
        expect_session(ws)
    for key in SECRETS:
        http.get(VOICES, headers={"Authorization": f"Bearer {key}"})
        http.get(f"{VOICES}?api_key={key}")
    http.get(VOICES, headers={"Authorization": SINGLE_KEY})
    time.sleep(0.5)  # let the last access lines reach the file
    log = Path(keyed.log_path).read_text(errors="replace")
    assert "api_key=[redacted]" in log
    assert "client_id=logcheck" in log
    for key in SECRETS:
        assert key not in log

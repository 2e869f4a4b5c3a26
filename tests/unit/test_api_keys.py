"""API keys from settings and files, the credentials a request may carry, limits, CORS."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from core.settings import Settings
from router.app import create_app
from router.auth import (
    ApiKeyRing,
    InvalidApiKeys,
    configured_api_keys,
    load_api_keys,
    parse_api_keys,
    read_api_keys_file,
)
from router.logs import RedactSecrets

ORIGIN = {"Origin": "http://page.test"}


def settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(
        engine="espeak",
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        voice_cache_dir=tmp_path / "voices",
        output_dir=tmp_path / "outputs",
        worker_concurrency=0,
        **values,
    )


@asynccontextmanager
async def api(tmp_path: Path, **values: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings(tmp_path, **values))

    async def boom() -> None:
        raise RuntimeError("an unexpected failure")

    app.add_api_route("/api/v3/boom", boom)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


# --- configuration ----------------------------------------------------------------


def test_the_colon_form_names_keys_and_their_limits() -> None:
    specs = parse_api_keys("alice:k-alice, bob:k-bob:10/second;600/minute:3 ,carol:k-carol::2")
    assert [(s.name, s.key, s.rate_limit, s.max_concurrent) for s in specs] == [
        ("alice", "k-alice", None, None),
        ("bob", "k-bob", "10/second;600/minute", 3),
        ("carol", "k-carol", None, 2),
    ]


def test_the_json_form() -> None:
    raw = json.dumps([{"name": "ci", "key": "k1", "rate_limit": "off", "max_concurrent": 0}])
    (spec,) = parse_api_keys(raw)
    assert (spec.name, spec.key, spec.rate_limit, spec.max_concurrent) == ("ci", "k1", "off", 0)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("justakey", "entry 1 must be name:key[:rate[:concurrency]]"),
        ("a:k1,b", "entry 2 must be name:key"),
        ("a:k1:often", "rate_limit"),
        ("a:k1::-1", "max_concurrent"),
        ("bad name:k1", "name"),
        ("[{", "not valid JSON"),
        ('[{"name": "a", "key": "k", "colour": "red"}]', "colour"),
    ],
)
def test_unreadable_key_lists_are_refused_without_echoing_the_key(raw: str, message: str) -> None:
    with pytest.raises(InvalidApiKeys) as caught:
        parse_api_keys(raw)
    assert message in str(caught.value)
    assert str(caught.value).startswith("API_KEYS")
    assert "k1" not in str(caught.value)


def test_a_key_file_in_yaml_or_json(tmp_path: Path) -> None:
    yaml_file = tmp_path / "keys.yaml"
    yaml_file.write_text(
        "keys:\n  - name: web\n    key: k-web\n    rate_limit: 100/minute\n"
        "  - name: batch\n    key: k-batch\n    max_concurrent: 4\n"
    )
    json_file = tmp_path / "keys.json"
    json_file.write_text(json.dumps([{"name": "web", "key": "k-web"}]))
    assert [(s.name, s.rate_limit, s.max_concurrent) for s in read_api_keys_file(yaml_file)] == [
        ("web", "100/minute", None),
        ("batch", None, 4),
    ]
    assert [s.name for s in read_api_keys_file(json_file)] == ["web"]
    with pytest.raises(InvalidApiKeys, match="cannot be read"):
        read_api_keys_file(tmp_path / "missing.yaml")


def test_api_key_stays_as_the_key_named_default(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text("- {name: file, key: k-file}\n")
    specs = configured_api_keys(
        settings(tmp_path, api_key="k-one", api_keys="two:k-two", api_keys_file=keys_file)
    )
    assert [s.name for s in specs] == ["default", "two", "file"]


def test_names_and_keys_must_be_unique(tmp_path: Path) -> None:
    with pytest.raises(InvalidApiKeys, match="the names a are used twice"):
        configured_api_keys(settings(tmp_path, api_keys="a:k1,a:k2"))
    with pytest.raises(InvalidApiKeys, match="same key"):
        configured_api_keys(settings(tmp_path, api_keys="a:k1,b:k1"))
    with pytest.raises(SystemExit, match="invalid configuration: API_KEYS"):
        load_api_keys(settings(tmp_path, api_keys="a:k1,a:k2"))


def test_rate_limit_setting_is_checked_at_start_up(tmp_path: Path) -> None:
    assert settings(tmp_path, rate_limit="10/second;600/minute").rate_limit
    with pytest.raises(ValueError, match="600/minute"):
        settings(tmp_path, rate_limit="lots")


def test_matching_finds_the_key_by_digest() -> None:
    ring = ApiKeyRing(parse_api_keys("a:first-key,b:second-key"))
    assert ring.match("second-key").name == "b"  # type: ignore[union-attr]
    assert ring.match("second-ke") is None
    assert ring.match("") is None
    assert not ApiKeyRing([])


# --- credentials over HTTP --------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "detail"),
    [
        ([], 401, "Missing API key: send 'Authorization: Bearer <key>'"),
        ([("Authorization", "Bearer wrong")], 401, "Invalid API key"),
        ([("Authorization", "Bearer k-alice")], 200, None),
        ([("Authorization", "bearer k-alice")], 200, None),
        ([("Authorization", "BEARER   k-alice")], 200, None),
        ([("Authorization", "k-alice")], 401, "Authorization must use the Bearer scheme"),
        ([("Authorization", "Basic k-alice")], 401, "Authorization must use the Bearer scheme"),
        ([("Authorization", "Bearer")], 401, "Authorization must use the Bearer scheme"),
        (
            [("Authorization", "Bearer k-alice"), ("Authorization", "Bearer k-alice")],
            400,
            "Send exactly one Authorization header",
        ),
        ([("X-API-Key", "k-alice")], 200, None),
        ([("X-API-Key", "nope")], 401, "Invalid API key"),
    ],
)
async def test_credentials_matrix(
    tmp_path: Path, headers: list[tuple[str, str]], status: int, detail: str | None
) -> None:
    async with api(tmp_path, api_keys="alice:k-alice") as client:
        reply = await client.get("/api/v3/voices/", headers=[*headers, *ORIGIN.items()])
    assert reply.status_code == status, reply.text
    assert reply.headers["access-control-allow-origin"] == "*"
    if detail is not None:
        assert reply.json()["detail"].startswith(detail)
        assert reply.headers["www-authenticate"].startswith("Bearer")


async def test_query_keys_open_only_websockets(tmp_path: Path) -> None:
    async with api(tmp_path, api_key="k") as client:
        reply = await client.get("/api/v3/voices/?api_key=k")
    assert reply.status_code == 401


# --- limits -----------------------------------------------------------------------


async def test_a_key_over_its_rate_gets_429_with_retry_after(tmp_path: Path) -> None:
    async with api(tmp_path, api_keys="a:k-a:2/minute,b:k-b") as client:
        a = {"Authorization": "Bearer k-a", **ORIGIN}
        assert [(await client.get("/api/v3/voices/", headers=a)).status_code for _ in "xy"] == [
            200,
            200,
        ]
        refused = await client.get("/api/v3/voices/", headers=a)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.json()["detail"].startswith("Rate limit exceeded")
        assert refused.headers["access-control-allow-origin"] == "*"
        b = {"Authorization": "Bearer k-b"}
        assert (await client.get("/api/v3/voices/", headers=b)).status_code == 200
        assert (await client.get("/health")).status_code == 200  # probes are never limited


async def test_the_default_rate_limits_anonymous_clients_and_wrong_keys(tmp_path: Path) -> None:
    async with api(tmp_path, api_key="k", rate_limit="3/minute") as client:
        codes = [(await client.get("/api/v3/voices/")).status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429]  # guessing keys counts too
        good = await client.get("/api/v3/voices/", headers={"Authorization": "Bearer k"})
        assert good.status_code == 200  # the key is a client of its own


# --- CORS on every answer ---------------------------------------------------------


async def test_cors_headers_on_404_413_and_500(tmp_path: Path) -> None:
    async with api(tmp_path, max_upload_bytes=1024) as client:
        missing = await client.get("/api/v3/audio/v3_cache_0123abcd.wav", headers=ORIGIN)
        big = await client.post("/api/v3/voices/", content=b"x" * (600 * 1024), headers=ORIGIN)
        crash = await client.get("/api/v3/boom", headers=ORIGIN)
    assert missing.status_code == 404
    assert big.status_code == 413
    assert crash.status_code == 500
    assert crash.json() == {"detail": "Internal server error"}
    for reply in (missing, big, crash):
        assert reply.headers["access-control-allow-origin"] == "*", reply.status_code


async def test_exposed_headers_let_pages_read_retry_after(tmp_path: Path) -> None:
    async with api(tmp_path, api_key="k") as client:
        reply = await client.get("/api/v3/voices/", headers=ORIGIN)
    exposed = reply.headers["access-control-expose-headers"].lower()
    assert "retry-after" in exposed and "www-authenticate" in exposed


# --- logs -------------------------------------------------------------------------


def test_log_lines_lose_query_keys_and_authorization_values() -> None:
    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1:5", "/api/v3/ws/stream?client_id=x&api_key=s3cret-key&y=1"),
        None,
    )
    assert RedactSecrets().filter(record)
    line = record.getMessage()
    assert "s3cret-key" not in line
    assert "api_key=[redacted]&y=1" in line
    header = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "headers %s", ("{'authorization': 'Bearer abc'}",), None
    )
    RedactSecrets().filter(header)
    assert "abc" not in header.getMessage()


async def first_websocket_answer(app: Any, path: str, query: bytes = b"") -> dict[str, Any]:
    """Drive one WebSocket handshake through the ASGI app; the first message it sends."""
    sent: list[dict[str, Any]] = []
    incoming: list[dict[str, Any]] = [
        {"type": "websocket.connect"},
        {"type": "websocket.disconnect", "code": 1000},
    ]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"api")],
        "client": ("127.0.0.1", 5000),
        "server": ("api", 80),
        "subprotocols": [],
        "state": {},
    }
    with contextlib.suppress(WebSocketDisconnect):
        await app(scope, receive, send)
    return sent[0]


async def test_a_websocket_route_that_skips_the_key_check_is_closed(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path, api_key="k"))

    @app.websocket("/api/v3/unchecked")
    async def unchecked(websocket: WebSocket) -> None:
        await websocket.accept()  # not through accept_websocket

    refused = await first_websocket_answer(app, "/api/v3/unchecked")
    assert refused == {"type": "websocket.close", "code": 1008}
    opened = await first_websocket_answer(app, "/api/v3/unchecked", b"api_key=k")
    assert opened["type"] == "websocket.accept"

"""Backing-service failures reach clients as the platform's own errors, never as a 500.

- MongoDB refusing the credentials: a real SecantusDB run with `--auth` (SCRAM-SHA-256)
  and an API pointed at it with a wrong password. The API starts, `/health` answers 200
  `degraded` naming the problem, and every route that needs the database answers 503
  with the same reason.
- The mapping of the other driver errors, checked against real pymongo exception
  objects (a duplicate key is 409, a refused permission or unusable URL is 503).
- SQLite: a constraint the data breaks is a conflict (409); a database locked by another
  process past its busy time-out is 503.
- The cluster profile refuses to start without WEBHOOK_SECRET and says so.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient
from pymongo.errors import (
    ConfigurationError,
    DuplicateKeyError,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from core.adapters.cluster.mongo_store import _database_errors
from core.adapters.embedded.sqlite_store import SqliteMetadataStore
from core.errors import BackendUnavailable, Conflict
from router.errors import status_for
from tests.e2e.conftest import ApiServer, embedded_env
from tests.servers import HOST, MongoServer, S3Server, free_port

pytestmark = pytest.mark.cluster

BIN = Path(sys.executable).parent


class AuthMongoServer(MongoServer):
    """SecantusDB with authentication on (after a first start that creates the user)."""

    auth = False

    def command(self) -> list[str]:
        return [*super().command(), *(["--auth"] if self.auth else [])]

    def ready(self) -> bool:
        if not self.auth:
            return super().ready()
        client: MongoClient[dict[str, object]] = MongoClient(
            f"mongodb://admin:right@{HOST}:{self.port}/?authSource=admin",
            serverSelectionTimeoutMS=500,
        )
        try:
            client.admin.command("ping")
            return True
        except Exception:
            return False
        finally:
            client.close()


@pytest.fixture(scope="module")
def auth_mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthMongoServer]:
    server = AuthMongoServer(tmp_path_factory.mktemp("secantus-auth"))
    server.start()
    client: MongoClient[dict[str, object]] = MongoClient(server.url, serverSelectionTimeoutMS=5000)
    client.admin.command("createUser", "admin", pwd="right", roles=["root"])
    client.close()
    server.stop()
    server.auth = True
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


def test_wrong_database_credentials_degrade_health_and_answer_503(
    auth_mongo: AuthMongoServer, s3: S3Server, tmp_path: Path
) -> None:
    env = {
        **embedded_env(tmp_path),
        "DATABASE_URL": f"mongodb://admin:wrong@{HOST}:{auth_mongo.port}/cosyvoice"
        "?authSource=admin",
        "BLOB_STORE_URL": f"{s3.url}/backend-errors",
        "AWS_ACCESS_KEY_ID": S3Server.access_key,
        "AWS_SECRET_ACCESS_KEY": S3Server.secret_key,
        "AWS_REGION": S3Server.region,
        "WEBHOOK_SECRET": "backend-errors-secret",
        "BACKEND_TIMEOUT": "2",
        # As the router runs in the cluster, renders left to the render function: an
        # in-process worker recovers leases at start and would stop the start-up instead.
        "WORKER_CONCURRENCY": "0",
    }
    api = ApiServer(tmp_path / "api", env).start()
    try:
        with httpx.Client(base_url=api.url, timeout=30) as http:
            health = http.get("/health")
            assert health.status_code == 200
            body = health.json()
            assert body["status"] == "degraded"
            database = body["services"]["database"]
            assert database["ok"] is False
            assert "authentication failed" in database["detail"]
            assert "DATABASE_URL" in database["detail"]
            assert body["services"]["blob_store"]["ok"] is True

            for method, path in (
                ("GET", "/api/v3/voices/"),
                ("GET", "/api/v3/cross-lingual/tasks"),
                ("GET", "/api/v3/schedule/queue-stats"),
            ):
                response = http.request(method, path)
                assert response.status_code == 503, (path, response.text)
                assert "authentication failed" in response.json()["detail"]
    finally:
        api.stop()


def test_the_right_credentials_work(
    auth_mongo: AuthMongoServer, s3: S3Server, tmp_path: Path
) -> None:
    env = {
        **embedded_env(tmp_path),
        "DATABASE_URL": f"mongodb://admin:right@{HOST}:{auth_mongo.port}/cosyvoice"
        "?authSource=admin",
        "BLOB_STORE_URL": f"{s3.url}/backend-right",
        "AWS_ACCESS_KEY_ID": S3Server.access_key,
        "AWS_SECRET_ACCESS_KEY": S3Server.secret_key,
        "AWS_REGION": S3Server.region,
        "WEBHOOK_SECRET": "backend-errors-secret",
    }
    api = ApiServer(tmp_path / "api", env).start()
    try:
        with httpx.Client(base_url=api.url, timeout=30) as http:
            assert http.get("/health").json()["services"]["database"]["ok"] is True
            assert http.get("/api/v3/voices/").status_code == 200
    finally:
        api.stop()


@pytest.mark.parametrize(
    ("error", "kind", "status", "words"),
    [
        (
            OperationFailure("auth failed", code=18, details={"codeName": "AuthenticationFailed"}),
            BackendUnavailable,
            503,
            "authentication failed",
        ),
        (
            OperationFailure("not authorized on cosyvoice to execute command", code=13),
            BackendUnavailable,
            503,
            "lacks a permission",
        ),
        (
            ServerSelectionTimeoutError("127.0.0.1:1: [Errno 111] Connection refused"),
            BackendUnavailable,
            503,
            "Connection refused",
        ),
        (
            ConfigurationError("Unknown option fooBar"),
            BackendUnavailable,
            503,
            "DATABASE_URL cannot be used",
        ),
        (
            OperationFailure("Document failed validation", code=121),
            BackendUnavailable,
            503,
            "OperationFailure",
        ),
        (
            DuplicateKeyError("E11000 duplicate key error", code=11000),
            Conflict,
            409,
            "conflicts with stored data",
        ),
    ],
)
def test_every_driver_error_is_translated_at_the_edge(
    error: Exception, kind: type[Exception], status: int, words: str
) -> None:
    with pytest.raises(kind) as raised, _database_errors():
        raise error
    assert words in raised.value.detail  # type: ignore[attr-defined]
    assert raised.value.detail.startswith(  # type: ignore[attr-defined]
        "database unavailable:" if status == 503 else "conflicts"
    )
    assert status_for(raised.value) == status  # type: ignore[arg-type]


async def test_sqlite_constraint_is_a_conflict_and_a_lock_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "cosyvoice.db"
    store = SqliteMetadataStore(path)
    await store.start()
    try:
        with pytest.raises(Conflict) as conflict:
            # A row the schema refuses (NOT NULL): the data's answer, not an outage.
            await store._call(
                lambda conn: conn.execute("INSERT INTO voices (voice_id) VALUES ('x')")
            )
        assert status_for(conflict.value) == 409

        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            await store._call(lambda conn: conn.execute("PRAGMA busy_timeout = 100"))
            with pytest.raises(
                BackendUnavailable, match="database unavailable: database is locked"
            ) as locked:
                await store.delete_voice("nobody")  # a write: WAL lets reads through
            assert status_for(locked.value) == 503
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert (await store.list_voices())[1] == 0
    finally:
        await store.close()


def test_the_cluster_profile_does_not_start_without_a_webhook_secret(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in {**os.environ, **embedded_env(tmp_path)}.items()
        if key != "WEBHOOK_SECRET"
    }
    env["DATABASE_URL"] = f"mongodb://{HOST}:{free_port()}/cosyvoice"
    done = subprocess.run(
        [str(BIN / "cosyvoice-api"), "serve", "--host", HOST, "--port", str(free_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "WEBHOOK_SECRET" in done.stderr + done.stdout
    assert not (tmp_path / "webhook-secret").exists()

"""Real API servers for end-to-end tests.

`COSYVOICE_TEST_PROFILE` picks what stands behind the API: `embedded` (SQLite, files,
in-process bus and engine), `cluster` (MongoDB-, S3- and NATS-speaking servers started
here from wheels) or `predictor` (the engine in a KServe model server process, called
over HTTP); `cosyvoice` (v3 on upstream's real code, `make test-upstream-api`) is run apart.
The tests are the same in every profile.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MANDARIN_TRANSCRIPT
from tests.servers import ServerProcess

BIN = Path(sys.executable).parent
PROFILE = os.environ.get("COSYVOICE_TEST_PROFILE", "embedded")


def embedded_only(why: str) -> pytest.MarkDecorator:
    """For a module whose subject does not depend on what stands behind the API (the HTTP
    server's own limits, a client of the API): run once, in the embedded profile, to keep
    `make test` inside its time budget. `why` says why the other profiles add nothing."""
    return pytest.mark.skipif(PROFILE != "embedded", reason=f"embedded profile only: {why}")


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


class ApiServer(ServerProcess):
    """`cosyvoice-api serve` in a subprocess, on a free port, in its own data folder."""

    name = "server"
    start_timeout = 90.0

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        super().__init__(data_dir, env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            str(BIN / "cosyvoice-api"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        return super().stop(sig, timeout)


def embedded_env(data_dir: Path) -> dict[str, str]:
    return {
        "ENGINE": "espeak",
        "DATABASE_URL": f"sqlite:///{data_dir / 'cosyvoice.db'}",
        "VOICE_CACHE_DIR": str(data_dir / "voice_cache"),
        "OUTPUT_DIR": str(data_dir / "outputs"),
        "BLOB_STORE_URL": "",
        "EVENT_BUS_URL": "memory://",
        "WEBHOOK_ALLOW_PRIVATE": "false",
        "LOG_LEVEL": "info",
    }


@pytest.fixture(scope="session")
def profile_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment that points a server at the profile's backing services."""
    if PROFILE == "embedded":
        yield {}
    elif PROFILE == "cluster":
        from tests.e2e.profiles import cluster_profile

        with cluster_profile(tmp_path_factory.mktemp("cluster")) as env:
            yield env
    elif PROFILE == "predictor":
        from tests.e2e.profiles import predictor_profile

        with predictor_profile(tmp_path_factory.mktemp("predictor")) as env:
            yield env
    elif PROFILE == "cosyvoice":
        from tests.e2e.profiles import cosyvoice_profile

        with cosyvoice_profile(tmp_path_factory.mktemp("cosyvoice")) as env:
            yield env
    else:
        raise pytest.UsageError(f"unknown COSYVOICE_TEST_PROFILE {PROFILE!r}")


class ServerFactory:
    def __init__(self, root: Path, profile_env: dict[str, str]) -> None:
        self.root = root
        self.profile_env = profile_env
        self.servers: list[ApiServer] = []
        self.nats: dict[Path, Any] = {}

    def __call__(self, data_dir: Path | None = None, **overrides: str) -> ApiServer:
        """A started server; a fresh database/bucket unless `data_dir` reuses one."""
        data_dir = data_dir or self.root / uuid.uuid4().hex[:8]
        env = {**embedded_env(data_dir), **self.profile_env, **overrides}
        env.update(_isolated_names(self.profile_env, data_dir))
        if self.profile_env.get("EVENT_BUS_URL", "").startswith("nats://"):
            env["EVENT_BUS_URL"] = self._event_bus(data_dir)
        server = ApiServer(data_dir, env).start()
        self.servers.append(server)
        return server

    def _event_bus(self, data_dir: Path) -> str:
        """One NATS per data folder: servers with separate databases must not share a
        stream (its consumers would take each other's renders), while a restarted
        server finds its own queue again."""
        from tests.servers import NatsServer

        if data_dir not in self.nats:
            self.nats[data_dir] = NatsServer(data_dir / "nats").start()
        return self.nats[data_dir].url

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        for nats in self.nats.values():
            nats.stop()


def _isolated_names(profile_env: dict[str, str], data_dir: Path) -> dict[str, str]:
    """Give each data folder its own database and bucket in the shared cluster servers."""
    name = data_dir.name.replace("_", "-").lower()
    out: dict[str, str] = {}
    if profile_env.get("DATABASE_URL", "").startswith("mongodb://"):
        base = profile_env["DATABASE_URL"].rsplit("/", 1)[0]
        out["DATABASE_URL"] = f"{base}/cv_{name.replace('-', '_')}"
    if profile_env.get("BLOB_STORE_URL", "").startswith("s3://"):
        base = profile_env["BLOB_STORE_URL"].rsplit("/", 1)[0]
        out["BLOB_STORE_URL"] = f"{base}/cv-{name}"
    return out


@pytest.fixture(scope="session")
def server_factory(
    tmp_path_factory: pytest.TempPathFactory, profile_env: dict[str, str]
) -> Iterator[ServerFactory]:
    factory = ServerFactory(tmp_path_factory.mktemp("servers"), profile_env)
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def server(server_factory: ServerFactory) -> ApiServer:
    """The shared API server of the session (tests must not depend on each other)."""
    return server_factory(WEBHOOK_ALLOW_PRIVATE="false")


@pytest.fixture
def client(server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


def create_voice(
    http: httpx.Client,
    clip: Path | bytes,
    voice_type: str = "cross_lingual",
    prefix: str = "voice",
    **fields: str,
) -> str:
    """A new voice of `clip` (a WAV file or its bytes) under a fresh id; returns the id."""
    voice_id = f"{prefix}_{uuid.uuid4().hex[:8]}"
    name, audio = ("clip.wav", clip) if isinstance(clip, bytes) else (clip.name, clip.read_bytes())
    response = http.post(
        "/api/v3/voices/",
        data={"voice_id": voice_id, "name": f"Test {voice_id}", "voice_type": voice_type, **fields},
        files={"audio_file": (name, audio, "audio/wav")},
    )
    assert response.status_code == 201, response.text
    return voice_id


@pytest.fixture(scope="session")
def voice_id(server: ApiServer, speech_clips: Path) -> str:
    """A cross-lingual voice made from the English clip."""
    with httpx.Client(base_url=server.url, timeout=60) as http:
        return create_voice(http, speech_clips / "cross_lingual_prompt.wav", language="en")


@pytest.fixture(scope="session")
def zh_voice_id(server: ApiServer, speech_clips: Path) -> str:
    """A zero-shot voice made from the Mandarin clip and its transcript."""
    with httpx.Client(base_url=server.url, timeout=60) as http:
        return create_voice(
            http,
            speech_clips / "zero_shot_prompt.wav",
            voice_type="zero_shot",
            language="zh",
            prompt_text=MANDARIN_TRANSCRIPT,
        )

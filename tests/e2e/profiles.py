"""What stands behind the API in the non-embedded test profiles.

`cluster_profile` starts one MongoDB-, S3- and NATS-speaking server each for the whole
session; every API server gets its own database and bucket (see `ServerFactory`), and its
own NATS (so servers with separate databases never take each other's renders).

`predictor_profile` runs the engines the way a cluster does: each model in its own
`cosyvoice-api predictor` process (a real KServe model server, development engine),
called over HTTP by every API server of the session, with one blob store shared by all
of them — the predictors read stored samples by key and persist voice features there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx

from tests.servers import MongoServer, NatsServer, S3Server, free_port

BIN = Path(sys.executable).parent


class PredictorProcess:
    """`cosyvoice-api predictor` in a subprocess, on a free port."""

    def __init__(
        self,
        model_name: str,
        work_dir: Path,
        env: dict[str, str] | None = None,
        *,
        engine: str = "espeak",
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.model_name = model_name
        self.work_dir = work_dir
        self.env = env or {}
        self.engine = engine
        self.port = port or free_port()
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = work_dir / f"predictor-{model_name}-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> PredictorProcess:
        """Start and wait until the model reports ready (engine loaded)."""
        return self.launch().ready(timeout)

    def launch(self) -> PredictorProcess:
        """Start without waiting (several predictors then load side by side)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "cosyvoice-api"),
                    "predictor",
                    "--model-name",
                    self.model_name,
                    "--engine",
                    self.engine,
                    "--http_port",
                    str(self.port),
                    *self.extra_args,
                ],
                cwd=self.work_dir,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def ready(self, timeout: float = 120) -> PredictorProcess:
        try:
            self._wait_ready(timeout)
        except Exception:
            self.stop(signal.SIGKILL)
            raise RuntimeError(f"predictor failed to start:\n{self.log()}") from None
        return self

    def _wait_ready(self, timeout: float) -> None:
        ready_url = f"{self.url}/v1/models/{self.model_name}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"predictor exited with {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{ready_url} not ready within {timeout}s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""


@contextlib.contextmanager
def predictor_profile(tmp_dir: Path) -> Iterator[dict[str, str]]:
    """Two predictors (cosyvoice3 for v3, cosyvoice2 for v1/v2) and the env pointing at them."""
    blob_url = f"file://{tmp_dir / 'blobs'}"
    env = {"BLOB_STORE_URL": blob_url, "LOG_LEVEL": "info"}
    predictors = {
        "V3": PredictorProcess("cosyvoice3", tmp_dir, env),
        "V2": PredictorProcess("cosyvoice2", tmp_dir, env),
    }
    try:
        for predictor in predictors.values():
            predictor.launch()
        for predictor in predictors.values():
            predictor.ready()
        yield {
            "BLOB_STORE_URL": blob_url,
            **{f"PREDICTOR_URL_{slot}": p.url for slot, p in predictors.items()},
            **{f"PREDICTOR_MODEL_{slot}": p.model_name for slot, p in predictors.items()},
        }
    finally:
        for predictor in predictors.values():
            predictor.stop()


@contextlib.contextmanager
def cluster_profile(tmp_dir: Path) -> Iterator[dict[str, str]]:
    with ExitStack() as stack:
        mongo = stack.enter_context(MongoServer(_folder(tmp_dir, "mongo")))
        s3 = stack.enter_context(S3Server(_folder(tmp_dir, "s3")))
        nats = stack.enter_context(NatsServer(_folder(tmp_dir, "nats")))
        yield {
            "DATABASE_URL": f"{mongo.url}/cosyvoice",
            "BLOB_STORE_URL": f"{s3.url}/cosyvoice",
            "AWS_ACCESS_KEY_ID": S3Server.access_key,
            "AWS_SECRET_ACCESS_KEY": S3Server.secret_key,
            "AWS_REGION": S3Server.region,
            "EVENT_BUS_URL": nats.url,
        }


def _folder(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path

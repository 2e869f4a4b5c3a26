"""What stands behind the API in the non-embedded test profiles.

`cluster_profile` starts one MongoDB-, S3- and NATS-speaking server each for the whole
session; every API server gets its own database and bucket (see `ServerFactory`), and its
own NATS (so servers with separate databases never take each other's renders).

`predictor_profile` runs the engines the way a cluster does: each model in its own
`cosyvoice-api predictor` process (a real KServe model server, development engine),
called over HTTP by every API server of the session, with one blob store shared by all
of them — the predictors read stored samples by key and persist voice features there.

`cosyvoice_profile` (not part of `make test`) serves v3 with the CosyVoice engine on
upstream's real code and a tiny random-weight model.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.servers import MongoServer, NatsServer, S3Server, ServerProcess

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


class PredictorProcess(ServerProcess):
    """`cosyvoice-api predictor` in a subprocess, on a free port; ready once the model is."""

    name = "predictor"
    start_timeout = 120.0

    def __init__(
        self,
        model_name: str,
        work_dir: Path,
        env: dict[str, str] | None = None,
        *,
        engine: str = "espeak",
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        bin_dir: Path = BIN,
    ) -> None:
        super().__init__(work_dir, port, env)
        self.model_name = model_name
        self.engine = engine
        self.extra_args = extra_args
        self.bin_dir = bin_dir

    @property
    def work_dir(self) -> Path:
        return self.data_dir

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            str(self.bin_dir / "cosyvoice-api"),
            "predictor",
            "--model-name",
            self.model_name,
            "--engine",
            self.engine,
            "--http_port",
            str(self.port),
            *self.extra_args,
        ]

    def ready(self) -> bool:
        try:
            reply = httpx.get(f"{self.url}/v1/models/{self.model_name}", timeout=2)
        except httpx.HTTPError:
            return False
        return reply.status_code == 200

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        return super().stop(sig, timeout)


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
            predictor.wait_until_ready()
        yield {
            "BLOB_STORE_URL": blob_url,
            **{f"PREDICTOR_URL_{slot}": p.url for slot, p in predictors.items()},
            **{f"PREDICTOR_MODEL_{slot}": p.model_name for slot, p in predictors.items()},
        }
    finally:
        for predictor in predictors.values():
            predictor.stop()


@contextlib.contextmanager
def cosyvoice_profile(tmp_dir: Path) -> Iterator[dict[str, str]]:
    """v3 on the CosyVoice engine in the API's own process: upstream's code (COSYVOICE_HOME)
    and the tiny random-weight model of `make test-upstream` (CV3TINY_MODEL); v1/v2 on an
    espeak predictor run from the project's own environment (upstream's lacks KServe).

    Run under upstream's Python (`make test-upstream-api`), so that the API servers the
    tests start have torch. The tiny model speaks noise, 0.8 s of it per text token.
    """
    from tests.e2e.texts import SEGMENT_MAX_CHARS_COSYVOICE

    home, model = os.environ.get("COSYVOICE_HOME"), os.environ.get("CV3TINY_MODEL")
    if not home or not model or not (Path(model) / ".complete").is_file():
        raise pytest.UsageError(
            "the cosyvoice profile needs COSYVOICE_HOME and CV3TINY_MODEL (a model built by "
            "`make test-upstream`); run it with `make test-upstream-api`"
        )
    project_bin = Path(os.environ.get("PROJECT_BIN", str(REPO / ".venv" / "bin")))
    # One blob store for the API servers and the predictor, which reads samples by key.
    blob_url = f"file://{tmp_dir / 'blobs'}"
    v2 = PredictorProcess(
        "cosyvoice2",
        tmp_dir,
        {"BLOB_STORE_URL": blob_url, "LOG_LEVEL": "info"},
        bin_dir=project_bin,
    )
    try:
        v2.launch()
        v2.wait_until_ready()
        yield {
            "BLOB_STORE_URL": blob_url,
            "ENGINE": "cosyvoice",
            "COSYVOICE_HOME": str(Path(home).resolve()),
            "MODEL_DIR_V3": str(Path(model).resolve()),
            "AUTO_DOWNLOAD_MODELS": "false",
            # Long texts are shorter in this profile (tests/e2e/texts.py): one sentence a
            # segment keeps their tasks long-form.
            "SEGMENT_MAX_CHARS": str(SEGMENT_MAX_CHARS_COSYVOICE),
            "PREDICTOR_URL_V2": v2.url,
            "PREDICTOR_MODEL_V2": v2.model_name,
        }
    finally:
        v2.stop()


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
            # A cluster shares one signing key and refuses to start without it.
            "WEBHOOK_SECRET": "cluster-profile-webhook-secret",
        }


def _folder(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path

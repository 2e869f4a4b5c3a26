"""The cluster profile: MongoDB-, S3- and NATS-speaking servers behind the API.

One of each for the whole session; every API server gets its own database and bucket
(see `ServerFactory`), and they all share the JetStream stream, as replicas would.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tests.servers import MongoServer, NatsServer, S3Server


@contextmanager
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

"""The cluster blob store: any S3 API (AWS S3, Ceph RGW, SeaweedFS, Garage, MinIO).

The `minio` client is blocking, so every call runs in a worker thread. It gets its own
urllib3 pool with short timeouts and one retry, so an unreachable store answers
`BackendUnavailable` within the backend timeout instead of minio's default of retrying
for minutes. Addressing is path-style (`http://host:port/bucket/key`), which every
S3-compatible server understands.

URL: `s3://HOST:PORT/BUCKET` (plain HTTP) or `s3s://HOST:PORT/BUCKET` (TLS).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import ParamSpec, TypeVar
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error

from ...errors import BackendUnavailable, InvalidInput, NotFound
from ...ports import BlobInfo, StoredBlob
from ..blob_keys import CHUNK_SIZE, content_type_for, in_pages, key_segments

T = TypeVar("T")
P = ParamSpec("P")

_MISSING_OBJECT_CODES = frozenset({"NoSuchKey", "NoSuchObject"})
_CREDENTIAL_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
)
PART_SIZE = 5 * 1024 * 1024  # S3's smallest multipart part: the memory one upload holds


@dataclass(frozen=True)
class S3Location:
    endpoint: str  # host:port
    bucket: str
    secure: bool


def parse_s3_url(url: str) -> S3Location:
    """`s3://HOST:PORT/BUCKET` or `s3s://HOST:PORT/BUCKET` → where the bucket lives."""
    parts = urlsplit(url)
    if parts.scheme not in {"s3", "s3s"} or not parts.netloc:
        raise InvalidInput(f"blob store URL must be s3://HOST:PORT/BUCKET or s3s://...: {url}")
    bucket = parts.path.strip("/")
    if not bucket or "/" in bucket:
        raise InvalidInput(f"blob store URL must name exactly one bucket: {url}")
    return S3Location(endpoint=parts.netloc, bucket=bucket, secure=parts.scheme == "s3s")


class S3BlobStore:
    """`BlobStore` over one bucket of an S3 API."""

    def __init__(
        self,
        url: str,
        *,
        access_key: str | None,
        secret_key: str | None,
        region: str | None,
        ca_file: Path | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._location = parse_s3_url(url)
        self._bucket = self._location.bucket
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            retries=urllib3.Retry(
                total=1, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)
            ),
            maxsize=16,
            cert_reqs="CERT_REQUIRED",
            ca_certs=str(ca_file) if ca_file else certifi.where(),
        )
        self._client = Minio(
            self._location.endpoint,
            access_key=access_key or None,
            secret_key=secret_key or None,
            secure=self._location.secure,
            region=region or None,
            http_client=self._http,
        )
        # minio leaves this method unannotated; it returns None.
        self._client.disable_virtual_style_endpoint()  # type: ignore[no-untyped-call]

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        if not await self._call(self._client.bucket_exists, self._bucket):
            try:
                await self._call(self._client.make_bucket, self._bucket)
            except BackendUnavailable as exc:
                if not isinstance(exc.__cause__, S3Error) or exc.__cause__.code not in {
                    "BucketAlreadyOwnedByYou",
                    "BucketAlreadyExists",
                }:
                    raise

    async def close(self) -> None:
        await asyncio.to_thread(self._http.clear)

    async def ping(self) -> None:
        if not await self._call(self._client.bucket_exists, self._bucket):
            raise BackendUnavailable(f"object store unavailable: bucket {self._bucket} is gone")

    async def _call(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one blocking client call in a thread and translate its failures."""
        return await asyncio.to_thread(_translated, work, *args, **kwargs)

    # --- objects -------------------------------------------------------------------

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        key_segments(key)
        # S3 replaces an object in one step: readers see the old or the new one.
        await self._call(
            self._client.put_object,
            self._bucket,
            key,
            io.BytesIO(data),
            len(data),
            content_type=content_type or content_type_for(key),
        )

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        key_segments(key)
        await self._call(self._put_stream, key, Path(path), content_type or content_type_for(key))

    def _put_stream(self, key: str, path: Path, content_type: str) -> None:
        # Length -1: minio reads the file in parts of PART_SIZE (one plain PUT when it
        # fits in one, else a multipart upload), so a file of any size passes through a
        # few parts' worth of memory. S3 publishes the object only once the upload
        # completes: readers never see a part.
        with path.open("rb") as source:
            self._client.put_object(
                self._bucket, key, source, -1, content_type=content_type, part_size=PART_SIZE
            )

    async def get(self, key: str) -> bytes:
        key_segments(key)
        return await self._call(self._read_all, key)

    def _read_all(self, key: str) -> bytes:
        response = self._client.get_object(self._bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    async def stat(self, key: str) -> BlobInfo:
        key_segments(key)
        info = await self._call(self._client.stat_object, self._bucket, key)
        return BlobInfo(
            size=int(info.size or 0),
            content_type=info.content_type or content_type_for(key),
        )

    async def read_range(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        key_segments(key)
        offset = max(start, 0)
        length = 0 if end is None else end - offset + 1  # 0 = to the end of the object
        if end is not None and length <= 0:
            return
        response = await self._call(
            self._client.get_object, self._bucket, key, offset=offset, length=length
        )
        pieces: Iterator[bytes] = response.stream(CHUNK_SIZE)
        try:
            while True:
                piece = await self._call(next, pieces, None)
                if piece is None:
                    break
                if piece:
                    yield piece
        finally:
            response.close()
            response.release_conn()

    async def delete(self, key: str) -> None:
        key_segments(key)
        if key.endswith("/"):
            await self._call(self._delete_prefix, key)
        else:
            await self._call(self._client.remove_object, self._bucket, key)

    async def list_blobs(self, prefix: str) -> AsyncIterator[StoredBlob]:
        async for blob in in_pages(self._listing(prefix)):
            yield blob

    def _listing(self, prefix: str) -> Iterator[StoredBlob]:
        # minio fetches the listing lazily, one page of keys per request.
        objects = self._client.list_objects(self._bucket, prefix=prefix, recursive=True)
        while (item := _translated(next, objects, None)) is not None:
            if item.object_name and not item.is_dir and item.last_modified is not None:
                yield StoredBlob(
                    key=item.object_name,
                    size=int(item.size or 0),
                    modified=item.last_modified.astimezone(UTC),
                )

    def _delete_prefix(self, prefix: str) -> None:
        listing = self._client.list_objects(self._bucket, prefix=prefix, recursive=True)
        targets = [DeleteObject(item.object_name) for item in listing if item.object_name]
        if not targets:
            return
        failures = list(self._client.remove_objects(self._bucket, targets))
        if failures:
            raise BackendUnavailable(
                f"object store could not delete {len(failures)} object(s) under {prefix}: "
                f"{failures[0].message}"
            )


def _translated(work: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    try:
        return work(*args, **kwargs)
    except S3Error as exc:
        if exc.code in _MISSING_OBJECT_CODES:
            raise NotFound(f"{exc.object_name or 'object'} not found") from exc
        if exc.code == "InvalidRange":
            raise InvalidInput("requested range is not satisfiable") from exc
        if exc.code in _CREDENTIAL_CODES:
            raise BackendUnavailable(
                f"object store refused the credentials ({exc.code}); check "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ) from exc
        raise BackendUnavailable(f"object store error: {exc.code}: {exc.message}") from exc
    except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise BackendUnavailable(f"object store unavailable: {exc}") from exc

"""A dict behind the BlobStore methods that the feature cache and the in-process
synthesis client call, for unit tests of those two without a blob store."""

from __future__ import annotations

from collections.abc import AsyncIterator

from core.errors import BackendUnavailable, NotFound
from core.ports import BlobInfo


class MemoryBlobs:
    """Keys read are listed in `reads`; with `fail_puts`, writes fail as a store that is
    down does."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.content_types: dict[str, str] = {}
        self.reads: list[str] = []
        self.fail_puts = False

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        if self.fail_puts:
            raise BackendUnavailable("object store down")
        self.objects[key] = data
        self.content_types[key] = content_type

    async def get(self, key: str) -> bytes:
        self.reads.append(key)
        if key not in self.objects:
            raise NotFound(key)
        return self.objects[key]

    async def stat(self, key: str) -> BlobInfo:
        return BlobInfo(size=len(self.objects[key]), content_type=self.content_types[key])

    async def read_range(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        yield self.objects[key][start : None if end is None else end + 1]

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)
        self.content_types.pop(key, None)

"""What every `BlobStore` adapter shares: the rules a key must follow, the content type
a key implies, the size of the pieces a read yields, and listing a page at a time.

Keys reach the stores from URLs, so each adapter checks them with `key_segments` before
touching its backend; both adapters answering alike is what the contract tests prove.
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TypeVar

from ..errors import InvalidInput

CHUNK_SIZE = 64 * 1024  # bytes per piece of a streamed read
LISTING_PAGE = 500  # entries fetched per worker-thread hop while listing

T = TypeVar("T")

# The audio types every browser plays; mimetypes' answers for these vary by platform.
_CONTENT_TYPES = {
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".flac": "audio/flac",
    ".json": "application/json",
}


def content_type_for(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in _CONTENT_TYPES:
        return _CONTENT_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(path)
    return guessed or "application/octet-stream"


def key_segments(key: str) -> list[str]:
    """Split a key into its namespace and path, refusing anything that could escape.

    A key names something inside a namespace (`outputs/x.wav`, `voices/<id>/`), never a
    namespace itself; a trailing '/' (a prefix) is allowed and dropped.
    """
    if not key or "\\" in key or "\x00" in key or key.startswith("/"):
        raise InvalidInput(f"invalid storage key: {key!r}")
    segments = key.removesuffix("/").split("/")
    if any(segment in {"", ".", ".."} for segment in segments):
        raise InvalidInput(f"invalid storage key: {key!r}")
    if len(segments) < 2:
        raise InvalidInput(f"invalid storage key: {key!r} (names a whole namespace)")
    return segments


async def in_pages(items: Iterator[T], size: int = LISTING_PAGE) -> AsyncIterator[T]:
    """Drain a blocking iterator a page at a time in a worker thread."""

    def page() -> list[T]:
        return [item for _, item in zip(range(size), items, strict=False)]

    while batch := await asyncio.to_thread(page):
        for item in batch:
            yield item

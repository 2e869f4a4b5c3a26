"""The embedded blob store: keys become files under a few root folders.

A key's first segment picks the root (`voices/...` → the voice cache folder,
`outputs/...` → the output folder) and the rest is the path below it. Keys reach here
from URLs, so anything that could leave a root is refused before the disk is touched:
empty or dot segments, absolute paths, backslashes, NUL, and symlinks pointing out.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from ...errors import InvalidInput, NotFound
from ...ports import BlobInfo, StoredBlob
from ..blob_keys import CHUNK_SIZE, content_type_for, in_pages, key_segments


class FileBlobStore:
    """`BlobStore` over local folders, one per key namespace."""

    def __init__(
        self, roots: Mapping[str, Path], *, synced: frozenset[str] = frozenset({"voices"})
    ) -> None:
        self._roots = {name: Path(folder) for name, folder in roots.items()}
        # Namespaces flushed to disk before a write returns. Voice samples exist nowhere
        # else; rendered outputs can be rendered again, and every write is atomic anyway
        # (a crashed process leaves the old file or the new one), so outputs skip the
        # fsync that would otherwise cost each synthesis a couple of milliseconds.
        self._synced = synced

    async def start(self) -> None:
        await asyncio.to_thread(self._make_roots)

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        await asyncio.to_thread(self._make_roots)

    def _make_roots(self) -> None:
        for folder in self._roots.values():
            folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        """The file a key names, after checking it stays inside its root."""
        namespace, *rest = key_segments(key)
        root = self._roots.get(namespace)
        if root is None:
            raise InvalidInput(f"invalid storage key: {key!r} (unknown namespace)")
        path = root.joinpath(*rest)
        resolved_root = root.resolve()
        if not path.resolve().is_relative_to(resolved_root):
            raise InvalidInput(f"invalid storage key: {key!r} (leaves its folder)")
        return path

    # Every method resolves the key in a worker thread: resolving follows symlinks on disk.

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        sync = key_segments(key)[0] in self._synced
        await asyncio.to_thread(lambda: _write_atomically(self._path(key), data, sync=sync))

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        sync = key_segments(key)[0] in self._synced
        await asyncio.to_thread(lambda: _copy_atomically(Path(path), self._path(key), sync=sync))

    async def get(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(lambda: self._path(key).read_bytes())
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"{key} not found") from None

    async def stat(self, key: str) -> BlobInfo:
        size = await asyncio.to_thread(lambda: _file_size(self._path(key)))
        if size is None:
            raise NotFound(f"{key} not found")
        return BlobInfo(size=size, content_type=content_type_for(key))

    async def read_range(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        offset = max(start, 0)
        try:
            handle = await asyncio.to_thread(lambda: _open_at(self._path(key), offset))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"{key} not found") from None
        try:
            remaining = None if end is None else end - offset + 1
            while remaining is None or remaining > 0:
                size = CHUNK_SIZE if remaining is None else min(CHUNK_SIZE, remaining)
                piece = await asyncio.to_thread(handle.read, size)
                if not piece:
                    break
                if remaining is not None:
                    remaining -= len(piece)
                yield piece
        finally:
            handle.close()  # closing a file opened for reading does no I/O worth a thread

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(lambda: _remove(self._path(key), as_prefix=key.endswith("/")))

    async def list_blobs(self, prefix: str) -> AsyncIterator[StoredBlob]:
        folder = await asyncio.to_thread(self._folder, prefix)
        async for blob in in_pages(_walk(folder, prefix.removesuffix("/"))):
            yield blob

    def _folder(self, prefix: str) -> Path:
        """The folder a listing prefix names: a whole namespace (`outputs/`) or below."""
        namespace = prefix.removesuffix("/")
        if namespace in self._roots:
            return self._roots[namespace]
        return self._path(prefix)


def _walk(folder: Path, key_prefix: str) -> Iterator[StoredBlob]:
    """Regular files below `folder`, as keys under `key_prefix`. Files being written
    (dot-named temporaries) are left out; symlinks are not followed."""
    for directory, subdirectories, names in os.walk(folder):
        subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
        relative = Path(directory).relative_to(folder)
        for name in names:
            if name.startswith("."):
                continue
            try:
                info = os.lstat(os.path.join(directory, name))
            except FileNotFoundError:
                continue  # deleted while listing
            if stat.S_ISREG(info.st_mode):
                yield StoredBlob(
                    key="/".join((key_prefix, *relative.parts, name)),
                    size=info.st_size,
                    modified=datetime.fromtimestamp(info.st_mtime, UTC),
                )


def _open_at(path: Path, offset: int) -> BinaryIO:
    handle = path.open("rb")
    handle.seek(offset)
    return handle


def _write_atomically(path: Path, data: bytes, *, sync: bool) -> None:
    """Write a sibling temp file and rename it over the target: readers never see a part."""
    _replace_atomically(path, lambda handle: handle.write(data), sync=sync)


def _copy_atomically(source: Path, path: Path, *, sync: bool) -> None:
    """`_write_atomically` for the content of a file, copied piece by piece."""
    with source.open("rb") as origin:
        _replace_atomically(
            path, lambda handle: shutil.copyfileobj(origin, handle, 1024 * 1024), sync=sync
        )


def _replace_atomically(path: Path, write: Callable[[BinaryIO], object], *, sync: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".part"
    )
    try:
        os.fchmod(descriptor, 0o644)  # mkstemp's 0600 would hide the file from other readers
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _file_size(path: Path) -> int | None:
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _remove(path: Path, as_prefix: bool) -> None:
    if as_prefix and path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        path.unlink()
    except (FileNotFoundError, IsADirectoryError):
        pass

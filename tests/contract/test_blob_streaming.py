"""The blob store contract for files: `put_file` stores a local file's content, streamed,
and the folder and the bucket serve it back alike (also past S3's multipart size)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.errors import InvalidInput
from core.ports import BlobStore

SMALL = os.urandom(100_000)
LARGE = os.urandom(12 * 1024 * 1024 + 123)  # over two multipart parts of 5 MiB


def _file(folder: Path, data: bytes) -> Path:
    path = folder / "rendered.bin"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["small", "multipart"])
async def test_put_file_stores_the_whole_file(
    blob_store: BlobStore, tmp_path: Path, data: bytes
) -> None:
    source = _file(tmp_path, data)

    await blob_store.put_file("outputs/v3_task_0123abcd.mp3", source, "audio/mpeg")

    info = await blob_store.stat("outputs/v3_task_0123abcd.mp3")
    assert (info.size, info.content_type) == (len(data), "audio/mpeg")
    assert await blob_store.get("outputs/v3_task_0123abcd.mp3") == data
    assert source.read_bytes() == data  # the local file is left as it was


async def test_put_file_replaces_the_object(blob_store: BlobStore, tmp_path: Path) -> None:
    await blob_store.put("outputs/v3_cache_0123abcd.wav", SMALL, "audio/wav")

    await blob_store.put_file("outputs/v3_cache_0123abcd.wav", _file(tmp_path, b"new"), "audio/wav")

    assert await blob_store.get("outputs/v3_cache_0123abcd.wav") == b"new"


async def test_put_file_refuses_keys_that_escape(blob_store: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        await blob_store.put_file("outputs/../x.wav", _file(tmp_path, SMALL), "audio/wav")

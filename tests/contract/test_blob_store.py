"""The blob store contract: a local folder and an S3 bucket keep and serve bytes alike."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from core.adapters.blob_keys import CHUNK_SIZE
from core.adapters.cluster.s3_blobs import S3BlobStore
from core.adapters.embedded.file_blobs import FileBlobStore
from core.errors import BackendUnavailable, InvalidInput, NotFound
from core.ports import BlobStore
from tests.servers import free_port

AUDIO = os.urandom(200_000)  # spans several read pieces


async def read_all(store: BlobStore, key: str, start: int = 0, end: int | None = None) -> bytes:
    pieces = [piece async for piece in store.read_range(key, start, end)]
    assert all(len(piece) <= CHUNK_SIZE for piece in pieces)
    return b"".join(pieces)


async def test_put_get_and_stat(blob_store: BlobStore) -> None:
    await blob_store.put("outputs/v3_task_0123abcd.wav", AUDIO, "audio/wav")

    assert await blob_store.get("outputs/v3_task_0123abcd.wav") == AUDIO
    info = await blob_store.stat("outputs/v3_task_0123abcd.wav")
    assert (info.size, info.content_type) == (len(AUDIO), "audio/wav")


async def test_put_replaces_the_whole_object(blob_store: BlobStore) -> None:
    await blob_store.put("voices/v1/sample.wav", AUDIO, "audio/wav")
    await blob_store.put("voices/v1/sample.wav", b"short", "audio/wav")

    assert await blob_store.get("voices/v1/sample.wav") == b"short"
    assert (await blob_store.stat("voices/v1/sample.wav")).size == 5


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, None), (0, 0), (10, 19), (len(AUDIO) - 5, None), (100_000, 150_000), (5, len(AUDIO))],
)
async def test_read_range_streams_the_inclusive_range(
    blob_store: BlobStore, start: int, end: int | None
) -> None:
    await blob_store.put("outputs/long.flac", AUDIO, "audio/flac")

    data = await read_all(blob_store, "outputs/long.flac", start, end)

    assert data == AUDIO[start : None if end is None else end + 1]


async def test_missing_objects_are_not_found(blob_store: BlobStore) -> None:
    with pytest.raises(NotFound):
        await blob_store.get("outputs/missing.wav")
    with pytest.raises(NotFound):
        await blob_store.stat("outputs/missing.wav")
    with pytest.raises(NotFound):
        await read_all(blob_store, "outputs/missing.wav")
    await blob_store.delete("outputs/missing.wav")  # deleting nothing is fine


async def test_delete_one_object_or_a_whole_prefix(blob_store: BlobStore) -> None:
    keys = [
        "voices/v1/sample.wav",
        "voices/v1/features/cosyvoice3-0123456789abcdef",
        "voices/v10/sample.wav",
        "outputs/v3_task_0123abcd.wav",
    ]
    for key in keys:
        await blob_store.put(key, b"data", "application/octet-stream")

    await blob_store.delete("outputs/v3_task_0123abcd.wav")
    await blob_store.delete("voices/v1/")

    for gone in (keys[0], keys[1], keys[3]):
        with pytest.raises(NotFound):
            await blob_store.get(gone)
    assert await blob_store.get("voices/v10/sample.wav") == b"data"


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../outside.wav",
        "voices/../../outside.wav",
        "voices/./v1/sample.wav",
        "voices//sample.wav",
        "voices\\..\\outside.wav",
        "outputs/a\x00.wav",
        "voices/",
        "outputs",
    ],
)
async def test_keys_that_could_escape_are_refused(blob_store: BlobStore, key: str) -> None:
    with pytest.raises(InvalidInput):
        await blob_store.put(key, b"x", "audio/wav")
    with pytest.raises(InvalidInput):
        await blob_store.get(key)
    with pytest.raises(InvalidInput):
        await blob_store.delete(key)


# --- the folder adapter's own guarantees ---------------------------------------------------


async def test_keys_map_to_their_folders(blob_roots: dict[str, Path]) -> None:
    store = FileBlobStore(blob_roots)
    await store.start()

    await store.put("voices/abc/sample.wav", b"voice", "audio/wav")
    await store.put("outputs/x.wav", b"output", "audio/wav")

    assert (blob_roots["voices"] / "abc" / "sample.wav").read_bytes() == b"voice"
    assert (blob_roots["outputs"] / "x.wav").read_bytes() == b"output"
    assert not [p for p in blob_roots["voices"].rglob("*.part")]  # no temp files left


async def test_unknown_namespaces_are_refused(
    blob_roots: dict[str, Path],
) -> None:
    store = FileBlobStore(blob_roots)
    await store.start()
    with pytest.raises(InvalidInput):
        await store.delete("secrets/")
    with pytest.raises(InvalidInput):
        await store.put("secrets/x.wav", b"x", "audio/wav")


async def test_symlinks_out_of_a_root_are_refused(
    blob_roots: dict[str, Path], tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    store = FileBlobStore(blob_roots)
    await store.start()
    (blob_roots["voices"] / "evil").symlink_to(outside, target_is_directory=True)

    with pytest.raises(InvalidInput):
        await store.get("voices/evil/secret.txt")
    with pytest.raises(InvalidInput):
        await store.put("voices/evil/new.wav", b"x", "audio/wav")
    assert not (outside / "new.wav").exists()


@pytest.mark.cluster
async def test_unreachable_object_store_fails_fast() -> None:
    store = S3BlobStore(
        f"s3://127.0.0.1:{free_port()}/nowhere",
        access_key="key",
        secret_key="secret",
        region="us-east-1",
        timeout=1.0,
    )
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="object store unavailable"):
        await store.get("outputs/x.wav")
    with pytest.raises(BackendUnavailable):
        await store.start()
    assert time.monotonic() - started < 5
    await store.close()

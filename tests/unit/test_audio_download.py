"""The audio route against a store whose object goes away while it is asked for (the
retention sweep removing an expired output): a clean 404, never a body cut off midway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from core.ports import BlobStore
from router.app import create_app
from tests.unit.test_api_keys import settings

NAME = "v3_cache_0123abcd.wav"


async def test_an_output_removed_after_its_stat_is_a_404(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path))
    async with app.router.lifespan_context(app):
        blobs: BlobStore = app.state.runtime.blobs
        await blobs.put(f"outputs/{NAME}", b"RIFF" + bytes(4000), "audio/wav")
        real_read = blobs.read_range

        def swept_then_read(
            key: str, start: int = 0, end: int | None = None
        ) -> AsyncIterator[bytes]:
            async def pieces() -> AsyncIterator[bytes]:
                await blobs.delete(key)  # the sweep wins the race after the stat
                async for piece in real_read(key, start, end):
                    yield piece

            return pieces()

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            whole = await client.get(f"/api/v3/audio/{NAME}")
            assert whole.status_code == 200 and len(whole.content) == 4004
            blobs.read_range = swept_then_read  # type: ignore[method-assign]
            gone = await client.get(f"/api/v3/audio/{NAME}")
    assert gone.status_code == 404
    assert "detail" in gone.json()

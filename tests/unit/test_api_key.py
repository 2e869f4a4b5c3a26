"""The optional API key: off by default; when set, /api needs it and /health does not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from core.settings import Settings
from router.app import create_app


@asynccontextmanager
async def app_with_key(tmp_path: Path, key: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        engine="espeak",
        api_key=key,
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        voice_cache_dir=tmp_path / "voices",
        output_dir=tmp_path / "outputs",
        worker_concurrency=0,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


async def test_api_routes_need_the_key(tmp_path: Path) -> None:
    async with app_with_key(tmp_path, "s3cret") as client:
        refused = await client.get("/api/v3/voices/")
        assert refused.status_code == 401
        assert refused.json()["detail"] == "Missing API key: send 'Authorization: Bearer <key>'"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        wrong = await client.get("/api/v3/voices/", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["detail"] == "Invalid API key"


async def test_the_key_opens_the_api_but_health_stays_open(tmp_path: Path) -> None:
    async with app_with_key(tmp_path, "s3cret") as client:
        bearer = await client.get("/api/v3/voices/", headers={"Authorization": "Bearer s3cret"})
        header = await client.get("/api/v3/voices/", headers={"X-API-Key": "s3cret"})
        assert bearer.status_code == header.status_code == 200
        assert (await client.get("/health")).status_code == 200
        preflight = await client.options(
            "/api/v3/voices/",
            headers={"Origin": "http://page.test", "Access-Control-Request-Method": "GET"},
        )
        assert preflight.status_code == 200  # browsers send no credentials on preflight

"""The documented API as one FastAPI application: `create_app(settings)`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from core.domain import ApiVersion
from core.settings import Settings
from core.wiring import Runtime, build_runtime

from .errors import install_error_handlers
from .routes import (
    async_compat,
    audio,
    health,
    schedule,
    streaming,
    synthesis,
    tasks,
    voices,
    ws,
)
from .uploads import UploadLimitMiddleware

log = logging.getLogger("router")

DESCRIPTION = """
Voice cloning text-to-speech with CosyVoice3 (`/api/v3`) and CosyVoice2 (`/api/v1`, `/api/v2`):
stored voices, synchronous synthesis, background and scheduled rendering with webhooks,
HTTP chunked / Server-Sent Events / WebSocket streaming.

Errors are always `{"detail": ...}`: 400 invalid parameters, 404 not found, 409 exists,
413 upload too large, 422 unusable audio, 503 engine or backing service unavailable.
"""

# Route modules and the versions that have them (API.md, "Versions").
ALL = (ApiVersion.v1, ApiVersion.v2, ApiVersion.v3)
ROUTE_MODULES: tuple[tuple[ModuleType, tuple[ApiVersion, ...]], ...] = (
    (voices, ALL),
    (synthesis, ALL),
    (tasks, ALL),
    (async_compat, (ApiVersion.v1, ApiVersion.v2)),
    (schedule, (ApiVersion.v3,)),
    (streaming, ALL),
    (ws, ALL),
    (audio, ALL),
)


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or build_runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        engines = {slot.value: c.info.model for slot, c in runtime.synthesis_clients.items()}
        log.info("ready; engines: %s", engines)
        try:
            yield
        finally:
            await runtime.close()

    app = FastAPI(
        title="CosyVoice serving API",
        version="3.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(UploadLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["Content-Range", "Content-Length", "X-Sample-Rate"],
        allow_credentials=False,
    )
    if settings.api_key:
        from .auth import ApiKeyMiddleware

        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)

    app.include_router(health.build_router())
    for module, versions in ROUTE_MODULES:
        for version in versions:
            app.include_router(module.build_router(version), prefix=f"/api/{version.value}")
    return app

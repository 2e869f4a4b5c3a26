"""The documented API as one FastAPI application: `create_app(settings)`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp

from core.domain import ApiVersion
from core.settings import Settings
from core.wiring import Runtime, build_runtime

from .auth import ApiKeyMiddleware, load_api_keys
from .errors import install_error_handlers
from .json_limits import JsonDepthMiddleware
from .limits import ClientLimits, RateLimitMiddleware
from .logs import install_log_redaction
from .metrics import RequestTelemetry
from .metrics import build_router as build_metrics_router
from .request_id import RequestIdMiddleware
from .routes import (
    async_compat,
    audio,
    health,
    openai,
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

Errors are always `{"detail": ...}`: 400 invalid parameters, 401 missing or invalid API
key (when keys are configured), 404 not found, 409 exists, 413 upload too large,
422 unusable audio, 429 over a rate or concurrency limit, 503 engine or backing service
unavailable.
"""

# Route modules and the versions that have them (API.md, "Versions"). FastAPI tries each
# included router in turn (about 20 us each), so the busiest come first: v3 before the
# older versions, streaming and synthesis before the rest. No two modules' paths overlap.
ALL = (ApiVersion.v3, ApiVersion.v2, ApiVersion.v1)
ROUTE_MODULES: tuple[tuple[ModuleType, tuple[ApiVersion, ...]], ...] = (
    (streaming, ALL),
    (synthesis, ALL),
    (tasks, ALL),
    (ws, ALL),
    (audio, ALL),
    (schedule, (ApiVersion.v3,)),
    (voices, ALL),
    (async_compat, (ApiVersion.v2, ApiVersion.v1)),
)


class CorsOutermostApp(FastAPI):
    """FastAPI with CORS around everything, ServerErrorMiddleware included.

    Starlette puts ServerErrorMiddleware outside every added middleware, so a 500 from
    an unhandled exception would leave without CORS headers and a browser would report
    a CORS error in place of the 500. Wrapping the whole stack gives every answer the
    headers: 401 and 429 from the key and limit middleware, 413 from the upload limit,
    the routes' errors and 500s. For the same reason the request id (`X-Request-ID`) and
    the request metrics sit just inside CORS, around everything else.
    """

    def __init__(
        self, *, cors_options: dict[str, Any], log_requests: bool = False, **options: Any
    ) -> None:
        self.cors_options = cors_options
        self.log_requests = log_requests
        super().__init__(**options)

    def build_middleware_stack(self) -> ASGIApp:
        observed = RequestTelemetry(
            super().build_middleware_stack(), routes=self.routes, log_requests=self.log_requests
        )
        return CORSMiddleware(RequestIdMiddleware(observed), **self.cors_options)


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    keys = load_api_keys(settings)  # before anything starts: a bad key list stops here
    runtime = runtime or build_runtime(settings)
    probes = health.BackendProbes()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        engines = {slot.value: c.info.model for slot, c in runtime.synthesis_clients.items()}
        log.info("ready; engines: %s", engines)
        try:
            yield
        finally:
            await probes.close()
            await runtime.close()

    app = CorsOutermostApp(
        title="CosyVoice serving API",
        version="3.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        cors_options={
            "allow_origins": settings.cors_origins,
            "allow_methods": ["*"],
            "allow_headers": ["*"],
            "expose_headers": [
                "Content-Range",
                "Content-Length",
                "X-Sample-Rate",
                "Retry-After",
                "WWW-Authenticate",
                "X-Request-ID",
            ],
            "allow_credentials": False,
        },
        log_requests=settings.log_format == "json",
    )
    app.state.runtime = runtime
    app.state.settings = settings
    install_error_handlers(app)
    # add_middleware puts each one outside the ones before it: from the inside out,
    # JSON depth, upload limit, API key, rate limit; CORS wraps them all (CorsOutermostApp). The
    # limiter runs before the key check so that guessing keys is rate limited too.
    app.add_middleware(JsonDepthMiddleware, max_depth=settings.max_json_depth)
    app.add_middleware(UploadLimitMiddleware, max_bytes=settings.max_upload_bytes)
    if keys:
        app.add_middleware(ApiKeyMiddleware, keys=keys)
    limits = ClientLimits(settings.rate_limit, settings.max_concurrent_requests_per_client)
    if limits.any_limit(keys.keys):
        app.add_middleware(
            RateLimitMiddleware,
            limits=limits,
            identify=lambda scope: keys.authenticate(scope).key if keys else None,
        )
    install_log_redaction()

    app.include_router(health.build_router(probes))
    app.include_router(openai.build_router())  # /v1: the OpenAI-compatible speech API
    app.include_router(build_metrics_router())
    for version in ALL:
        for module, versions in ROUTE_MODULES:
            if version in versions:
                app.include_router(module.build_router(version), prefix=f"/api/{version.value}")
    # The browser console: public static files; its API calls carry the key themselves.
    app.mount("/ui", StaticFiles(directory=Path(__file__).parent / "static" / "ui", html=True))
    return app

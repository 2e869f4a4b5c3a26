"""`GET /metrics` and what every HTTP request adds to it (and to the log).

`RequestTelemetry` sits outside every other middleware but CORS and the request id, so
it sees each answer as the client gets it: 401/429/413 from the key, limit and upload
middleware, the routes' errors, and 500s. It records the route *template* that served
the request (`/api/v3/audio/{filename}`, never the path: one series per route, however
many files), the status and the time until the answer's last byte. With
`LOG_FORMAT=json` it also writes the request's one log line (`router.requests`): method,
route, path, status, duration, request id, and the name of the API key — never the key.

`/metrics` is outside `/api`, so it needs no API key (like `/health`); the chart's
network policy admits Prometheus to it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.routing import BaseRoute, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import metrics
from core.domain import Priority
from core.errors import CosyVoiceError
from core.wiring import Runtime

from .auth import KEY_NAME_STATE

try:
    from fastapi.routing import iter_route_contexts
except ImportError:  # pragma: no cover - FastAPI before 0.16x
    iter_route_contexts = None  # type: ignore[assignment]

request_log = logging.getLogger("router.requests")
log = logging.getLogger(__name__)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
QUEUE_DEPTH_TIMEOUT = 2.0  # seconds a scrape waits for the task counts before going on


class RouteTemplates:
    """The full path template (include prefix and all) of the route a request took.

    FastAPI keeps an included route as it was declared (`/voices/{voice_id}`) and puts
    the prefix (`/api/v3`) in the inclusion, so the table is built from FastAPI's route
    contexts once, at the first request, when every route has been added.
    """

    def __init__(self, routes: list[BaseRoute]) -> None:
        self._routes = routes
        self._by_route: dict[int, str] | None = None
        self._patterns: list[tuple[re.Pattern[str], str]] = []

    def of(self, scope: Scope) -> str:
        if self._by_route is None:
            self._build()
        assert self._by_route is not None
        route = scope.get("route")
        if route is not None:
            template = self._by_route.get(id(route)) or getattr(route, "path_format", None)
            if isinstance(template, str) and template:
                return template
        # Refused before routing (401, 429, 413...): the route it was meant for.
        path = scope["path"]
        for pattern, template in self._patterns:
            if pattern.match(path):
                return template
        return metrics.UNMATCHED_ROUTE

    def _build(self) -> None:
        by_route: dict[int, str] = {}
        for original, path in _route_paths(self._routes):
            pattern, template, _ = compile_path(path)  # template: `{name}`, no converter
            by_route[id(original)] = template
            self._patterns.append((pattern, template))
        self._by_route = by_route


def _route_paths(routes: list[BaseRoute]) -> list[tuple[BaseRoute, str]]:
    if iter_route_contexts is None:  # FastAPI before route contexts: paths are complete
        return [
            (route, route.path) for route in routes if isinstance(getattr(route, "path", None), str)
        ]
    return [
        (context.original_route, context.path)
        for context in iter_route_contexts(routes)
        if isinstance(context.path, str) and context.path
    ]


class RequestTelemetry:
    def __init__(self, app: ASGIApp, *, routes: list[BaseRoute], log_requests: bool) -> None:
        self.app = app
        self.templates = RouteTemplates(routes)
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees when the app fails before answering

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            seconds = time.perf_counter() - started
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            route = self.templates.of(scope)
            metrics.record_request(method, route, status, seconds)
            if self.log_requests and request_log.isEnabledFor(logging.INFO):
                self._log(scope, method, route, status, seconds)

    @staticmethod
    def _log(scope: Scope, method: str, route: str, status: int, seconds: float) -> None:
        key = scope.get("state", {}).get(KEY_NAME_STATE)
        request_log.info(
            "%s %s %d %.1f ms",
            method,
            route,
            status,
            seconds * 1000,
            extra={
                "fields": {
                    "method": method,
                    "route": route,
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "key": key,
                }
            },
        )


def build_router() -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response:
        await refresh_task_queue_depth(request.app.state.runtime)
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return router


async def refresh_task_queue_depth(runtime: Runtime) -> None:
    """Count the queued tasks by priority; a store that does not answer in time leaves
    the last counts (the scrape itself must not fail or hang)."""
    try:
        async with asyncio.timeout(QUEUE_DEPTH_TIMEOUT):
            queued = await runtime.store.queued_tasks()
    except (CosyVoiceError, TimeoutError) as exc:
        log.debug("task queue depth not refreshed: %s", exc)
        return
    counts = Counter(task.priority.value for task in queued)
    metrics.set_task_queue_depth({p.value: counts.get(p.value, 0) for p in Priority})

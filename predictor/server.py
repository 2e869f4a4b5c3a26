"""What the predictor adds to KServe's FastAPI app, and nothing more.

KServe owns the routes of its protocols (`/v1/models/<name>`, `:predict`, `/v2/health/*`,
`/v2/models/<name>`, `/metrics`). On top of them this module installs:

- a lifespan that loads the engine in the background once the server runs, so probes
  are answered (not ready) while a model loads, and closes the engine on shutdown;
- `WatchDisconnect`, so a client that leaves cancels its queued or running synthesis;
- `RequestIdLogging`: the router's `X-Request-ID` becomes this process's request id
  (`core.request_id`) and each `:predict` is logged with it, so a router line and a
  predictor line of one request can be matched;
- the platform's error tree mapped to statuses, with the error class in the body so the
  client raises the same error the in-process engine would have;
- `GET /v1/models/<name>/metadata`: the engine's description and the counters of the
  synthesis queue and feature cache (also exported on `/metrics` for Prometheus).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from kserve.errors import ModelNotFound
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from core.errors import (
    AudioRejected,
    Conflict,
    CosyVoiceError,
    InvalidInput,
    NotFound,
    SynthesisFailed,
    Unavailable,
)
from core.request_id import HEADER, reset_request_id, set_request_id, valid_request_id
from core.schemas.predictor import PredictorMetadata, StreamError, wire_error_name

from .disconnect import ASGIApp, ClientGone, Message, Receive, Send, WatchDisconnect
from .model import SynthesisModel

log = logging.getLogger(__name__)

# Most specific first: the first class an error is an instance of decides its status.
STATUS_OF_ERROR: tuple[tuple[type[CosyVoiceError], int], ...] = (
    (InvalidInput, 400),
    (NotFound, 404),
    (Conflict, 409),
    (AudioRejected, 422),
    (Unavailable, 503),
    (SynthesisFailed, 500),
)
CLIENT_CLOSED_REQUEST = 499  # nginx's code: nobody is left to read the answer


def status_for(exc: CosyVoiceError) -> int:
    for cls, status in STATUS_OF_ERROR:
        if isinstance(exc, cls):
            return status
    return 500


def install(app: FastAPI, model: SynthesisModel) -> None:
    """Attach the predictor's lifecycle, error mapping and metadata to KServe's app."""
    app.router.lifespan_context = _lifespan(app.router.lifespan_context, model)
    app.add_middleware(WatchDisconnect)
    app.add_middleware(RequestIdLogging)
    app.add_exception_handler(CosyVoiceError, _platform_error)
    app.add_exception_handler(ClientGone, _client_gone)
    app.include_router(_metadata_router(model))
    REGISTRY.register(_Collector(model))


_REQUEST_ID_HEADER = HEADER.lower().encode("latin-1")


class RequestIdLogging:
    """Takes the caller's `X-Request-ID` (when usable) as the request's id, logs each
    `:predict` with it and answers with it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == _REQUEST_ID_HEADER:
                request_id = valid_request_id(value.decode("latin-1"))
                break
        if request_id is None:
            await self.app(scope, receive, send)
            return
        if scope["path"].endswith(":predict"):
            log.info("%s %s (request %s)", scope["method"], scope["path"], request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", ()),
                    (_REQUEST_ID_HEADER, request_id.encode("latin-1")),
                ]
            await send(message)

        token = set_request_id(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            reset_request_id(token)


def _lifespan(previous: Any, model: SynthesisModel) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with previous(app) as state:
            loading = asyncio.create_task(model.start_serving(), name=f"load {model.name}")
            try:
                yield state
            finally:
                loading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loading
                await model.stop_serving()

    return lifespan


async def _platform_error(request: Request, exc: Exception) -> Response:
    # Registered for CosyVoiceError only; Starlette types handlers by the base class.
    error = exc if isinstance(exc, CosyVoiceError) else SynthesisFailed(str(exc))
    status = status_for(error)
    log.log(logging.WARNING if status >= 500 else logging.INFO, "%s: %s", status, error.detail)
    body = StreamError(type=wire_error_name(error), error=error.detail)
    return JSONResponse(status_code=status, content=body.model_dump())


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def _metadata_router(model: SynthesisModel) -> APIRouter:
    router = APIRouter(tags=["CosyVoice"])

    @router.get(
        "/v1/models/{model_name}/metadata",
        response_model=PredictorMetadata,
        summary="The engine behind the model, and its queue and feature-cache counters",
    )
    async def metadata(model_name: str) -> PredictorMetadata:
        if model_name != model.name:
            raise ModelNotFound(model_name)
        return model.metadata()

    return router


class _Collector:
    """Reads the runner's counters when Prometheus scrapes `/metrics`."""

    def __init__(self, model: SynthesisModel) -> None:
        self._model = model

    def describe(self) -> list[Metric]:
        return []  # the metric names are static: no need to collect at registration

    def collect(self) -> Iterator[Metric]:
        meta = self._model.metadata()
        labels = ["model_name"]
        name = [meta.name]
        queue = meta.synthesis
        for metric, help_text, value in (
            ("cosyvoice_synthesis_active", "Syntheses running now.", queue.active),
            ("cosyvoice_synthesis_queued", "Syntheses waiting for a slot.", queue.queued),
            ("cosyvoice_synthesis_slots", "Syntheses allowed at once.", queue.concurrency),
            ("cosyvoice_synthesis_stuck", "Engine calls that ignored a stop.", queue.stuck),
            ("cosyvoice_model_ready", "1 when the engine is loaded.", int(meta.ready)),
        ):
            gauge = GaugeMetricFamily(metric, help_text, labels=labels)
            gauge.add_metric(name, value)
            yield gauge
        outcomes = CounterMetricFamily(
            "cosyvoice_syntheses", "Finished syntheses by outcome.", labels=[*labels, "outcome"]
        )
        for outcome in ("completed", "failed", "cancelled"):
            outcomes.add_metric([*name, outcome], getattr(queue, outcome))
        yield outcomes
        cache = meta.feature_cache
        lookups = CounterMetricFamily(
            "cosyvoice_voice_features",
            "Voice feature lookups by where they were found.",
            labels=[*labels, "source"],
        )
        for source, value in (
            ("memory", cache.hits),
            ("blob_store", cache.blob_hits),
            ("extracted", cache.extractions),
        ):
            lookups.add_metric([*name, source], value)
        yield lookups

"""The func-python lifecycle around the platform's runtime, shared by every function.

func-python calls `start(cfg)` synchronously inside the server's event loop, probes
`alive()`/`ready()`, and hands each CloudEvent to `handle(scope, receive, send)` with the
decoded event in `scope["event"]`. The runtime (database, blob store, bus, engines) is
built in the background at start, so the readiness probe fails until it can serve.

Answers, the contract with the JetStream source:

    200            handled: ack
    200 {"rejected": reason}
                   poison (data that is not JSON, bad data, an unknown type or task):
                   ack, logged with the reason, never retried
    429 + Retry-After: s, {"retry_after": s}
                   come back later (another worker renders the task under a live
                   lease): nak with that delay, not counted as an attempt
    500            a failed attempt: nak; after the last one the event is dead-lettered
    503            not ready, or a backend or the engine unavailable: back off, not an attempt

`FunctionApplication` is func-python's ASGI application plus `GET /metrics` (Prometheus,
`core.metrics`), on the same port as the events. An event that carries the CloudEvents
extension `requestid` (the router's request that caused it) is handled under that id, so
every log line of its handling names it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any

from func_python.cloudevent import ASGIApplication
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from core import metrics
from core.errors import BackendUnavailable, CosyVoiceError, LeaseHeld, Unavailable
from core.request_id import CLOUDEVENT_ATTRIBUTE, set_request_id, valid_request_id
from core.services.worker import WorkerStopping
from core.settings import load_settings
from core.wiring import Runtime, build_runtime
from router.logs import install_safe_logging

log = logging.getLogger("functions")


class EventRejected(Exception):
    """The event can never be handled (unknown type, bad data): ack it, do not retry."""


class FunctionHost:
    """Base of the platform's functions; subclasses implement `on_event`."""

    name = "function"

    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self._starting: asyncio.Task[None] | None = None
        self._start_error: str | None = None

    # --- func-python lifecycle ---------------------------------------------------------

    def start(self, cfg: dict[str, str]) -> None:
        # Functions never consume on their own: their events arrive over HTTP.
        settings = load_settings(worker_concurrency=0)
        # The router's log format (LOG_FORMAT, request ids, redaction) for every line.
        install_safe_logging(
            "debug" if settings.debug else settings.log_level, log_format=settings.log_format
        )
        self._starting = asyncio.get_running_loop().create_task(self._build(settings))

    async def _build(self, settings: Any) -> None:
        runtime = build_runtime(settings)
        try:
            await runtime.start()
            await self.prepare(runtime)
        except Exception as exc:  # reported through the readiness probe
            self._start_error = f"{type(exc).__name__}: {exc}"
            log.exception("%s could not start", self.name)
            return
        self.runtime = runtime
        log.info("%s ready", self.name)

    def stop(self) -> None:
        if self.runtime is not None:
            runtime, self.runtime = self.runtime, None
            asyncio.get_running_loop().create_task(self._shutdown(runtime))

    async def _shutdown(self, runtime: Runtime) -> None:
        await self.release(runtime)
        await runtime.close()

    async def prepare(self, runtime: Runtime) -> None:
        """Start what this function needs beyond the runtime."""

    async def release(self, runtime: Runtime) -> None:
        """Stop what `prepare` started."""

    def alive(self) -> tuple[bool, str]:
        return self._start_error is None, self._start_error or "OK"

    def ready(self) -> tuple[bool, str]:
        if self.runtime is None:
            return False, self._start_error or "starting"
        return True, "OK"

    # --- events ----------------------------------------------------------------------------

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        event = scope["event"]
        event_type, event_id = event["type"], event["id"]
        request_id = valid_request_id(event.get(CLOUDEVENT_ATTRIBUTE))
        set_request_id(request_id)  # this event's handling runs in a context of its own
        log.info("%s: %s %s (request %s)", self.name, event_type, event_id, request_id or "-")
        try:
            data = _json_data(event.get_data())
        except ValueError as exc:  # not JSON, or not UTF-8: no delivery will fix it
            log.warning("%s: rejected %s %s: %s", self.name, event_type, event_id, exc)
            await _answer(send, 200, {"rejected": f"data is not JSON: {exc}"})
            return
        if self.runtime is None:
            await _answer(send, 503, {"error": "not ready"})
            return
        try:
            outcome = await self.on_event(self.runtime, event_type, event_id, data)
        except EventRejected as exc:
            log.warning("%s: rejected %s %s: %s", self.name, event_type, event_id, exc)
            await _answer(send, 200, {"rejected": str(exc)})
        except LeaseHeld as exc:
            log.info("%s: %s %s: %s", self.name, event_type, event_id, exc.detail)
            await _answer_later(send, exc.retry_after_seconds, exc.detail)
        except WorkerStopping as exc:
            await _answer(send, 503, {"error": f"not ready: {exc.detail}"})
        except Unavailable as exc:
            # A backend or the engine is down, not the event's fault: the source backs off
            # and delivers it again without counting an attempt.
            if isinstance(exc, BackendUnavailable):
                metrics.count_backend_failure(exc)
            log.warning("%s: %s %s waits: %s", self.name, event_type, event_id, exc.detail)
            await _answer(send, 503, {"error": f"unavailable: {exc.detail}"})
        except CosyVoiceError as exc:
            if isinstance(exc, BackendUnavailable):
                metrics.count_backend_failure(exc)
            log.warning("%s: %s %s failed: %s", self.name, event_type, event_id, exc.detail)
            await _answer(send, 500, {"error": exc.detail})
        else:
            await _answer(send, 200, outcome or {"ok": True})

    async def on_event(
        self, runtime: Runtime, event_type: str, event_id: str, data: Any
    ) -> dict[str, Any] | None:
        raise NotImplementedError


# func-python ships no type information, so its base class is Any to the type checker.
class FunctionApplication(ASGIApplication):  # type: ignore[misc]
    """func-python's application (lifecycle, probes, CloudEvents) with `GET /metrics`."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode())],
                }
            )
            await send({"type": "http.response.body", "body": generate_latest(REGISTRY)})
            return
        await super().__call__(scope, receive, send)


def _json_data(data: Any) -> Any:
    """The event's data as JSON values; ValueError when it is not JSON."""
    if isinstance(data, bytes):
        data = data.decode()
    if isinstance(data, str):
        return json.loads(data or "null")
    return data


async def _answer_later(send: Any, seconds: float, detail: str) -> None:
    """429: the event should come back after `seconds` (HTTP's header counts whole
    seconds; the body keeps the fraction for sources that can wait less)."""
    await _answer(
        send,
        429,
        {"retry_after": round(seconds, 3), "detail": detail},
        headers=[(b"retry-after", str(max(math.ceil(seconds), 1)).encode())],
    )


async def _answer(
    send: Any,
    status: int,
    body: dict[str, Any],
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    payload = json.dumps(body).encode()
    await send.http(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
        }
    )
    await send.http({"type": "http.response.body", "body": payload})

"""The func-python lifecycle around the platform's runtime, shared by every function.

func-python calls `start(cfg)` synchronously inside the server's event loop, probes
`alive()`/`ready()`, and hands each CloudEvent to `handle(scope, receive, send)` with the
decoded event in `scope["event"]`. The runtime (database, blob store, bus, engines) is
built in the background at start, so the readiness probe fails until it can serve.

Answers: 200 when the event was handled (the source acks it), 500 when it should come
again later (the source naks it, and after the last delivery it goes to the DLQ).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from core.errors import CosyVoiceError
from core.settings import load_settings
from core.wiring import Runtime, build_runtime

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
        data = event.get_data()
        if isinstance(data, bytes | str):
            data = json.loads(data or "null")
        if self.runtime is None:
            await _answer(send, 503, {"error": "not ready"})
            return
        try:
            outcome = await self.on_event(self.runtime, event_type, event_id, data)
        except EventRejected as exc:
            log.warning("%s: rejected %s %s: %s", self.name, event_type, event_id, exc)
            await _answer(send, 200, {"rejected": str(exc)})
        except CosyVoiceError as exc:
            log.warning("%s: %s %s failed: %s", self.name, event_type, event_id, exc.detail)
            await _answer(send, 500, {"error": exc.detail})
        else:
            await _answer(send, 200, outcome or {"ok": True})

    async def on_event(
        self, runtime: Runtime, event_type: str, event_id: str, data: Any
    ) -> dict[str, Any] | None:
        raise NotImplementedError


async def _answer(send: Any, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send.http(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send.http({"type": "http.response.body", "body": payload})

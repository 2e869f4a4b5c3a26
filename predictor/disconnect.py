"""Noticing a client that went away before its answer started.

KServe hands `predict` the body and the headers, never the connection, and the HTTP
server only notices a departed client when it writes to it. A synthesis that waits for
a GPU slot, or renders a whole non-streaming answer, writes nothing for seconds: without
help it would run to the end for nobody.

`WatchDisconnect` is a plain ASGI middleware: once a `:predict` request's body has been
read, it keeps listening on the connection until the answer starts, and sets the
request's `client_gone()` event when the client disconnects. `until_gone` races work
against that event and cancels the work, which makes the engine runner drop the queued
call or stop the engine. After the answer started, the HTTP server itself cancels a
stream whose client left.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

_GONE: contextvars.ContextVar[asyncio.Event | None] = contextvars.ContextVar(
    "client_gone", default=None
)


class ClientGone(Exception):
    """The client disconnected; its synthesis was cancelled."""


def client_gone() -> asyncio.Event | None:
    """The current request's disconnect event (None outside a watched request)."""
    return _GONE.get()


async def until_gone(work: Awaitable[T], gone: asyncio.Event | None) -> T:
    """Await `work`, cancelling it and raising ClientGone if the client leaves first."""
    if gone is None:
        return await work
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(gone.wait())
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if task.cancelled():
        raise ClientGone("the client disconnected; its synthesis was cancelled")
    return task.result()


class WatchDisconnect:
    """ASGI middleware: set `client_gone()` when a `:predict` client leaves early."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").endswith(":predict"):
            await self.app(scope, receive, send)
            return
        gone = asyncio.Event()
        watcher: asyncio.Task[None] | None = None

        async def listen() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    log.info("client of %s disconnected before its answer", scope["path"])
                    gone.set()
                    return

        async def receive_body() -> Message:
            nonlocal watcher
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            elif not message.get("more_body", False) and watcher is None:
                watcher = asyncio.create_task(listen())
            return message

        async def send_answer(message: Message) -> None:
            if message["type"] == "http.response.start" and watcher is not None:
                # From here the server's own disconnect handling takes over, and nobody
                # else should be reading the connection's messages.
                watcher.cancel()
            await send(message)

        token = _GONE.set(gone)
        try:
            await self.app(scope, receive_body, send_answer)
        finally:
            _GONE.reset(token)
            if watcher is not None:
                watcher.cancel()

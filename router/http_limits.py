"""The HTTP server's own limits, enforced in uvicorn's protocol classes before any app code.

uvicorn bounds neither the request head nor the time a client takes to send it:
httptools keeps appending a header line that never ends (a 128 MB line blocked the
event loop for 27 s), and a connection that sends one byte a second is never timed out.
`LimitedHttpToolsProtocol` adds, per connection:

- MAX_HEADER_BYTES: a request line plus headers larger than this is answered `431`
  (`{"detail"}`) as soon as the limit is passed; the parser never sees the rest;
- REQUEST_HEAD_TIMEOUT: a head not complete in time is answered `408` (or, when not a
  byte has come, the connection is just closed);
- REQUEST_BODY_TIMEOUT and REQUEST_BODY_MIN_RATE: a body that takes longer in all, or
  that averages fewer bytes a second over a window while the server is reading (windows
  in which the application is not reading do not count), is answered `408` while no
  response has started, otherwise the connection is closed;
- KEEP_ALIVE_TIMEOUT (uvicorn's `timeout_keep_alive`) closes idle keep-alive connections;
- a request httptools cannot parse (both Content-Length and Transfer-Encoding, a control
  character in a header, a bad chunk size) is answered `400` with `{"detail"}`, like every
  other refusal, where uvicorn would send a plain-text body and reset the connection.

A refused connection sends its answer, shuts its sending side and stops reading; it is
closed a moment later, so the client can read the answer before the socket goes away,
while the server spends nothing on the bytes still coming. The same class gives each
request the send of `chunk_framing` (many HTTP chunks in one write).

`LimitedWebSocketProtocol` (the `websockets` sans-I/O protocol) answers each ping with a
pong as the protocol requires, but a client that sends pings without reading the pongs
made them pile up in the server's write buffer without bound: more than `PING_BURST`
pings at once (refilled at `PINGS_PER_SECOND`), or a ping while `UNREAD_LIMIT` bytes wait
unread, closes the socket with 1008. A handshake refused with a response (a missing key, a
bad query parameter) counts as ended, not as an application that never answered.
WS_MAX_MESSAGE_BYTES (1009 beyond) and the server's own pings (WS_PING_INTERVAL,
WS_PING_TIMEOUT) are uvicorn options: see `uvicorn_options`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from core.settings import Settings

from .chunk_framing import with_chunk_framing

log = logging.getLogger("router.http_limits")

LINGER_SECONDS = 1.0  # a refused client's time to read the answer before the socket closes
WS_POLICY_VIOLATION = 1008
# Far above what a client needs (libraries ping every 20 s or so), far below a flood.
PING_BURST = 32
PINGS_PER_SECOND = 2.0
# The application waits while the socket's write buffer is above its high-water mark
# (64 KiB) and its messages are small, so this much unread output means the peer has
# stopped reading while it keeps sending.
UNREAD_LIMIT = 1024 * 1024
FEED_BYTES = 4096  # bytes handed to the WebSocket parser at once

_REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large"}
_UNPARSABLE = (
    "The request is not valid HTTP/1.1: its request line, headers or chunked body "
    "could not be parsed"
)


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int
    head_timeout: float
    body_timeout: float
    body_min_rate: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            head_timeout=settings.request_head_timeout,
            body_timeout=settings.request_body_timeout,
            body_min_rate=settings.request_body_min_rate,
        )


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "-"


def refusal_bytes(status: int, detail: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    body = json.dumps({"detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header-size and slow-client limits."""

    limits: ClassVar[ConnectionLimits]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._in_head = True  # waiting for (the rest of) a request line and headers
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_started = 0.0
        self._window_started = 0.0
        self._window_bytes = 0
        self._refused = False
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    # --- bytes in --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._in_head:
            self._window_bytes += len(data)
            super().data_received(data)
            return
        if self._head_timer is None:
            self._arm_head_timer()
        room = self.limits.max_header_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # Only the bytes that still fit go to the parser: if the head ends among them,
        # the rest is a body (or the next request); if not, the head is too large.
        self._head_bytes += room
        super().data_received(data[:room])
        if (
            self._refused
            or self.transport.is_closing()
            or self.transport.get_protocol() is not self
        ):
            return
        if self._in_head:
            self._refuse(431, f"Request headers larger than {self.limits.max_header_bytes} bytes")
            return
        self.data_received(data[room:])

    # --- parser callbacks ------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        upgrading = self.parser.should_upgrade()
        super().on_headers_complete()
        if not upgrading:
            now = self.loop.time()
            self._body_started = self._window_started = now
            self._window_bytes = 0
            self._body_timer = self.loop.call_later(self._window(), self._check_body)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        # Each request's application gets the send that frames many chunks in one write.
        framing_app: Any = with_chunk_framing(app, cycle)  # starlette's ASGI types
        super()._start_asgi_task(cycle, framing_app)

    def on_message_complete(self) -> None:
        self._cancel_body_timer()
        super().on_message_complete()
        self._in_head = True  # a keep-alive connection's next request
        self._head_bytes = 0

    # --- time-outs -------------------------------------------------------------------

    def _window(self) -> float:
        return min(self.limits.head_timeout, self.limits.body_timeout)

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.head_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._refused or self.transport.is_closing() or not self._in_head:
            return
        if self._head_bytes == 0 and self.cycle is not None:
            # An idle keep-alive connection between requests: uvicorn's own timer
            # closes it; there is no request to answer here.
            return
        if self._head_bytes == 0:
            self._close_quietly()
            return
        self._refuse(408, "The request head did not arrive in time")

    def _check_body(self) -> None:
        self._body_timer = None
        if self._refused or self.transport.is_closing() or self._in_head:
            return
        now = self.loop.time()
        if now - self._body_started >= self.limits.body_timeout:
            self._refuse(408, "The request body did not arrive in time")
            return
        reading = not self.flow.read_paused and not (self.cycle and self.cycle.body)
        rate = self._window_bytes / max(now - self._window_started, 1e-6)
        if reading and rate < self.limits.body_min_rate:
            self._refuse(408, "The request body arrives too slowly")
            return
        self._window_started, self._window_bytes = now, 0
        delay = min(self._window(), self.limits.body_timeout - (now - self._body_started))
        self._body_timer = self.loop.call_later(max(delay, 0.01), self._check_body)

    # --- refusing --------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to a parser error: made a refusal like the others (JSON, and
        # the client gets time to read it; nothing more of the connection is parsed).
        self._refuse(400, _UNPARSABLE)

    def _refuse(self, status: int, detail: str) -> None:
        self._refused = True
        self._cancel_timers()
        cycle = self.cycle
        answer = cycle is None or cycle.response_complete or not cycle.response_started
        if cycle is not None and not cycle.response_complete:
            # The application, if it is waiting for the body, sees the client gone.
            cycle.disconnected = True
            cycle.message_event.set()
        log.info("%s - refused with %d: %s", _peer(self.client), status, detail)
        if answer:
            self.transport.write(refusal_bytes(status, detail))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.transport.pause_reading()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _close_quietly(self) -> None:
        self._refused = True
        self._cancel_timers()
        self.transport.close()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()


class _PingBudget:
    """A token bucket: `burst` pings at once, refilled at `rate` a second."""

    def __init__(self, loop: asyncio.AbstractEventLoop, burst: int, rate: float) -> None:
        self._loop = loop
        self._burst = burst
        self._rate = rate
        self._tokens = float(burst)
        self._at = loop.time()

    def take(self) -> bool:
        now = self._loop.time()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class LimitedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets (sans-I/O) protocol that closes a ping-flooding client."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pings = _PingBudget(self.loop, PING_BURST, PINGS_PER_SECOND)

    def data_received(self, data: bytes) -> None:
        # The parser turns a whole read into frames before any is handled: fed at once,
        # a 256 KiB read of tiny pings is ~40,000 frames of Python work before the ping
        # budget can say no. Fed in slices, a flood is stopped within its first slice.
        if len(data) <= FEED_BYTES:
            super().data_received(data)
            return
        view = memoryview(data)
        for start in range(0, len(data), FEED_BYTES):
            if self.close_sent or self.transport.is_closing():
                return
            super().data_received(bytes(view[start : start + FEED_BYTES]))

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            # A handshake answered with a response (a missing key, a bad query) is over;
            # uvicorn would log "returned without completing handshake" as an error.
            self.handshake_complete = True

    def handle_ping(self) -> None:
        if self.close_sent:
            return
        if not self._pings.take():
            self._fail(WS_POLICY_VIOLATION, "too many pings")
            return
        if self.transport.get_write_buffer_size() > UNREAD_LIMIT:
            self._fail(WS_POLICY_VIOLATION, "pongs are not being read")
            return
        super().handle_ping()

    def _fail(self, code: int, reason: str) -> None:
        log.info("%s - WebSocket closed with %d: %s", _peer(self.client), code, reason)
        self.conn.fail(code, reason)
        # The pongs already queued go too: they are few (one read's worth at most).
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of `uvicorn.run`/`uvicorn.Config` that enforce the limits."""
    limits = ConnectionLimits.from_settings(settings)
    http_protocol = type(
        "ConfiguredHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits}
    )
    return {
        "http": http_protocol,
        "ws": LimitedWebSocketProtocol,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "ws_max_size": settings.ws_max_message_bytes,
        "ws_ping_interval": settings.ws_ping_interval or None,
        "ws_ping_timeout": settings.ws_ping_timeout,
        # Base64 audio barely compresses; deflating it costs more CPU than it saves.
        "ws_per_message_deflate": False,
    }

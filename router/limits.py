"""Per-client rate and concurrency limits on /api, off unless configured.

A client is the name of its API key when it sent a valid one, else its peer address
(behind a reverse proxy that is the proxy, unless uvicorn trusts the proxy's
X-Forwarded-For: FORWARDED_ALLOW_IPS). Each key may carry its own limits; other keys and
every address get RATE_LIMIT and MAX_CONCURRENT_REQUESTS_PER_CLIENT.

Rates are counted by the `limits` library in fixed windows in memory: one counter per
client and window, where a moving window would keep one entry per request and sweep
them in a thread per client. Requests beyond either limit get 429 with `Retry-After`
(seconds) and `{"detail"}`. An open WebSocket counts as one request in flight.
The counts are per process: N replicas allow N times the limit.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import FixedWindowRateLimiter
from starlette.types import ASGIApp, Receive, Scope, Send

from .refusals import refuse

log = logging.getLogger("router.limits")

# The routes keys and limits guard: the original API and the OpenAI-compatible one.
GUARDED_PREFIXES = ("/api/", "/v1/")

NO_LIMIT = ("", "off", "none", "0")


class LimitedKey(Protocol):
    """An API key as the limiter sees it (router.auth.ApiKey)."""

    @property
    def name(self) -> str: ...
    @property
    def rate_limit(self) -> str | None: ...  # None = the default; "" or "off" = none
    @property
    def max_concurrent(self) -> int | None: ...  # None = the default; 0 = none


def parse_rate(value: str | None) -> tuple[RateLimitItem, ...]:
    """'600/minute' or '10/second;600/minute'; empty/'off' = none. ValueError if unreadable."""
    if value is None or value.strip().lower() in NO_LIMIT:
        return ()
    return tuple(parse_many(value))


def client_host(scope: Scope) -> str:
    """The peer address (the proxy's, unless uvicorn trusts its forwarded headers)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class ClientLimits:
    """The limits of each client, and its rate counters and requests in flight."""

    def __init__(self, default_rate: str, default_concurrency: int) -> None:
        self._default_rate = parse_rate(default_rate)
        self._default_concurrency = default_concurrency
        self._limiter = FixedWindowRateLimiter(MemoryStorage())
        self._in_flight: Counter[str] = Counter()

    def any_limit(self, keys: Sequence[LimitedKey]) -> bool:
        """Whether anything is limited at all (else the middleware is left out)."""
        return bool(self._default_rate or self._default_concurrency) or any(
            parse_rate(k.rate_limit) or k.max_concurrent for k in keys
        )

    def rates_for(self, key: LimitedKey | None) -> tuple[RateLimitItem, ...]:
        if key is None or key.rate_limit is None:
            return self._default_rate
        return parse_rate(key.rate_limit)

    def concurrency_for(self, key: LimitedKey | None) -> int:
        if key is None or key.max_concurrent is None:
            return self._default_concurrency
        return key.max_concurrent

    async def retry_after(self, client: str, rates: tuple[RateLimitItem, ...]) -> int | None:
        """Counts one request; the seconds to wait when it is over a rate, else None."""
        waits = []
        for rate in rates:
            if not await self._limiter.hit(rate, client):
                stats = await self._limiter.get_window_stats(rate, client)
                waits.append(max(1, math.ceil(stats.reset_time - time.time())))
        return max(waits) if waits else None

    def enter(self, client: str, limit: int) -> bool:
        """Takes a slot of the client's concurrency limit (0 = no limit)."""
        if limit and self._in_flight[client] >= limit:
            return False
        self._in_flight[client] += 1
        return True

    def leave(self, client: str) -> None:
        self._in_flight[client] -= 1
        if self._in_flight[client] <= 0:
            del self._in_flight[client]

    def in_flight(self, client: str) -> int:
        return self._in_flight[client]


class RateLimitMiddleware:
    """429 for a client over its rate or with too many requests in flight."""

    def __init__(
        self,
        app: ASGIApp,
        limits: ClientLimits,
        identify: Callable[[Scope], LimitedKey | None],
    ) -> None:
        self.app = app
        self.limits = limits
        self.identify = identify

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not scope["path"].startswith(
            GUARDED_PREFIXES
        ):
            await self.app(scope, receive, send)
            return
        key = self.identify(scope)
        client = f"key:{key.name}" if key is not None else f"addr:{client_host(scope)}"
        shown = f"key {key.name}" if key is not None else f"address {client_host(scope)}"
        wait = await self.limits.retry_after(client, self.limits.rates_for(key))
        if wait is not None:
            log.info("%s over its rate limit on %s; retry in %d s", shown, scope["path"], wait)
            await refuse(
                scope,
                send,
                429,
                f"Rate limit exceeded; retry in {wait} s",
                {"Retry-After": str(wait)},
            )
            return
        limit = self.limits.concurrency_for(key)
        if not self.limits.enter(client, limit):
            log.info("%s already has %d requests in flight", shown, limit)
            await refuse(
                scope,
                send,
                429,
                f"Too many requests in flight at once (limit {limit}); retry when one ends",
                {"Retry-After": "1"},
            )
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.limits.leave(client)

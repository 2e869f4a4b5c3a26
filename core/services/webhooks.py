"""Webhooks: a signed POST of the final status object when a task ends.

What a receiver gets, for each task that completes, fails or is cancelled:

    POST <callback_url>
    Content-Type: application/json
    X-CosyVoice-Event: task.completed            (task.failed, task.cancelled)
    X-CosyVoice-Timestamp: 1705312202            (Unix seconds of this attempt)
    X-CosyVoice-Idempotency-Key: <uuid>          (the same on every retry of one event)
    X-CosyVoice-Signature: sha256=<hex>          HMAC-SHA256(WEBHOOK_SECRET, f"{timestamp}.{body}")

    body: the task's status object, as GET .../status/{task_id} returns it

To verify, recompute the HMAC over the timestamp header, a dot and the raw body bytes,
compare in constant time, and refuse timestamps far from now (replays).

Delivery is retried with jittered exponential backoff (WEBHOOK_BACKOFF_SECONDS,
doubling, each pause drawn between half and all of it so receivers that failed together
are not retried together) up to WEBHOOK_MAX_ATTEMPTS attempts, on timeouts, connection
errors, 408, 429 and 5xx; other answers are final. Redirects are not followed (a
redirect could point anywhere the guard refuses). The address is vetted again before
every attempt and the connection goes to that vetted address (see `netguard`).

A receiver cannot hold the sender: WEBHOOK_TIMEOUT is one deadline for the whole attempt
(resolving, connecting, sending, and the answer's status line and headers), not a limit
per read that a receiver trickling a byte at a time could renew forever; and the
answer's body is never read (only its status counts), so a receiver answering with
gigabytes costs nothing.

The delivery state is recorded on the task (`Task.webhook`): the final status write
marks it `pending`, so deliveries cut short by a restart are resumed at the next start.
A delivery that breaks for any other reason (a URL that can never be sent, an
unexpected error) is recorded `failed` with the reason, never left `pending` to be
retried after every restart.

An event only says which task ended: the body and the URL are built from the stored
task (`deliver_for_task`), so whoever can publish on the bus cannot have arbitrary JSON
signed or sent anywhere, and an event for an unknown or unfinished task sends nothing.
Several processes may deliver and resend at once: the idempotency key is derived from
the stored ending, the store says when a callback was delivered, and the periodic
resend only takes up callbacks left `pending` longer than a whole delivery could take.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import httpx

from .. import metrics
from ..domain import FINAL_STATUSES, Task, WebhookState, utcnow
from ..errors import CosyVoiceError, TaskNotFound
from ..ports import MetadataStore
from ..schemas.tasks import TaskStatusResponse
from .netguard import CallbackRejected, CallbackTarget, CallbackUnresolvable, resolve_callback

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-CosyVoice-Signature"
TIMESTAMP_HEADER = "X-CosyVoice-Timestamp"
IDEMPOTENCY_HEADER = "X-CosyVoice-Idempotency-Key"
EVENT_HEADER = "X-CosyVoice-Event"
USER_AGENT = "CosyVoice-Webhooks/1"
EVENT_NAMESPACE = uuid.UUID("0b7d7d0e-3f7a-5a43-9c62-1f2d8b7e4c55")
RETRYABLE_STATUS = frozenset({408, 429})
RESUME_SCAN_LIMIT = 1000


# --- signing -----------------------------------------------------------------------------


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """`sha256=<hex>` over `f"{timestamp}.{body}"`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def verify(
    secret: str,
    timestamp: int | str,
    body: bytes,
    signature: str,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    try:
        moment = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - moment) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, moment, body), signature)


def stored_secret(path: Path) -> str:
    """The signing key kept in `path`, made (random, mode 0600) the first time.

    Created with O_EXCL, so processes sharing one data folder that start together end up
    with the same key: the loser of the race reads the winner's.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # the creator may not have written it yet
            if secret := path.read_text().strip():
                return secret
            time.sleep(0.02)
        raise RuntimeError(
            f"the webhook secret file {path} is empty; delete it to make one"
        ) from None
    secret = secrets.token_hex(32)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret + "\n")
    log.info("generated a webhook signing secret in %s", path)
    return secret


def backoff_delays(max_attempts: int, base: float) -> list[float]:
    """Pauses between attempts: base, 2·base, 4·base, ... (one fewer than attempts)."""
    return [base * 2**n for n in range(max(max_attempts - 1, 0))]


def jittered(delay: float) -> float:
    """A pause between half and all of `delay` ("equal jitter")."""
    return delay * random.uniform(0.5, 1.0)


def idempotency_key(task_id: str, status: str, ended_at: str | None) -> str:
    """Stable for one event, across retries and restarts; a task ends only once."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{task_id}|{status}|{ended_at or ''}"))


def task_ended_payload(task: Task) -> dict[str, Any]:
    """What the bus carries when a task ends: the status object and where to send it."""
    body = TaskStatusResponse.of(task).model_dump(mode="json", exclude={"webhook"})
    return body | {"callback_url": task.callback_url}


class NothingToDeliver(Exception):
    """An event that names no ended task: it is dropped and nothing is sent."""


def delivery_window(max_attempts: int, backoff_seconds: float, timeout: float) -> float:
    """The longest one delivery can take: every attempt timing out, every pause at most."""
    return max_attempts * timeout + sum(backoff_delays(max_attempts, backoff_seconds))


# --- one attempt ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptResult:
    outcome: Literal["delivered", "retry", "give_up"]
    detail: str


class PinnedSender:
    """POSTs to a vetted callback, connecting to the address that was vetted.

    http: the URL's host is replaced by the vetted IP and the original `host[:port]` is
    sent in the `Host` header. https: the same, plus httpcore's `sni_hostname` request
    extension, so TLS sends the original name as SNI and verifies the certificate
    against it, while the TCP connection still goes to the vetted IP. Nothing is
    resolved twice, so DNS cannot swap the address between check and connect.
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._allow_private = allow_private
        self._client = httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment would resolve the name itself
            transport=transport,
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """The receiver's answer, closed with its body unread (only the status counts)."""
        target = await resolve_callback(url, allow_private=self._allow_private)
        request = self._client.build_request(
            "POST",
            pinned_url(target),
            content=body,
            headers={**headers, "Host": host_header(target)},
            extensions=({"sni_hostname": target.host} if target.scheme == "https" else {}),
        )
        response = await self._client.send(request, stream=True)
        await response.aclose()
        return response


def pinned_url(target: CallbackTarget) -> httpx.URL:
    return httpx.URL(target.url).copy_with(host=str(target.addresses[0]))


def host_header(target: CallbackTarget) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if target.default_port else f"{host}:{target.port}"


# --- the dispatcher ------------------------------------------------------------------------

Sleep = Callable[[float], Awaitable[None]]


class WebhookDispatcher:
    """Delivers task-ended events to their callback URLs and records how it went."""

    def __init__(
        self,
        store: MetadataStore,
        *,
        secret: str | Callable[[], str],
        allow_private: bool,
        max_attempts: int,
        backoff_seconds: float,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[float], float] = jittered,
    ) -> None:
        self._store = store
        # A callable is read at start (e.g. a key file made on first use), not at wiring.
        self._secret_source = secret
        self._secret = secret if isinstance(secret, str) else ""
        self._allow_private = allow_private
        self._max_attempts = max_attempts
        self._delays = backoff_delays(max_attempts, backoff_seconds)
        self._timeout = timeout
        self._transport = transport
        self._sleep = sleep
        self._jitter = jitter
        self._sender: PinnedSender | None = None
        self._inflight_keys: set[str] = set()
        self._running: set[asyncio.Task[Any]] = set()
        # A callback still `pending` after this long is no longer being sent by anyone.
        self.abandoned_after = delivery_window(max_attempts, backoff_seconds, timeout)

    async def start(self, bus: Any | None = None) -> None:
        """Open the HTTP client; subscribe to the bus and resend what a restart cut off."""
        if not isinstance(self._secret_source, str):
            self._secret = await asyncio.to_thread(self._secret_source)
        self._sender = PinnedSender(
            allow_private=self._allow_private, timeout=self._timeout, transport=self._transport
        )
        if bus is not None:
            await bus.subscribe_task_ended(self.handle, name="webhooks")
            self._spawn(self.resume_pending())

    async def stop(self) -> None:
        """Cancel deliveries in progress; their tasks keep `pending` and resume next start."""
        for running in list(self._running):
            running.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        self._running.clear()
        if self._sender is not None:
            await self._sender.close()
            self._sender = None

    async def handle(self, payload: dict[str, Any]) -> None:
        """Bus subscriber: deliver the callback of the task an event names, from the
        stored task (tracked, so `stop` can cut it short)."""
        current = asyncio.current_task()
        if current is not None:
            self._running.add(current)
        try:
            await self.deliver_for_task(event_task_id(payload), ended=event_status(payload))
        except NothingToDeliver as exc:
            log.warning("dropped a task-ended event: %s", exc)
        finally:
            if current is not None:
                self._running.discard(current)

    async def deliver_for_task(self, task_id: str, *, ended: str | None = None) -> WebhookState:
        """Deliver the callback of a stored task that ended, built from the record alone.

        `ended` is the status the event announced; an event for a task that does not
        exist, has not ended, or ended otherwise raises NothingToDeliver.
        """
        if not task_id:
            raise NothingToDeliver("the event names no task")
        try:
            task = await self._store.get_task(task_id)
        except TaskNotFound:
            raise NothingToDeliver(f"task {task_id} does not exist") from None
        if task.status not in FINAL_STATUSES:
            raise NothingToDeliver(f"task {task_id} has not ended (it is {task.status.value})")
        if ended is not None and ended != task.status.value:
            raise NothingToDeliver(f"task {task_id} ended {task.status.value}, not {ended}")
        if not task.callback_url or task.webhook.status == "delivered":
            return task.webhook
        return await self.deliver(task_ended_payload(task))

    def _spawn(self, work: Awaitable[Any]) -> None:
        job = asyncio.ensure_future(work)
        self._running.add(job)
        job.add_done_callback(self._running.discard)

    async def resume_pending(self, *, abandoned_only: bool = False) -> int:
        """Resend every ended task whose webhook is still `pending` (cut off by a restart
        or never announced).

        With `abandoned_only`, only those that ended longer ago than a whole delivery can
        take: what another replica may still be sending is left to it, so replicas
        resending together do not send one callback twice.
        """
        resumed = 0
        cutoff = utcnow() - timedelta(seconds=self.abandoned_after)
        for status in FINAL_STATUSES:
            try:
                tasks, _ = await self._store.list_tasks(status=status, limit=RESUME_SCAN_LIMIT)
            except CosyVoiceError as exc:
                log.warning("could not look for pending webhooks: %s", exc.detail)
                return resumed
            for task in tasks:
                if not task.callback_url or task.webhook.status != "pending":
                    continue
                if abandoned_only and (task.completed_at is None or task.completed_at > cutoff):
                    continue
                self._spawn(self.deliver(task_ended_payload(task)))
                resumed += 1
        if resumed:
            log.info("resending %d pending webhook(s)", resumed)
        return resumed

    async def resend_periodically(self, interval: float) -> None:
        """Resend abandoned pending webhooks now and every `interval` seconds, until
        cancelled (the webhook function runs this; many replicas may)."""
        while True:
            await self.resume_pending(abandoned_only=True)
            await self._sleep(interval)

    def start_resending(self, interval: float) -> None:
        """Run `resend_periodically` in the background; `stop` ends it."""
        self._spawn(self.resend_periodically(interval))

    async def deliver(self, payload: dict[str, Any]) -> WebhookState:
        """Send the payload `task_ended_payload` built from a stored task, with retries;
        returns (and records) the final delivery state. Never pass an event's data here:
        `deliver_for_task` is the way from an event."""
        body_fields = dict(payload)
        url = body_fields.pop("callback_url", None)
        task_id = str(body_fields.get("task_id", ""))
        status = str(body_fields.get("status", ""))
        if not url or not task_id:
            return WebhookState()
        if await self._already_delivered(task_id):
            return WebhookState(status="delivered")
        key = idempotency_key(task_id, status, body_fields.get("completed_at"))
        if key in self._inflight_keys:
            return WebhookState(status="pending")
        self._inflight_keys.add(key)
        try:
            return await self._deliver(task_id, status, url, body_fields, key)
        except Exception as exc:
            # Left `pending`, it would be resent (and break again) after every restart.
            log.exception("webhook for task %s broke", task_id)
            state = WebhookState(status="failed", last_error=f"delivery broke: {describe(exc)}")
            await self._record(task_id, state)
            return state
        finally:
            self._inflight_keys.discard(key)

    async def _deliver(
        self, task_id: str, status: str, url: str, fields: dict[str, Any], key: str
    ) -> WebhookState:
        body = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
        state = WebhookState(status="pending")
        for attempt in range(1, self._max_attempts + 1):
            result = await self.attempt(url, body, key, status)
            if result.outcome == "delivered":
                state = WebhookState(status="delivered", attempts=attempt, delivered_at=utcnow())
                log.info("webhook for task %s delivered (attempt %d)", task_id, attempt)
                await self._record(task_id, state)
                return state
            last = attempt == self._max_attempts or result.outcome == "give_up"
            state = WebhookState(
                status="failed" if last else "pending", attempts=attempt, last_error=result.detail
            )
            await self._record(task_id, state)
            if last:
                log.warning(
                    "webhook for task %s failed after %d attempt(s): %s",
                    task_id,
                    attempt,
                    result.detail,
                )
                return state
            delay = self._jitter(self._delays[attempt - 1])
            log.info("webhook for task %s: %s; retry in %.1fs", task_id, result.detail, delay)
            await self._sleep(delay)
        return state

    async def attempt(self, url: str, body: bytes, key: str, status: str) -> AttemptResult:
        """One signed POST, classified: delivered, worth retrying, or final."""
        if self._sender is None:
            raise RuntimeError("WebhookDispatcher.start() was not called")
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_HEADER: f"task.{status}",
            TIMESTAMP_HEADER: str(timestamp),
            IDEMPOTENCY_HEADER: key,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._sender.post(url, body, headers)
        except CallbackRejected as exc:
            return AttemptResult("give_up", exc.detail)
        except CallbackUnresolvable as exc:
            return AttemptResult("retry", exc.detail)
        except (TimeoutError, httpx.TimeoutException):
            return AttemptResult("retry", f"timed out after {self._timeout:g}s")
        except httpx.TransportError as exc:
            return AttemptResult("retry", f"connection failed: {describe(exc)}")
        except Exception as exc:  # e.g. a URL the HTTP client refuses: no retry will help
            return AttemptResult("give_up", f"could not send: {describe(exc)}")
        code = response.status_code
        if 200 <= code < 300:
            return AttemptResult("delivered", f"HTTP {code}")
        if 300 <= code < 400:
            return AttemptResult("give_up", f"HTTP {code}: redirects are not followed")
        if code >= 500 or code in RETRYABLE_STATUS:
            return AttemptResult("retry", f"HTTP {code}")
        return AttemptResult("give_up", f"HTTP {code}")

    async def _already_delivered(self, task_id: str) -> bool:
        try:
            task = await self._store.get_task(task_id)
        except TaskNotFound:
            return False  # deleted right after it ended: still tell the receiver
        except CosyVoiceError:
            return False
        return task.webhook.status == "delivered"

    async def _record(self, task_id: str, state: WebhookState) -> None:
        metrics.count_webhook_state(state.status)
        try:
            await self._store.update_task(task_id, {"webhook": state})
        except TaskNotFound:
            pass  # deleted after it ended; the receiver is told all the same
        except CosyVoiceError as exc:
            log.warning("could not record webhook state of task %s: %s", task_id, exc.detail)


def event_task_id(payload: dict[str, Any]) -> str:
    task_id = payload.get("task_id")
    return task_id if isinstance(task_id, str) else ""


def event_status(payload: dict[str, Any]) -> str | None:
    status = payload.get("status")
    return status if isinstance(status, str) else None


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]

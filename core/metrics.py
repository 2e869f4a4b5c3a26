"""The platform's Prometheus metrics, defined once for every process.

The router, the functions and the predictor each expose them on `/metrics` (the
predictor through KServe's own route, which serves the same default registry). Only what
a process does moves: the router counts requests and streams, whichever process renders
counts task transitions, whichever runs an engine reports its slots.

Labels are bounded on purpose: a route is its template (`/api/v3/audio/{filename}`),
never the raw path; a status is a number; engines, priorities, protocols, outcomes and
backends are short fixed lists. Recording is a dictionary lookup and an addition: the
label children used on the hot path are cached.

Gauges of things that already keep their own counts (engine slots and queues) are read
when Prometheus scrapes, so the hot path pays nothing for them.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from functools import cache
from types import TracebackType
from typing import Any, Protocol

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# --- requests -------------------------------------------------------------------------

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
FIRST_AUDIO_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)
RTF_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)

UNMATCHED_ROUTE = "unmatched"  # no route matched: 404s of arbitrary paths share one series

HTTP_REQUESTS = Counter(
    "cosyvoice_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "cosyvoice_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer (streams included), by "
    "method, route template and status.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)


@cache
def _request_series(method: str, route: str, status: int) -> tuple[Any, Any]:
    """The two children of one request series, looked up once per series."""
    labels = (method, route, str(status))
    return HTTP_REQUESTS.labels(*labels), HTTP_LATENCY.labels(*labels)


def record_request(method: str, route: str, status: int, seconds: float) -> None:
    counter, latency = _request_series(method, route, status)
    counter.inc()
    latency.observe(seconds)


# --- streaming and engines ---------------------------------------------------------------

FIRST_AUDIO = Histogram(
    "cosyvoice_time_to_first_audio_seconds",
    "Time from a stream's admission to its first audio leaving, by protocol "
    "(http chunked, sse, websocket).",
    ["protocol"],
    buckets=FIRST_AUDIO_BUCKETS,
)


def record_first_audio(protocol: str, seconds: float) -> None:
    FIRST_AUDIO.labels(protocol).observe(seconds)


REAL_TIME_FACTOR = Histogram(
    "cosyvoice_real_time_factor",
    "Seconds an engine slot was held per second of audio produced (below 1 is faster "
    "than real time), by engine and model.",
    ["engine", "model"],
    buckets=RTF_BUCKETS,
)


def record_real_time_factor(engine: str, model: str, seconds: float, audio_seconds: float) -> None:
    if audio_seconds > 0:
        REAL_TIME_FACTOR.labels(engine, model).observe(seconds / audio_seconds)


class EngineQueue(Protocol):
    """What an engine runner exposes about its slots (see `core.engines.runner`)."""

    concurrency: int
    active: int
    queued: int

    @property
    def info(self) -> Any: ...


class _EngineCollector(Collector):
    """Slots busy, slots and calls waiting of every live engine runner, read at scrape."""

    def __init__(self) -> None:
        self._runners: weakref.WeakSet[Any] = weakref.WeakSet()

    def watch(self, runner: EngineQueue) -> None:
        self._runners.add(runner)

    def describe(self) -> list[Metric]:
        return []  # no samples at registration: runners come and go

    def collect(self) -> Iterator[Metric]:
        totals: dict[tuple[str, str], list[int]] = {}
        for runner in list(self._runners):
            key = (runner.info.engine, runner.info.model)
            busy, slots, queued = totals.setdefault(key, [0, 0, 0])
            totals[key] = [busy + runner.active, slots + runner.concurrency, queued + runner.queued]
        labels = ["engine", "model"]
        families = (
            GaugeMetricFamily(
                "cosyvoice_engine_slots_busy", "Engine slots running a synthesis.", labels=labels
            ),
            GaugeMetricFamily(
                "cosyvoice_engine_slots", "Syntheses an engine runs at once.", labels=labels
            ),
            GaugeMetricFamily(
                "cosyvoice_engine_queue_depth",
                "Syntheses waiting for an engine slot.",
                labels=labels,
            ),
        )
        for key, values in totals.items():
            for family, value in zip(families, values, strict=True):
                family.add_metric(list(key), value)
        yield from families


ENGINES = _EngineCollector()
REGISTRY.register(ENGINES)


def watch_engine(runner: EngineQueue) -> None:
    """Report this runner's slots and queue on `/metrics` for as long as it lives."""
    ENGINES.watch(runner)


# --- tasks and webhooks --------------------------------------------------------------------

TASK_QUEUE_DEPTH = Gauge(
    "cosyvoice_task_queue_depth",
    "Tasks queued for rendering, by priority (the same in every router replica).",
    ["priority"],
)


def set_task_queue_depth(by_priority: dict[str, int]) -> None:
    for priority, count in by_priority.items():
        TASK_QUEUE_DEPTH.labels(priority).set(count)


TASK_TRANSITIONS = Counter(
    "cosyvoice_task_transitions",
    "Task status changes made by this process, by the status left and the status entered.",
    ["from_status", "to_status"],
)


def count_task_transition(source: object, target: object) -> None:
    TASK_TRANSITIONS.labels(_value(source), _value(target)).inc()


WEBHOOK_DELIVERIES = Counter(
    "cosyvoice_webhook_deliveries",
    "Webhook deliveries that ended, by outcome (delivered, failed).",
    ["outcome"],
)
_FINAL_WEBHOOK_STATES = frozenset({"delivered", "failed"})


def count_webhook_state(state: str) -> None:
    """Counts a recorded delivery state when it is final (a `pending` retry is not)."""
    if state in _FINAL_WEBHOOK_STATES:
        WEBHOOK_DELIVERIES.labels(state).inc()


# --- backends ----------------------------------------------------------------------------

BACKEND_ERRORS = Counter(
    "cosyvoice_backend_errors",
    "Calls to a backing service that failed, by backend (database, blob_store, bus, predictor).",
    ["backend"],
)

# The adapters raise `BackendUnavailable` from many places; the module that raised it
# names the backend, so the adapters need not know about metrics. The predictor client
# counts its own failures (retries included) and is left out here.
BACKEND_OF_MODULE = {
    "core.adapters.embedded.sqlite_store": "database",
    "core.adapters.cluster.mongo_store": "database",
    "core.adapters.embedded.file_blobs": "blob_store",
    "core.adapters.cluster.s3_blobs": "blob_store",
    "core.adapters.embedded.memory_bus": "bus",
    "core.adapters.cluster.nats_bus": "bus",
}


def count_backend_error(backend: str) -> None:
    BACKEND_ERRORS.labels(backend).inc()


def backend_of(exc: BaseException) -> str | None:
    """The backend whose adapter raised `exc` (the innermost adapter frame), if any."""
    found = None
    for module in _traceback_modules(exc.__traceback__):
        found = BACKEND_OF_MODULE.get(module, found)
    return found


def count_backend_failure(exc: BaseException) -> None:
    """Count `exc` against its backend when an adapter of a backing service raised it."""
    backend = backend_of(exc)
    if backend is not None:
        count_backend_error(backend)


def _traceback_modules(tb: TracebackType | None) -> Iterable[str]:
    while tb is not None:
        yield tb.tb_frame.f_globals.get("__name__", "")
        tb = tb.tb_next


def _value(status: object) -> str:
    return str(getattr(status, "value", status))

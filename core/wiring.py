"""Configuration → adapters. The only place that knows which class serves which URL.

Each port has a small table from URL scheme to a factory; adding a backend is one row.
Cluster adapters are imported lazily, so the embedded profile needs none of their
libraries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .domain import EngineSlot
from .errors import EngineNotReady
from .memory_release import release_large_blocks_when_freed
from .ports import BlobStore, EventBus, MetadataStore, SynthesisClient
from .services.endings import TaskEndings
from .services.retention import RetentionSweeper
from .services.synthesis import SynthesisService
from .services.tasks import TaskService
from .services.voices import VoiceService
from .services.webhooks import WebhookDispatcher, stored_secret
from .services.worker import RenderWorker
from .settings import Settings

log = logging.getLogger(__name__)


def _sqlite_store(url: str, settings: Settings) -> MetadataStore:
    from .adapters.embedded.sqlite_store import SqliteMetadataStore

    return SqliteMetadataStore(Path(url.removeprefix("sqlite:///")))


def _mongo_store(url: str, settings: Settings) -> MetadataStore:
    from .adapters.cluster.mongo_store import MongoMetadataStore

    return MongoMetadataStore(url, timeout=settings.backend_timeout)


METADATA_STORES: dict[str, Callable[[str, Settings], MetadataStore]] = {
    "sqlite": _sqlite_store,
    "mongodb": _mongo_store,
    "mongodb+srv": _mongo_store,
}


def _file_blobs(url: str, settings: Settings) -> BlobStore:
    from .adapters.embedded.file_blobs import FileBlobStore

    if url:
        root = Path(urlparse(url).path)
        return FileBlobStore({"voices": root / "voices", "outputs": root / "outputs"})
    return FileBlobStore({"voices": settings.voice_cache_dir, "outputs": settings.output_dir})


def _s3_blobs(url: str, settings: Settings) -> BlobStore:
    from .adapters.cluster.s3_blobs import S3BlobStore

    return S3BlobStore(
        url,
        access_key=settings.aws_access_key_id,
        secret_key=settings.aws_secret_access_key.get_secret_value(),
        region=settings.aws_region or settings.aws_default_region,
        ca_file=settings.ssl_cert_file,
        timeout=settings.backend_timeout,
    )


BLOB_STORES: dict[str, Callable[[str, Settings], BlobStore]] = {
    "": _file_blobs,
    "file": _file_blobs,
    "s3": _s3_blobs,
    "s3s": _s3_blobs,
}


def _memory_bus(url: str, settings: Settings, store: MetadataStore, **kw: Any) -> EventBus:
    from .adapters.embedded.memory_bus import MemoryEventBus

    return MemoryEventBus(store)


def _nats_bus(url: str, settings: Settings, store: MetadataStore, **kw: Any) -> EventBus:
    from .adapters.cluster.nats_bus import NatsEventBus

    return NatsEventBus(
        url,
        store,
        max_deliver=settings.task_max_attempts,
        ack_wait=settings.task_lease_seconds,
        timeout=settings.backend_timeout,
        stream=settings.jetstream_stream,
        manage_stream=settings.jetstream_manage_stream,
        **kw,
    )


EVENT_BUSES: dict[str, Callable[..., EventBus]] = {
    "memory": _memory_bus,
    "nats": _nats_bus,
    "tls": _nats_bus,
}


def scheme(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else ""


def build_metadata_store(settings: Settings) -> MetadataStore:
    return METADATA_STORES[scheme(settings.database_url)](settings.database_url, settings)


def build_blob_store(settings: Settings) -> BlobStore:
    return BLOB_STORES[scheme(settings.blob_store_url)](settings.blob_store_url, settings)


def build_event_bus(settings: Settings, store: MetadataStore, **kw: Any) -> EventBus:
    return EVENT_BUSES[scheme(settings.event_bus_url)](
        settings.event_bus_url, settings, store, **kw
    )


def build_synthesis_clients(
    settings: Settings, blobs: BlobStore
) -> tuple[dict[EngineSlot, SynthesisClient], dict[EngineSlot, str | None]]:
    """One client per engine slot: a remote predictor when its URL is set, else in-process.

    Slots whose engines resolve to the same in-process engine kind share one runner, so
    the development engine is loaded once for v1, v2 and v3.

    With ENGINE=cosyvoice a slot whose model is missing is served by a client that
    answers 503 with the reason, while the other slot serves; only when no slot can be
    served does start-up fail.
    """
    from .adapters.embedded.inprocess_synthesis import InProcessSynthesis
    from .adapters.missing_model import MissingModelSynthesis
    from .engines.features import FeatureCache
    from .engines.registry import build_engine, slot_model_name
    from .engines.runner import EngineRunner

    clients: dict[EngineSlot, SynthesisClient] = {}
    warnings: dict[EngineSlot, str | None] = {}
    missing: dict[EngineSlot, str] = {}
    shared: dict[str, SynthesisClient] = {}
    remote_urls = {
        EngineSlot.v3: settings.predictor_url_v3,
        EngineSlot.v2: settings.predictor_url_v2,
    }
    remote_models = {
        EngineSlot.v3: settings.predictor_model_v3,
        EngineSlot.v2: settings.predictor_model_v2,
    }
    for slot in (EngineSlot.v3, EngineSlot.v2):
        if remote_urls[slot]:
            from .adapters.cluster.kserve_synthesis import KServeSynthesis

            clients[slot] = KServeSynthesis(
                remote_urls[slot], remote_models[slot], timeout=settings.predictor_timeout
            )
            warnings[slot] = None
            continue
        try:
            engine, warning = build_engine(settings, slot)
        except EngineNotReady as exc:
            missing[slot] = exc.detail
            clients[slot] = MissingModelSynthesis(slot_model_name(slot), exc.detail)
            warnings[slot] = exc.detail
            continue
        warnings[slot] = warning  # the registry has logged it
        kind = engine.info.engine
        if kind != "cosyvoice" and kind in shared:
            clients[slot] = shared[kind]
            continue
        cache = FeatureCache(engine, engine.info.model, blobs, settings.feature_cache_size)
        runner = EngineRunner(
            engine,
            concurrency=settings.synthesis_concurrency,
            timeout=settings.synthesis_timeout,
            feature_cache=cache,
            max_queued=settings.max_queued_syntheses,
            warm_up=True,
        )
        clients[slot] = shared[kind] = InProcessSynthesis(runner, blobs)
    if len(missing) == len(clients):
        raise EngineNotReady("; ".join(missing.values()))
    for reason in missing.values():
        log.error("%s; its routes answer 503 until the model is installed", reason)
    return clients, warnings


def _engines_here(clients: dict[EngineSlot, SynthesisClient]) -> list[str]:
    """The kinds of engine this process runs (`EngineInfo.engine`), not a predictor's."""
    from .adapters.embedded.inprocess_synthesis import InProcessSynthesis

    return [
        client.runner.engine.info.engine
        for client in clients.values()
        if isinstance(client, InProcessSynthesis)
    ]


def _feature_forgetter(clients: dict[EngineSlot, SynthesisClient]) -> Callable[[str], None]:
    """Drops a sample's features from the memory of every in-process engine."""
    from .adapters.embedded.inprocess_synthesis import InProcessSynthesis

    caches = {
        id(client.runner.feature_cache): client.runner.feature_cache
        for client in clients.values()
        if isinstance(client, InProcessSynthesis)
    }

    def forget(sha256: str) -> None:
        for cache in caches.values():
            cache.forget(sha256)

    return forget


@dataclass
class Runtime:
    """Everything a running process holds: adapters, services, and their lifecycle."""

    settings: Settings
    store: MetadataStore
    blobs: BlobStore
    bus: EventBus
    synthesis_clients: dict[EngineSlot, SynthesisClient]
    engine_warnings: dict[EngineSlot, str | None]
    voices: VoiceService
    synthesis: SynthesisService
    tasks: TaskService
    worker: RenderWorker
    webhooks: WebhookDispatcher
    retention: RetentionSweeper | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    _working: bool = field(default=False, init=False, repr=False)

    async def start(self) -> None:
        await self.store.start()
        await self.blobs.start()
        await self.bus.start()
        started: set[int] = set()
        for client in self.synthesis_clients.values():
            if id(client) not in started:
                started.add(id(client))
                await client.start()
        if self.settings.worker_concurrency > 0:
            # Webhooks first, so the endings of renders resumed at start are delivered.
            await self.webhooks.start(self.bus)
            self.webhooks.start_resending(self.settings.webhook_resend_interval)
            await self.worker.start()
            self._working = True
        if self.retention is not None:
            await self.retention.start()

    async def close(self) -> None:
        if self.retention is not None:
            await self.retention.stop()
        if self._working:
            # Drain before anything the renders need (engines, bus, store) goes away.
            self._working = False
            await self.worker.stop()
            await self.webhooks.stop()
        closed: set[int] = set()
        for client in self.synthesis_clients.values():
            if id(client) not in closed:
                closed.add(id(client))
                await client.close()
        await self.bus.close()
        await self.blobs.close()
        await self.store.close()


class _DeadLetterSink:
    """The bus's dead-letter callback: fails the task with the bus's reason through
    `TaskEndings`, like every other ending (recorded once, announced once).

    The bus is built before the endings that handle its dead letters (which need the
    bus), so they are attached once they exist.
    """

    def __init__(self) -> None:
        self.endings: TaskEndings | None = None

    async def __call__(self, task_id: str, reason: str) -> None:
        if self.endings is None:
            raise RuntimeError("dead letter received before the task endings exist")
        await self.endings.fail(task_id, dead_letter_reason(reason))


def dead_letter_reason(reason: str) -> str:
    """The error a task shows when the bus gave up on its render."""
    return f"rendering gave up after repeated failures: {reason}"


def build_task_parts(
    settings: Settings,
    store: MetadataStore,
    bus: EventBus,
    blobs: BlobStore,
    synthesis: SynthesisService,
) -> tuple[TaskService, RenderWorker, WebhookDispatcher]:
    tasks = TaskService(
        store,
        bus,
        blobs,
        synthesis,
        max_text_length=settings.max_task_text_length,
        allow_private_callbacks=settings.webhook_allow_private,
        worker_concurrency=settings.worker_concurrency,
    )
    worker = RenderWorker(
        store,
        bus,
        blobs,
        synthesis,
        tasks,
        concurrency=settings.worker_concurrency,
        lease_seconds=settings.task_lease_seconds,
        max_attempts=settings.task_max_attempts,
        segment_max_chars=settings.segment_max_chars,
    )
    webhooks = WebhookDispatcher(
        store,
        secret=webhook_secret(settings),
        allow_private=settings.webhook_allow_private,
        max_attempts=settings.webhook_max_attempts,
        backoff_seconds=settings.webhook_backoff_seconds,
        timeout=settings.webhook_timeout,
    )
    return tasks, worker, webhooks


WEBHOOK_SECRET_FILE = "webhook-secret"


def webhook_secret(settings: Settings) -> str | Callable[[], str]:
    """WEBHOOK_SECRET; unset in the embedded profile, a key generated on first start and
    kept beside the SQLite database, so `make serve` needs no configuration. A MongoDB
    profile without WEBHOOK_SECRET exits here: its replicas must share one key."""
    settings.require_webhook_secret()
    if settings.webhook_secret:
        return settings.webhook_secret
    folder = Path(settings.database_url.removeprefix("sqlite:///")).parent
    return lambda: stored_secret(folder / WEBHOOK_SECRET_FILE)


def build_runtime(settings: Settings) -> Runtime:
    store = build_metadata_store(settings)
    blobs = build_blob_store(settings)
    dead_letters = _DeadLetterSink()
    bus = build_event_bus(settings, store, on_dead_letter=dead_letters)
    clients, warnings = build_synthesis_clients(settings, blobs)
    release_large_blocks_when_freed(_engines_here(clients))
    synthesis = SynthesisService(
        store,
        blobs,
        clients,
        sample_rate=settings.sample_rate,
        segment_max_chars=settings.segment_max_chars,
    )
    tasks, worker, webhooks = build_task_parts(settings, store, bus, blobs, synthesis)
    dead_letters.endings = tasks.endings
    return Runtime(
        settings=settings,
        store=store,
        blobs=blobs,
        bus=bus,
        synthesis_clients=clients,
        engine_warnings=warnings,
        voices=VoiceService(
            store,
            blobs,
            max_audio_duration=settings.max_audio_duration,
            forget_features=_feature_forgetter(clients),
        ),
        synthesis=synthesis,
        tasks=tasks,
        worker=worker,
        webhooks=webhooks,
        retention=RetentionSweeper(
            store,
            blobs,
            output_ttl=settings.output_ttl,
            task_retention=settings.task_retention,
            interval=settings.retention_sweep_seconds,
        ),
    )

"""/health: engines and backing services, as readiness probes and people read it."""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Query

from core.domain import ApiVersion, EngineSlot
from core.errors import CosyVoiceError
from core.schemas.synthesis import EngineHealth, Health, ServiceHealth
from core.wiring import Runtime, scheme

from ..deps import RuntimeDep

SERVES = {EngineSlot.v3: ["v3"], EngineSlot.v2: ["v1", "v2"]}


def package_version() -> str:
    try:
        return version("cosyvoice-serving")
    except PackageNotFoundError:
        return "0+unknown"


async def _probe(name: str, backend: str, check: object, limit: float) -> tuple[str, ServiceHealth]:
    try:
        await asyncio.wait_for(check(), limit)  # type: ignore[operator]
        return name, ServiceHealth(ok=True, backend=backend)
    except (CosyVoiceError, TimeoutError, OSError) as exc:
        detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
        return name, ServiceHealth(ok=False, backend=backend, detail=detail)


async def engine_health(runtime: Runtime, slot: EngineSlot, deep: bool) -> EngineHealth:
    client = runtime.synthesis_clients[slot]
    info = client.info
    try:
        ready = await asyncio.wait_for(client.ready(deep=deep), runtime.settings.backend_timeout)
    except (CosyVoiceError, TimeoutError, OSError):
        ready = False
    return EngineHealth(
        ready=ready,
        model=info.model,
        engine=info.engine,
        real_model=info.real_model,
        remote=client.remote,
        warning=runtime.engine_warnings.get(slot) or client.warning,
        serves=SERVES[slot],
    )


class BackendProbes:
    """The backing services' health, probed by one background loop, not by each request.

    Under load a probe of the database or object store can take seconds; `/health` is
    what load balancers and people poll then, so it answers from the latest probe at
    once. The loop starts with the first `/health` and probes every `interval` seconds;
    a snapshot older than `stale_after` (the loop stuck behind a backend time-out) is
    replaced by a live probe. `deep=true` always probes live.
    """

    def __init__(self, interval: float = 1.0, stale_after: float = 5.0) -> None:
        self._interval = interval
        self._stale_after = stale_after
        self._latest: tuple[float, dict[str, ServiceHealth]] | None = None
        self._loop: asyncio.Task[None] | None = None

    async def services(self, runtime: Runtime, *, live: bool) -> dict[str, ServiceHealth]:
        if self._loop is None:
            self._loop = asyncio.create_task(self._refresh(runtime), name="health-probes")
        now = asyncio.get_running_loop().time()
        if live or self._latest is None or now - self._latest[0] > self._stale_after:
            return await self._probe(runtime)
        return self._latest[1]

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
            self._loop = None

    async def _refresh(self, runtime: Runtime) -> None:
        while True:
            await self._probe(runtime)
            await asyncio.sleep(self._interval)

    async def _probe(self, runtime: Runtime) -> dict[str, ServiceHealth]:
        # A little longer than the adapters' own time-outs, so they can say why.
        timeout = runtime.settings.backend_timeout + 1.0
        settings = runtime.settings
        probes = await asyncio.gather(
            _probe("database", scheme(settings.database_url), runtime.store.ping, timeout),
            _probe(
                "blob_store", scheme(settings.blob_store_url) or "file", runtime.blobs.ping, timeout
            ),
            _probe("event_bus", scheme(settings.event_bus_url), runtime.bus.ping, timeout),
        )
        services = dict(probes)
        self._latest = (asyncio.get_running_loop().time(), services)
        return services


def build_router(probes: BackendProbes) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/health", response_model=Health, summary="Service health (HTTP 200 always)")
    async def health(
        runtime: RuntimeDep,
        deep: bool = Query(False, description="Also wake and probe remote predictors"),
    ) -> Health:
        services = await probes.services(runtime, live=deep)
        v3, v2 = await asyncio.gather(
            engine_health(runtime, EngineSlot.v3, deep), engine_health(runtime, EngineSlot.v2, deep)
        )
        healthy = v3.ready and v2.ready and all(s.ok for s in services.values())
        return Health(
            status="healthy" if healthy else "degraded",
            v2=v2,
            v3=v3,
            services=services,
            version=package_version(),
        )

    return router


__all__ = ["ApiVersion", "build_router"]

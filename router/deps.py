"""Dependencies shared by the route modules, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from core.wiring import Runtime


async def get_runtime(request: Request) -> Runtime:
    # async on purpose: FastAPI runs a plain `def` dependency in a thread pool, a hop
    # every request would pay for nothing.
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]

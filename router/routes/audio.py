"""Rendered audio downloads: /audio/{filename}, with HTTP Range for players.

Built per version by `build_router(version)` like the other versioned route modules, so
`create_app` mounts them all one way; here the version only names the OpenAPI tag.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from core.domain import OUTPUT_FILENAME_PATTERN, ApiVersion, output_key
from core.errors import AudioNotFound, InvalidInput, NotFound

from ..deps import RuntimeDep
from ..errors import error_responses

RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


async def _starting_with(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        if first:
            yield first
        async for piece in rest:
            yield piece
    finally:
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()


def build_router(version: ApiVersion) -> APIRouter:
    router = APIRouter(tags=[f"{version.value} audio"])

    async def download(runtime: RuntimeDep, filename: str, request: Request) -> Response:
        # Only names the service itself produces are served, so nothing a client
        # sends can point outside the output store.
        if not OUTPUT_FILENAME_PATTERN.fullmatch(filename):
            raise InvalidInput("invalid audio file name: expected {version}_{mode}_{hex}.{ext}")
        key = output_key(filename)
        try:
            info = await runtime.blobs.stat(key)
        except NotFound:
            raise AudioNotFound(filename) from None
        headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, max-age=3600"}
        start, end = 0, info.size - 1
        status = 200
        spec = request.headers.get("range")
        if spec and info.size:
            match = RANGE_RE.match(spec.strip())
            if match and (match.group(1) or match.group(2)):
                first, last = match.groups()
                if first:
                    start, end = int(first), min(int(last) if last else end, end)
                else:  # suffix range: the last N bytes
                    start = max(info.size - int(last), 0)
                if start > end or start >= info.size:
                    return Response(
                        status_code=416, headers={"Content-Range": f"bytes */{info.size}"}
                    )
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
        headers["Content-Length"] = str(end - start + 1 if info.size else 0)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers, media_type=info.content_type)
        body = runtime.blobs.read_range(key, start, end)
        try:
            # The object is opened before the status line goes out: one removed since the
            # `stat` (retention sweeps outputs) is a 404, not a body cut off midway. Once
            # open, a store serves it whole even if it is removed meanwhile.
            opening = await anext(body)
        except NotFound:
            raise AudioNotFound(filename) from None
        except StopAsyncIteration:
            opening = b""
        return StreamingResponse(
            _starting_with(opening, body),
            status_code=status,
            headers=headers,
            media_type=info.content_type,
        )

    # One route per method: FastAPI names an operation after its first method only, and
    # OpenAPI needs every operationId to be unique.
    for path, visible, method in (
        ("/audio/{filename:path}", True, "GET"),
        ("/audio/{filename:path}", True, "HEAD"),
        ("/cross-lingual/audio/{filename:path}", True, "GET"),
        ("/cross-lingual/audio/{filename:path}", True, "HEAD"),
    ):
        router.add_api_route(
            path,
            download,
            methods=[method],
            summary="Download rendered audio (supports Range)",
            response_class=Response,
            responses={
                200: {"content": {"audio/wav": {}, "audio/mpeg": {}, "audio/flac": {}}},
                **error_responses(400, 404),
            },
            include_in_schema=visible,
        )
    return router

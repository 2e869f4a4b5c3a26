"""The one HTTP audio stream: chunked transfer of a single continuous file.

`stream=true` on the synchronous routes and the /streaming routes all end here. The
first bytes leave with the engine's first chunk; when the client goes away the
generator is closed, which closes the engine's iterator and stops the synthesis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

from core.audio.stream import open_stream_encoder
from core.domain import ApiVersion
from core.ports import SynthesisRequest
from core.services.synthesis import SynthesisService

DEFAULT_CHUNK_BYTES = 1024


def _split(data: bytes, size: int) -> AsyncIterator[bytes] | list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def audio_stream_response(
    synthesis: SynthesisService,
    version: ApiVersion,
    request: SynthesisRequest,
    fmt: str,
    *,
    chunk_bytes: int | None = None,
    headers: dict[str, str] | None = None,
) -> StreamingResponse:
    # Everything that can fail before audio exists (format, engine readiness) fails
    # here, as a proper error status, instead of inside a 200 stream.
    sample_rate = request.sample_rate or synthesis.sample_rate
    encoder = open_stream_encoder(fmt, sample_rate)
    await synthesis.ensure_ready(version)

    async def body() -> AsyncIterator[bytes]:
        chunks = synthesis.stream(version, request)
        try:
            header = encoder.header()
            pending = header
            async for chunk in chunks:
                data = pending + encoder.encode(chunk.samples)
                pending = b""
                if chunk_bytes:
                    for piece in _split(data, chunk_bytes):
                        yield piece
                elif data:
                    yield data
            tail = pending + encoder.finish()
            if tail:
                yield tail
        finally:
            await chunks.aclose()

    return StreamingResponse(
        body(),
        media_type=encoder.content_type,
        headers={
            "X-Sample-Rate": str(sample_rate),
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
            **(headers or {}),
        },
    )

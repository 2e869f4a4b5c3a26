"""The platform's JetStream stream, emptied between tests that share one NATS server."""

from __future__ import annotations

import nats
import nats.js.errors

from core.adapters.cluster.nats_bus import STREAM


async def delete_stream(url: str) -> None:
    """Delete the stream (a bus that starts next creates it afresh); none is fine."""
    client = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        try:
            await client.jetstream().delete_stream(STREAM)
        except nats.js.errors.NotFoundError:
            pass
    finally:
        await client.close()

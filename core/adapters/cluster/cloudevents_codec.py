"""CloudEvents 1.0 in binary mode over NATS headers.

The attributes travel as `ce-*` headers and the data as the JSON body, exactly as the
HTTP binary binding lays them out, so the JetStream source adapter can hand a message
to a Knative function without re-encoding it. The bus speaks only `OutgoingEvent` /
`IncomingEvent`; the SDK stays inside this module, which keeps the choice of its major
version (1.x here, see the pinned dependencies) in one place.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from cloudevents.conversion import to_binary
from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent, from_http
from pydantic_core import to_jsonable_python

from ...errors import InvalidInput

JSON = "application/json"
DEFAULT_SOURCE = "/cosyvoice"

RENDER_REQUESTED = "ai.cosyvoice.render.requested.v1"
RENDER_SUBMIT = "ai.cosyvoice.render.submit.v1"


def task_ended_type(status: str) -> str:
    return f"ai.cosyvoice.task.{status}.v1"


@dataclass(frozen=True)
class OutgoingEvent:
    """NATS headers and body of one event, ready for `js.publish`."""

    event_id: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class IncomingEvent:
    event_id: str
    event_type: str
    source: str
    data: dict[str, Any]


def encode_event(
    event_type: str,
    data: dict[str, Any],
    *,
    event_id: str | None = None,
    source: str = DEFAULT_SOURCE,
) -> OutgoingEvent:
    """A binary-mode CloudEvent with JSON data; `event_id` defaults to a fresh UUID."""
    attributes = {
        "type": event_type,
        "source": source,
        "id": event_id or str(uuid.uuid4()),
        "datacontenttype": JSON,
    }
    headers, body = to_binary(CloudEvent(attributes, data), data_marshaller=_json_bytes)
    return OutgoingEvent(
        event_id=attributes["id"],
        headers={name: str(value) for name, value in headers.items()},
        body=body if isinstance(body, bytes) else str(body).encode(),
    )


def _json_bytes(data: Any) -> bytes:
    """JSON of domain values too (datetimes as ISO-8601, enums by value)."""
    return json.dumps(to_jsonable_python(data), ensure_ascii=False).encode()


def decode_event(headers: dict[str, str] | None, body: bytes) -> IncomingEvent:
    """Parse a binary-mode event; InvalidInput when it is not one or its data is not an
    object."""
    if not headers:
        raise InvalidInput("not a CloudEvent: the message has no headers")
    try:
        event = from_http(headers, body)
    except GenericException as exc:
        raise InvalidInput(f"not a CloudEvent: {exc}") from exc
    data = event.get_data()
    if not isinstance(data, dict):
        raise InvalidInput("CloudEvent data must be a JSON object")
    return IncomingEvent(
        event_id=str(event["id"]),
        event_type=str(event["type"]),
        source=str(event["source"]),
        data=data,
    )

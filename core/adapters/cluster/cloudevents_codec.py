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

from ...domain import Priority
from ...errors import InvalidInput
from ...ports import RenderRequest
from ...request_id import CLOUDEVENT_ATTRIBUTE, current_request_id

JSON = "application/json"
DEFAULT_SOURCE = "/cosyvoice"

RENDER_REQUESTED = "ai.cosyvoice.render.requested.v1"
RENDER_SUBMIT = "ai.cosyvoice.render.submit.v1"


def render_event_data(request: RenderRequest) -> dict[str, Any]:
    """The data of a `render.requested` event; a segment job also names its segment."""
    data: dict[str, Any] = {"task_id": request.task_id, "priority": request.priority.value}
    if request.segment is not None:
        data["segment"] = request.segment
    return data


def render_request_from(data: dict[str, Any]) -> RenderRequest:
    """The request a `render.requested` event's data describes; InvalidInput when the
    data is not one."""
    task_id = data.get("task_id")
    segment = data.get("segment")
    if not isinstance(task_id, str) or not task_id:
        raise InvalidInput("a render request needs a task_id")
    if segment is not None and (
        not isinstance(segment, int) or isinstance(segment, bool) or segment < 0
    ):
        raise InvalidInput("a render request's segment is a non-negative integer")
    try:
        priority = Priority(data.get("priority", Priority.normal.value))
    except ValueError as exc:
        raise InvalidInput(f"unknown priority {data.get('priority')!r}") from exc
    return RenderRequest(task_id=task_id, priority=priority, segment=segment)


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
    if (request_id := current_request_id()) is not None:
        attributes[CLOUDEVENT_ATTRIBUTE] = request_id  # the request that caused the event
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

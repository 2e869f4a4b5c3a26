"""Shapes and helpers shared by every API schema module."""

from __future__ import annotations

import unicodedata
from collections.abc import Container, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

_VALUE_ERROR_PREFIX = "Value error, "  # pydantic's wording for a validator's ValueError


def describe_validation_error(
    errors: Iterable[Mapping[str, Any]],
    *,
    skip: Container[object] = (),
    unnamed: str = "",
    fallback: str = "invalid",
) -> str:
    """Pydantic's errors (`exc.errors()`) as one line: `field.sub: message; other: message`.

    `skip` drops location parts that name no field (FastAPI's `body`/`query`, a union's
    tag); `unnamed` names a problem with no location left (empty: the message alone);
    `fallback` is the answer when there is no problem to name. Only locations and
    messages are used, never the input, which may be a secret.
    """
    problems = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in skip)
        message = str(error.get("msg", "invalid")).removeprefix(_VALUE_ERROR_PREFIX)
        if error.get("type") == "string_unicode":
            # pydantic's words for a string holding half a UTF-16 pair (JSON's "\ud800").
            message = "must be valid Unicode: it holds half of a UTF-16 surrogate pair"
        where = where or unnamed
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems) or fallback


def single_line(value: str) -> str:
    """Stripped, with no control characters (NUL, escapes, line breaks) at all: a name."""
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError("must not contain control characters")
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def iso_utc(value: datetime) -> str:
    """`2024-01-15T10:30:00Z`: the timestamp style of the contract."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SuccessEnvelope(BaseModel):
    """Generic success body for operations without a richer resource."""

    success: bool = True
    message: str = "Operation completed"
    data: dict[str, Any] = Field(default_factory=dict)

"""Shapes and helpers shared by every API schema module."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field


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

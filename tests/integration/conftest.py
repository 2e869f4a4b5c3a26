"""Integration tests speak real protocols to real processes, with the real test clips."""

from __future__ import annotations

import pytest

from tests.conftest import require_test_clips


@pytest.fixture(autouse=True)
def _test_clips() -> None:
    require_test_clips()

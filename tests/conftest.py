"""Fixtures and hooks every test layer shares.

- where the repository is, and the speech clips the tests upload (`TESTDATA`, made by
  tests/speech.py with the development engine, so a fresh clone runs every test);
- `skip_missing_data(reason)`: the one way to skip for want of test data or of a tool
  from outside the project. Under `CI=true` such a skip fails the test, so a CI run
  cannot report success while quietly skipping; tests marked `weights` or `gpu` still
  skip, since no CI machine is expected to have the real weights or a GPU.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from _pytest.outcomes import Skipped

from tests import speech

pytest_plugins = ["pytester"]  # tests/unit/test_ci_skips.py runs pytest inside pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTDATA = speech.CLIP_DIR
MANDARIN_TRANSCRIPT = speech.MANDARIN_TRANSCRIPT

# Tests with these markers need what a CI machine is not expected to have.
CI_MAY_SKIP_MARKERS = ("weights", "gpu", "upstream")


# The class behind `pytest.skip.Exception`, imported by name so its type is known.
class MissingTestData(Skipped):
    """A skip because test data or a tool from outside the project is missing."""


def skip_missing_data(reason: str) -> NoReturn:
    """Skip the test for want of its data or of an outside tool (a failure under CI=true)."""
    raise MissingTestData(reason)


def running_on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if (
        report.skipped
        and call.excinfo is not None
        and isinstance(call.excinfo.value, MissingTestData)
        and running_on_ci()
        and not any(item.get_closest_marker(name) for name in CI_MAY_SKIP_MARKERS)
    ):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped for missing test data, which fails the run under CI=true: "
            f"{call.excinfo.value.msg}"
        )
    return report


@pytest.fixture(scope="session", autouse=True)
def speech_clips() -> Path:
    """The folder of generated speech clips, made on first use (see tests/speech.py)."""
    return speech.write_clips()


@pytest.fixture(scope="session")
def mandarin_clip(speech_clips: Path) -> bytes:
    """Mandarin, female, 3.5 s, 24 kHz float WAV; transcript in MANDARIN_TRANSCRIPT."""
    return (speech_clips / speech.MANDARIN.filename).read_bytes()


@pytest.fixture(scope="session")
def english_clip(speech_clips: Path) -> bytes:
    """English, male, 13.8 s, 22.05 kHz 16-bit WAV, used without transcript."""
    return (speech_clips / speech.ENGLISH.filename).read_bytes()


@pytest.fixture
def cosyvoice_standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The stand-in checkout (tests/cosyvoice_standin.py) with torch counted as
    installed; sys.path and the stand-in's imports are undone after."""
    import core.engines.cosyvoice as cosyvoice_module  # only the tests that ask load it
    from tests.cosyvoice_standin import check_as_pinned

    monkeypatch.setattr(cosyvoice_module, "torch_installed", lambda: True)
    monkeypatch.setattr(cosyvoice_module, "check_pinned_upstream", check_as_pinned)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in list(sys.modules):
        if name.split(".")[0] in {"cosyvoice", "matcha"}:
            del sys.modules[name]

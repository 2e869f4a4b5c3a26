"""Fixtures every test layer shares: where the repository and the test clips are."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTDATA = REPO_ROOT.parent / "shared" / "testdata"


def require_test_clips() -> None:
    """Skip (with the reason) where the speech clips beside the checkout are missing."""
    if not TESTDATA.is_dir():
        pytest.skip(f"test clips not found at {TESTDATA} (shared/ beside the checkout)")


@pytest.fixture(scope="session")
def testdata() -> Path:
    if not TESTDATA.is_dir():
        pytest.skip(f"test clips not found at {TESTDATA}")
    return TESTDATA


@pytest.fixture(scope="session")
def mandarin_clip(testdata: Path) -> bytes:
    """Mandarin, female, 3.5 s, 24 kHz float WAV; transcript in MANDARIN_TRANSCRIPT."""
    return (testdata / "zero_shot_prompt.wav").read_bytes()


@pytest.fixture(scope="session")
def english_clip(testdata: Path) -> bytes:
    """English, 13.8 s, 22.05 kHz 16-bit WAV, no transcript."""
    return (testdata / "cross_lingual_prompt.wav").read_bytes()


MANDARIN_TRANSCRIPT = "希望你以后能够做的比我还好呦。"

"""Texts the e2e tests speak, sized for the profile's engine.

espeak speaks a 5,000-character text in about a second of CPU. The cosyvoice profile's
tiny random-weight model speaks 0.8 s of audio per text token, about a second of CPU for
every ten characters on two cores: there, long texts are `LONG_TEXT_DIVISOR` times
shorter (a 5,000-character text is 125 characters, about 20 s of audio), and the
profile's segments (`SEGMENT_MAX_CHARS`, `SEGMENT_MAX_CHARS_COSYVOICE`) hold one
sentence, so a long task still renders as several segment jobs.
"""

from __future__ import annotations

from tests.e2e.conftest import PROFILE

SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank today. "
LONG_TEXT_DIVISOR = 40 if PROFILE == "cosyvoice" else 1
SEGMENT_MAX_CHARS_COSYVOICE = len(SENTENCE) + 3  # one sentence per segment job


def long_text(chars: int) -> str:
    """About `chars` characters of whole words (`chars` / LONG_TEXT_DIVISOR in the
    cosyvoice profile, at least one sentence)."""
    size = max(len(SENTENCE), chars // LONG_TEXT_DIVISOR)
    return (SENTENCE * (size // len(SENTENCE) + 1))[:size].strip()

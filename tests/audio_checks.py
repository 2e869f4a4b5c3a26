"""What a listener would check about audio a test received."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf


@dataclass(frozen=True)
class Heard:
    samples: np.ndarray
    sample_rate: int
    channels: int
    format: str

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def rms(self) -> float:
        return float(np.sqrt(np.mean(np.square(self.samples)))) if len(self.samples) else 0.0


def hear(data: bytes) -> Heard:
    """Decode any wav/mp3/flac bytes; raises if they are not audio."""
    with sf.SoundFile(io.BytesIO(data)) as f:
        samples = f.read(dtype="float32", always_2d=True)
        return Heard(samples[:, 0], f.samplerate, f.channels, f.format.lower())


def assert_speech(
    data: bytes,
    *,
    fmt: str | None = None,
    sample_rate: int | None = None,
    min_duration: float = 0.3,
    max_duration: float | None = None,
) -> Heard:
    heard = hear(data)
    if fmt is not None:
        expected = {"wav": "wav", "mp3": "mp3", "flac": "flac"}[fmt]
        assert heard.format == expected, f"format {heard.format}, expected {expected}"
    if sample_rate is not None:
        assert heard.sample_rate == sample_rate, heard.sample_rate
    assert heard.channels == 1, f"{heard.channels} channels"
    assert heard.duration >= min_duration, f"only {heard.duration:.2f}s of audio"
    if max_duration is not None:
        assert heard.duration <= max_duration, f"{heard.duration:.2f}s of audio"
    assert heard.rms > 0.005, f"silent (rms {heard.rms:.4f})"
    return heard

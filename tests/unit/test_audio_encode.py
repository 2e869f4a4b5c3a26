"""Encoding whole files: every format decodes back to the audio that went in."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from core.audio.dsp import is_silent, join_segments, resample
from core.audio.encode import CONTENT_TYPES, audio_duration, encode_audio, float_to_pcm16
from core.domain import AudioFormat
from core.errors import InvalidInput


def speech_like(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 6))
    return (0.2 * tone * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


@pytest.mark.parametrize("fmt", list(AudioFormat))
@pytest.mark.parametrize("rate", [16000, 22050, 24000, 44100])
@pytest.mark.parametrize("seconds", [0.2, 3.0])
def test_round_trip(fmt: AudioFormat, rate: int, seconds: float) -> None:
    samples = speech_like(seconds, rate)
    data = encode_audio(samples, rate, fmt)
    decoded, decoded_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    assert sf.info(io.BytesIO(data)).format == fmt.value.upper()
    assert decoded_rate == rate
    assert decoded.shape[1] == 1
    # MP3 carries a gapless header, so even 0.2 s comes back within 1 %.
    assert decoded.shape[0] / rate == pytest.approx(seconds, rel=0.01)
    assert audio_duration(data) == pytest.approx(seconds, rel=0.01)
    assert not is_silent(decoded[:, 0])


def test_mp3_is_aligned_with_its_input() -> None:
    samples = speech_like(1.0, 22050)
    decoded, _ = sf.read(io.BytesIO(encode_audio(samples, 22050, "mp3")), dtype="float32")
    correlation = np.corrcoef(samples, decoded)[0, 1]
    assert correlation > 0.95


def test_mp3_is_mono_and_about_128_kbps() -> None:
    data = encode_audio(speech_like(4.0, 24000), 24000, AudioFormat.mp3)
    assert sf.info(io.BytesIO(data)).channels == 1
    assert len(data) * 8 / 4.0 == pytest.approx(128_000, rel=0.1)


def test_wav_is_16_bit_pcm() -> None:
    info = sf.info(io.BytesIO(encode_audio(speech_like(1.0, 22050), 22050, "wav")))
    assert info.subtype == "PCM_16"


def test_overshoot_clips_instead_of_wrapping() -> None:
    pcm = float_to_pcm16(
        np.array([1.5, -1.5, 1.0, -1.0, 0.0, np.nan, np.inf, -np.inf], dtype=np.float32)
    )
    assert pcm.tolist() == [32767, -32767, 32767, -32767, 0, 0, 32767, -32767]


def test_unknown_format_is_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        encode_audio(np.zeros(10, dtype=np.float32), 22050, "ogg")


def test_content_types() -> None:
    assert CONTENT_TYPES["wav"] == "audio/wav"
    assert CONTENT_TYPES["mp3"] == "audio/mpeg"
    assert CONTENT_TYPES["flac"] == "audio/flac"
    assert "pcm" in CONTENT_TYPES


# --- resampling and joining --------------------------------------------------------------


def test_resample_keeps_duration_and_pitch() -> None:
    samples = speech_like(1.0, 24000)
    out = resample(samples, 24000, 16000)
    assert out.dtype == np.float32
    assert len(out) == 16000
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) == pytest.approx(150, abs=2)  # 1 Hz per bin over 1 s
    assert np.array_equal(resample(samples, 24000, 24000), samples)


def test_join_crossfades_without_clicks() -> None:
    rate = 22050
    t = np.arange(rate) / rate
    a = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    b = (-0.5 * np.cos(2 * np.pi * 330 * t)).astype(np.float32)  # starts at -0.5: a jump
    joined = join_segments([a, b], rate, crossfade_ms=10)
    overlap = int(rate * 0.010)
    assert len(joined) == 2 * rate - overlap
    # The largest sample-to-sample step stays that of the tones themselves.
    assert np.max(np.abs(np.diff(joined))) < 0.06


def test_join_with_pause_inserts_silence() -> None:
    rate = 16000
    a = speech_like(0.5, rate)
    joined = join_segments([a, a, a], rate, crossfade_ms=5, pause_ms=100)
    assert len(joined) == 3 * len(a) + 2 * 1600
    gap = joined[len(a) : len(a) + 1600]
    assert not gap.any()


def test_join_of_nothing_is_empty() -> None:
    assert join_segments([], 22050).size == 0
    assert join_segments([np.zeros(0)], 22050).size == 0
    single = speech_like(0.1, 22050)
    assert np.array_equal(join_segments([single], 22050), single)

"""Decoding uploads: what a user uploading a reference clip gets back or is told."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import soundfile as sf

from core.audio.decode import decode_clip, decode_upload, sha256_hex
from core.audio.dsp import estimate_pitch, estimate_speaking_rate, is_silent, rms_db
from core.audio.encode import encode_audio
from core.domain import AudioFormat
from core.errors import AudioRejected
from core.ports import Clip


def voiced(seconds: float, rate: int = 24000, f0: float = 180.0) -> np.ndarray:
    """A buzzy harmonic tone, pulsing four times a second like syllables."""
    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)
    return (0.2 * tone * envelope).astype(np.float32)


def test_mandarin_clip_decodes_at_24k(mandarin_clip: bytes) -> None:
    upload = decode_upload(mandarin_clip, max_duration=30)
    assert upload.container is AudioFormat.wav
    assert upload.sample_rate == 24000
    assert upload.channels == 1
    assert upload.duration == pytest.approx(3.5, abs=0.1)
    assert upload.file_size == len(mandarin_clip)
    assert upload.clip.samples.dtype == np.float32
    assert upload.clip.samples.ndim == 1


def test_english_clip_decodes_at_22k(english_clip: bytes) -> None:
    upload = decode_upload(english_clip, max_duration=30)
    assert upload.container is AudioFormat.wav
    assert upload.sample_rate == 22050
    assert upload.duration == pytest.approx(13.8, abs=0.1)
    assert upload.clip.duration == pytest.approx(upload.duration)


def test_stereo_is_mixed_to_mono() -> None:
    left = voiced(2.0)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    buffer = io.BytesIO()
    sf.write(buffer, stereo, 24000, format="WAV", subtype="PCM_16")
    upload = decode_upload(buffer.getvalue(), max_duration=30)
    assert upload.channels == 2
    assert upload.clip.samples.shape == (48000,)
    assert np.max(np.abs(upload.clip.samples)) == pytest.approx(np.max(np.abs(left)) / 2, rel=0.01)


@pytest.mark.parametrize("fmt", [AudioFormat.mp3, AudioFormat.flac])
def test_mp3_and_flac_uploads_decode_by_content(fmt: AudioFormat) -> None:
    data = encode_audio(voiced(2.5, 22050), 22050, fmt)
    upload = decode_upload(data, max_duration=30)
    assert upload.container is fmt
    assert upload.sample_rate == 22050
    assert upload.duration == pytest.approx(2.5, rel=0.01)


def test_rejects_empty_file() -> None:
    with pytest.raises(AudioRejected, match="empty"):
        decode_upload(b"", max_duration=30)


def test_rejects_text_file_whatever_its_name() -> None:
    text = b"this is not audio, even if it is called sample.wav\n" * 50
    with pytest.raises(AudioRejected, match="could not be decoded"):
        decode_upload(text, max_duration=30)


def test_rejects_silence() -> None:
    with pytest.raises(AudioRejected, match="silent"):
        decode_upload(encode_audio(np.zeros(48000), 24000, "wav"), max_duration=30)


def test_rejects_half_second_clip() -> None:
    with pytest.raises(AudioRejected, match="too short"):
        decode_upload(encode_audio(voiced(0.5), 24000, "wav"), max_duration=30)


def test_rejects_sixty_second_clip() -> None:
    with pytest.raises(AudioRejected, match="too long"):
        decode_upload(encode_audio(voiced(60.0, 16000), 16000, "wav"), max_duration=30)


def test_rejects_ogg_naming_the_accepted_formats() -> None:
    buffer = io.BytesIO()
    sf.write(buffer, voiced(2.0), 24000, format="OGG")
    with pytest.raises(AudioRejected, match="wav, mp3, flac"):
        decode_upload(buffer.getvalue(), max_duration=30)


def test_decode_clip_applies_no_limits() -> None:
    clip = decode_clip(encode_audio(voiced(0.5), 24000, "wav"))
    assert clip.sample_rate == 24000
    assert clip.duration == pytest.approx(0.5, abs=0.001)


def test_sha256_is_hex_of_the_bytes() -> None:
    assert sha256_hex(b"abc").startswith("ba7816bf")
    assert len(sha256_hex(b"")) == 64


# --- measurements the engines rely on ---------------------------------------------------


def test_silence_detection() -> None:
    assert is_silent(np.zeros(24000, dtype=np.float32))
    assert is_silent(np.random.default_rng(0).normal(0, 1e-4, 24000))
    assert not is_silent(voiced(1.0))
    assert rms_db(np.zeros(10)) == -120.0
    assert rms_db(np.ones(10)) == pytest.approx(0.0)


@pytest.mark.parametrize("f0", [90.0, 140.0, 220.0, 320.0])
def test_pitch_of_a_tone(f0: float) -> None:
    median, spread = estimate_pitch(Clip(voiced(2.0, f0=f0), 24000))
    assert median == pytest.approx(f0, rel=0.03)
    assert spread < 5


def test_pitch_tells_the_female_clip_from_the_english_one(
    mandarin_clip: bytes, english_clip: bytes
) -> None:
    female, _ = estimate_pitch(decode_clip(mandarin_clip))
    english, _ = estimate_pitch(decode_clip(english_clip))
    assert 180 < female < 350
    assert 80 < english < female


def test_speaking_rate_is_syllabic_and_fast_to_measure(english_clip: bytes) -> None:
    clip = decode_clip(english_clip)
    estimate_pitch(clip)  # warm up the FFT plans
    started = time.perf_counter()
    estimate_pitch(clip)
    rate = estimate_speaking_rate(clip)
    elapsed = time.perf_counter() - started
    assert 2.5 < rate < 8.0
    assert elapsed < 0.25  # ~30 ms here; generous for slow CI machines
    assert estimate_speaking_rate(Clip(np.zeros(24000, dtype=np.float32), 24000)) == 0.0

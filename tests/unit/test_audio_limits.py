"""The limits a reference clip is held to before and while it is decoded.

Each hostile file is refused on its header, in well under a millisecond's worth of
decoding and without the decoder allocating what the header promises; accepted clips
are stored small (mono, at most 24 kHz, 16-bit FLAC).
"""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from core.audio import decode as decode_module
from core.audio.decode import STORED_RATE, decode_clip, decode_upload, sha256_hex
from core.domain import AudioFormat, sample_key
from core.errors import AudioRejected, InvalidInput
from core.schemas.voices import VoiceFields, VoiceUpdate, checked_voice_fields
from tests.hostile_audio import (
    flac_claiming,
    flac_claiming_samples,
    long_stereo_mp3,
    mp3_claiming_frames,
    tone,
    wav_claiming_huge_data,
)


def refused(data: bytes) -> str:
    tracemalloc.start()
    try:
        with pytest.raises(AudioRejected) as caught:
            decode_upload(data, max_duration=30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024 * 1024, f"decoding allocated {peak / 1e6:.0f} MB"
    return caught.value.detail


def test_eight_channels_are_refused_naming_the_limit() -> None:
    detail = refused(flac_claiming(rate=96_000, channels=8, claimed_seconds=600))
    assert "8 channels; at most 2" in detail


def test_sample_rates_above_48k_are_refused_naming_the_limit() -> None:
    detail = refused(flac_claiming(rate=655_350, channels=1, claimed_seconds=29.9))
    assert "655350 Hz; at most 48000 Hz" in detail


def test_rates_below_8k_are_refused() -> None:
    buffer = io.BytesIO()
    sf.write(buffer, tone(2.0, 4000)[:, 0], 4000, format="WAV")
    assert "at least 8000 Hz" in refused(buffer.getvalue())


def test_flac_claiming_2e36_samples_is_refused_before_decoding() -> None:
    assert "too long" in refused(flac_claiming_samples((1 << 36) - 1))


def test_mp3_whose_xing_header_claims_2e32_frames_is_refused() -> None:
    assert "too long" in refused(mp3_claiming_frames())


def test_legal_long_stereo_mp3_is_refused_on_its_length() -> None:
    assert "too long: 180" in refused(long_stereo_mp3(30))  # 30 minutes, from the header


def test_header_understating_the_length_cannot_extend_the_budget() -> None:
    # STREAMINFO says 2 s; the frames hold 60 s. At most the budget is ever decoded.
    data = flac_claiming(rate=16_000, channels=1, claimed_seconds=2, real_seconds=60)
    try:
        upload = decode_upload(data, max_duration=30)
    except AudioRejected as exc:
        assert "too long" in exc.detail
    else:
        assert upload.duration <= 30


def test_wav_claiming_huge_data_decodes_only_what_is_there() -> None:
    upload = decode_upload(wav_claiming_huge_data(48_000, 2), max_duration=30)
    assert upload.duration == pytest.approx(2.0, abs=0.01)
    assert upload.sample_rate == 48_000 and upload.channels == 2


def test_out_of_memory_is_a_refused_clip(monkeypatch: pytest.MonkeyPatch) -> None:
    def exhausted(frames: np.ndarray) -> np.ndarray:
        raise MemoryError

    monkeypatch.setattr(decode_module, "mix_to_mono", exhausted)
    buffer = io.BytesIO()
    sf.write(buffer, tone(2.0, 16_000), 16_000, format="WAV")
    with pytest.raises(AudioRejected, match="memory"):
        decode_upload(buffer.getvalue(), max_duration=30)


def test_accepted_clip_is_stored_as_small_mono_flac_and_reported_as_uploaded() -> None:
    buffer = io.BytesIO()
    sf.write(buffer, tone(20.0, 48_000, 2), 48_000, format="WAV", subtype="FLOAT")
    data = buffer.getvalue()
    upload = decode_upload(data, max_duration=30)
    assert (upload.container, upload.sample_rate, upload.channels) == (AudioFormat.wav, 48_000, 2)
    assert upload.file_size == len(data)
    stored = sf.info(io.BytesIO(upload.sample))
    assert (stored.format, stored.channels, stored.samplerate) == ("FLAC", 1, STORED_RATE)
    assert len(upload.sample) < len(data) / 8
    assert upload.sample_sha256 == sha256_hex(upload.sample)
    assert decode_clip(upload.sample).duration == pytest.approx(20.0, abs=0.01)


def test_low_rate_clips_keep_their_rate() -> None:
    buffer = io.BytesIO()
    sf.write(buffer, tone(2.0, 16_000), 16_000, format="WAV")
    upload = decode_upload(buffer.getvalue(), max_duration=30)
    assert upload.clip.sample_rate == 16_000
    assert sf.info(io.BytesIO(upload.sample)).samplerate == 16_000


def test_decode_clip_stays_bounded_for_stored_samples() -> None:
    tracemalloc.start()
    try:
        clip = decode_clip(mp3_claiming_frames())  # reads the two seconds that are there
        with pytest.raises(AudioRejected):
            decode_clip(flac_claiming_samples((1 << 36) - 1))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024 * 1024
    assert clip.duration == pytest.approx(2.0, abs=0.1)


def test_each_sample_write_gets_its_own_key() -> None:
    sha = "ab" * 32
    first = sample_key("v", AudioFormat.flac, sha, "0001")
    second = sample_key("v", AudioFormat.flac, sha, "0002")
    assert first == f"voices/v/samples/{sha}-0001.flac" and first != second
    assert sample_key("v", AudioFormat.wav) == "voices/v/sample.wav"  # the older layout


# --- the voice fields: one set of rules for create and update ----------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("language", "en\x00"),
        ("language", "english language"),
        ("name", "Bad\x00name"),
        ("name", "   "),
        ("description", "a\x1b[31m"),
        ("prompt_text", "hello\x00"),
    ],
)
def test_create_and_update_refuse_the_same_values(field: str, value: str) -> None:
    base = {"voice_id": "v1", "name": "ok", "voice_type": "sft"}
    with pytest.raises(InvalidInput, match=field):
        checked_voice_fields(VoiceFields, {**base, field: value})
    with pytest.raises(InvalidInput, match=field):
        checked_voice_fields(VoiceUpdate, {field: value})


def test_create_and_update_normalise_alike() -> None:
    raw = {"name": "  Narrator ", "language": "EN-us", "prompt_text": "  "}
    created = checked_voice_fields(VoiceFields, {"voice_id": "v1", "voice_type": "sft", **raw})
    updated = checked_voice_fields(VoiceUpdate, raw)
    for model in (created, updated):
        assert (model.name, model.language, model.prompt_text) == ("Narrator", "en-us", None)

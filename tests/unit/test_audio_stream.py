"""Streaming encoders: what a client concatenating (or playing chunk by chunk) receives."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest
import soundfile as sf

from core.audio.dsp import is_silent
from core.audio.stream import open_stream_encoder, self_contained_chunk
from core.errors import InvalidInput

RATE = 22050


def chunks(count: int = 5, seconds: float = 0.4) -> list[np.ndarray]:
    t = np.arange(int(seconds * RATE)) / RATE
    return [(0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)).astype(np.float32) for i in range(count)]


def streamed(fmt: str, pieces: list[np.ndarray]) -> tuple[bytes, str]:
    encoder = open_stream_encoder(fmt, RATE)
    body = encoder.header() + b"".join(encoder.encode(p) for p in pieces) + encoder.finish()
    return body, encoder.content_type


def test_wav_stream_is_one_file_that_soundfile_reads() -> None:
    pieces = chunks()
    body, content_type = streamed("wav", pieces)
    assert content_type == "audio/wav"
    assert body.count(b"RIFF") == 1
    decoded, rate = sf.read(io.BytesIO(body), dtype="float32")
    assert rate == RATE
    assert len(decoded) == sum(len(p) for p in pieces)
    assert not is_silent(decoded)


def test_wav_stream_is_read_by_the_wave_module() -> None:
    pieces = chunks(3)
    body, _ = streamed("wav", pieces)
    with wave.open(io.BytesIO(body)) as reader:
        assert reader.getframerate() == RATE
        assert reader.getnchannels() == 1
        assert reader.getsampwidth() == 2
        frames = reader.readframes(10**9)
    assert len(frames) // 2 == sum(len(p) for p in pieces)


def test_mp3_stream_decodes_to_the_whole_audio() -> None:
    pieces = chunks()
    body, content_type = streamed("mp3", pieces)
    assert content_type == "audio/mpeg"
    decoded, rate = sf.read(io.BytesIO(body), dtype="float32")
    assert rate == RATE
    expected = sum(len(p) for p in pieces) / RATE
    # A stream cannot carry the gapless header: LAME's delay and padding (< 0.1 s) remain.
    assert expected <= len(decoded) / RATE <= expected + 0.1
    assert not is_silent(decoded)


def test_mp3_stream_emits_frames_before_the_end() -> None:
    encoder = open_stream_encoder("mp3", RATE)
    emitted = [encoder.encode(p) for p in chunks(4)]
    assert sum(len(e) for e in emitted[:3]) > 0


def test_pcm_stream_is_raw_little_endian_int16() -> None:
    pieces = chunks(2)
    body, _ = streamed("pcm", pieces)
    samples = np.frombuffer(body, dtype="<i2")
    assert len(samples) == sum(len(p) for p in pieces)
    assert np.allclose(samples[:100] / 32767, pieces[0][:100], atol=1e-4)


def test_unknown_stream_format_is_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        open_stream_encoder("ogg", RATE)


def test_loud_chunks_clip_instead_of_wrapping() -> None:
    body, _ = streamed("pcm", [np.full(100, 2.0, dtype=np.float32)])
    assert set(np.frombuffer(body, dtype="<i2").tolist()) == {32767}


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_each_self_contained_chunk_plays_alone(fmt: str) -> None:
    for piece in chunks(3):
        data = self_contained_chunk(piece, RATE, fmt)
        decoded, rate = sf.read(io.BytesIO(data), dtype="float32")
        assert rate == RATE
        assert len(decoded) / RATE == pytest.approx(len(piece) / RATE, abs=0.1)
        assert not is_silent(decoded)


def test_self_contained_pcm_chunk_is_raw_samples() -> None:
    piece = chunks(1)[0]
    assert len(self_contained_chunk(piece, RATE, "pcm")) == 2 * len(piece)

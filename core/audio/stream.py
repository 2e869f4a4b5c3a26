"""Incremental encoders for audio that leaves while it is still being synthesized.

Two shapes, as the API promises:
- one continuous file over a chunked HTTP response: `open_stream_encoder` writes a single
  header first, then each chunk's samples as they come;
- self-contained pieces for SSE events and WebSocket frames: `self_contained_chunk` makes
  each chunk playable on its own (a complete small WAV, a run of MP3 frames, raw PCM).

A streamed WAV header cannot know the final length, so it declares the largest sizes
(0xFFFFFFFF), the convention ffmpeg, browsers, libsndfile and Python's `wave` read as
"until the end of the stream".
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..domain import AudioFormat
from ..errors import InvalidInput
from .encode import CONTENT_TYPES, encode_audio, float_to_pcm16, new_mp3_encoder, wav_header

_STREAMABLE = ("wav", "mp3", "pcm")


class StreamEncoder(Protocol):
    """Turns successive float chunks into the bytes of one continuous stream."""

    content_type: str

    def header(self) -> bytes:
        """Bytes that precede the first chunk (may be empty)."""

    def encode(self, samples: np.ndarray) -> bytes:
        """Bytes for one chunk of mono float32 samples (may be empty for MP3 until a
        whole frame is buffered)."""

    def finish(self) -> bytes:
        """Whatever the encoder still holds; call once, after the last chunk."""


class PcmStreamEncoder:
    """Raw 16-bit little-endian mono samples, no header."""

    content_type = CONTENT_TYPES["pcm"]

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate

    def header(self) -> bytes:
        return b""

    def encode(self, samples: np.ndarray) -> bytes:
        return float_to_pcm16(samples).tobytes()

    def finish(self) -> bytes:
        return b""


class WavStreamEncoder(PcmStreamEncoder):
    """One streaming WAV header, then raw PCM."""

    content_type = CONTENT_TYPES["wav"]

    def header(self) -> bytes:
        return wav_header(self.sample_rate, None)  # sizes unknown: read to the end


class Mp3StreamEncoder:
    """MP3 frames as LAME completes them; `finish` flushes the last partial frame."""

    content_type = CONTENT_TYPES["mp3"]

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._encoder = new_mp3_encoder(sample_rate)

    def header(self) -> bytes:
        return b""

    def encode(self, samples: np.ndarray) -> bytes:
        pcm = float_to_pcm16(samples)
        return bytes(self._encoder.encode(pcm.tobytes())) if pcm.size else b""

    def finish(self) -> bytes:
        return bytes(self._encoder.flush())


_ENCODERS: dict[str, type[PcmStreamEncoder] | type[Mp3StreamEncoder]] = {
    "wav": WavStreamEncoder,
    "mp3": Mp3StreamEncoder,
    "pcm": PcmStreamEncoder,
}


def _stream_format(fmt: str) -> str:
    name = str(fmt).lower()
    if name == AudioFormat.flac.value:
        raise InvalidInput("flac cannot be streamed; use wav, mp3 or pcm")
    if name not in _STREAMABLE:
        raise InvalidInput(f"unknown stream format {fmt!r}; use wav, mp3 or pcm")
    return name


def open_stream_encoder(fmt: str, sample_rate: int) -> StreamEncoder:
    return _ENCODERS[_stream_format(fmt)](sample_rate)


def self_contained_chunk(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """One chunk a client can decode on its own (SSE `audio_chunk`, WebSocket frame)."""
    name = _stream_format(fmt)
    if name == "pcm":
        return float_to_pcm16(samples).tobytes()
    if name == "wav":
        return encode_audio(samples, sample_rate, AudioFormat.wav)
    encoder = new_mp3_encoder(sample_rate)
    pcm = float_to_pcm16(samples)
    return bytes(encoder.encode(pcm.tobytes())) + bytes(encoder.flush())

"""Incremental encoders for audio that leaves while it is still being synthesized.

Two shapes, as the API promises:
- one continuous file over a chunked HTTP response: `open_stream_encoder` writes a single
  header first, then each chunk's samples as they come;
- self-contained pieces for SSE events and WebSocket frames: `self_contained_chunk` makes
  each chunk playable on its own (a complete small WAV or FLAC file, a run of MP3 frames,
  raw PCM).

A streamed WAV header cannot know the final length, so it declares the largest sizes
(0xFFFFFFFF), the convention ffmpeg, browsers, libsndfile and Python's `wave` read as
"until the end of the stream". A streamed FLAC says the same the FLAC way: its STREAMINFO
leaves the total length, the frame sizes and the MD5 unset ("unknown"), which the format
allows for streams; every FLAC frame carries its own header and decodes on its own.
"""

from __future__ import annotations

import io
from typing import Protocol

import numpy as np
import soundfile as sf

from ..domain import AudioFormat
from ..errors import InvalidInput
from .encode import CONTENT_TYPES, encode_audio, float_to_pcm16, new_mp3_encoder, wav_header

_STREAMABLE = ("wav", "mp3", "flac", "pcm")
# libFLAC's fastest preset: its 1152-sample blocks (52 ms at 22.05 kHz) are the audio an
# encoder holds back before it can emit a frame; higher presets hold 4096.
_FLAC_STREAM_COMPRESSION = 0.0


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


class _SentBytes:
    """The file libsndfile writes a stream into: bytes are handed on as they arrive.

    libsndfile writes the FLAC header and then each frame as libFLAC completes it; on
    close it seeks back to fill in STREAMINFO's length, frame sizes and MD5. Bytes that
    already left cannot be rewritten, so those rewrites are dropped: what was sent says
    "unknown" there, as a stream's STREAMINFO may. A rewrite of bytes not yet taken
    still lands.
    """

    def __init__(self) -> None:
        self._pending = bytearray()  # the bytes from `_sent` to the end of the file
        self._sent = 0
        self._position = 0

    def write(self, data: bytes) -> int:
        start, stop = self._position, self._position + len(data)
        end = self._sent + len(self._pending)
        if stop > end:
            self._pending += bytes(stop - end)
        keep = max(start, self._sent)
        if keep < stop:
            self._pending[keep - self._sent : stop - self._sent] = data[keep - start :]
        self._position = stop
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        end = self._sent + len(self._pending)
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: end}[whence]
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def read(self, size: int = -1) -> bytes:
        return b""  # write-only: libsndfile never reads back a file it encodes

    def take(self) -> bytes:
        """The bytes written since the last call; they can no longer change."""
        data = bytes(self._pending)
        self._sent += len(self._pending)
        self._pending.clear()
        return data


class FlacStreamEncoder:
    """One FLAC stream (libFLAC through libsndfile): the header with the first frames,
    then frames as each block of samples fills; `finish` sends the last, shorter one."""

    content_type = CONTENT_TYPES["flac"]

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._sink = _SentBytes()
        self._file = sf.SoundFile(
            self._sink,
            mode="w",
            samplerate=sample_rate,
            channels=1,
            format="FLAC",
            subtype="PCM_16",
            compression_level=_FLAC_STREAM_COMPRESSION,
        )

    def header(self) -> bytes:
        return b""  # libsndfile writes the header with the first samples

    def encode(self, samples: np.ndarray) -> bytes:
        pcm = float_to_pcm16(samples)
        if pcm.size:
            self._file.write(pcm)
        return self._sink.take()

    def finish(self) -> bytes:
        self._file.close()
        return self._sink.take()


_ENCODERS: dict[str, type[PcmStreamEncoder] | type[Mp3StreamEncoder] | type[FlacStreamEncoder]] = {
    "wav": WavStreamEncoder,
    "mp3": Mp3StreamEncoder,
    "flac": FlacStreamEncoder,
    "pcm": PcmStreamEncoder,
}


def _stream_format(fmt: str) -> str:
    name = str(fmt).lower()
    if name not in _STREAMABLE:
        raise InvalidInput(f"unknown stream format {fmt!r}; use {', '.join(_STREAMABLE)}")
    return name


def open_stream_encoder(fmt: str, sample_rate: int) -> StreamEncoder:
    return _ENCODERS[_stream_format(fmt)](sample_rate)


def self_contained_chunk(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """One chunk a client can decode on its own (SSE `audio_chunk`, WebSocket frame)."""
    name = _stream_format(fmt)
    if name == "pcm":
        return float_to_pcm16(samples).tobytes()
    if name in ("wav", "flac"):
        return encode_audio(samples, sample_rate, AudioFormat(name))
    encoder = new_mp3_encoder(sample_rate)
    pcm = float_to_pcm16(samples)
    return bytes(encoder.encode(pcm.tobytes())) + bytes(encoder.flush())

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

Opus goes into Ogg pages (libsndfile, with its page latency set so a page leaves every
`_OGG_PAGE_MS`), AAC into ADTS frames (FFmpeg's encoder through PyAV, an optional
dependency: without it an `aac` request is refused with a message saying what to install).
Both containers are written front to back, so their bytes can leave as they are made.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import soundfile as sf
import soxr

from ..domain import AudioFormat
from ..errors import InvalidInput
from .encode import CONTENT_TYPES, as_float32, as_pcm16, encode_audio, new_mp3_encoder, wav_header

_STREAMABLE = ("wav", "mp3", "flac", "pcm", "opus", "aac")
# libFLAC's fastest preset: its 1152-sample blocks (52 ms at 22.05 kHz) are the audio an
# encoder holds back before it can emit a frame; higher presets hold 4096.
_FLAC_STREAM_COMPRESSION = 0.0
# Opus codes at these rates only; anything else is resampled to 48 kHz on the way in.
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
# libsndfile holds Ogg pages for about a second by default; a page every 100 ms keeps a
# stream's first audio close to the engine's while the page overhead stays small.
_OGG_PAGE_MS = 100.0
_SFC_SET_OGG_PAGE_LATENCY_MS = 0x1302  # sndfile.h; soundfile has no wrapper for it
AAC_BITRATE = 64_000  # mono speech: transparent for voice at a fraction of WAV's size
AAC_MISSING = (
    "aac output needs the optional PyAV package on the server: pip install 'cosyvoice-serving[aac]'"
)


class StreamEncoder(Protocol):
    """Turns successive chunks into the bytes of one continuous stream.

    A chunk is mono samples, 16-bit PCM or float in [-1, 1]: a stream hands over the PCM
    its engine thread already made, so the event loop converts nothing.
    """

    content_type: str

    def header(self) -> bytes:
        """Bytes that precede the first chunk (may be empty)."""

    def encode(self, samples: np.ndarray) -> bytes:
        """Bytes for one chunk of mono samples, int16 or float32 (may be empty for MP3
        until a whole frame is buffered)."""

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
        return as_pcm16(samples).tobytes()

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
        pcm = as_pcm16(samples)
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
        pcm = as_pcm16(samples)
        if pcm.size:
            self._file.write(pcm)
        return self._sink.take()

    def finish(self) -> bytes:
        self._file.close()
        return self._sink.take()


class OpusStreamEncoder:
    """One Ogg/Opus stream (libopus through libsndfile): headers with the first page,
    then a page about every `_OGG_PAGE_MS`; `finish` sends the last page."""

    content_type = CONTENT_TYPES["opus"]

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        coded_rate = sample_rate if sample_rate in _OPUS_RATES else 48000
        self._resampler = (
            None
            if coded_rate == sample_rate
            else soxr.ResampleStream(sample_rate, coded_rate, 1, dtype="float32")
        )
        self._sink = _SentBytes()
        self._file = sf.SoundFile(
            self._sink,
            mode="w",
            samplerate=coded_rate,
            channels=1,
            format="OGG",
            subtype="OPUS",
        )
        latency = sf._ffi.new("double*", _OGG_PAGE_MS)
        sf._snd.sf_command(
            self._file._file, _SFC_SET_OGG_PAGE_LATENCY_MS, latency, sf._ffi.sizeof("double")
        )

    def header(self) -> bytes:
        return b""  # libsndfile writes the Opus headers with the first page

    def encode(self, samples: np.ndarray) -> bytes:
        audio = as_float32(samples)
        if self._resampler is not None:
            audio = self._resampler.resample_chunk(audio)
        if audio.size:
            self._file.write(np.clip(audio, -1.0, 1.0))
        return self._sink.take()

    def finish(self) -> bytes:
        if self._resampler is not None:
            rest = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if rest.size:
                self._file.write(np.clip(rest, -1.0, 1.0))
        self._file.close()
        return self._sink.take()


def _load_av() -> Any:
    try:
        import av  # optional and heavy (it bundles FFmpeg): imported on first use only
    except ImportError:
        raise InvalidInput(AAC_MISSING) from None
    return av


def aac_available() -> bool:
    try:
        _load_av()
    except InvalidInput:
        return False
    return True


class _Chunks:
    """The write-only file PyAV's ADTS muxer writes into; it never seeks."""

    def __init__(self) -> None:
        self._data = bytearray()

    def write(self, data: bytes) -> int:
        self._data += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self._data)
        self._data.clear()
        return data


class AacStreamEncoder:
    """AAC-LC in ADTS frames (FFmpeg's native encoder through PyAV): every frame carries
    its own header, so a stream decodes from any frame on; `finish` flushes the encoder."""

    content_type = CONTENT_TYPES["aac"]

    def __init__(self, sample_rate: int) -> None:
        av = _load_av()
        self.sample_rate = sample_rate
        self._av = av
        self._sink = _Chunks()
        self._container = av.open(self._sink, mode="w", format="adts")
        self._stream = self._container.add_stream("aac", rate=sample_rate, layout="mono")
        self._stream.bit_rate = AAC_BITRATE
        self._samples = 0

    def header(self) -> bytes:
        return b""

    def encode(self, samples: np.ndarray) -> bytes:
        audio = np.clip(as_float32(samples).reshape(1, -1), -1.0, 1.0)
        if audio.size:
            frame = self._av.AudioFrame.from_ndarray(audio, format="flt", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.pts = self._samples
            self._samples += audio.shape[1]
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._sink.take()


_ENCODERS: dict[str, Callable[[int], StreamEncoder]] = {
    "wav": WavStreamEncoder,
    "mp3": Mp3StreamEncoder,
    "flac": FlacStreamEncoder,
    "pcm": PcmStreamEncoder,
    "opus": OpusStreamEncoder,
    "aac": AacStreamEncoder,
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
        return as_pcm16(samples).tobytes()
    if name in ("wav", "flac"):
        return encode_audio(samples, sample_rate, AudioFormat(name))
    if name in ("opus", "aac"):
        encoder = open_stream_encoder(name, sample_rate)
        return encoder.header() + encoder.encode(samples) + encoder.finish()
    encoder = new_mp3_encoder(sample_rate)
    pcm = as_pcm16(samples)
    return bytes(encoder.encode(pcm.tobytes())) + bytes(encoder.flush())

"""Audio files written as their segments arrive, in time and memory that do not grow
with the length of the text.

`AudioFileWriter` joins each new segment to the previous one without a click (the same
equal-power crossfade as `dsp.join_segments`, holding back only the last few
milliseconds for the next seam) and encodes it at once into a temporary file:

- WAV: a header with a placeholder length, the samples, then the real length written
  over the placeholder at the end;
- MP3: LAME's frames behind a reserved first frame, which becomes the gapless "Info"
  frame (delay, padding, frame count) once the stream is complete;
- FLAC: libsndfile's incremental encoder.

Every method does blocking work (encoding, disk): call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import soundfile as sf

from ..domain import AudioFormat
from .encode import (
    Mp3Framing,
    float_to_pcm16,
    info_frame_length,
    new_mp3_encoder,
    wav_header,
)

CROSSFADE_MS = 10.0  # as `dsp.join_segments`


class SeamJoiner:
    """Joins segments under an equal-power crossfade, one segment at a time.

    `push` returns the audio that is final (everything but the tail the next seam will
    overlap); `flush` returns that tail at the end. The concatenated outputs equal
    `dsp.join_segments` of all the segments.
    """

    def __init__(self, sample_rate: int, crossfade_ms: float = CROSSFADE_MS) -> None:
        self._fade = max(int(sample_rate * crossfade_ms / 1000.0), 0)
        self._tail = np.zeros(0, dtype=np.float32)
        self._started = False

    def push(self, segment: np.ndarray) -> np.ndarray:
        piece = np.asarray(segment, dtype=np.float32).reshape(-1)
        if piece.size == 0:
            return np.zeros(0, dtype=np.float32)
        if self._started:
            overlap = min(self._fade, len(self._tail), len(piece))
            if overlap:
                phase = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap * (np.pi / 2)
                mixed = self._tail[-overlap:] * np.cos(phase) + piece[:overlap] * np.sin(phase)
                piece = np.concatenate([self._tail[:-overlap], mixed, piece[overlap:]])
            else:
                piece = np.concatenate([self._tail, piece])
        self._started = True
        keep = min(self._fade, len(piece))
        self._tail = piece[len(piece) - keep :].astype(np.float32, copy=True)
        return piece[: len(piece) - keep]

    def flush(self) -> np.ndarray:
        tail, self._tail = self._tail, np.zeros(0, dtype=np.float32)
        return tail


class _Sink(Protocol):
    def write(self, pcm: np.ndarray) -> None: ...

    def close(self) -> None: ...


class _WavSink:
    def __init__(self, path: Path, sample_rate: int) -> None:
        self._rate = sample_rate
        self._handle: BinaryIO = path.open("wb")
        self._handle.write(wav_header(sample_rate, 0))  # the real length comes at the end
        self._data_bytes = 0

    def write(self, pcm: np.ndarray) -> None:
        self._handle.write(pcm.tobytes())
        self._data_bytes += pcm.nbytes

    def close(self) -> None:
        with self._handle:
            self._handle.seek(0)
            self._handle.write(wav_header(self._rate, self._data_bytes))


class _Mp3Sink:
    def __init__(self, path: Path, sample_rate: int) -> None:
        self._path = path
        self._rate = sample_rate
        self._handle: BinaryIO = path.open("wb")
        self._encoder = new_mp3_encoder(sample_rate)
        self._framing = Mp3Framing()
        self._samples = 0
        self._reserved = 0  # bytes kept free at the start for the "Info" frame

    def write(self, pcm: np.ndarray) -> None:
        self._samples += len(pcm)
        if pcm.size:
            self._frames(bytes(self._encoder.encode(pcm.tobytes())))

    def _frames(self, data: bytes) -> None:
        if not data:
            return
        self._framing.feed(data)
        if self._framing.size == len(data) and self._framing.first is not None:
            # The stream's first bytes: its first frame tells the "Info" frame's size.
            self._reserved = info_frame_length(self._framing.first)
            self._handle.write(bytes(self._reserved))
        self._handle.write(data)

    def close(self) -> None:
        with self._handle:
            self._frames(bytes(self._encoder.flush()))
            tag = self._framing.info_frame(self._samples, self._rate)
            if tag is not None and len(tag) == self._reserved:
                self._handle.seek(0)
                self._handle.write(tag)
                return
        if self._reserved:
            _drop_head(self._path, self._reserved)  # no gapless header: plain frames


class _FlacSink:
    def __init__(self, path: Path, sample_rate: int) -> None:
        self._file = sf.SoundFile(
            path, "w", samplerate=sample_rate, channels=1, format="FLAC", subtype="PCM_16"
        )

    def write(self, pcm: np.ndarray) -> None:
        if pcm.size:
            self._file.write(pcm)

    def close(self) -> None:
        self._file.close()


_SINKS: dict[AudioFormat, type[_WavSink] | type[_Mp3Sink] | type[_FlacSink]] = {
    AudioFormat.wav: _WavSink,
    AudioFormat.mp3: _Mp3Sink,
    AudioFormat.flac: _FlacSink,
}


class AudioFileWriter:
    """One audio file, built segment by segment in a temporary file (see the module)."""

    def __init__(self, fmt: AudioFormat, sample_rate: int) -> None:
        descriptor, name = tempfile.mkstemp(prefix="cosyvoice-render-", suffix=f".{fmt.value}")
        os.close(descriptor)
        self.path = Path(name)
        self.sample_rate = sample_rate
        self.samples = 0
        self.size = 0  # bytes, once finished
        self._joiner = SeamJoiner(sample_rate)
        self._closed = False
        try:
            self._sink: _Sink = _SINKS[fmt](self.path, sample_rate)
        except BaseException:
            self.discard()
            raise

    def add_segment(self, pieces: list[np.ndarray]) -> None:
        """Append one segment (its chunks, in order), joined to the one before."""
        if not pieces:
            return
        segment = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        self._write(self._joiner.push(segment))

    def finish(self) -> int:
        """Complete the file; its size in bytes."""
        self._write(self._joiner.flush())
        self._closed = True
        self._sink.close()
        self.size = self.path.stat().st_size
        return self.size

    @property
    def duration(self) -> float:
        return self.samples / self.sample_rate

    def discard(self) -> None:
        """Remove the temporary file (after it was stored, or on failure)."""
        sink = getattr(self, "_sink", None)
        if sink is not None and not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                sink.close()  # a writer given up on midway still holds its file open
        self.path.unlink(missing_ok=True)

    def _write(self, samples: np.ndarray) -> None:
        if samples.size:
            self.samples += len(samples)
            self._sink.write(float_to_pcm16(samples))


def _drop_head(path: Path, count: int) -> None:
    """Remove the first `count` bytes of a file, copying the rest to a new one."""
    trimmed = path.with_name(path.name + ".trim")
    with path.open("rb") as source, trimmed.open("wb") as target:
        source.seek(count)
        shutil.copyfileobj(source, target, 1024 * 1024)
    os.replace(trimmed, path)

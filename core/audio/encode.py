"""Whole-file encoders: mono float32 samples in, WAV / FLAC / MP3 bytes out.

WAV and FLAC go through libsndfile (soundfile); MP3 through LAME (lameenc), because the
libsndfile build we rely on for decoding is not guaranteed to encode MP3 everywhere.
MP3 files carry a gapless header, so they decode to exactly the samples that went in
(see `_with_gapless_header`).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import lameenc
import numpy as np
import soundfile as sf

from ..domain import AudioFormat
from ..errors import InvalidInput

CONTENT_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "pcm": "audio/L16",
    "opus": "audio/ogg",  # Opus in Ogg (RFC 7845), streaming formats only
    "aac": "audio/aac",  # AAC-LC in ADTS frames, streaming formats only
}

MP3_BITRATE_KBPS = 128


def float_to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float [-1, 1] to int16, clipping overshoot instead of letting it wrap around.

    Four passes over one scratch array, as this runs for every streamed piece: scale,
    clip (infinities become full scale), one sum to notice a NaN (rare, so testing is
    cheaper than always cleaning; after clipping the sum cannot overflow), round.
    """
    audio = np.asarray(samples, dtype=np.float32).reshape(-1)
    scaled = audio * np.float32(32767.0)
    np.clip(scaled, -32767.0, 32767.0, out=scaled)
    if np.isnan(scaled.sum()):
        np.nan_to_num(scaled, copy=False)
    np.rint(scaled, out=scaled)
    return scaled.astype("<i2")


def as_pcm16(samples: np.ndarray) -> np.ndarray:
    """16-bit PCM as it is; float samples converted (`float_to_pcm16`)."""
    if samples.dtype == np.int16:
        return samples.reshape(-1)
    return float_to_pcm16(samples)


def as_float32(samples: np.ndarray) -> np.ndarray:
    """Float samples as they are; 16-bit PCM scaled back to [-1, 1]."""
    if samples.dtype == np.int16:
        return samples.reshape(-1).astype(np.float32) / np.float32(32767.0)
    return np.asarray(samples, dtype=np.float32).reshape(-1)


def encode_audio(samples: np.ndarray, sample_rate: int, fmt: AudioFormat | str) -> bytes:
    """One complete audio file: 16-bit PCM WAV, 16-bit FLAC, or ~128 kbps mono MP3."""
    try:
        audio_format = AudioFormat(fmt)
    except ValueError:
        raise InvalidInput(f"unknown audio format {fmt!r}; use wav, mp3 or flac") from None
    pcm = as_pcm16(samples)
    if audio_format is AudioFormat.mp3:
        return _encode_mp3(pcm, sample_rate)
    if audio_format is AudioFormat.wav:
        # A WAV file is a 44-byte header and the samples: no need for a codec library.
        return wav_header(sample_rate, pcm.nbytes) + pcm.tobytes()
    buffer = io.BytesIO()
    sf.write(buffer, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


UNKNOWN_SIZE = 0xFFFFFFFF  # the streaming convention: "read to the end"


def wav_header(sample_rate: int, data_bytes: int | None) -> bytes:
    """The RIFF header of 16-bit mono PCM; `None` sizes it as unknown (streaming)."""
    data_size = UNKNOWN_SIZE if data_bytes is None else data_bytes
    riff_size = UNKNOWN_SIZE if data_bytes is None else 36 + data_bytes
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_size)
    )


def new_mp3_encoder(sample_rate: int) -> lameenc.Encoder:
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(MP3_BITRATE_KBPS)
    encoder.set_in_sample_rate(sample_rate)
    encoder.set_channels(1)
    encoder.set_quality(2)  # 2 = high quality, still far faster than any engine
    return encoder


def _encode_mp3(pcm: np.ndarray, sample_rate: int) -> bytes:
    encoder = new_mp3_encoder(sample_rate)
    frames = bytes(encoder.encode(pcm.tobytes())) + bytes(encoder.flush())
    return _with_gapless_header(frames, len(pcm), sample_rate)


# --- gapless MP3 --------------------------------------------------------------------
#
# LAME starts every stream with 576 samples of encoder delay and pads the last frame, so
# a bare MP3 decodes ~50-100 ms longer than its input (60% too long for a 0.1 s clip).
# Encoders normally fix this by writing an "Info" frame (Xing header + LAME extension)
# holding the delay and padding; decoders (mpg123 inside libsndfile, ffmpeg, browsers)
# then trim them and return exactly the input. lameenc does not expose that frame, so
# we build it ourselves from the stream's first frame header.

_LAME_ENCODER_DELAY = 576
_MPEG1_BITRATES = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MPEG2_BITRATES = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


@dataclass(frozen=True)
class _FrameHeader:
    raw: bytes
    mpeg1: bool
    bitrate: int  # bits per second
    sample_rate: int
    mono: bool
    length: int  # bytes, header included

    @property
    def samples_per_frame(self) -> int:
        return 1152 if self.mpeg1 else 576


def _parse_frame_header(data: bytes, offset: int) -> _FrameHeader | None:
    header = data[offset : offset + 4]
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version = (header[1] >> 3) & 3
    bitrate_index, rate_index = header[2] >> 4, (header[2] >> 2) & 3
    if version == 1 or rate_index == 3 or bitrate_index in (0, 15):
        return None
    mpeg1 = version == 3
    bitrate = (_MPEG1_BITRATES if mpeg1 else _MPEG2_BITRATES)[bitrate_index] * 1000
    sample_rate = _SAMPLE_RATES[version][rate_index]
    padding = (header[2] >> 1) & 1
    length = (144 if mpeg1 else 72) * bitrate // sample_rate + padding
    mono = (header[3] >> 6) == 3
    return _FrameHeader(bytes(header), mpeg1, bitrate, sample_rate, mono, length)


def _count_frames(data: bytes) -> int:
    count, offset = 0, 0
    while (frame := _parse_frame_header(data, offset)) is not None:
        count += 1
        offset += frame.length
    return count


def _crc16(data: bytes) -> int:
    """CRC-16/ARC, the checksum of the LAME tag."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _with_gapless_header(frames: bytes, input_samples: int, input_rate: int) -> bytes:
    first = _parse_frame_header(frames, 0)
    if first is None:
        return frames
    tag = _info_frame(first, _count_frames(frames), len(frames), input_samples, input_rate)
    return frames if tag is None else tag + frames


def _info_frame(
    first: _FrameHeader, frame_count: int, frames_bytes: int, input_samples: int, input_rate: int
) -> bytes | None:
    """The "Info" frame for a stream of `frame_count` frames; None when it cannot be made."""
    # LAME resamples unusual input rates; delay and padding count output samples.
    output_samples = round(input_samples * first.sample_rate / input_rate)
    padding = frame_count * first.samples_per_frame - _LAME_ENCODER_DELAY - output_samples
    if not 0 <= padding < 4096:
        return None
    header = bytes((first.raw[0], first.raw[1], first.raw[2] & ~0x02, first.raw[3]))
    frame_length = info_frame_length(first)
    side_info = (17 if first.mono else 32) if first.mpeg1 else (9 if first.mono else 17)
    total_bytes = frames_bytes + frame_length

    tag = bytearray(header + bytes(side_info))
    tag += b"Info" + struct.pack(">III", 0x0F, frame_count, total_bytes)
    tag += bytes(i * 256 // 100 for i in range(100))  # table of contents: CBR is linear
    tag += struct.pack(">I", 0)  # quality
    tag += b"LAME3.100" + bytes((0x01, 0)) + bytes(4 + 2 + 2 + 1)  # CBR, no gains
    tag += bytes((min(first.bitrate // 1000, 255),))
    tag += (_LAME_ENCODER_DELAY << 12 | padding).to_bytes(3, "big")
    tag += bytes(1 + 1 + 2) + struct.pack(">I", total_bytes) + bytes(2)  # music CRC unset
    tag += struct.pack(">H", _crc16(bytes(tag)))
    if len(tag) > frame_length:
        return None
    return bytes(tag) + bytes(frame_length - len(tag))


def info_frame_length(first: _FrameHeader) -> int:
    """Bytes of the "Info" frame that goes before a stream starting with `first`."""
    return (144 if first.mpeg1 else 72) * first.bitrate // first.sample_rate


class Mp3Framing:
    """Follows an MP3 stream written piece by piece: its first frame and its frame count,
    which the gapless "Info" frame needs, without keeping the stream in memory."""

    def __init__(self) -> None:
        self.first: _FrameHeader | None = None
        self.frames = 0
        self.size = 0
        self._next = 0  # offset of the next frame header in the stream
        self._pending = b""  # bytes from `_next` on that do not hold a whole header yet
        self._broken = False

    def feed(self, data: bytes) -> None:
        start = self.size
        self.size += len(data)
        if self._broken or not data:
            return
        if self._next > start:
            skip = self._next - start
            if skip >= len(data):
                return
            data = data[skip:]
            start = self._next
        buffer = self._pending + data
        offset = 0
        while offset + 4 <= len(buffer):
            frame = _parse_frame_header(buffer, offset)
            if frame is None:
                self._broken = True  # not LAME's output: no gapless header then
                return
            if self.first is None:
                self.first = frame
            self.frames += 1
            offset += frame.length
        self._next = self.size - len(buffer) + offset
        self._pending = buffer[offset:] if offset < len(buffer) else b""

    def info_frame(self, input_samples: int, input_rate: int) -> bytes | None:
        if self._broken or self.first is None:
            return None
        return _info_frame(self.first, self.frames, self.size, input_samples, input_rate)


def audio_duration(data: bytes) -> float:
    """Seconds of audio in an encoded file (decoded in full, so MP3 estimates don't lie)."""
    try:
        samples, sample_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise InvalidInput(f"not a decodable audio file: {exc}") from None
    return float(samples.shape[0] / sample_rate)

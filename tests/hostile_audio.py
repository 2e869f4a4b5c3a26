"""Audio files built to hurt a decoder: headers that lie, and legal files far too big.

Each builder writes a real, small file with soundfile or lameenc and then patches its
header, so what a decoder sees first (channels, rate, length) promises far more than
the bytes hold, exactly as an attacker's file would.
"""

from __future__ import annotations

import io
import struct

import lameenc
import numpy as np
import soundfile as sf

from core.audio.encode import encode_audio


def tone(seconds: float, rate: int, channels: int = 1, f0: float = 180.0) -> np.ndarray:
    """A buzzy harmonic tone that is clearly not silence, shaped (frames, channels)."""
    t = np.arange(int(seconds * rate)) / rate
    mono = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    mono = (0.2 * mono * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)
    return np.repeat(mono[:, None], channels, axis=1)


def _flac(seconds: float, rate: int, channels: int) -> bytearray:
    buffer = io.BytesIO()
    sf.write(buffer, tone(seconds, rate, channels), rate, format="FLAC", subtype="PCM_16")
    return bytearray(buffer.getvalue())


def _set_flac_total_samples(data: bytearray, total: int) -> None:
    """STREAMINFO (right after 'fLaC' and its 4-byte block header): total samples are
    the low 36 bits of the 8 bytes at offset 10 of the block; the MD5 is zeroed so no
    decoder can object to it."""
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0
    start = 8 + 10
    (packed,) = struct.unpack(">Q", bytes(data[start : start + 8]))
    packed = (packed & ~((1 << 36) - 1)) | (total & ((1 << 36) - 1))
    data[start : start + 8] = struct.pack(">Q", packed)
    data[start + 8 : start + 24] = bytes(16)


def flac_claiming(
    *, rate: int, channels: int, claimed_seconds: float, real_seconds: float = 0.05
) -> bytes:
    """A FLAC whose STREAMINFO claims `claimed_seconds`; the frames hold `real_seconds`."""
    data = _flac(real_seconds, rate, channels)
    _set_flac_total_samples(data, int(claimed_seconds * rate))
    return bytes(data)


def flac_claiming_samples(total: int, *, rate: int = 16_000) -> bytes:
    """A mono FLAC whose STREAMINFO claims `total` samples (up to 2^36 - 1)."""
    data = _flac(2.0, rate, 1)
    _set_flac_total_samples(data, total)
    return bytes(data)


def wav_claiming_huge_data(rate: int = 48_000, channels: int = 2) -> bytes:
    """A 16-bit WAV whose RIFF and data sizes say 4 GB; the data holds two seconds."""
    pcm = (tone(2.0, rate, channels) * 32767).astype("<i2").tobytes()
    block = 2 * channels
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", 0xFFFFFFF0)
        + pcm
    )


def mp3_claiming_frames(frames: int = 0xFFFFFFFF) -> bytes:
    """An MP3 whose Xing header claims `frames` frames (2^32 - 1: ~35 years at 16 kHz)."""
    data = bytearray(encode_audio(tone(2.0, 16_000)[:, 0], 16_000, "mp3"))
    tag = data.find(b"Info")
    assert 0 < tag < 64, "the encoder's Info frame is missing"
    data[tag : tag + 4] = b"Xing"
    data[tag + 8 : tag + 12] = struct.pack(">I", frames)
    return bytes(data)


def long_stereo_mp3(minutes: float, rate: int = 48_000, kbps: int = 32) -> bytes:
    """A legal constant-bitrate stereo MP3 of `minutes`: ten encoded seconds, repeated.

    MPEG audio is a plain sequence of frames, so repeating a whole encoded stream is
    still one valid stream (encoding 79 minutes would take the test half a minute)."""
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(kbps)
    encoder.set_in_sample_rate(rate)
    encoder.set_out_sample_rate(rate)  # LAME would otherwise resample low bitrates down
    encoder.set_channels(2)
    encoder.set_quality(7)
    pcm = (tone(10.0, rate, 2) * 32767).astype("<i2").tobytes()
    piece = bytes(encoder.encode(pcm)) + bytes(encoder.flush())
    return piece * max(int(minutes * 6), 1)

"""Reference clips in: bytes of an upload to validated mono float32 audio.

The container is recognised from the content (libsndfile reads the magic bytes), never
from a file name or a declared format, so a FLAC named `.wav` is still decoded and
reported as FLAC. Every reason to refuse a clip becomes an `AudioRejected` whose message
a user can act on.

An upload is hostile until proven otherwise: a header can promise eight channels at
655 kHz, or 2^36 samples, in a few hundred bytes. So the header is checked against the
limits before a single sample is decoded, samples are decoded in one-second blocks and
mixed to mono block by block, and decoding stops as soon as more samples arrive than the
limits allow, whatever the header said. No clip can make the server allocate more than
`max_duration × sample rate` mono samples, and running out of memory is a refused clip,
never a server error.

An accepted clip is normalised once, here: mono, resampled to at most `STORED_RATE` and
encoded as 16-bit FLAC (`DecodedUpload.sample`). That small file is what is stored and
what every later synthesis decodes.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import numpy as np
import soundfile as sf

from ..domain import AudioFormat
from ..errors import AudioRejected
from ..ports import Clip
from .dsp import is_silent, mix_to_mono, resample
from .encode import encode_audio

# libsndfile's format names for the containers we accept (WAVEX = WAV with an
# extensible header, as written by many recorders).
_CONTAINERS: dict[str, AudioFormat] = {
    "WAV": AudioFormat.wav,
    "WAVEX": AudioFormat.wav,
    "MP3": AudioFormat.mp3,
    "FLAC": AudioFormat.flac,
}
_ACCEPTED = ", ".join(f.value for f in AudioFormat)
SILENCE_THRESHOLD_DB = -50.0

# Reference clips are speech: 8–48 kHz covers every microphone and codec, and nothing
# a speech model uses is lost by mixing more than two channels away, so the limits
# are fixed rather than configurable.
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 48_000
MAX_CHANNELS = 2

# The stored sample: CosyVoice reads its reference at 16 kHz (speech tokens, speaker
# embedding) and 24 kHz (prompt mel), so 24 kHz keeps everything any engine uses while
# a 30 s clip stays under a megabyte. Lower-rate uploads keep their own rate.
STORED_RATE = 24_000
STORED_FORMAT = AudioFormat.flac

# A stored sample or an inline clip passed the upload checks once, but may predate
# them: allow far more than any reference clip, still bounded.
_CLIP_MAX_SECONDS = 300.0
_BLOCK_SECONDS = 1.0
# A header's frame count this large means "unknown" (libsndfile's SF_COUNT_MAX).
_UNKNOWN_FRAMES = 1 << 62
# Declared lengths are estimates for MP3 without a Xing header: leave some slack.
_DECLARED_SLACK = 1.05


@dataclass(frozen=True)
class DecodedUpload:
    clip: Clip  # mono float32 at the stored rate (`min(upload rate, STORED_RATE)`)
    container: AudioFormat  # what the bytes really are
    sample_rate: int  # of the upload
    channels: int  # of the upload, before the mix-down
    duration: float
    file_size: int  # of the upload
    sample: bytes  # the normalised clip as stored: 16-bit mono FLAC
    sample_sha256: str  # of `sample`: keys the voice's cached features


@dataclass(frozen=True)
class _Decoded:
    container: AudioFormat
    samples: np.ndarray  # mono float32
    sample_rate: int
    channels: int


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_upload(data: bytes, *, max_duration: float, min_duration: float = 1.0) -> DecodedUpload:
    """Decode, validate and normalise a reference clip; AudioRejected says what is wrong."""
    if not data:
        raise AudioRejected("The audio file is empty (0 bytes).")
    try:
        return _decode_upload(data, max_duration=max_duration, min_duration=min_duration)
    except MemoryError:
        raise AudioRejected(
            "The audio could not be decoded within the memory allowed for a reference clip; "
            f"upload at most {max_duration:g} s of mono or stereo audio."
        ) from None


def _decode_upload(data: bytes, *, max_duration: float, min_duration: float) -> DecodedUpload:
    decoded = _read(data, max_seconds=max_duration, reference_limits=True)
    samples, rate = decoded.samples, decoded.sample_rate
    if samples.size == 0:
        raise AudioRejected("The audio file contains no samples.")
    duration = samples.size / rate
    if duration < min_duration:
        raise AudioRejected(
            f"The audio is too short: {duration:.2f} s; at least {min_duration:g} s of speech "
            "is needed."
        )
    if is_silent(samples, SILENCE_THRESHOLD_DB):
        raise AudioRejected(
            f"The audio is silent: nothing in it is louder than {SILENCE_THRESHOLD_DB:g} dBFS."
        )
    stored_rate = min(rate, STORED_RATE)
    normalised = resample(samples, rate, stored_rate)
    sample = encode_audio(normalised, stored_rate, STORED_FORMAT)
    return DecodedUpload(
        clip=Clip(samples=normalised, sample_rate=stored_rate),
        container=decoded.container,
        sample_rate=rate,
        channels=decoded.channels,
        duration=duration,
        file_size=len(data),
        sample=sample,
        sample_sha256=sha256_hex(sample),
    )


def decode_clip(data: bytes) -> Clip:
    """Decode a stored sample (or an inline clip the router already checked).

    No duration limits apply, but decoding stays bounded: at most `_CLIP_MAX_SECONDS`
    of mono samples are ever held.
    """
    if not data:
        raise AudioRejected("The audio file is empty (0 bytes).")
    try:
        decoded = _read(data, max_seconds=_CLIP_MAX_SECONDS, reference_limits=False)
    except MemoryError:
        raise AudioRejected("The stored audio could not be decoded: out of memory.") from None
    return Clip(samples=decoded.samples, sample_rate=decoded.sample_rate)


# Decoding, resampling and hashing hold a core for milliseconds to a second: they run
# on a small pool of their own, so the event loop keeps answering and a burst of
# uploads queues instead of holding many decoded clips in memory at once.
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="audio-decode")
_P = ParamSpec("_P")
_T = TypeVar("_T")


async def off_loop(fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run CPU-bound audio work (decode, resample, hash) on the audio pool."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_POOL, lambda: fn(*args, **kwargs))


def _read(data: bytes, *, max_seconds: float, reference_limits: bool) -> _Decoded:
    try:
        with sf.SoundFile(io.BytesIO(data)) as audio:
            container = _CONTAINERS.get(audio.format)
            if container is None:
                raise AudioRejected(
                    f"Unsupported audio container {audio.format}; accepted formats are {_ACCEPTED}."
                )
            rate, channels = audio.samplerate, audio.channels
            if reference_limits:
                _check_header(rate, channels, audio.frames, max_seconds)
            elif rate <= 0 or channels <= 0:
                raise AudioRejected("The audio header declares no samples.")
            samples = _read_blocks(audio, rate, max_seconds)
    except (sf.LibsndfileError, RuntimeError, ValueError, EOFError) as exc:
        raise AudioRejected(
            f"The file could not be decoded as audio ({_reason(exc)}); accepted formats are "
            f"{_ACCEPTED}."
        ) from None
    return _Decoded(container, samples, rate, channels)


def _check_header(rate: int, channels: int, frames: int, max_seconds: float) -> None:
    """Refuse what the header declares before decoding anything."""
    if channels > MAX_CHANNELS or channels < 1:
        raise AudioRejected(
            f"The audio has {channels} channels; at most {MAX_CHANNELS} (mono or stereo) are "
            "accepted."
        )
    if rate > MAX_SAMPLE_RATE:
        raise AudioRejected(
            f"The audio's sample rate is {rate} Hz; at most {MAX_SAMPLE_RATE} Hz is accepted."
        )
    if rate < MIN_SAMPLE_RATE:
        raise AudioRejected(
            f"The audio's sample rate is {rate} Hz; at least {MIN_SAMPLE_RATE} Hz is needed."
        )
    if 0 < frames < _UNKNOWN_FRAMES and frames / rate > max_seconds * _DECLARED_SLACK:
        raise _too_long(f"{frames / rate:.1f} s", max_seconds)


def _read_blocks(audio: sf.SoundFile, rate: int, max_seconds: float) -> np.ndarray:
    """Mono samples, decoded a block at a time; never more than `max_seconds` of them.

    The header's frame count is not trusted: a block is allocated for at most one second,
    and one block past the budget is enough to know the clip is too long.
    """
    budget = int(max_seconds * rate) + 1
    block = max(int(rate * _BLOCK_SECONDS), 1)
    parts: list[np.ndarray] = []
    total = 0
    while True:
        frames = audio.read(min(block, budget + 1 - total), dtype="float32", always_2d=True)
        if frames.shape[0] == 0:
            break
        total += frames.shape[0]
        if total > budget:
            raise _too_long(f"more than {max_seconds:g} s", max_seconds)
        parts.append(mix_to_mono(frames))
    if not parts:
        return np.zeros(0, dtype=np.float32)
    mono = np.concatenate(parts) if len(parts) > 1 else parts[0]
    mono = np.nan_to_num(mono, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _too_long(length: str, max_seconds: float) -> AudioRejected:
    return AudioRejected(
        f"The audio is too long: {length}; the maximum is {max_seconds:g} s. "
        "Trim the clip and upload it again."
    )


def _reason(exc: Exception) -> str:
    message = str(exc)
    # libsndfile prefixes its reason with the stream's repr; keep only the reason.
    return message.split(": ", 1)[-1] if ": " in message else message or type(exc).__name__

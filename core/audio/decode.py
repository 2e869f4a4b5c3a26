"""Reference clips in: bytes of an upload to validated mono float32 audio.

The container is recognised from the content (libsndfile reads the magic bytes), never
from a file name or a declared format, so a FLAC named `.wav` is still decoded and
reported as FLAC. Every reason to refuse a clip becomes an `AudioRejected` whose message
a user can act on.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from ..domain import AudioFormat
from ..errors import AudioRejected
from ..ports import Clip
from .dsp import is_silent

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


@dataclass(frozen=True)
class DecodedUpload:
    clip: Clip  # mono float32 at the upload's own sample rate
    container: AudioFormat  # what the bytes really are
    sample_rate: int
    channels: int  # of the upload, before the mix-down
    duration: float
    file_size: int


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_upload(data: bytes, *, max_duration: float, min_duration: float = 1.0) -> DecodedUpload:
    """Decode and validate a reference clip; AudioRejected says what is wrong with it."""
    if not data:
        raise AudioRejected("The audio file is empty (0 bytes).")
    container, samples, sample_rate, channels = _read(data)
    if samples.size == 0:
        raise AudioRejected("The audio file contains no samples.")
    duration = samples.size / sample_rate
    if duration < min_duration:
        raise AudioRejected(
            f"The audio is too short: {duration:.2f} s; at least {min_duration:g} s of speech "
            "is needed."
        )
    if duration > max_duration:
        raise AudioRejected(
            f"The audio is too long: {duration:.1f} s; the maximum is {max_duration:g} s. "
            "Trim the clip and upload it again."
        )
    if is_silent(samples, SILENCE_THRESHOLD_DB):
        raise AudioRejected(
            f"The audio is silent: nothing in it is louder than {SILENCE_THRESHOLD_DB:g} dBFS."
        )
    return DecodedUpload(
        clip=Clip(samples=samples, sample_rate=sample_rate),
        container=container,
        sample_rate=sample_rate,
        channels=channels,
        duration=duration,
        file_size=len(data),
    )


def decode_clip(data: bytes) -> Clip:
    """Decode a stored sample that passed `decode_upload` once: no limits are applied."""
    if not data:
        raise AudioRejected("The audio file is empty (0 bytes).")
    _, samples, sample_rate, _ = _read(data)
    return Clip(samples=samples, sample_rate=sample_rate)


def _read(data: bytes) -> tuple[AudioFormat, np.ndarray, int, int]:
    try:
        with sf.SoundFile(io.BytesIO(data)) as audio:
            container = _CONTAINERS.get(audio.format)
            if container is None:
                raise AudioRejected(
                    f"Unsupported audio container {audio.format}; accepted formats are {_ACCEPTED}."
                )
            sample_rate, channels = audio.samplerate, audio.channels
            frames = audio.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, EOFError) as exc:
        raise AudioRejected(
            f"The file could not be decoded as audio ({_reason(exc)}); accepted formats are "
            f"{_ACCEPTED}."
        ) from None
    mono = frames.mean(axis=1, dtype=np.float32) if channels > 1 else frames[:, 0]
    mono = np.nan_to_num(mono, nan=0.0, posinf=1.0, neginf=-1.0)
    return container, np.ascontiguousarray(mono, dtype=np.float32), sample_rate, channels


def _reason(exc: Exception) -> str:
    message = str(exc)
    # libsndfile prefixes its reason with the stream's repr; keep only the reason.
    return message.split(": ", 1)[-1] if ": " in message else message or type(exc).__name__

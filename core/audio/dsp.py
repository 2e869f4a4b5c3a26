"""Signal processing on mono float32 audio: resampling, joining, loudness, voice traits.

Everything here is numpy (plus soxr for resampling) so the development engine and the
voice service can measure clips without torch. The pitch and rate estimators are
deliberately simple: they feed a formant synthesizer's few knobs, not a speech model.
"""

from __future__ import annotations

import numpy as np
import soxr

from ..ports import Clip

_SILENCE_FLOOR_DB = -120.0


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """High-quality resampling; the input comes back untouched when the rates match."""
    audio = np.asarray(samples, dtype=np.float32)
    if from_rate == to_rate or audio.size == 0:
        return audio
    return np.asarray(soxr.resample(audio, from_rate, to_rate, quality="HQ"), dtype=np.float32)


def mix_to_mono(frames: np.ndarray) -> np.ndarray:
    """(frames, channels) float32 to mono: the mean of the channels."""
    if frames.ndim == 1:
        return np.asarray(frames, dtype=np.float32)
    if frames.shape[1] == 1:
        return np.ascontiguousarray(frames[:, 0], dtype=np.float32)
    mono: np.ndarray = frames.mean(axis=1, dtype=np.float32)
    return mono


def join_segments(
    segments: list[np.ndarray],
    sample_rate: int,
    crossfade_ms: float = 10.0,
    *,
    pause_ms: float = 0.0,
) -> np.ndarray:
    """Concatenate segments without clicks at the seams.

    With no pause, neighbours overlap by `crossfade_ms` under an equal-power (sine/cosine)
    crossfade, so the joined audio is shorter by one overlap per seam. With `pause_ms`,
    each seam gets a short fade-out, that much silence and a fade-in instead: the natural
    join between sentences.
    """
    pieces = [np.asarray(s, dtype=np.float32).reshape(-1) for s in segments if np.size(s)]
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    fade = max(int(sample_rate * crossfade_ms / 1000.0), 0)
    if pause_ms > 0:
        return _join_with_pauses(pieces, sample_rate, fade, pause_ms)

    joined = pieces[0].copy()
    for piece in pieces[1:]:
        overlap = min(fade, len(joined), len(piece))
        if overlap == 0:
            joined = np.concatenate([joined, piece])
            continue
        phase = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap * (np.pi / 2)
        mixed = joined[-overlap:] * np.cos(phase) + piece[:overlap] * np.sin(phase)
        joined = np.concatenate([joined[:-overlap], mixed, piece[overlap:]])
    return joined.astype(np.float32, copy=False)


def _join_with_pauses(
    pieces: list[np.ndarray], sample_rate: int, fade: int, pause_ms: float
) -> np.ndarray:
    gap = np.zeros(int(sample_rate * pause_ms / 1000.0), dtype=np.float32)
    out: list[np.ndarray] = []
    last = len(pieces) - 1
    for index, piece in enumerate(pieces):
        shaped = piece.copy()
        n = min(fade, len(shaped) // 2)
        if n:
            ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
            if index > 0:
                shaped[:n] *= ramp
            if index < last:
                shaped[-n:] *= ramp[::-1]
        out.append(shaped)
        if index < last:
            out.append(gap)
    return np.concatenate(out)


def rms_db(samples: np.ndarray) -> float:
    """Root-mean-square level in dBFS (full scale = 1.0); -120 for digital silence."""
    audio = np.asarray(samples, dtype=np.float64)
    if audio.size == 0:
        return _SILENCE_FLOOR_DB
    rms = float(np.sqrt(np.mean(audio * audio)))
    if rms <= 0.0:
        return _SILENCE_FLOOR_DB
    return max(20.0 * float(np.log10(rms)), _SILENCE_FLOOR_DB)


def is_silent(samples: np.ndarray, threshold_db: float = -50.0) -> bool:
    """True when nothing in the clip is sustained above `threshold_db`.

    The level is taken over 50 ms frames at the 95th percentile, so a long pause does not
    make speech "silent" and a single click does not make silence "sound".
    """
    audio = np.asarray(samples, dtype=np.float32).reshape(-1)
    if audio.size == 0:
        return True
    frame = 1024
    if audio.size <= frame:
        return rms_db(audio) < threshold_db
    usable = audio[: audio.size // frame * frame].reshape(-1, frame).astype(np.float64)
    frame_rms = np.sqrt(np.mean(usable * usable, axis=1))
    loud = float(np.percentile(frame_rms, 95))
    return loud <= 0.0 or 20.0 * np.log10(loud) < threshold_db


# --- voice traits ----------------------------------------------------------------------

_ANALYSIS_RATE = 8000
_F0_MIN, _F0_MAX = 60.0, 500.0


def _frames(audio: np.ndarray, size: int, hop: int) -> np.ndarray:
    if audio.size < size:
        audio = np.pad(audio, (0, size - audio.size))
    count = 1 + (audio.size - size) // hop
    return np.lib.stride_tricks.sliding_window_view(audio, size)[::hop][:count]


def estimate_pitch(clip: Clip) -> tuple[float, float]:
    """(median F0, F0 standard deviation) in Hz over the voiced frames; (0, 0) if none.

    Window-corrected autocorrelation per 40 ms frame; among the candidate peaks the
    shortest lag within 90% of the best wins, which keeps octave-down errors rare.
    """
    audio = resample(clip.samples, clip.sample_rate, _ANALYSIS_RATE).astype(np.float64)
    size, hop = int(0.040 * _ANALYSIS_RATE), int(0.010 * _ANALYSIS_RATE)
    frames = _frames(audio - audio.mean() if audio.size else audio, size, hop)
    if frames.size == 0:
        return 0.0, 0.0

    energy = np.sqrt(np.mean(frames * frames, axis=1))
    loud = energy > max(energy.max() * 10 ** (-30 / 20), 1e-4)
    frames = frames[loud]
    if frames.shape[0] == 0:
        return 0.0, 0.0

    window = np.hanning(size)
    nfft = 1 << (2 * size - 1).bit_length()
    spectrum = np.fft.rfft((frames - frames.mean(axis=1, keepdims=True)) * window, nfft)
    acf = np.fft.irfft(np.abs(spectrum) ** 2, nfft)[:, :size]
    window_acf = np.fft.irfft(np.abs(np.fft.rfft(window, nfft)) ** 2, nfft)[:size]
    acf = acf / np.maximum(acf[:, :1], 1e-12) / (window_acf / window_acf[0])

    lo, hi = int(_ANALYSIS_RATE / _F0_MAX), int(_ANALYSIS_RATE / _F0_MIN)
    band = acf[:, lo : hi + 1]
    best = band.max(axis=1)
    voiced = best > 0.5
    if not voiced.any():
        return 0.0, 0.0
    band, best = band[voiced], best[voiced]

    is_peak = np.zeros_like(band, dtype=bool)
    is_peak[:, 1:-1] = (band[:, 1:-1] >= band[:, :-2]) & (band[:, 1:-1] > band[:, 2:])
    strong = is_peak & (band >= 0.9 * best[:, None])
    fallback = band.argmax(axis=1)
    first = np.where(strong.any(axis=1), strong.argmax(axis=1), fallback)

    # Parabolic interpolation around the chosen lag for sub-sample precision.
    rows = np.arange(band.shape[0])
    left = band[rows, np.clip(first - 1, 0, band.shape[1] - 1)]
    centre = band[rows, first]
    right = band[rows, np.clip(first + 1, 0, band.shape[1] - 1)]
    denominator = left - 2 * centre + right
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(np.abs(denominator) > 1e-12, 0.5 * (left - right) / denominator, 0.0)
    lags = lo + first + np.clip(shift, -0.5, 0.5)
    f0 = _ANALYSIS_RATE / lags

    median = float(np.median(f0))
    kept = f0[(f0 > median / 1.6) & (f0 < median * 1.6)]
    return median, float(np.std(kept)) if kept.size else 0.0


def estimate_speaking_rate(clip: Clip) -> float:
    """Syllable-like energy peaks per second of sounding speech (pauses excluded)."""
    audio = resample(clip.samples, clip.sample_rate, _ANALYSIS_RATE).astype(np.float64)
    hop = int(0.010 * _ANALYSIS_RATE)
    frames = _frames(audio, int(0.025 * _ANALYSIS_RATE), hop)
    if frames.size == 0:
        return 0.0
    level = 10 * np.log10(np.mean(frames * frames, axis=1) + 1e-10)
    # Smooth over ~50 ms so the peaks follow syllables, not pitch periods.
    kernel = np.hanning(7)
    envelope = np.convolve(level, kernel / kernel.sum(), mode="same")

    floor = envelope.max() - 30.0
    sounding = envelope > floor
    speech_seconds = max(float(sounding.sum()) * hop / _ANALYSIS_RATE, 0.5)

    candidates = (
        np.flatnonzero(
            (envelope[1:-1] > envelope[:-2]) & (envelope[1:-1] >= envelope[2:]) & sounding[1:-1]
        )
        + 1
    )
    min_gap = 8  # frames: syllables come no faster than ~12 per second
    nuclei = 0
    last_peak = -min_gap
    last_dip = envelope[0]
    for index in candidates:
        # A nucleus must rise 3 dB above the dip since the previous one.
        start = max(last_peak, 0)
        dip = float(envelope[start : index + 1].min()) if index > start else last_dip
        if envelope[index] - dip >= 3.0 and index - last_peak >= min_gap:
            nuclei += 1
            last_peak = int(index)
            last_dip = dip
    return nuclei / speech_seconds

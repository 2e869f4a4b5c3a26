"""Speech clips for the tests, made here by the development engine.

A fresh clone must run every test, so the tests do not rely on recordings kept outside
the repository: they synthesize two known sentences with espeak (in-process, no server)
and write them as WAV files with the properties the tests check — duration, sample rate,
sample format and a voice whose pitch tells them apart (a high "female" Mandarin voice,
a low English one). espeak's output differs slightly from one call to the next, so the
clips are made once and kept in `CLIP_DIR` (gitignored, named after the recipes and the
espeak build, so a change to either makes new clips); several pytest processes may start
at once, so each file is created atomically and the first one written is the one kept.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import soundfile as sf

from core.audio.dsp import resample
from core.domain import SynthesisMode
from core.engines.base import EngineRequest
from core.engines.espeak import SAMPLE_RATE as ESPEAK_RATE
from core.engines.espeak import EspeakEngine, EspeakVoiceFeatures
from core.ports import Clip

REPO_ROOT = Path(__file__).resolve().parents[1]

MANDARIN_TRANSCRIPT = "希望你以后能够做的比我还好呦。"
ENGLISH_TEXT = (
    "The quick brown fox jumps over the lazy dog. A clear voice reads this passage, "
    "so that every word can be heard. Speech synthesis turns written text into sound. "
    "This recording is made for testing the serving platform."
)
LEADING_SILENCE_S = 0.1  # a recording starts a moment before the speaker does


@dataclass(frozen=True)
class ClipRecipe:
    """One test clip: what is said, by which voice, and how the file is written."""

    filename: str
    text: str
    language: str
    pitch_hz: float  # median F0 of the voice; above 165 Hz espeak's female variant speaks
    words_per_minute: int
    duration_s: float  # padded with trailing silence to exactly this
    sample_rate: int
    subtype: str  # soundfile's name of the sample format

    @property
    def transcript_filename(self) -> str:
        return Path(self.filename).with_suffix(".txt").name


MANDARIN = ClipRecipe(
    filename="zero_shot_prompt.wav",
    text=MANDARIN_TRANSCRIPT,
    language="zh",
    pitch_hz=250.0,
    words_per_minute=190,
    duration_s=3.5,
    sample_rate=24000,
    subtype="FLOAT",
)
ENGLISH = ClipRecipe(
    filename="cross_lingual_prompt.wav",
    text=ENGLISH_TEXT,
    language="en",
    pitch_hz=110.0,
    words_per_minute=170,
    duration_s=13.8,
    sample_rate=22050,
    subtype="PCM_16",
)
CLIPS = (MANDARIN, ENGLISH)


def render(recipe: ClipRecipe, engine: EspeakEngine | None = None) -> bytes:
    """The WAV file of one recipe (deterministic: the same bytes on every call)."""
    if engine is None:
        engine = EspeakEngine()
        engine.load()
    voice = EspeakVoiceFeatures(
        median_pitch_hz=recipe.pitch_hz,
        pitch_std_hz=round(recipe.pitch_hz * 0.11, 1),
        gender="female" if recipe.pitch_hz > 165 else "male",
        syllables_per_second=5.0,
        words_per_minute=recipe.words_per_minute,
    )
    request = EngineRequest(
        text=recipe.text,
        mode=SynthesisMode.cross_lingual,
        # Unused: the engine speaks from `features` when they are its own.
        clip=Clip(np.zeros(ESPEAK_RATE, dtype=np.float32), ESPEAK_RATE),
        features=voice,
        voice_key=recipe.filename,
        language=recipe.language,
    )
    speech = resample(
        np.concatenate(list(engine.synthesize(request))), ESPEAK_RATE, recipe.sample_rate
    )
    total = round(recipe.duration_s * recipe.sample_rate)
    lead = round(LEADING_SILENCE_S * recipe.sample_rate)
    if lead + speech.size > total:
        raise RuntimeError(
            f"{recipe.filename}: the speech lasts {speech.size / recipe.sample_rate:.2f} s, "
            f"more than the {recipe.duration_s} s the tests expect; shorten the text"
        )
    samples = np.zeros(total, dtype=np.float32)
    samples[lead : lead + speech.size] = speech
    buffer = io.BytesIO()
    sf.write(buffer, samples, recipe.sample_rate, format="WAV", subtype=recipe.subtype)
    return buffer.getvalue()


def _clip_dir() -> Path:
    recipes = repr((CLIPS, LEADING_SILENCE_S, version("espeakng-loader")))
    return REPO_ROOT / ".test-clips" / hashlib.sha256(recipes.encode()).hexdigest()[:12]


CLIP_DIR = _clip_dir()


def _create_once(path: Path, data: bytes) -> None:
    """Create `path` atomically unless it exists: concurrent writers keep the first file."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(data)
    temporary = Path(f.name)
    try:
        temporary.chmod(0o644)
        os.link(temporary, path)  # fails, leaving the existing file alone, if path exists
    except FileExistsError:
        pass
    finally:
        temporary.unlink()


@functools.cache
def write_clips(directory: Path = CLIP_DIR) -> Path:
    """Make sure every clip (and the zero-shot transcript) is in `directory`; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    missing = [recipe for recipe in CLIPS if not (directory / recipe.filename).exists()]
    if missing:
        engine = EspeakEngine()
        engine.load()
        for recipe in missing:
            _create_once(directory / recipe.filename, render(recipe, engine))
    transcript = directory / MANDARIN.transcript_filename
    if not transcript.exists():
        _create_once(transcript, (MANDARIN_TRANSCRIPT + "\n").encode())
    return directory

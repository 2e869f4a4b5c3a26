"""The speech clips the tests make for themselves (tests/speech.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from core.audio.decode import decode_upload
from tests.conftest import MANDARIN_TRANSCRIPT, REPO_ROOT
from tests.speech import CLIPS, ENGLISH, MANDARIN, ClipRecipe


@pytest.mark.parametrize("recipe", CLIPS, ids=lambda recipe: recipe.language)
def test_each_clip_is_the_file_its_recipe_describes(speech_clips: Path, recipe: ClipRecipe) -> None:
    info = sf.info(speech_clips / recipe.filename)
    assert info.format == "WAV"
    assert info.subtype == recipe.subtype
    assert info.samplerate == recipe.sample_rate
    assert info.channels == 1
    assert info.duration == pytest.approx(recipe.duration_s, abs=1e-3)
    upload = decode_upload((speech_clips / recipe.filename).read_bytes(), max_duration=30)
    assert upload.duration == pytest.approx(recipe.duration_s, abs=1e-3)


def test_the_mandarin_clip_keeps_its_transcript(speech_clips: Path) -> None:
    assert MANDARIN.text == MANDARIN_TRANSCRIPT
    transcript = speech_clips / MANDARIN.transcript_filename
    assert transcript.read_text(encoding="utf-8").strip() == MANDARIN_TRANSCRIPT
    assert ENGLISH.language == "en" and MANDARIN.language == "zh"


def test_processes_starting_at_once_share_one_whole_set_of_clips(tmp_path: Path) -> None:
    folder = tmp_path / "clips"
    script = (
        "import sys; from pathlib import Path; from tests.speech import write_clips; "
        "write_clips(Path(sys.argv[1]))"
    )
    writers = [
        subprocess.Popen([sys.executable, "-c", script, str(folder)], cwd=REPO_ROOT)
        for _ in range(3)
    ]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0, 0]
    names = sorted(path.name for path in folder.iterdir())
    assert names == sorted([*(recipe.filename for recipe in CLIPS), MANDARIN.transcript_filename])
    for recipe in CLIPS:
        assert sf.info(folder / recipe.filename).duration == pytest.approx(recipe.duration_s)

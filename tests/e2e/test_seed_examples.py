"""The client examples at the end of the original API document, run as written.

Only the host and port change (the server under test listens on a free port), and the
curl download uses the file name the synthesis call returned.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.audio_checks import assert_speech
from tests.conftest import REPO_ROOT, TESTDATA, skip_missing_data
from tests.e2e.conftest import ApiServer

SEED = REPO_ROOT.parent / "shared" / "spec" / "seed-api-doc.txt"


def seed_text() -> str:
    if not SEED.exists():
        skip_missing_data(f"seed document not found at {SEED}")
    return SEED.read_text()


def python_example() -> str:
    text = seed_text()
    start = text.index("import requests")
    end = text.index("f.write(audio.content)", start) + len("f.write(audio.content)")
    lines = text[start:end].splitlines()
    # The document lost its indentation: the last line belongs to the `with` block.
    return "\n".join([*lines[:-1], "    " + lines[-1]]) + "\n"


def test_python_example(server: ApiServer, tmp_path: Path) -> None:
    shutil.copy(TESTDATA / "cross_lingual_prompt.wav", tmp_path / "sample.wav")
    code = python_example().replace("http://localhost:8012", server.url)
    code = code.replace("'my_voice'", f"'seed_py_{tmp_path.name[-6:]}'")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=120)
    assert_speech((tmp_path / "output.wav").read_bytes(), fmt="wav")


def test_curl_example(server: ApiServer, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        skip_missing_data("curl is not installed")
    text = seed_text()
    start = text.rindex("# Health check")
    block = text[start : text.index("# Download audio", start)]
    shutil.copy(TESTDATA / "cross_lingual_prompt.wav", tmp_path / "sample.wav")
    voice = f"seed_curl_{tmp_path.name[-6:]}"
    script = block.replace("http://localhost:8012", server.url).replace("my_voice", voice)
    commands = [c.strip() for c in re.split(r"\n(?=# )", script) if c.strip()]
    outputs = []
    for command in commands:
        shell = "\n".join(line for line in command.splitlines() if not line.startswith("#"))
        done = subprocess.run(
            ["bash", "-c", f"set -e; {shell}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert json.loads(outputs[0])["status"] == "healthy"
    assert json.loads(outputs[1])["voice_id"] == voice
    audio_url = json.loads(outputs[2])["audio_url"]
    filename = audio_url.rsplit("/", 1)[1]
    subprocess.run(["curl", "-sSfO", f"{server.url}{audio_url}"], cwd=tmp_path, check=True)
    assert_speech((tmp_path / filename).read_bytes(), fmt="wav")

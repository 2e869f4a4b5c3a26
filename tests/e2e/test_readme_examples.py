"""The README's first curl and Python examples work against a running server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from tests.audio_checks import assert_speech
from tests.conftest import REPO_ROOT, TESTDATA, skip_missing_data
from tests.e2e.conftest import ApiServer


def readme_block(language: str, index: int = 0) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.S)
    return blocks[index]


def in_folder_with_sample(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(TESTDATA / "cross_lingual_prompt.wav", folder / "sample.wav")
    return folder


def test_python_example(server: ApiServer, tmp_path: Path) -> None:
    folder = in_folder_with_sample(tmp_path, "python")
    voice = f"readme_py_{tmp_path.name[-6:]}"
    code = readme_block("python").replace("http://localhost:8012", server.url)
    # The example leaves its long task rendering; its id, so that the test can cancel it
    # (the server's next tests would otherwise queue behind it).
    code += '\nprint(task["task_id"])\n'
    done = subprocess.run(
        [sys.executable, "-c", code.replace("my_voice", voice)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert_speech((folder / "output.wav").read_bytes(), fmt="wav")
    *_, progress, task_id = done.stdout.strip().splitlines()
    assert 0.0 <= float(progress) <= 1.0  # the task's progress
    cancelled = httpx.delete(f"{server.url}/api/v3/cross-lingual/task/{task_id}", timeout=30)
    assert cancelled.status_code == 200, cancelled.text


def test_curl_example(server: ApiServer, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        skip_missing_data("curl is not installed")
    folder = in_folder_with_sample(tmp_path, "curl")
    voice = f"readme_curl_{tmp_path.name[-6:]}"
    script = readme_block("bash", 1).replace("http://localhost:8012", server.url)
    commands = [c for c in script.split("\n\n") if c.strip().startswith("curl")]
    health, create, synthesize = (
        subprocess.run(
            ["bash", "-c", "\n".join(x for x in c.splitlines() if not x.startswith("#"))],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        for c in (cmd.replace("my_voice", voice) for cmd in commands[:3])
    )
    assert json.loads(health)["status"] == "healthy"
    assert json.loads(create)["voice_id"] == voice
    audio_url = json.loads(synthesize)["audio_url"]
    download = commands[3].splitlines()[0].split("#")[0].strip()
    download = download.replace("/api/v3/audio/v3_cache_1a2b3c4d.wav", audio_url)
    subprocess.run(["bash", "-c", download], cwd=folder, check=True, timeout=60)
    assert_speech((folder / audio_url.rsplit("/", 1)[1]).read_bytes(), fmt="wav")


def readme_section_block(heading: str, language: str) -> str:
    """The first `language` block under a README heading."""
    section = (REPO_ROOT / "README.md").read_text().split(f"\n{heading}\n", 1)[1]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)[0]


def test_command_line_example(server: ApiServer, tmp_path: Path) -> None:
    folder = in_folder_with_sample(tmp_path, "cli")
    (folder / "chapter.txt").write_text("A short chapter. It has two sentences.\n")
    voice = f"readme_cli_{tmp_path.name[-6:]}"
    script = (
        readme_section_block("## Command-line client", "bash")
        .replace("http://localhost:8012", server.url)
        .replace("my_voice", voice)
        # no audio device here: the player's end of the pipe keeps the bytes instead
        .replace("ffplay -nodisp -autoexit -", "cat > piped.wav")
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSYVOICE_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert voice in done.stdout  # the voices table
    assert "status_counts.completed" in done.stdout  # the queue stats
    for name, fmt in (
        ("hello.mp3", "mp3"),
        ("piped.wav", "wav"),
        ("chapter.mp3", "mp3"),
        ("scheduled.wav", "wav"),
    ):
        assert_speech((folder / name).read_bytes(), fmt=fmt)
    assert f"deleted voice {voice}" in done.stderr

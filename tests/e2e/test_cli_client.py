"""The command-line client (`cosyvoice-api say|voices|tasks|schedule`) against a real server:
what a user at a terminal or a script sees — exit status, stdout, stderr, the audio files,
and the live progress bar in a pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import socket
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.audio_checks import assert_speech
from tests.conftest import MANDARIN_TRANSCRIPT
from tests.e2e.conftest import BIN, ApiServer, ServerFactory, embedded_only
from tests.e2e.texts import long_text

pytestmark = embedded_only("a client of the API, which every profile checks directly")

CLI = str(BIN / "cosyvoice-api")
API_KEY = "cli-3f9a0c7e5b2d4168"
SENTENCE = "Hello from the command line, one clear sentence."


def client_env(server: ApiServer, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSYVOICE_")}
    return {**env, "COSYVOICE_URL": server.url, **extra}


def cli(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([CLI, *args], env=env, cwd=cwd, capture_output=True, timeout=180)


def ok(done: subprocess.CompletedProcess[bytes]) -> str:
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def audio_of(done: subprocess.CompletedProcess[bytes]) -> bytes:
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


@pytest.fixture
def env(server: ApiServer) -> dict[str, str]:
    return client_env(server)


# --- say --------------------------------------------------------------------------


def test_say_streams_into_a_file_in_the_format_of_its_extension(
    env: dict[str, str], voice_id: str, tmp_path: Path
) -> None:
    done = cli(env, "say", SENTENCE, "--voice", voice_id, "-o", str(tmp_path / "hello.mp3"))
    ok(done)
    assert "wrote" in done.stderr.decode()
    heard = assert_speech(
        (tmp_path / "hello.mp3").read_bytes(), fmt="mp3", sample_rate=22050, max_duration=10
    )
    assert heard.duration > 1.0

    slow = tmp_path / "slow.audio"
    ok(
        cli(
            env,
            "say",
            SENTENCE,
            "--voice",
            voice_id,
            "-o",
            str(slow),
            "--format",
            "wav",
            "--speed",
            "0.5",
        )
    )
    slower = assert_speech(slow.read_bytes(), fmt="wav", sample_rate=22050)
    assert slower.duration > 1.5 * heard.duration
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hello.mp3", "slow.audio"]


def test_say_to_stdout_pipes_into_the_next_program(
    env: dict[str, str], voice_id: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [
            "bash",
            "-o",
            "pipefail",
            "-c",
            f'"{CLI}" say "$TEXT" --voice {voice_id} -o - | cat > piped',
        ],
        env={**env, "TEXT": SENTENCE},
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr == b"" and done.stdout == b""  # nothing but audio, and in the pipe
    assert_speech((tmp_path / "piped").read_bytes(), fmt="wav", sample_rate=22050)

    mp3 = cli(env, "say", SENTENCE, "--voice", voice_id, "-o", "-", "--format", "mp3")
    assert_speech(audio_of(mp3), fmt="mp3")


def test_say_reads_the_text_from_stdin(env: dict[str, str], voice_id: str) -> None:
    done = subprocess.run(
        [CLI, "say", "-", "--voice", voice_id, "-o", "-"],
        input=SENTENCE.encode(),
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert_speech(audio_of(done), fmt="wav")


def test_say_with_instructions_on_v3_and_refused_on_v2(
    env: dict[str, str], voice_id: str, tmp_path: Path
) -> None:
    out = tmp_path / "instruct.wav"
    ok(
        cli(
            env,
            "say",
            SENTENCE,
            "--voice",
            voice_id,
            "-o",
            str(out),
            "--instruct",
            "Speak slowly with a happy tone",
        )
    )
    assert_speech(out.read_bytes(), fmt="wav")

    v2 = cli(
        env,
        "say",
        SENTENCE,
        "--voice",
        voice_id,
        "-o",
        str(tmp_path / "v2.wav"),
        "--instruct",
        "Whisper softly",
        "--version",
        "v2",
    )
    assert v2.returncode == 1
    assert "instruct" in v2.stderr.decode()
    assert not (tmp_path / "v2.wav").exists()


# --- errors -----------------------------------------------------------------------


def test_an_unknown_voice_prints_the_servers_detail_and_exits_1(
    env: dict[str, str], client: httpx.Client, tmp_path: Path
) -> None:
    missing = f"missing_{uuid.uuid4().hex[:8]}"
    detail = client.post(
        "/api/v3/cross-lingual/with-cache", json={"text": SENTENCE, "voice_id": missing}
    ).json()["detail"]
    done = cli(env, "say", SENTENCE, "--voice", missing, "-o", str(tmp_path / "x.wav"))
    assert done.returncode == 1
    assert done.stdout == b""
    assert detail in done.stderr.decode()
    assert list(tmp_path.iterdir()) == [], "no file, not even a partial one"

    for args in (("voices", "show", missing), ("voices", "rm", missing)):
        done = cli(env, *args)
        assert done.returncode == 1 and missing in done.stderr.decode(), done.stderr


def test_bad_input_is_refused_with_the_servers_detail(env: dict[str, str], voice_id: str) -> None:
    done = cli(env, "say", SENTENCE, "--voice", voice_id, "-o", "-", "--speed", "3")
    assert done.returncode == 1 and done.stdout == b""
    assert "speed" in done.stderr.decode()


def test_an_unreachable_server_gets_a_clear_message(server: ApiServer) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    env = {**client_env(server), "COSYVOICE_URL": f"http://127.0.0.1:{port}"}
    done = cli(env, "voices", "list")
    assert done.returncode == 1
    message = done.stderr.decode()
    assert f"cannot connect to the API at http://127.0.0.1:{port}" in message
    assert "COSYVOICE_URL" in message and "Traceback" not in message

    bad = cli({**env, "COSYVOICE_URL": "localhost:8012"}, "voices", "list")
    assert bad.returncode == 2 and "http://" in bad.stderr.decode()


# --- voices -----------------------------------------------------------------------


def test_voices_add_list_show_rm(
    env: dict[str, str], english_clip: bytes, mandarin_clip: bytes, tmp_path: Path
) -> None:
    (tmp_path / "clip.wav").write_bytes(english_clip)
    (tmp_path / "zh.wav").write_bytes(mandarin_clip)
    voice = f"cli_{uuid.uuid4().hex[:8]}"
    zh_voice = f"{voice}_zh"

    added = cli(
        env,
        "voices",
        "add",
        str(tmp_path / "clip.wav"),
        "--id",
        voice,
        "--name",
        "CLI voice",
        "--language",
        "en",
    )
    ok(added)
    assert f"created voice {voice}" in added.stderr.decode()
    record = json.loads(
        ok(
            cli(
                env,
                "voices",
                "add",
                str(tmp_path / "zh.wav"),
                "--id",
                zh_voice,
                "--name",
                "CLI zh",
                "--type",
                "zero_shot",
                "--language",
                "zh",
                "--prompt-text",
                MANDARIN_TRANSCRIPT,
                "--json",
            )
        )
    )
    assert record["voice_id"] == zh_voice and record["voice_type"] == "zero_shot"
    assert 3.0 < record["duration"] < 4.0

    narrow = ok(cli(env, "voices", "list"))  # 80 columns: one line a voice, ids whole
    assert {line.split()[0] for line in narrow.splitlines() if voice in line} == {voice, zh_voice}
    table = ok(cli({**env, "COLUMNS": "200"}, "voices", "list"))
    rows = {line.split()[0]: line for line in table.splitlines() if line.startswith(voice)}
    assert set(rows) == {voice, zh_voice}, table
    assert "CLI voice" in rows[voice] and "cross_lingual" in rows[voice]
    assert "zero_shot" in rows[zh_voice] and " zh " in rows[zh_voice]
    listed = json.loads(ok(cli(env, "voices", "list", "--type", "zero_shot", "--json")))
    assert zh_voice in {v["voice_id"] for v in listed}
    assert voice not in {v["voice_id"] for v in listed}
    shown = json.loads(ok(cli(env, "voices", "show", voice, "--json")))
    assert shown["name"] == "CLI voice" and shown["language"] == "en"

    duplicate = cli(env, "voices", "add", str(tmp_path / "clip.wav"), "--id", voice, "--name", "x")
    assert duplicate.returncode == 1 and "exists" in duplicate.stderr.decode()
    no_transcript = cli(
        env,
        "voices",
        "add",
        str(tmp_path / "zh.wav"),
        "--id",
        f"{voice}_x",
        "--name",
        "x",
        "--type",
        "zero_shot",
    )
    assert no_transcript.returncode == 1 and "prompt_text" in no_transcript.stderr.decode()

    removed = cli(env, "voices", "rm", voice, zh_voice)
    ok(removed)
    assert f"deleted voice {zh_voice}" in removed.stderr.decode()
    remaining = json.loads(ok(cli(env, "voices", "list", "--json")))
    assert not {voice, zh_voice} & {v["voice_id"] for v in remaining}


# --- tasks ------------------------------------------------------------------------


def run_in_terminal(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> str:
    """Run a command with a pseudo-terminal as stdin/stdout/stderr; everything it drew."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        args,
        env={**env, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"},
        cwd=cwd,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        close_fds=True,
    )
    os.close(terminal)
    drawn = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    data = os.read(controller, 65536)
                except OSError:  # the terminal closed: the process is done
                    break
                if not data:
                    break
                drawn += data
            elif process.poll() is not None:
                break
        assert process.wait(timeout=10) == 0, drawn.decode(errors="replace")
    finally:
        process.kill()
        os.close(controller)
    return drawn.decode(errors="replace")


def test_tasks_submit_wait_shows_a_moving_progress_bar_then_downloads(
    env: dict[str, str], voice_id: str, tmp_path: Path
) -> None:
    (tmp_path / "chapter.txt").write_text(long_text(5000))
    drawn = run_in_terminal(
        [
            CLI,
            "tasks",
            "submit",
            "chapter.txt",
            "--voice",
            voice_id,
            "--wait",
            "-o",
            "chapter.mp3",
            "--interval",
            "0.1",
        ],
        env,
        tmp_path,
        timeout=240,
    )
    assert "\x1b[" in drawn, "rich draws with terminal control sequences in a terminal"
    assert "━" in drawn, "a bar is drawn"
    percents = [int(p) for p in re.findall(r"(\d+)%", drawn)]
    assert percents, drawn
    assert percents == sorted(percents), f"progress went back: {percents}"
    assert any(0 < p < 100 for p in percents), f"the bar never moved between: {percents}"
    assert percents[-1] == 100
    assert "completed" in drawn and "wrote chapter.mp3" in drawn

    heard = assert_speech((tmp_path / "chapter.mp3").read_bytes(), fmt="mp3", sample_rate=22050)
    assert heard.duration > 120, "the whole chapter, not a segment"


def test_tasks_submit_prints_the_id_and_status_and_list_find_it(
    env: dict[str, str], voice_id: str, tmp_path: Path
) -> None:
    (tmp_path / "short.txt").write_text(SENTENCE)
    task_id = ok(
        cli(
            env,
            "tasks",
            "submit",
            "short.txt",
            "--voice",
            voice_id,
            "--format",
            "flac",
            cwd=tmp_path,
        )
    ).strip()
    assert uuid.UUID(task_id)
    deadline = time.monotonic() + 120
    while (status := json.loads(ok(cli(env, "tasks", "status", task_id, "--json"))))[
        "status"
    ] not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert status["status"] == "completed" and status["format"] == "flac"
    record = ok(cli(env, "tasks", "status", task_id))
    assert "completed" in record and status["audio_url"] in record

    table = ok(cli(env, "tasks", "list", "--status", "completed", "--limit", "100"))
    assert any(line.startswith(task_id) and "100 %" in line for line in table.splitlines())
    listed = json.loads(ok(cli(env, "tasks", "list", "--json", "--limit", "100")))
    assert task_id in {t["task_id"] for t in listed["tasks"]}

    removed = cli(env, "tasks", "rm", task_id)
    ok(removed)
    assert task_id in removed.stderr.decode()
    gone = cli(env, "tasks", "status", task_id)
    assert gone.returncode == 1 and "not found" in gone.stderr.decode().lower()


# --- schedule ---------------------------------------------------------------------


def test_schedule_register_render_status_tasks_stats(
    env: dict[str, str], voice_id: str, tmp_path: Path
) -> None:
    (tmp_path / "note.txt").write_text(SENTENCE)
    register = ("schedule", "register", "note.txt", "--voice", voice_id)
    first = ok(cli(env, *register, "--priority", "urgent", cwd=tmp_path)).strip()
    second = ok(cli(env, *register, "--priority", "urgent", "--format", "mp3", cwd=tmp_path))
    second = second.strip()

    pending = json.loads(
        ok(cli(env, "schedule", "tasks", "--status", "pending", "--json", "--limit", "100"))
    )
    assert {first, second} <= {t["task_id"] for t in pending["tasks"]}
    stats = json.loads(ok(cli(env, "schedule", "stats", "--json")))
    assert stats["status_counts"]["pending"] >= 2 and stats["priority_counts"]["urgent"] >= 2
    assert "status_counts.pending" in ok(cli(env, "schedule", "stats"))
    table = ok(cli(env, "schedule", "tasks", "--priority", "urgent", "--limit", "100"))
    assert any(line.startswith(first) and "pending" in line for line in table.splitlines())

    rendered = cli(
        env,
        "schedule",
        "render",
        first,
        "--wait",
        "-o",
        "first.wav",
        "--interval",
        "0.1",
        cwd=tmp_path,
    )
    ok(rendered)
    assert "wrote first.wav" in rendered.stderr.decode()
    assert_speech((tmp_path / "first.wav").read_bytes(), fmt="wav")
    status = json.loads(ok(cli(env, "schedule", "status", first, "--json")))
    assert status["status"] == "completed" and status["priority"] == "urgent"

    started = json.loads(ok(cli(env, "schedule", "render", "--all", "--max", "100", "--json")))
    assert second in started["task_ids"]
    deadline = time.monotonic() + 120
    while json.loads(ok(cli(env, "schedule", "status", second, "--json")))["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.2)

    again = cli(env, "schedule", "render", first)
    assert again.returncode == 1 and again.stderr, "a finished task cannot be queued again"
    ok(cli(env, "schedule", "rm", second))
    assert cli(env, "schedule", "status", second).returncode == 1


# --- API keys ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(server_factory: ServerFactory) -> ApiServer:
    return server_factory(API_KEY=API_KEY)


def test_the_key_comes_from_cosyvoice_api_key(
    keyed: ApiServer, english_clip: bytes, tmp_path: Path
) -> None:
    (tmp_path / "clip.wav").write_bytes(english_clip)
    anonymous = client_env(keyed)
    refused = cli(anonymous, "voices", "list")
    assert refused.returncode == 1 and "API key" in refused.stderr.decode()
    wrong = cli({**anonymous, "COSYVOICE_API_KEY": "not-the-key"}, "voices", "list")
    assert wrong.returncode == 1 and "not-the-key" not in wrong.stderr.decode()

    env = client_env(keyed, COSYVOICE_API_KEY=API_KEY)
    ok(
        cli(
            env, "voices", "add", "clip.wav", "--id", "keyed_voice", "--name", "Keyed", cwd=tmp_path
        )
    )
    assert "keyed_voice" in ok(cli(env, "voices", "list"))
    spoken = cli(env, "say", SENTENCE, "--voice", "keyed_voice", "-o", "-")
    assert_speech(audio_of(spoken), fmt="wav")
    (tmp_path / "t.txt").write_text(SENTENCE)
    ok(
        cli(
            env,
            "tasks",
            "submit",
            "t.txt",
            "--voice",
            "keyed_voice",
            "--wait",
            "-o",
            "t.wav",
            cwd=tmp_path,
        )
    )
    assert_speech((tmp_path / "t.wav").read_bytes(), fmt="wav")


def test_usage_lists_the_commands(env: dict[str, str]) -> None:
    done = cli(env)
    assert done.returncode == 2
    usage = done.stderr.decode()
    for command in ("serve", "predictor", "say", "voices", "tasks", "schedule"):
        assert command in usage
    assert cli(env, "voices").returncode == 2  # a group without its subcommand

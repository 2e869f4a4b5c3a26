"""Long-form tasks as segment jobs across render pods (the function topology).

Two render functions, each fed by its own JetStream source sharing the render
consumers: the segment jobs of one long task are rendered by both, every segment exactly
once, and one assembly joins them into audio of the whole text. A short task keeps the
one-request path. The segments are removed once the output is stored.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.audio_checks import assert_speech
from tests.e2e.conftest import create_voice
from tests.render_pods import RenderPods, render_pods

SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank today. "


def long_text(chars: int) -> str:
    return (SENTENCE * (chars // len(SENTENCE) + 1))[:chars].strip()


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RenderPods]:
    with render_pods(tmp_path_factory.mktemp("segments"), pods=2) as topology:
        yield topology


@pytest.fixture(scope="module")
def voice(pods: RenderPods, english_clip: bytes) -> str:
    with httpx.Client(base_url=pods.api.url, timeout=60) as http:
        return create_voice(http, english_clip, prefix="seg")


def render(http: httpx.Client, text: str, voice: str, timeout: float = 240) -> dict:
    created = http.post("/api/v3/cross-lingual/task", json={"text": text, "voice_id": voice})
    assert created.status_code == 200, created.text
    path = f"/api/v3/cross-lingual/task/{created.json()['task_id']}"
    progress: list[float] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = http.get(path).json()
        progress.append(status["progress"])
        if status["status"] in ("completed", "failed", "cancelled"):
            assert progress == sorted(progress), f"progress went back: {progress}"
            return status
        time.sleep(0.2)
    raise AssertionError(f"unfinished after {timeout} s: {status}")


def test_segments_render_in_parallel_on_two_pods(pods: RenderPods, voice: str) -> None:
    text = long_text(8000)
    with httpx.Client(base_url=pods.api.url, timeout=60) as http:
        status = render(http, text, voice)
        assert status["status"] == "completed", status
        assert status["progress"] == 1.0
        audio = http.get(status["audio_url"])
    assert audio.status_code == 200
    heard = assert_speech(audio.content, fmt="wav", min_duration=len(text) / 20)
    assert abs(heard.duration - status["duration"]) < 0.1
    assert len(text) / 20 < heard.duration < len(text) / 8

    per_pod = pods.segments_rendered(status["task_id"])
    rendered = [index for pod in per_pod for index in pod]
    assert len(rendered) > 10, per_pod
    # every segment rendered exactly once, and both pods took a share
    assert sorted(rendered) == list(range(len(rendered))), per_pod
    assert all(per_pod), f"one pod rendered everything: {per_pod}"
    leftovers = Path(pods.api.data_dir, "outputs", ".segments")
    assert not leftovers.exists() or not any(leftovers.iterdir())


def test_short_task_keeps_the_one_request_path(pods: RenderPods, voice: str) -> None:
    with httpx.Client(base_url=pods.api.url, timeout=60) as http:
        status = render(http, "One short sentence, rendered in one request.", voice)
        assert status["status"] == "completed", status
        assert_speech(http.get(status["audio_url"]).content, fmt="wav")
    assert pods.segments_rendered(status["task_id"]) == [[], []]

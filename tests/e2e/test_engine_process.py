"""The development engine's own process, seen from outside: killed under a stream, and
left behind by a killed server (embedded profile: there the engine runs beside the API)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.audio_checks import assert_speech
from tests.e2e.conftest import ApiServer, ServerFactory, create_voice, embedded_only
from tests.e2e.texts import SENTENCE
from tests.e2e.watch import gone, process_tree

pytestmark = embedded_only("the engine's process is a child of the API server only there")


def engine_processes(server: ApiServer) -> list[int]:
    """The server's engine processes, by their command line."""
    return [
        pid
        for pid in process_tree(server.pid)[1:]
        if b"core.engines.engine_child" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


@pytest.fixture
def own_server(server_factory: ServerFactory) -> ApiServer:
    return server_factory()


def test_a_killed_engine_ends_the_stream_in_flight_and_the_next_request_is_served(
    own_server: ApiServer, speech_clips: Path
) -> None:
    [engine] = engine_processes(own_server)
    with httpx.Client(base_url=own_server.url, timeout=60) as http:
        voice = create_voice(http, speech_clips / "cross_lingual_prompt.wav", language="en")
        text = SENTENCE * 25  # 25 sentences: far more than the engine renders ahead
        form = {"text": text, "voice_id": voice, "format": "wav"}
        with http.stream("POST", "/api/v3/streaming/cross-lingual", data=form) as stream:
            assert stream.status_code == 200
            chunks = stream.iter_bytes()
            next(chunks)  # audio is flowing; the engine waits for this reader
            os.kill(engine, signal.SIGKILL)
            # The stream cannot end properly: its last chunk never comes.
            with pytest.raises(httpx.RemoteProtocolError):
                for _ in chunks:
                    pass

        answer = http.post(
            "/api/v3/cross-lingual/with-cache",
            json={"text": SENTENCE, "voice_id": voice, "format": "wav"},
        )
        assert answer.status_code == 200, answer.text
        audio = http.get(answer.json()["audio_url"])
        assert_speech(audio.content, fmt="wav", min_duration=1.0)
        assert http.get("/health").json()["status"] == "healthy"
    [replacement] = engine_processes(own_server)
    assert replacement != engine


def test_the_engine_leaves_with_a_killed_server(own_server: ApiServer) -> None:
    [engine] = engine_processes(own_server)
    own_server.stop(signal.SIGKILL)
    assert gone(engine, 10.0), "the engine process outlived its server"

"""The CosyVoice adapter against the unmodified upstream code (see conftest.py).

Every stream is compared with upstream's own streaming loop run alone on a fresh hop:
same chunk sizes, whatever else runs at the same time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from core.domain import SynthesisMode
from core.engines.base import EngineRequest
from core.engines.cosyvoice import CosyVoiceEngine
from core.errors import SynthesisFailed
from core.ports import Clip
from tests.conftest import MANDARIN_TRANSCRIPT

RATE = 24000
SHORT = "Hi there."
LONG = " ".join(f"Sentence {n} is here." for n in range(1, 5))
CALL_SECONDS = 120.0  # a hang fails the test instead of blocking the run


def request(clip: Clip, features: Any, text: str = SHORT, **changes: Any) -> EngineRequest:
    values: dict[str, Any] = {
        "text": text,
        "mode": SynthesisMode.zero_shot,
        "clip": clip,
        "features": features,
        "voice_key": "a" * 64,
        "prompt_text": MANDARIN_TRANSCRIPT,
    }
    values.update(changes)
    return EngineRequest(**values)


def within_deadline(work: Callable[[], Any], seconds: float = CALL_SECONDS) -> Any:
    """Run `work` in a thread; a call that neither returns nor raises in time fails."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"the call hangs (no answer after {seconds:g} s)"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def chunk_sizes(engine: CosyVoiceEngine, call: EngineRequest) -> list[int]:
    def run() -> list[int]:
        sizes = []
        for chunk in engine.synthesize(call):
            assert chunk.dtype == np.float32 and chunk.ndim == 1
            sizes.append(chunk.size)
        return sizes

    return within_deadline(run)


@pytest.fixture(scope="module")
def features(upstream_engine: CosyVoiceEngine, prompt_clip: Clip) -> Any:
    return upstream_engine.extract_features(prompt_clip, MANDARIN_TRANSCRIPT)


@pytest.fixture(scope="module")
def upstream_alone(upstream_model: Any, features: Any) -> list[int]:
    """Chunk sizes of upstream's own streaming loop, alone, on a fresh hop."""
    inner = upstream_model.model
    text = upstream_model.frontend.text_normalize(SHORT, split=True)
    assert len(text) == 1
    spk2info = upstream_model.frontend.spk2info
    spk2info["reference"] = dict(features)  # upstream edits the entry in place
    try:
        model_input = upstream_model.frontend.frontend_zero_shot(text[0], "", "", RATE, "reference")
    finally:
        spk2info.pop("reference")
    inner.token_hop_len = 25
    original_tts = type(inner).tts  # the class's loop, not the adapter's per-call one
    sizes = [out["tts_speech"].shape[1] for out in original_tts(inner, **model_input, stream=True)]
    inner.token_hop_len = 25
    return sizes


# --- modes, streaming or not -----------------------------------------------------------


@pytest.mark.parametrize("mode", list(SynthesisMode), ids=lambda m: m.value)
def test_every_mode_streams_and_renders_the_same_audio(
    upstream_engine: CosyVoiceEngine, prompt_clip: Clip, features: Any, mode: SynthesisMode
) -> None:
    extra = (
        {"instruct_text": "Speak slowly with a happy tone"}
        if mode is SynthesisMode.instruct
        else {}
    )
    streamed = chunk_sizes(upstream_engine, request(prompt_clip, features, mode=mode, **extra))
    whole = chunk_sizes(
        upstream_engine, request(prompt_clip, features, mode=mode, stream=False, **extra)
    )
    assert len(streamed) >= 2 and len(whole) == 1
    assert sum(streamed) == sum(whole) > RATE  # streaming chunks add up exactly
    assert upstream_engine.info.sample_rate == RATE


def test_the_adapter_chunks_like_upstream_alone(
    upstream_engine: CosyVoiceEngine, prompt_clip: Clip, features: Any, upstream_alone: list[int]
) -> None:
    assert chunk_sizes(upstream_engine, request(prompt_clip, features)) == upstream_alone


def test_stored_features_give_the_same_audio(
    upstream_engine: CosyVoiceEngine, prompt_clip: Clip, features: Any
) -> None:
    restored = upstream_engine.deserialize_features(upstream_engine.serialize_features(features))
    assert set(restored) == set(features)
    before = chunk_sizes(upstream_engine, request(prompt_clip, features, stream=False))
    after = chunk_sizes(upstream_engine, request(prompt_clip, restored, stream=False))
    assert before == after


def test_long_text_is_split_into_sentences(
    upstream_engine: CosyVoiceEngine, prompt_clip: Clip, features: Any
) -> None:
    call = request(prompt_clip, features, text=LONG, mode=SynthesisMode.cross_lingual)
    whole = chunk_sizes(upstream_engine, EngineRequest(**{**call.__dict__, "stream": False}))
    assert len(whole) == 4  # one non-streaming pass per sentence


def test_speed_changes_the_length_without_streaming(
    upstream_engine: CosyVoiceEngine, prompt_clip: Clip, features: Any
) -> None:
    normal = sum(chunk_sizes(upstream_engine, request(prompt_clip, features, stream=False)))
    fast = chunk_sizes(upstream_engine, request(prompt_clip, features, speed=1.5))
    assert len(fast) == 1  # upstream applies speed only to a whole utterance
    assert fast[0] == pytest.approx(normal / 1.5, rel=0.02)


# --- concurrency -----------------------------------------------------------------------


@pytest.mark.parametrize("streams", [1, 2, 4, 8])
def test_concurrent_streams_each_chunk_like_upstream_alone(
    upstream_engine: CosyVoiceEngine,
    upstream_model: Any,
    prompt_clip: Clip,
    features: Any,
    upstream_alone: list[int],
    streams: int,
) -> None:
    upstream_model.model.token_hop_len = 100  # what upstream's own loop leaves behind
    results: dict[int, list[int]] = {}
    start = threading.Barrier(streams)

    def one(number: int) -> None:
        start.wait()
        results[number] = chunk_sizes(upstream_engine, request(prompt_clip, features))

    within_deadline(lambda: _run_all(one, streams))
    assert len(results) == streams
    for sizes in results.values():
        assert sizes[0] == upstream_alone[0]  # the first hop, on every stream
        assert sizes == upstream_alone
    _assert_no_session_left(upstream_model)


def _run_all(job: Callable[[int], None], count: int) -> None:
    workers = [threading.Thread(target=job, args=(n,)) for n in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def _assert_no_session_left(model: Any, wait: float = 10.0) -> None:
    inner = model.model
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        tables = (inner.tts_speech_token_dict, inner.llm_end_dict, inner.hift_cache_dict)
        if not any(tables):
            return
        time.sleep(0.05)
    raise AssertionError(f"per-request entries left behind: {[len(t) for t in tables]}")


# --- cancellation and errors -----------------------------------------------------------


def test_a_stream_closed_midway_stops_and_leaves_nothing_behind(
    upstream_engine: CosyVoiceEngine, upstream_model: Any, prompt_clip: Clip, features: Any
) -> None:
    def first_then_close() -> int:
        chunks = upstream_engine.synthesize(request(prompt_clip, features, text=LONG))
        size = next(chunks).size
        chunks.close()
        return size

    assert within_deadline(first_then_close) > 0
    _assert_no_session_left(upstream_model)
    assert upstream_model.frontend.spk2info.keys() == set(upstream_engine.info.pretrained_voices)
    assert sum(chunk_sizes(upstream_engine, request(prompt_clip, features))) > 0


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "whole"])
def test_an_upstream_error_fails_the_call_instead_of_hanging(
    upstream_engine: CosyVoiceEngine,
    upstream_model: Any,
    prompt_clip: Clip,
    features: Any,
    stream: bool,
) -> None:
    broken = dict(features)
    # A speaker embedding of the wrong width: upstream's LLM thread raises on it.
    broken["llm_embedding"] = features["llm_embedding"][:, :7]
    broken["flow_embedding"] = features["flow_embedding"][:, :7]
    with pytest.raises(SynthesisFailed, match="CosyVoice"):
        chunk_sizes(upstream_engine, request(prompt_clip, broken, stream=stream))
    _assert_no_session_left(upstream_model)
    assert sum(chunk_sizes(upstream_engine, request(prompt_clip, features))) > 0


def test_upstream_libraries_log_through_the_root_logger(upstream_engine: CosyVoiceEngine) -> None:
    # transformers' own stderr handler would bypass the server's formatter (JSON lines).
    root_handlers = logging.getLogger().handlers
    for name in ("transformers", "modelscope"):
        logger = logging.getLogger(name)
        assert all(handler in root_handlers for handler in logger.handlers), name
        assert logger.propagate or logger.handlers, name


def test_the_texts_spoken_stay_out_of_the_log(
    upstream_engine: CosyVoiceEngine,
    prompt_clip: Clip,
    features: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Upstream logs "synthesis text <the text>" at INFO through the root logger.
    secret = "Meet me at the north gate."
    with caplog.at_level(logging.INFO):
        sizes = chunk_sizes(upstream_engine, request(prompt_clip, features, text=secret))
    assert sum(sizes) > 0
    assert not [r.getMessage() for r in caplog.records if "north gate" in r.getMessage()]
    assert not [r for r in caplog.records if r.getMessage().startswith("yield speech len")]

"""The CosyVoice adapter against the upstream stand-in (tests/standins/cosyvoice).

The stand-in records every upstream call, so these tests check what the adapter sends:
prompt strings per mode and family, files for `prompt_wav`, cached speaker ids, sentence
splitting, streaming or not, the chunks of every stream, and what comes back (24 kHz
float chunks). tests/upstream/ runs the same adapter against the real upstream code.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import core.engines.cosyvoice as cosyvoice_module
import core.engines.cosyvoice_loop as loop_module
from core.audio.decode import decode_clip, sha256_hex
from core.audio.dsp import is_silent
from core.domain import SynthesisMode
from core.engines.base import EngineRequest
from core.engines.cosyvoice import (
    SYSTEM_PROMPT,
    CosyVoiceEngine,
    Family,
    cosyvoice_available,
)
from core.engines.features import FeatureCache
from core.engines.instructions import to_cosyvoice_instruction
from core.engines.runner import EngineRunner
from core.engines.text import END_OF_PROMPT
from core.errors import EngineNotReady, InvalidInput, NotFound, SynthesisFailed
from core.ports import BlobInfo, Clip, SynthesisRequest, VoicePrompt
from tests.conftest import MANDARIN_TRANSCRIPT, skip_missing_data
from tests.cosyvoice_standin import STANDIN, check_as_pinned

SAMPLES_PER_TOKEN = 960  # 25 speech tokens a second at 24 kHz
V3_PREFIX = f"{SYSTEM_PROMPT}{END_OF_PROMPT}"
V3_FILES = ("llm.pt", "flow.pt", "hift.pt", "campplus.onnx", "speech_tokenizer_v3.onnx")
V2_FILES = ("llm.pt", "flow.pt", "hift.pt", "campplus.onnx", "speech_tokenizer_v2.onnx")
LONG_TEXT = " ".join(
    f"This is sentence number {n}, which talks about the weather and the sea." for n in range(8)
)


def make_model_dir(root: Path, family: str = "cosyvoice3") -> Path:
    folder = root / family
    folder.mkdir()
    (folder / f"{family}.yaml").write_text("sample_rate: 24000\n")
    for name in V3_FILES if family == "cosyvoice3" else V2_FILES:
        (folder / name).write_bytes(b"")
    (folder / "CosyVoice-BlankEN").mkdir()
    return folder


@pytest.fixture
def upstream_sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Torch counts as installed; sys.path and the imported stand-in are undone after."""
    monkeypatch.setattr(cosyvoice_module, "torch_installed", lambda: True)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(cosyvoice_module, "check_pinned_upstream", check_as_pinned)
    yield
    for name in list(sys.modules):
        if name.split(".")[0] in {"cosyvoice", "matcha"}:
            del sys.modules[name]


@pytest.fixture
def load(upstream_sandbox: None, tmp_path: Path) -> Any:
    def loader(family: Family = "cosyvoice3", **options: Any) -> tuple[CosyVoiceEngine, Any]:
        model_dir = options.pop("model_dir", None) or make_model_dir(tmp_path, family)
        engine = CosyVoiceEngine(
            model_dir,
            cosyvoice_home=STANDIN,
            family=family,
            **options,
        )
        engine.load()
        return engine, sys.modules["cosyvoice.cli.cosyvoice"].INSTANCES[-1]

    return loader


@pytest.fixture
def clip(mandarin_clip: bytes) -> Clip:
    return decode_clip(mandarin_clip)


def engine_request(
    clip: Clip, features: Any, text: str = "Hello, how are you today?", **changes: Any
) -> EngineRequest:
    values: dict[str, Any] = {
        "text": text,
        "mode": SynthesisMode.cross_lingual,
        "clip": clip,
        "features": features,
        "voice_key": "f" * 64,
        "prompt_text": MANDARIN_TRANSCRIPT,
    }
    values.update(changes)
    return EngineRequest(**values)


def speak(engine: CosyVoiceEngine, request: EngineRequest) -> np.ndarray:
    chunks = list(engine.synthesize(request))
    assert chunks, "no audio"
    for chunk in chunks:
        assert chunk.dtype == np.float32 and chunk.ndim == 1
    return np.concatenate(chunks)


def calls(model: Any, method: str) -> list[dict[str, Any]]:
    return [call for call in model.calls if call["method"] == method]


# --- loading ---------------------------------------------------------------------------


def test_loads_through_automodel_with_keywords_and_a_resolved_directory(load: Any) -> None:
    engine, model = load()
    assert Path(model.model_dir) == Path(model.model_dir).resolve()
    assert model.load_options == {
        "load_trt": False,
        "load_vllm": False,
        "fp16": False,
        "trt_concurrent": 1,
    }
    assert str(STANDIN) in sys.path
    assert str(STANDIN / "third_party" / "Matcha-TTS") in sys.path
    info = engine.info
    assert (info.engine, info.model, info.real_model) == (
        "cosyvoice",
        "Fun-CosyVoice3-0.5B-2512",
        True,
    )
    assert info.sample_rate == 24000
    assert info.instruct_support
    assert {"zh", "en", "de", "ru"} <= set(info.languages)
    assert "cantonese" in info.chinese_dialects
    assert info.pretrained_voices == ()


def test_cosyvoice2_is_loaded_with_its_own_options(load: Any) -> None:
    engine, model = load("cosyvoice2", fp16=True)
    assert type(model).__name__ == "CosyVoice2"
    assert model.load_options["load_jit"] is False
    assert model.load_options["fp16"] is True
    assert engine.info.model == "CosyVoice2-0.5B"


def test_pretrained_speakers_are_reported(load: Any, tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path)
    (model_dir / "spk2info.pt").write_bytes(b"")
    engine, _ = load(model_dir=model_dir)
    assert engine.info.pretrained_voices == ("中文女",)


def test_a_directory_of_the_other_family_is_refused(load: Any, tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path, "cosyvoice2")
    with pytest.raises(EngineNotReady, match=r"no cosyvoice3\.yaml"):
        load("cosyvoice3", model_dir=model_dir)


def test_synthesis_before_load_is_refused(tmp_path: Path, clip: Clip) -> None:
    engine = CosyVoiceEngine(tmp_path, cosyvoice_home=STANDIN, family="cosyvoice3")
    with pytest.raises(EngineNotReady):
        list(engine.synthesize(engine_request(clip, None)))


# --- availability ----------------------------------------------------------------------


def test_availability_names_what_is_missing(
    upstream_sandbox: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = make_model_dir(tmp_path)
    assert cosyvoice_available(model_dir, STANDIN) is None
    assert "no CosyVoice checkout" in str(cosyvoice_available(model_dir, tmp_path))
    assert "no cosyvoice3.yaml" in str(cosyvoice_available(tmp_path, STANDIN, family="cosyvoice3"))
    (model_dir / "llm.pt").unlink()
    assert "llm.pt" in str(cosyvoice_available(model_dir, STANDIN))
    monkeypatch.setattr(cosyvoice_module, "torch_installed", lambda: False)
    assert "torch is not installed" in str(cosyvoice_available(model_dir, STANDIN))


# --- prompts per mode ------------------------------------------------------------------


def test_zero_shot_v3_prompt_and_cached_speaker(load: Any, clip: Clip) -> None:
    engine, model = load()
    features = engine.extract_features(clip, MANDARIN_TRANSCRIPT)
    (added,) = calls(model, "add_zero_shot_spk")
    assert added["prompt_text"] == V3_PREFIX + MANDARIN_TRANSCRIPT
    assert isinstance(added["prompt_wav"], str)
    assert model.frontend.wav_reads[-1]["sample_rate"] >= 16000
    assert not os.path.exists(added["prompt_wav"])  # the temporary file is gone

    audio = speak(engine, engine_request(clip, features, mode=SynthesisMode.zero_shot))
    (call,) = calls(model, "inference_zero_shot")
    assert call["zero_shot_spk_id"].startswith("f" * 32)
    assert call["prompt_text"] == V3_PREFIX + MANDARIN_TRANSCRIPT
    assert model.model.calls[-1]["llm_prompt_text"] == V3_PREFIX + MANDARIN_TRANSCRIPT
    assert not is_silent(audio)
    assert len(audio) / 24000 > 0.5


def test_features_are_reused_and_never_spoiled_by_upstream(load: Any, clip: Clip) -> None:
    engine, model = load()
    features = engine.extract_features(clip, MANDARIN_TRANSCRIPT)
    speak(engine, engine_request(clip, features, mode=SynthesisMode.zero_shot))
    # Upstream deletes the cached prompt text of the id a cross-lingual call uses...
    speak(engine, engine_request(clip, features, mode=SynthesisMode.cross_lingual))
    # ...so a later zero-shot call must still see the transcript.
    speak(engine, engine_request(clip, features, mode=SynthesisMode.zero_shot))
    assert len(calls(model, "add_zero_shot_spk")) == 1
    assert model.model.calls[-1]["llm_prompt_text"] == V3_PREFIX + MANDARIN_TRANSCRIPT
    ids = [c["zero_shot_spk_id"] for c in model.calls if c["method"].startswith("inference")]
    assert all(spk.startswith("f" * 32) for spk in ids)
    assert model.frontend.spk2info == {}  # no per-call entry is left behind


def test_cross_lingual_v3_text_carries_the_prompt_marker(load: Any, clip: Clip) -> None:
    engine, model = load()
    features = engine.extract_features(clip, None)
    speak(engine, engine_request(clip, features, text="Good morning."))
    (call,) = calls(model, "inference_cross_lingual")
    assert call["tts_text"] == V3_PREFIX + "Good morning."
    assert call["zero_shot_spk_id"]
    assert model.model.calls[-1]["llm_prompt_text"] == ""


def test_zero_shot_without_a_transcript_clones_cross_lingually(load: Any, clip: Clip) -> None:
    engine, model = load()
    features = engine.extract_features(clip, None)
    speak(engine, engine_request(clip, features, mode=SynthesisMode.zero_shot, prompt_text=None))
    assert calls(model, "inference_zero_shot") == []
    assert len(calls(model, "inference_cross_lingual")) == 1


def test_instruct_v3_passes_the_clip_and_a_trained_instruction(load: Any, clip: Clip) -> None:
    engine, model = load()
    features = engine.extract_features(clip, MANDARIN_TRANSCRIPT)
    request = engine_request(
        clip,
        features,
        text="今天天气很好。",
        mode=SynthesisMode.instruct,
        instruct_text="Use Cantonese dialect",
    )
    speak(engine, request)
    (call,) = calls(model, "inference_instruct2")
    trained = to_cosyvoice_instruction("Use Cantonese dialect")
    assert call["instruct_text"] == f"{SYSTEM_PROMPT} {trained}{END_OF_PROMPT}"
    assert call["zero_shot_spk_id"] == ""
    assert isinstance(call["prompt_wav"], str) and call["prompt_wav"].endswith(".wav")
    assert model.frontend.wav_reads[-1]["path"] == call["prompt_wav"]
    assert model.frontend.wav_reads[-1]["sample_rate"] >= 16000


def test_instructions_already_in_upstream_format_are_not_doubled(load: Any, clip: Clip) -> None:
    engine, model = load()
    request = engine_request(
        clip,
        None,
        mode=SynthesisMode.instruct,
        instruct_text=f"{SYSTEM_PROMPT} 请用四川话表达。{END_OF_PROMPT}",
    )
    speak(engine, request)
    (call,) = calls(model, "inference_instruct2")
    assert call["instruct_text"] == f"{SYSTEM_PROMPT} 请用四川话表达。{END_OF_PROMPT}"


def test_cosyvoice2_prompts_have_no_system_prefix(load: Any, clip: Clip) -> None:
    engine, model = load("cosyvoice2")
    features = engine.extract_features(clip, MANDARIN_TRANSCRIPT)
    assert calls(model, "add_zero_shot_spk")[0]["prompt_text"] == MANDARIN_TRANSCRIPT
    speak(engine, engine_request(clip, features, text="Good morning."))
    assert calls(model, "inference_cross_lingual")[0]["tts_text"] == "Good morning."
    speak(
        engine,
        engine_request(clip, features, mode=SynthesisMode.instruct, instruct_text="用四川话说"),
    )
    (call,) = calls(model, "inference_instruct2")
    assert call["instruct_text"] == f"{to_cosyvoice_instruction('用四川话说')}{END_OF_PROMPT}"
    assert SYSTEM_PROMPT not in call["instruct_text"]


def test_text_with_the_prompt_marker_is_refused(load: Any, clip: Clip) -> None:
    engine, _ = load()
    with pytest.raises(InvalidInput):
        list(engine.synthesize(engine_request(clip, None, text=f"Hi {END_OF_PROMPT} there")))


# --- text, streaming, speed ------------------------------------------------------------


def test_long_text_is_split_into_sentences_before_upstream(load: Any, clip: Clip) -> None:
    engine, model = load()
    features = engine.extract_features(clip, None)
    speak(engine, engine_request(clip, features, text=LONG_TEXT))
    texts = [c["tts_text"] for c in calls(model, "inference_cross_lingual")]
    assert len(texts) >= 2
    assert all(t.startswith(V3_PREFIX) and len(t) - len(V3_PREFIX) <= 240 for t in texts)
    spoken = " ".join(t[len(V3_PREFIX) :] for t in texts)
    assert spoken.split() == LONG_TEXT.split()


def first_hop_samples(features: Any) -> int:
    """Upstream's first stream chunk: 25 tokens, padded so prompt plus hop fill chunks."""
    prompt_tokens = int(features["flow_prompt_speech_token"].shape[1])
    pad = -prompt_tokens % 25
    return (25 + pad) * SAMPLES_PER_TOKEN


def stream_chunks(engine: CosyVoiceEngine, request: EngineRequest) -> list[int]:
    return [chunk.size for chunk in engine.synthesize(request)]


def test_streams_keep_their_own_hop_whatever_the_shared_one_says(load: Any, clip: Clip) -> None:
    engine, model = load()
    features = engine.extract_features(clip, None)
    model.model.token_hop_len = 100  # what upstream leaves behind after one stream
    first = stream_chunks(engine, engine_request(clip, features, text=LONG_TEXT))
    second = stream_chunks(engine, engine_request(clip, features, text=LONG_TEXT))
    assert first[0] == second[0] == first_hop_samples(features)
    runs = model.model.calls
    assert len(runs) >= 4 and all(run["stream"] for run in runs)
    assert all(len(run["chunks"]) > 2 for run in runs)
    # hops double per stream: 25 (+pad), 50, 100, 100...
    assert runs[0]["chunks"][1] == 50 * SAMPLES_PER_TOKEN
    assert model.model.token_hop_len == 100  # the shared value is never read or written


def test_concurrent_streams_all_start_with_the_first_hop(load: Any, clip: Clip) -> None:
    engine, model = load()
    model.model.token_delay = 0.0005  # streams overlap for real
    features = engine.extract_features(clip, None)
    results: dict[int, list[int]] = {}

    def one(number: int) -> None:
        results[number] = stream_chunks(engine, engine_request(clip, features, text=LONG_TEXT))

    workers = [threading.Thread(target=one, args=(n,)) for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    expected = first_hop_samples(features)
    assert len(results) == 4
    assert {sizes[0] for sizes in results.values()} == {expected}
    assert len({sum(sizes) for sizes in results.values()}) == 1
    assert model.model.tts_speech_token_dict == {} and model.model.hift_cache_dict == {}


def test_a_caller_that_does_not_stream_gets_one_pass_per_sentence(load: Any, clip: Clip) -> None:
    engine, model = load()
    features = engine.extract_features(clip, None)
    streamed = speak(engine, engine_request(clip, features, text=LONG_TEXT))
    count = len(model.model.calls)
    chunks = list(engine.synthesize(engine_request(clip, features, text=LONG_TEXT, stream=False)))
    runs = model.model.calls[count:]
    assert len(chunks) == len(runs) >= 2  # one chunk per sentence
    assert all(run["stream"] is False and len(run["chunks"]) == 1 for run in runs)
    assert sum(len(c) for c in chunks) == len(streamed)


def test_speed_is_applied_by_running_without_upstream_streaming(load: Any, clip: Clip) -> None:
    engine, model = load()
    features = engine.extract_features(clip, None)
    normal = speak(engine, engine_request(clip, features, text="A sentence to speak."))
    fast = speak(engine, engine_request(clip, features, text="A sentence to speak.", speed=1.5))
    last = model.model.calls[-1]
    assert (last["stream"], last["speed"]) == (False, 1.5)
    assert len(fast) == pytest.approx(len(normal) / 1.5, rel=0.02)


def test_an_upstream_version_other_than_the_pinned_one_is_refused(
    upstream_sandbox: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        cosyvoice_module,
        "check_pinned_upstream",
        lambda inner: loop_module.check_pinned_upstream(inner, {"CosyVoice2Model": "0" * 64}),
    )
    engine = CosyVoiceEngine(make_model_dir(tmp_path), cosyvoice_home=STANDIN, family="cosyvoice3")
    with pytest.raises(EngineNotReady, match=r"not the supported version.*ace7c47f"):
        engine.load()


def test_low_rate_and_long_clips_are_written_as_upstream_accepts(load: Any) -> None:
    engine, model = load()
    tone = np.sin(np.linspace(0, 2000, 8000 * 40)).astype(np.float32) * 0.3
    engine.extract_features(Clip(samples=tone, sample_rate=8000), None)
    read = model.frontend.wav_reads[-1]
    assert read["sample_rate"] >= 16000
    assert read["seconds"] <= 30


def test_closing_early_stops_upstream_and_cleans_up(load: Any, clip: Clip) -> None:
    engine, model = load()
    model.model.token_delay = 0.002
    features = engine.extract_features(clip, None)
    chunks = engine.synthesize(engine_request(clip, features, text=LONG_TEXT))
    next(chunks)
    chunks.close()
    run = model.model.calls[-1]
    made = run["tokens_made"]
    threading.Event().wait(0.1)
    assert run["tokens_made"] == made < run["tokens_planned"]  # the LLM thread stopped
    assert model.frontend.spk2info == {}
    assert model.model.llm_end_dict == {}
    assert model.model.tts_speech_token_dict == {}
    assert model.model.hift_cache_dict == {}


@pytest.mark.parametrize(
    ("speed", "stream"),
    [(1.0, True), (1.5, True), (1.0, False)],
    ids=["streaming", "speed", "whole"],
)
def test_an_error_in_the_llm_thread_fails_the_call_at_once(
    load: Any, clip: Clip, speed: float, stream: bool
) -> None:
    engine, model = load()
    model.model.llm_failure = RuntimeError("CUDA out of memory")
    features = engine.extract_features(clip, None)
    outcome: dict[str, BaseException] = {}

    def attempt() -> None:
        try:
            speak(engine, engine_request(clip, features, speed=speed, stream=stream))
        except BaseException as exc:
            outcome["error"] = exc

    # Upstream would wait for tokens forever: a daemon thread turns a hang into a failure.
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "the call hangs on the failed LLM thread"
    assert isinstance(outcome.get("error"), SynthesisFailed)
    assert "CUDA out of memory" in str(outcome["error"])
    model.model.llm_failure = None
    assert len(speak(engine, engine_request(clip, features))) > 0
    assert model.model.llm_end_dict == {}


# --- features storage ------------------------------------------------------------------


def test_features_survive_serialization(load: Any, clip: Clip) -> None:
    engine, model = load()
    features = engine.extract_features(clip, MANDARIN_TRANSCRIPT)
    restored = engine.deserialize_features(engine.serialize_features(features))
    assert set(restored) == set(features)
    speak(engine, engine_request(clip, restored, mode=SynthesisMode.zero_shot))
    assert model.model.calls[-1]["llm_prompt_text"] == V3_PREFIX + MANDARIN_TRANSCRIPT


class MemoryBlobs:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        self.objects[key] = data

    async def get(self, key: str) -> bytes:
        if key not in self.objects:
            raise NotFound(key)
        return self.objects[key]

    async def stat(self, key: str) -> BlobInfo:
        return BlobInfo(size=len(self.objects[key]), content_type="application/octet-stream")

    async def read_range(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        yield self.objects[key]

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)


async def test_through_the_runner_a_voice_is_extracted_once_per_model(
    load: Any, mandarin_clip: bytes
) -> None:
    engine, model = load()
    blobs = MemoryBlobs()
    prompt = VoicePrompt(
        sha256=sha256_hex(mandarin_clip),
        voice_id="mandarin",
        sample_key="voices/x/sample.wav",
        prompt_text=MANDARIN_TRANSCRIPT,
    )

    async def load_clip() -> Clip:
        return decode_clip(mandarin_clip)

    async def render(runner: EngineRunner, rate: int | None = None) -> list[Any]:
        request = SynthesisRequest(
            text="收到好友从远方寄来的生日礼物。",
            voice=prompt,
            mode=SynthesisMode.zero_shot,
            sample_rate=rate,
        )
        return [chunk async for chunk in runner.synthesize(request, load_clip)]

    first = EngineRunner(
        engine,
        concurrency=2,
        timeout=30,
        feature_cache=FeatureCache(engine, engine.info.model, blobs, capacity=4),
    )
    await first.start()
    chunks = await render(first)
    await render(first, rate=16000)
    assert {c.sample_rate for c in chunks} == {24000}
    assert not is_silent(np.concatenate([c.samples for c in chunks]))
    assert len(calls(model, "add_zero_shot_spk")) == 1

    restarted = EngineRunner(
        engine,
        concurrency=2,
        timeout=30,
        feature_cache=FeatureCache(engine, engine.info.model, blobs, capacity=4),
    )
    await restarted.start()
    await render(restarted)
    assert restarted.feature_cache.blob_hits == 1
    assert len(calls(model, "add_zero_shot_spk")) == 1
    await first.close()
    await restarted.close()


async def test_the_runner_passes_on_whether_the_caller_streams(
    load: Any, mandarin_clip: bytes
) -> None:
    engine, model = load()
    runner = EngineRunner(
        engine,
        concurrency=None,  # SYNTHESIS_CONCURRENCY unset: chosen for the device
        timeout=30,
        feature_cache=FeatureCache(engine, engine.info.model, MemoryBlobs(), capacity=4),
    )
    assert runner.concurrency == len(os.sched_getaffinity(0))  # no GPU here: one per core
    await runner.start()
    prompt = VoicePrompt(sha256=sha256_hex(mandarin_clip), clip=decode_clip(mandarin_clip))

    async def load_clip() -> Clip:
        return decode_clip(mandarin_clip)

    for stream in (True, False):
        request = SynthesisRequest(text="Good morning to you.", voice=prompt, stream=stream)
        chunks = [chunk async for chunk in runner.synthesize(request, load_clip)]
        assert chunks and model.model.calls[-1]["stream"] is stream
        assert {chunk.sample_rate for chunk in chunks} == {24000}
    await runner.close()


# --- the real model --------------------------------------------------------------------


def _real_model_paths() -> tuple[Path, Path]:
    model_dir = Path(os.environ.get("MODEL_DIR_V3", "models/Fun-CosyVoice3-0.5B"))
    home = os.environ.get("COSYVOICE_HOME")
    if not home:
        skip_missing_data("COSYVOICE_HOME is not set (the upstream CosyVoice checkout)")
    reason = cosyvoice_available(model_dir, Path(home), family="cosyvoice3")
    if reason:
        skip_missing_data(f"real CosyVoice3 unavailable: {reason}")
    return model_dir, Path(home)


@pytest.fixture(scope="module")
def real_engine() -> CosyVoiceEngine:
    model_dir, home = _real_model_paths()
    engine = CosyVoiceEngine(model_dir, cosyvoice_home=home, family="cosyvoice3")
    engine.load()
    return engine


@pytest.mark.weights
@pytest.mark.slow
def test_the_real_model_clones_a_voice(real_engine: CosyVoiceEngine, clip: Clip) -> None:
    features = real_engine.extract_features(clip, MANDARIN_TRANSCRIPT)
    audio = speak(
        real_engine,
        engine_request(clip, features, text="Hello, this is a test.", mode=SynthesisMode.zero_shot),
    )
    assert real_engine.info.sample_rate == 24000
    assert 0.5 < len(audio) / 24000 < 15
    assert not is_silent(audio)


@pytest.mark.weights
@pytest.mark.gpu
@pytest.mark.slow
def test_the_real_model_streams_its_first_chunk_quickly_on_a_gpu(
    real_engine: CosyVoiceEngine, clip: Clip
) -> None:
    import time

    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    features = real_engine.extract_features(clip, None)
    started = time.monotonic()
    chunks = real_engine.synthesize(engine_request(clip, features, text=LONG_TEXT))
    first = next(chunks)
    elapsed = time.monotonic() - started
    chunks.close()
    assert first.size > 0
    assert elapsed < 5.0

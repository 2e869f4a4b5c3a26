"""InProcessSynthesis: the synthesis port over the espeak engine loaded in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest

from core.adapters.embedded.inprocess_synthesis import InProcessSynthesis
from core.audio.decode import decode_clip, sha256_hex
from core.audio.dsp import is_silent
from core.domain import SynthesisMode
from core.engines.base import Engine
from core.engines.espeak import EspeakEngine
from core.engines.features import FeatureCache
from core.engines.noop import NoopEngine
from core.engines.runner import EngineRunner
from core.errors import EngineNotReady, InvalidInput, SynthesisFailed
from core.ports import AudioChunk, SynthesisClient, SynthesisRequest, VoicePrompt
from tests.unit.memory_blobs import MemoryBlobs

SAMPLE_KEY = "voices/narrator/sample.wav"


def make_client(blobs: MemoryBlobs, engine: Engine | None = None) -> InProcessSynthesis:
    engine = engine or EspeakEngine()
    cache = FeatureCache(engine, engine.info.model, blobs, capacity=8)
    runner = EngineRunner(engine, concurrency=2, timeout=60, feature_cache=cache)
    # MemoryBlobs has only the methods the client calls, not the whole BlobStore.
    return InProcessSynthesis(runner, blobs)  # type: ignore[arg-type]


def stored_voice(sample: bytes) -> VoicePrompt:
    return VoicePrompt(
        sha256=sha256_hex(sample), voice_id="narrator", sample_key=SAMPLE_KEY, language="en"
    )


async def render(client: InProcessSynthesis, request: SynthesisRequest) -> list[AudioChunk]:
    return [chunk async for chunk in client.synthesize(request)]


@pytest.fixture
async def client_with_voice(
    english_clip: bytes,
) -> AsyncIterator[tuple[InProcessSynthesis, MemoryBlobs]]:
    blobs = MemoryBlobs()
    blobs.objects[SAMPLE_KEY] = english_clip
    client = make_client(blobs)
    await client.start()
    yield client, blobs
    await client.close()


async def test_it_is_a_synthesis_client_that_reports_readiness(english_clip: bytes) -> None:
    client = make_client(MemoryBlobs())
    assert isinstance(client, SynthesisClient)
    assert await client.ready() is False
    await client.start()
    assert await client.ready() is True
    assert await client.ready(deep=True) is True
    assert client.info.engine == "espeak" and client.info.real_model is False
    await client.close()


async def test_a_stored_voice_speaks_at_the_requested_rate(
    client_with_voice: tuple[InProcessSynthesis, MemoryBlobs], english_clip: bytes
) -> None:
    client, _ = client_with_voice
    request = SynthesisRequest(
        text="Hello there. This is a test of the voice.",
        voice=stored_voice(english_clip),
        sample_rate=16000,
    )
    chunks = await render(client, request)
    assert {c.sample_rate for c in chunks} == {16000}
    audio = np.concatenate([c.samples for c in chunks])
    assert audio.dtype == np.float32
    assert 1.0 < len(audio) / 16000 < 10.0
    assert not is_silent(audio)


async def test_the_stored_sample_is_read_once_and_features_are_reused(
    client_with_voice: tuple[InProcessSynthesis, MemoryBlobs], english_clip: bytes
) -> None:
    client, blobs = client_with_voice
    request = SynthesisRequest(text="One more sentence.", voice=stored_voice(english_clip))
    await render(client, request)
    await render(client, request)
    assert blobs.reads.count(SAMPLE_KEY) == 1
    cache = client.runner.feature_cache
    assert (cache.extractions, cache.hits) == (1, 1)
    assert any(key.startswith("voices/narrator/features/") for key in blobs.objects)


async def test_an_uploaded_clip_needs_no_blob_store(mandarin_clip: bytes) -> None:
    blobs = MemoryBlobs()
    client = make_client(blobs)
    await client.start()
    prompt = VoicePrompt(sha256=sha256_hex(mandarin_clip), clip=decode_clip(mandarin_clip))
    request = SynthesisRequest(
        text="慢慢地说这句话。",
        voice=prompt,
        mode=SynthesisMode.instruct,
        instruct_text="Speak slowly",
    )
    chunks = await render(client, request)
    assert chunks and chunks[0].sample_rate == client.info.sample_rate
    assert blobs.reads == [] and blobs.objects == {}
    await client.close()


async def test_a_missing_stored_sample_fails_clearly(english_clip: bytes) -> None:
    client = make_client(MemoryBlobs())
    await client.start()
    with pytest.raises(SynthesisFailed, match="stored sample of voice narrator is missing"):
        await render(client, SynthesisRequest(text="Hi.", voice=stored_voice(english_clip)))
    await client.close()


async def test_a_voice_without_any_audio_is_invalid() -> None:
    client = make_client(MemoryBlobs())
    await client.start()
    with pytest.raises(InvalidInput):
        await render(client, SynthesisRequest(text="Hi.", voice=VoicePrompt(sha256="0" * 64)))
    await client.close()


async def test_requests_before_start_are_refused(english_clip: bytes) -> None:
    client = make_client(MemoryBlobs())
    with pytest.raises(EngineNotReady):
        await render(client, SynthesisRequest(text="Hi.", voice=stored_voice(english_clip)))


async def test_the_noop_engine_serves_a_quiet_tone_per_sentence(mandarin_clip: bytes) -> None:
    client = make_client(MemoryBlobs(), NoopEngine())
    await client.start()
    prompt = VoicePrompt(sha256=sha256_hex(mandarin_clip), clip=decode_clip(mandarin_clip))
    chunks = await render(
        client, SynthesisRequest(text="One. Two! Three?", voice=prompt, speed=2.0)
    )
    assert len(chunks) == 3
    assert client.info.engine == "noop" and client.info.real_model is False
    audio = np.concatenate([c.samples for c in chunks])
    assert not is_silent(audio)
    assert float(np.abs(audio).max()) < 0.1
    await client.close()

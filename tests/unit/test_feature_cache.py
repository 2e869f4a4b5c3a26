"""FeatureCache: memory first, then the blob store, extraction only when both miss."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from core.domain import features_key
from core.engines.features import FeatureCache
from core.ports import Clip, VoicePrompt
from tests.unit.memory_blobs import MemoryBlobs

SHA = "b" * 64
CLIP = Clip(samples=np.linspace(-0.5, 0.5, 8000, dtype=np.float32), sample_rate=16000)


class CountingEngine:
    """Features are a function of the clip and transcript; extraction is counted."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0
        self._lock = threading.Lock()

    info = None

    def load(self) -> None: ...

    def extract_features(self, clip: Clip, prompt_text: str | None) -> Any:
        with self._lock:
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return {"energy": float(np.sum(clip.samples**2)), "prompt_text": prompt_text}

    def serialize_features(self, features: Any) -> bytes:
        return f"{features['energy']!r}|{features['prompt_text'] or ''}".encode()

    def deserialize_features(self, data: bytes) -> Any:
        energy, prompt_text = data.decode().split("|", 1)
        return {"energy": float(energy), "prompt_text": prompt_text or None}

    def synthesize(self, request: Any) -> Any:
        raise NotImplementedError


class ClipLoader:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> Clip:
        self.calls += 1
        return CLIP


def stored_voice(prompt_text: str | None = "hello", voice_id: str = "v1") -> VoicePrompt:
    return VoicePrompt(
        sha256=SHA,
        voice_id=voice_id,
        sample_key=f"voices/{voice_id}/sample.wav",
        prompt_text=prompt_text,
    )


async def test_the_second_request_is_a_memory_hit() -> None:
    engine, blobs, loader = CountingEngine(), MemoryBlobs(), ClipLoader()
    cache = FeatureCache(engine, "m", blobs, capacity=4)
    clip, first = await cache.get(stored_voice(), loader)
    _, second = await cache.get(stored_voice(), loader)
    assert clip is CLIP
    assert first == second
    assert (cache.extractions, cache.hits, cache.blob_hits) == (1, 1, 0)
    assert loader.calls == 1  # the clip is cached with the features
    assert engine.calls == 1


async def test_a_fresh_cache_finds_the_features_in_the_blob_store() -> None:
    engine, blobs = CountingEngine(), MemoryBlobs()
    await FeatureCache(engine, "m", blobs, capacity=4).get(stored_voice(), ClipLoader())
    assert features_key("v1", "m", SHA) in blobs.objects

    restarted = FeatureCache(engine, "m", blobs, capacity=4)
    clip, features = await restarted.get(stored_voice(), ClipLoader())
    assert (restarted.extractions, restarted.blob_hits, restarted.hits) == (0, 1, 0)
    assert engine.calls == 1
    assert features["prompt_text"] == "hello"
    assert clip.sample_rate == CLIP.sample_rate


async def test_features_of_another_transcript_are_not_reused() -> None:
    engine, blobs = CountingEngine(), MemoryBlobs()
    await FeatureCache(engine, "m", blobs, capacity=4).get(stored_voice("old"), ClipLoader())
    cache = FeatureCache(engine, "m", blobs, capacity=4)
    _, features = await cache.get(stored_voice("new transcript"), ClipLoader())
    assert features["prompt_text"] == "new transcript"
    assert (cache.extractions, cache.blob_hits) == (1, 0)


async def test_each_model_keeps_its_own_features() -> None:
    engine, blobs = CountingEngine(), MemoryBlobs()
    await FeatureCache(engine, "model-a", blobs, capacity=4).get(stored_voice(), ClipLoader())
    other = FeatureCache(engine, "model-b", blobs, capacity=4)
    await other.get(stored_voice(), ClipLoader())
    assert other.extractions == 1
    assert len(blobs.objects) == 2


async def test_model_labels_become_plain_storage_keys() -> None:
    blobs = MemoryBlobs()
    cache = FeatureCache(CountingEngine(), "espeak-ng (development engine)", blobs, capacity=4)
    await cache.get(stored_voice(), ClipLoader())
    assert list(blobs.objects) == [features_key("v1", "espeak-ng-development-engine", SHA)]


async def test_an_uploaded_clip_is_cached_in_memory_but_not_persisted() -> None:
    engine, blobs = CountingEngine(), MemoryBlobs()
    cache = FeatureCache(engine, "m", blobs, capacity=4)
    upload = VoicePrompt(sha256=SHA, clip=CLIP)
    await cache.get(upload, ClipLoader())
    await cache.get(upload, ClipLoader())
    assert blobs.objects == {}
    assert (cache.extractions, cache.hits) == (1, 1)


async def test_least_recently_used_voices_are_evicted() -> None:
    engine = CountingEngine()
    cache = FeatureCache(engine, "m", None, capacity=2)
    voices = [VoicePrompt(sha256=c * 64, clip=CLIP) for c in "cde"]
    for prompt in voices:
        await cache.get(prompt, ClipLoader())
    assert len(cache) == 2
    await cache.get(voices[0], ClipLoader())  # evicted: extracted again
    assert engine.calls == 4


async def test_concurrent_requests_for_a_new_voice_extract_once() -> None:
    engine = CountingEngine(delay=0.1)
    cache = FeatureCache(engine, "m", MemoryBlobs(), capacity=4)
    results = await asyncio.gather(*(cache.get(stored_voice(), ClipLoader()) for _ in range(5)))
    assert engine.calls == 1
    assert all(features == results[0][1] for _, features in results)


async def test_a_caller_that_gives_up_does_not_waste_the_extraction() -> None:
    engine = CountingEngine(delay=0.2)
    cache = FeatureCache(engine, "m", None, capacity=4)
    prompt = VoicePrompt(sha256=SHA, clip=CLIP)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await cache.get(prompt, ClipLoader())
    await cache.get(prompt, ClipLoader())
    assert engine.calls == 1


async def test_an_object_store_outage_does_not_fail_the_synthesis() -> None:
    engine, blobs = CountingEngine(), MemoryBlobs()
    blobs.fail_puts = True
    cache = FeatureCache(engine, "m", blobs, capacity=4)
    _, features = await cache.get(stored_voice(), ClipLoader())
    assert features["prompt_text"] == "hello"
    assert blobs.objects == {}


async def test_a_corrupt_stored_object_is_replaced() -> None:
    engine, blobs = CountingEngine(), MemoryBlobs()
    blobs.objects[features_key("v1", "m", SHA)] = b"garbage"
    cache = FeatureCache(engine, "m", blobs, capacity=4)
    await cache.get(stored_voice(), ClipLoader())
    assert cache.extractions == 1
    assert blobs.objects[features_key("v1", "m", SHA)] != b"garbage"


async def test_forget_drops_a_replaced_clip() -> None:
    engine = CountingEngine()
    cache = FeatureCache(engine, "m", None, capacity=4)
    prompt = VoicePrompt(sha256=SHA, clip=CLIP)
    await cache.get(prompt, ClipLoader())
    cache.forget(SHA)
    await cache.get(prompt, ClipLoader())
    assert engine.calls == 2

"""`KServeSynthesis`, the router's client of the predictor, against a real predictor process.

What the router sees: the engine's description, readiness that never wakes a sleeping
predictor, audio chunk by chunk, the platform's errors (503 when the predictor cannot
be reached), and a synthesis cancelled when the router stops reading.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from core.adapters.cluster.kserve_synthesis import KServeSynthesis
from core.adapters.embedded.file_blobs import FileBlobStore
from core.audio.decode import decode_clip, sha256_hex
from core.domain import SynthesisMode
from core.errors import BackendUnavailable, InvalidInput, SynthesisFailed
from core.ports import AudioChunk, SynthesisClient, SynthesisRequest, VoicePrompt
from tests.conftest import MANDARIN_TRANSCRIPT
from tests.e2e.profiles import PredictorProcess
from tests.servers import free_port

pytestmark = pytest.mark.slow

MODEL = "cosyvoice3"
TEXT = "Hello there. The router is calling the predictor. This is the third sentence."


class CountingTransport(httpx.AsyncHTTPTransport):
    """The real network transport, counting the requests that go through it."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        return await super().handle_async_request(request)


@pytest.fixture(scope="module")
def blob_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("client-blobs")


@pytest.fixture(scope="module")
def predictor(blob_root: Path) -> Iterator[PredictorProcess]:
    process = PredictorProcess(
        MODEL,
        blob_root.parent / "client-predictor",
        {"BLOB_STORE_URL": f"file://{blob_root}", "SYNTHESIS_CONCURRENCY": "2"},
    ).start()
    yield process
    process.stop()


@pytest.fixture
async def client(predictor: PredictorProcess) -> AsyncIterator[KServeSynthesis]:
    synthesis = KServeSynthesis(predictor.url, MODEL, timeout=60)
    await synthesis.start()
    yield synthesis
    await synthesis.close()


@pytest.fixture
def stored_voice(blob_root: Path, english_clip: bytes) -> VoicePrompt:
    voice_id = f"voice_{uuid.uuid4().hex[:8]}"
    key = f"voices/{voice_id}/sample.wav"
    store = FileBlobStore({"voices": blob_root / "voices", "outputs": blob_root / "outputs"})
    asyncio.run(store.put(key, english_clip, "audio/wav"))
    return VoicePrompt(sha256=sha256_hex(english_clip), voice_id=voice_id, sample_key=key)


async def collect(client: SynthesisClient, request: SynthesisRequest) -> list[AudioChunk]:
    return [chunk async for chunk in client.synthesize(request)]


def assert_audible(chunks: list[AudioChunk], rate: int, min_seconds: float) -> np.ndarray:
    assert chunks, "no audio"
    assert {c.sample_rate for c in chunks} == {rate}
    samples = np.concatenate([c.samples for c in chunks])
    assert samples.dtype == np.float32
    assert samples.size / rate >= min_seconds
    assert float(np.sqrt(np.mean(np.square(samples)))) > 0.005, "silent"
    return samples


async def test_describes_the_remote_engine(client: KServeSynthesis) -> None:
    assert isinstance(client, SynthesisClient) and client.remote is True
    assert client.info.engine == "espeak" and client.info.real_model is False
    assert client.info.sample_rate == 22050 and "zh" in client.info.languages
    assert await client.ready() is True
    assert await client.ready(deep=True) is True


async def test_streams_a_stored_voice_chunk_by_chunk(
    client: KServeSynthesis, stored_voice: VoicePrompt
) -> None:
    request = SynthesisRequest(text=TEXT, voice=stored_voice, sample_rate=24000)
    chunks = await collect(client, request)
    assert len(chunks) >= 2, "one chunk per sentence, passed on as they arrive"
    assert_audible(chunks, 24000, min_seconds=2.0)


async def test_clones_an_uploaded_clip(client: KServeSynthesis, mandarin_clip: bytes) -> None:
    voice = VoicePrompt(
        sha256=sha256_hex(mandarin_clip),
        clip=decode_clip(mandarin_clip),
        prompt_text=MANDARIN_TRANSCRIPT,
    )
    request = SynthesisRequest(
        text="你好,欢迎使用语音合成。", voice=voice, mode=SynthesisMode.zero_shot, language="zh"
    )
    assert_audible(await collect(client, request), 22050, min_seconds=0.5)


async def test_errors_are_the_platforms_own(
    client: KServeSynthesis, stored_voice: VoicePrompt
) -> None:
    with pytest.raises(InvalidInput, match="limit"):
        await collect(client, SynthesisRequest(text="x" * 5000, voice=stored_voice))
    with pytest.raises(InvalidInput, match="spoken"):
        await collect(client, SynthesisRequest(text="...", voice=stored_voice))
    gone = VoicePrompt(sha256="3" * 64, voice_id="gone", sample_key="voices/gone/sample.wav")
    with pytest.raises(SynthesisFailed, match="missing"):
        await collect(client, SynthesisRequest(text=TEXT, voice=gone))
    assert await client.ready() is True


async def test_stopping_early_cancels_the_remote_synthesis(
    client: KServeSynthesis, stored_voice: VoicePrompt, predictor: PredictorProcess
) -> None:
    async with httpx.AsyncClient(base_url=predictor.url) as http:
        before = (await http.get(f"/v1/models/{MODEL}/metadata")).json()["synthesis"]
        long_text = "This sentence is one of very many in a long text. " * 38
        request = SynthesisRequest(text=long_text, voice=stored_voice, sample_rate=48000)
        stream = client.synthesize(request)
        await anext(stream)
        await stream.aclose()  # what the router does when its own client leaves
        for _ in range(200):
            stats = (await http.get(f"/v1/models/{MODEL}/metadata")).json()["synthesis"]
            if stats["cancelled"] > before["cancelled"] and stats["active"] == 0:
                break
            await asyncio.sleep(0.05)
        assert stats["cancelled"] == before["cancelled"] + 1
        assert stats["completed"] == before["completed"]


async def test_shallow_readiness_never_calls_the_predictor(predictor: PredictorProcess) -> None:
    transport = CountingTransport()
    client = KServeSynthesis(predictor.url, MODEL, timeout=60, transport=transport)
    try:
        # Never heard from it (a predictor scaled to zero): assumed able to wake up.
        assert await client.ready() is True
        assert transport.requests == []
        await client.start()
        assert transport.requests == [f"GET /v1/models/{MODEL}/metadata"]
        for _ in range(5):
            assert await client.ready() is True
        assert len(transport.requests) == 1
        assert await client.ready(deep=True) is True
        assert len(transport.requests) == 2
    finally:
        await client.close()


async def test_unreachable_predictor_is_a_clear_503() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = KServeSynthesis(url, MODEL, timeout=30)
    try:
        await client.start()  # must not fail: the API starts without its predictor
        assert client.info.engine == "remote" and MODEL in client.info.model
        assert await client.ready() is False
        voice = VoicePrompt(sha256="4" * 64, voice_id="v", sample_key="voices/v/sample.wav")
        started = asyncio.get_running_loop().time()
        with pytest.raises(BackendUnavailable, match="cannot be reached") as failure:
            await collect(client, SynthesisRequest(text=TEXT, voice=voice))
        assert url in failure.value.detail
        assert asyncio.get_running_loop().time() - started < 10
    finally:
        await client.close()


async def test_a_predictor_that_comes_up_later_is_used_and_described(
    predictor: PredictorProcess, stored_voice: VoicePrompt, blob_root: Path
) -> None:
    late = PredictorProcess(MODEL, predictor.work_dir, predictor.env)
    client = KServeSynthesis(late.url, MODEL, timeout=60)
    try:
        await client.start()
        assert client.info.engine == "remote"
        late.start()
        # Last seen down: once that is a few seconds old, readiness asks again.
        for _ in range(100):
            if await client.ready():
                break
            await asyncio.sleep(0.1)
        assert await client.ready() is True
        chunks = await collect(client, SynthesisRequest(text=TEXT, voice=stored_voice))
        assert_audible(chunks, 22050, min_seconds=2.0)
        assert client.info.engine == "espeak"
    finally:
        await client.close()
        late.stop()

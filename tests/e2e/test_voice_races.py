"""Voice writes racing each other: duplicate creates, PUT against PUT, PUT against DELETE.

Whatever the interleaving, a user sees one 201 and one 409 for a duplicate, never a 500,
and every voice that exists afterwards synthesizes. With the embedded blob store the
test also reads the data folder: each voice holds exactly its one sample, and a deleted
voice holds none.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from tests.e2e.conftest import PROFILE, ApiServer, ServerFactory
from tests.e2e.watch import ServerWatch
from tests.hostile_audio import tone

# The create race is watched for memory and /health: the module runs alone.
pytestmark = pytest.mark.quiet

ROUNDS = 50


@pytest.fixture(scope="module")
def race_server(server_factory: ServerFactory) -> ApiServer:
    return server_factory()


@pytest.fixture
def http(race_server: ApiServer) -> Iterator[httpx.Client]:
    limits = httpx.Limits(max_connections=8)
    with httpx.Client(base_url=race_server.url, timeout=120, limits=limits) as client:
        yield client


def clip(f0: float) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, tone(1.5, 16_000, 1, f0=f0), 16_000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def create(http: httpx.Client, voice_id: str, audio: bytes) -> httpx.Response:
    return http.post(
        "/api/v3/voices/",
        data={"voice_id": voice_id, "name": "Race", "voice_type": "cross_lingual"},
        files={"audio_file": ("clip.wav", audio, "audio/wav")},
    )


def replace_sample(http: httpx.Client, voice_id: str, audio: bytes) -> httpx.Response:
    return http.put(
        f"/api/v3/voices/{voice_id}", files={"audio_file": ("clip.wav", audio, "audio/wav")}
    )


def at_once(*calls: Callable[[], httpx.Response]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


def assert_synthesizes(http: httpx.Client, voice_id: str) -> None:
    response = http.post(
        "/api/v3/cross-lingual/with-cache", json={"text": "Hello.", "voice_id": voice_id}
    )
    assert response.status_code == 200, f"{voice_id}: {response.text[:300]}"
    audio = http.get(response.json()["audio_url"])
    samples, _ = sf.read(io.BytesIO(audio.content))
    assert samples.size > 0


def stored_samples(server: ApiServer, voice_id: str) -> list[Path] | None:
    """The files of a voice's samples in the embedded blob store (None elsewhere)."""
    if PROFILE != "embedded":
        return None
    folder = server.data_dir / "voice_cache" / voice_id  # the root of `voices/` keys
    if not folder.exists():
        return []
    return [p for p in folder.rglob("*") if p.is_file() and "features" not in p.parts]


def assert_consistent(http: httpx.Client, server: ApiServer, voice_id: str) -> None:
    """An existing voice synthesizes and holds one sample; a missing one holds none."""
    exists = http.get(f"/api/v3/voices/{voice_id}").status_code == 200
    if exists:
        assert_synthesizes(http, voice_id)
    files = stored_samples(server, voice_id)
    if files is not None:
        assert len(files) == (1 if exists else 0), f"{voice_id}: {files}"


def test_duplicate_creates_give_one_201_and_one_409(
    http: httpx.Client, race_server: ApiServer
) -> None:
    ids = [f"dup_{uuid.uuid4().hex[:8]}" for _ in range(ROUNDS)]
    with ServerWatch(race_server) as watch:
        for n, voice_id in enumerate(ids):
            first, second = clip(120 + n), clip(240 + n)
            answers = at_once(
                partial(create, http, voice_id, first), partial(create, http, voice_id, second)
            )
            assert sorted(r.status_code for r in answers) == [201, 409], [
                r.text[:200] for r in answers
            ]
    for voice_id in ids:
        assert_consistent(http, race_server, voice_id)
    watch.assert_healthy(max_rss_mb=400, max_health_s=1.0)


def test_put_racing_put_never_fails_or_loses_the_sample(
    http: httpx.Client, race_server: ApiServer
) -> None:
    ids = [f"putput_{uuid.uuid4().hex[:8]}" for _ in range(ROUNDS // 2)]
    for voice_id in ids:
        assert create(http, voice_id, clip(150)).status_code == 201
    for n, voice_id in enumerate(ids):
        a, b = clip(170 + n), clip(300 + n)
        answers = at_once(
            partial(replace_sample, http, voice_id, a),
            partial(replace_sample, http, voice_id, b),
        )
        assert [r.status_code for r in answers] == [200, 200], [r.text[:200] for r in answers]
    for voice_id in ids:
        assert_consistent(http, race_server, voice_id)


def test_put_racing_delete_leaves_a_whole_voice_or_none(
    http: httpx.Client, race_server: ApiServer
) -> None:
    ids = [f"putdel_{uuid.uuid4().hex[:8]}" for _ in range(ROUNDS // 2)]
    for voice_id in ids:
        assert create(http, voice_id, clip(150)).status_code == 201
    for n, voice_id in enumerate(ids):
        audio = clip(200 + n)
        put, delete = at_once(
            partial(replace_sample, http, voice_id, audio),
            partial(http.delete, f"/api/v3/voices/{voice_id}"),
        )
        assert put.status_code in (200, 404), put.text[:200]
        assert delete.status_code == 200, delete.text[:200]
    for voice_id in ids:
        assert http.get(f"/api/v3/voices/{voice_id}").status_code == 404
        assert_consistent(http, race_server, voice_id)


def test_language_with_nul_is_refused_by_create_and_update_alike(
    http: httpx.Client,
) -> None:
    voice_id = f"lang_{uuid.uuid4().hex[:8]}"
    assert create(http, voice_id, clip(150)).status_code == 201
    for field, value in (("language", "en\x00"), ("name", "Bad\x00name")):
        made = http.post(
            "/api/v3/voices/",
            data={"voice_id": f"{voice_id}y", "name": "ok", "voice_type": "sft", field: value},
            files={"audio_file": ("clip.wav", clip(150), "audio/wav")},
        )
        put = http.put(f"/api/v3/voices/{voice_id}", json={field: value})
        form_put = http.put(f"/api/v3/voices/{voice_id}", files={field: (None, value)})
        assert made.status_code == put.status_code == form_put.status_code == 400, (
            made.text,
            put.text,
            form_put.text,
        )
        for answer in (made, put, form_put):
            assert field in str(answer.json()["detail"])

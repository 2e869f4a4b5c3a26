"""Health, the OpenAPI document, CORS, and a restart that keeps everything."""

from __future__ import annotations

import httpx

from tests.audio_checks import assert_speech
from tests.conftest import TESTDATA
from tests.e2e.conftest import ServerFactory, create_voice


def test_health_names_the_engines(client: httpx.Client) -> None:
    health = client.get("/health").json()
    assert health["status"] == "healthy"
    for version in ("v2", "v3"):
        entry = health[version]
        assert entry["ready"] is True
        assert entry["engine"] in ("espeak", "cosyvoice")
        assert entry["real_model"] == (entry["engine"] == "cosyvoice")
    assert health["v2"]["serves"] == ["v1", "v2"]
    assert all(s["ok"] for s in health["services"].values())


def test_docs_and_openapi(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/api/v3/voices/",
        "/api/v3/voices/{voice_id}",
        "/api/v3/cross-lingual/with-cache",
        "/api/v3/cross-lingual/with-audio",
        "/api/v3/cross-lingual/instruct",
        "/api/v3/audio/{filename}",
        "/api/v1/cross-lingual/with-cache",
    ):
        assert path in paths, path
    with_cache = paths["/api/v3/cross-lingual/with-cache"]["post"]
    assert {"400", "404", "503"} <= set(with_cache["responses"])
    assert client.get("/docs").status_code == 200
    assert client.get("/redoc").status_code == 200


def test_cors_for_browser_pages(client: httpx.Client) -> None:
    preflight = client.options(
        "/api/v3/cross-lingual/with-cache",
        headers={
            "Origin": "http://example.test",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] in ("*", "http://example.test")
    simple = client.get("/health", headers={"Origin": "http://example.test"})
    assert simple.headers["access-control-allow-origin"] in ("*", "http://example.test")


def test_restart_keeps_voices_and_outputs(server_factory: ServerFactory) -> None:
    first = server_factory()
    with httpx.Client(base_url=first.url, timeout=60) as http:
        voice_id = create_voice(http, TESTDATA / "cross_lingual_prompt.wav")
        rendered = http.post(
            "/api/v3/cross-lingual/with-cache",
            json={"text": "Kept across restarts.", "voice_id": voice_id},
        )
        assert rendered.status_code == 200, rendered.text
        result = rendered.json()
    first.stop()
    # Same data folder: the same SQLite file and folders, or the same database and bucket.
    again = server_factory(first.data_dir)
    with httpx.Client(base_url=again.url, timeout=60) as http:
        assert http.get(f"/api/v3/voices/{voice_id}").status_code == 200
        audio = http.get(result["audio_url"])
        assert audio.status_code == 200, audio.text[:300]
        assert_speech(audio.content)
        response = http.post(
            "/api/v3/cross-lingual/with-cache", json={"text": "Still here.", "voice_id": voice_id}
        )
        assert response.status_code == 200

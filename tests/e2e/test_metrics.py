"""`/metrics`, JSON logs and `X-Request-ID` against a real server, in every profile.

Each test reads `/metrics` before and after its own traffic and checks that the numbers
moved by exactly what it sent (other tests never share this module's server).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.domain import Priority
from tests.e2e.conftest import PROFILE, ApiServer, ServerFactory, create_voice

TEXT = "Metrics count what was sent."
WITH_CACHE = "/api/v3/cross-lingual/with-cache"
REQUEST_ID = re.compile(r"[0-9a-f]{32}")
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")  # \n ends a line

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: ApiServer) -> Samples:
    reply = httpx.get(f"{server.url}/metrics", timeout=30)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def log_lines(server: ApiServer) -> list[str]:
    return Path(server.log_path).read_text(encoding="utf-8", errors="replace").splitlines()


def json_records(server: ApiServer) -> list[dict]:
    return [json.loads(line) for line in log_lines(server) if line.startswith("{")]


class Receiver:
    """A webhook receiver on a free local port that answers 200 and counts posts."""

    def __init__(self) -> None:
        self.received = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.received += 1
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hook"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> ApiServer:
    return server_factory(LOG_FORMAT="json", WEBHOOK_ALLOW_PRIVATE="true")


@pytest.fixture(scope="module")
def voice(server: ApiServer, english_clip: bytes) -> str:
    return make_voice(server, english_clip)


def make_voice(server: ApiServer, english_clip: bytes) -> str:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        return create_voice(http, english_clip, prefix="metrics")


@pytest.fixture
def http(server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


# --- metrics ----------------------------------------------------------------------------


def test_synthesis_requests_move_their_route_counter_by_their_number(
    server: ApiServer, http: httpx.Client, voice: str
) -> None:
    series = {"method": "POST", "route": WITH_CACHE, "status": "200"}
    missing = {"method": "POST", "route": WITH_CACHE, "status": "404"}
    before = scrape(server)
    for _ in range(3):
        reply = http.post(WITH_CACHE, json={"text": TEXT, "voice_id": voice})
        assert reply.status_code == 200, reply.text
    reply = http.post(WITH_CACHE, json={"text": TEXT, "voice_id": "no_such_voice"})
    assert reply.status_code == 404
    after = scrape(server)

    assert value(after, "cosyvoice_http_requests_total", **series) == (
        value(before, "cosyvoice_http_requests_total", **series) + 3
    )
    assert value(after, "cosyvoice_http_request_duration_seconds_count", **series) == (
        value(before, "cosyvoice_http_request_duration_seconds_count", **series) + 3
    )
    assert value(after, "cosyvoice_http_requests_total", **missing) == (
        value(before, "cosyvoice_http_requests_total", **missing) + 1
    )
    # Paths become their template: one series for every audio file, none per file.
    audio = http.get("/api/v3/audio/missing_file.wav")
    assert audio.status_code in (400, 404)
    routes = {dict(labels)["route"] for name, labels in scrape(server) if "route" in dict(labels)}
    assert "/api/v3/audio/{filename}" in routes
    assert not [route for route in routes if "missing_file" in route]


def test_engine_work_is_reported_where_the_engine_runs(
    server: ApiServer, http: httpx.Client, voice: str
) -> None:
    reply = http.post(WITH_CACHE, json={"text": TEXT, "voice_id": voice})
    assert reply.status_code == 200
    samples = scrape(server)
    names = {name for name, _ in samples}
    if PROFILE == "predictor":  # the engine runs in the predictor: the router has none
        assert "cosyvoice_engine_slots" not in names
        return
    slots = [v for (name, _), v in samples.items() if name == "cosyvoice_engine_slots"]
    assert slots and all(v >= 1 for v in slots)
    assert "cosyvoice_engine_queue_depth" in names
    rtf = [v for (name, _), v in samples.items() if name == "cosyvoice_real_time_factor_count"]
    assert sum(rtf) >= 1


def test_each_stream_adds_one_first_audio_of_its_protocol(
    server: ApiServer, http: httpx.Client, voice: str
) -> None:
    name = "cosyvoice_time_to_first_audio_seconds_count"
    before = scrape(server)
    with http.stream(
        "POST", "/api/v3/streaming/cross-lingual", data={"text": TEXT, "voice_id": voice}
    ) as stream:
        assert stream.status_code == 200
        assert len(stream.read()) > 44
    sse = http.get("/api/v3/streaming/cross-lingual/sse", params={"text": TEXT, "voice_id": voice})
    assert sse.status_code == 200 and "audio_chunk" in sse.text
    after = scrape(server)
    for protocol in ("http", "sse"):
        assert value(after, name, protocol=protocol) == value(before, name, protocol=protocol) + 1


def test_a_task_counts_its_transitions_and_its_webhook(
    server: ApiServer, http: httpx.Client, voice: str
) -> None:
    receiver = Receiver()
    try:
        before = scrape(server)
        created = http.post(
            "/api/v3/cross-lingual/task",
            json={"text": TEXT, "voice_id": voice, "callback_url": receiver.url},
        )
        assert created.status_code == 200, created.text
        task_id = created.json()["task_id"]
        delivered = "cosyvoice_webhook_deliveries_total"

        def webhook_counted() -> bool:
            moved = value(scrape(server), delivered, outcome="delivered")
            return moved == value(before, delivered, outcome="delivered") + 1

        wait_until(webhook_counted)
        status = http.get(f"/api/v3/cross-lingual/task/{task_id}").json()
        assert status["status"] == "completed"
        assert receiver.received == 1
        after = scrape(server)
    finally:
        receiver.close()
    moves = "cosyvoice_task_transitions_total"
    for source, target in (("registered", "processing"), ("processing", "completed")):
        labels = {"from_status": source, "to_status": target}
        assert value(after, moves, **labels) == value(before, moves, **labels) + 1
    assert value(after, delivered, outcome="failed") == value(before, delivered, outcome="failed")
    queued = [v for (name, _), v in after.items() if name == "cosyvoice_task_queue_depth"]
    assert len(queued) == len(Priority) and all(v >= 0 for v in queued)


def test_metrics_need_no_key_and_are_not_in_the_api_schema(
    server_factory: ServerFactory,
) -> None:
    keyed = server_factory(API_KEY="metrics-test-key")
    assert httpx.get(f"{keyed.url}/api/v3/voices/").status_code == 401
    assert httpx.get(f"{keyed.url}/metrics").status_code == 200
    samples = scrape(keyed)
    refused = {"method": "GET", "route": "/api/v3/voices/", "status": "401"}
    assert value(samples, "cosyvoice_http_requests_total", **refused) == 1
    paths = httpx.get(f"{keyed.url}/openapi.json").json()["paths"]
    assert "/metrics" not in paths


# --- request ids and logs ---------------------------------------------------------------


def test_a_given_request_id_comes_back_and_is_logged(
    server: ApiServer, http: httpx.Client, voice: str
) -> None:
    given = f"client-{uuid.uuid4().hex[:12]}"
    reply = http.post(
        WITH_CACHE, json={"text": TEXT, "voice_id": voice}, headers={"X-Request-ID": given}
    )
    assert reply.status_code == 200
    assert reply.headers["x-request-id"] == given

    def logged() -> list[dict]:
        return [
            r
            for r in json_records(server)
            if r.get("request_id") == given and r.get("logger") == "router.requests"
        ]

    wait_until(lambda: bool(logged()), timeout=10)
    (line,) = logged()
    assert line["method"] == "POST"
    assert line["route"] == WITH_CACHE
    assert line["status"] == 200
    assert line["duration_ms"] > 0
    assert line["key"] is None  # no keys configured on this server


def test_a_missing_or_unsafe_request_id_is_replaced_by_a_generated_one(
    server: ApiServer, http: httpx.Client
) -> None:
    for headers in ({}, {"X-Request-ID": "x" * 65}, {"X-Request-ID": "bad id;<b>"}):
        reply = http.get("/api/v3/voices/no_such_voice", headers=headers)
        assert reply.status_code == 404  # errors carry it too
        generated = reply.headers["x-request-id"]
        assert REQUEST_ID.fullmatch(generated), generated
    wait_until(
        lambda: any(r.get("request_id") == generated for r in json_records(server)), timeout=10
    )
    preflight = http.options(
        "/api/v3/voices/",
        headers={"Origin": "http://example.test", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 200
    simple = http.get("/health", headers={"Origin": "http://example.test"})
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()


def test_json_log_lines_parse_and_hold_no_control_characters(
    server: ApiServer, http: httpx.Client
) -> None:
    marker = uuid.uuid4().hex[:8]
    for path in (
        f"/api/v3/voices/{marker}%0d%0a2030-01-01%20INFO%20forged",
        f"/api/v3/voices/{marker}%1b[31mred%00nul%7f%c2%85",
        f"/api/v3/voices/?api_key=secret{marker}",
    ):
        assert http.get(path).status_code in (400, 404, 200)
    wait_until(lambda: marker in "".join(log_lines(server)), timeout=10)
    time.sleep(0.3)
    raw = Path(server.log_path).read_text(encoding="utf-8", errors="replace")
    records = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        assert not CONTROL.search(line), repr(line)
        records.append(json.loads(line))  # every line the server wrote is one JSON object
    assert f"secret{marker}" not in raw
    mine = [r for r in records if marker in r.get("path", "")]
    assert len(mine) >= 2
    assert all(r["logger"] == "router.requests" and "request_id" in r for r in mine)
    assert any("\r\n2030-01-01" in r["path"] for r in mine)  # decoded, inside its record
    assert not any(line.startswith("2030") for line in raw.splitlines())


@pytest.mark.skipif(PROFILE != "predictor", reason="the predictor runs in the predictor profile")
def test_the_request_id_reaches_the_predictor_log(
    server: ApiServer, server_factory: ServerFactory, english_clip: bytes, tmp_path: Path
) -> None:
    from tests.e2e.profiles import PredictorProcess

    # A predictor of this test's own, so that its log holds this test's lines only.
    predictor = PredictorProcess(
        "cosyvoice3", tmp_path, {"BLOB_STORE_URL": server.env["BLOB_STORE_URL"]}
    )
    predictor.start()
    try:
        routed = server_factory(LOG_FORMAT="json", PREDICTOR_URL_V3=predictor.url)
        voice_id = make_voice(routed, english_clip)
        given = f"to-predictor-{uuid.uuid4().hex[:8]}"
        reply = httpx.post(
            f"{routed.url}{WITH_CACHE}",
            json={"text": TEXT, "voice_id": voice_id},
            headers={"X-Request-ID": given},
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-request-id"] == given
        wait_until(lambda: given in Path(predictor.log_path).read_text(errors="replace"), 10)
        assert any(r.get("request_id") == given for r in json_records(routed))
    finally:
        predictor.stop()


# --- the README's examples --------------------------------------------------------------


def readme_section(heading: str) -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    return readme.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_examples_of_metrics_and_logs(
    server: ApiServer, http: httpx.Client, voice: str
) -> None:
    section = readme_section("## Metrics and logs")
    metrics_example, request_id_example = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert http.post(WITH_CACHE, json={"text": TEXT, "voice_id": voice}).status_code == 200
    for script, expected in (
        (metrics_example, f'route="{WITH_CACHE}",status="200"'),
        (request_id_example, "x-request-id: checkout-42"),
    ):
        command = "\n".join(
            line for line in script.splitlines() if not line.startswith("#")
        ).replace("http://localhost:8012", server.url)
        out = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert expected in out.lower() if "x-request-id" in expected else expected in out
    (example,) = re.findall(r"```json\n(.*?)```", section, re.S)
    documented = json.loads(example)
    real = next(r for r in json_records(server) if r.get("logger") == "router.requests")
    assert set(documented) == set(real) | {"request_id"}

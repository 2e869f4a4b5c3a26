"""The chart's topology, run: every workload it renders as a local process, configured
only by the render (see tests/chart/topology.py), in front of real NATS, S3 and
MongoDB-wire servers. A setting the chart forgets shows up here as a failing request.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.services.webhooks import verify
from tests.audio_checks import assert_speech
from tests.chart.conftest import objects_of, render
from tests.chart.topology import (
    PLATFORM_INJECTED,
    Secrets,
    Topology,
    TopologyError,
    plan_workloads,
)
from tests.e2e.conftest import create_voice
from tests.e2e.test_streaming import STREAM, read_chunked
from tests.e2e.test_tasks import wait_for
from tests.e2e.test_webhooks import Receiver
from tests.servers import MongoServer, NatsServer, S3Server

API_KEY = "topology-api-key"
WEBHOOK_SECRET = "topology-webhook-secret"
TEXT = "The chart runs every part of the platform. Each one speaks to the next."


def chart_values(nats: NatsServer, s3: S3Server) -> dict[str, Any]:
    """What an operator sets to install on CPU nodes against these servers."""
    return {
        "config": {"engine": "espeak"},
        "predictor": {"engine": "espeak"},
        "nats": {"url": nats.url},
        "objectStore": {"url": f"{s3.url}/cosyvoice"},
        # The receiver of the webhooks listens on loopback.
        "webhook": {"allowPrivate": True},
        "auth": {"existingSecret": "cosyvoice-api-key"},
    }


def cluster_secrets(defaults: dict[str, Any], mongo: MongoServer) -> Secrets:
    """The Secrets the values reference, as an operator creates them before installing."""
    database, store = defaults["database"], defaults["objectStore"]
    webhook, auth = defaults["webhook"], defaults["auth"]
    return {
        database["existingSecret"]: {database["existingSecretKey"]: f"{mongo.url}/cosyvoice"},
        store["existingSecret"]: {
            store["accessKeyIdKey"]: S3Server.access_key,
            store["secretAccessKeyKey"]: S3Server.secret_key,
        },
        webhook["existingSecret"]: {webhook["existingSecretKey"]: WEBHOOK_SECRET},
        "cosyvoice-api-key": {auth["existingSecretKey"]: API_KEY},
    }


@pytest.fixture(scope="module")
def topology(chart: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    root = tmp_path_factory.mktemp("topology")
    with ExitStack() as stack:
        servers = (
            MongoServer(root / "mongo"),
            S3Server(root / "s3"),
            NatsServer(root / "nats"),
        )
        for server in servers:
            stack.callback(server.stop)
            server.launch()
        for server in servers:
            server.wait_until_ready()
        mongo, s3, nats = servers
        values = chart_values(nats, s3)
        secrets = cluster_secrets(chart.values, mongo)
        running = Topology(chart, values, secrets, root / "pods")
        stack.enter_context(running)
        yield running


@pytest.fixture(scope="module")
def api(topology: Topology) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=topology.url("router"), headers=headers, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def voice(api: httpx.Client, speech_clips: Path) -> str:
    return create_voice(api, speech_clips / "cross_lingual_prompt.wav", language="en")


@pytest.fixture(autouse=True)
def explain_failures(request: pytest.FixtureRequest) -> Iterator[None]:
    """On a failure, show what each process logged: the cause is usually there."""
    yield
    if "topology" in request.fixturenames:
        running: Topology = request.getfixturevalue("topology")
        if running.exited():
            pytest.fail("\n".join(running.exited()) + "\n" + running.logs())


def with_logs(topology: Topology, message: str) -> str:
    return f"{message}\n{topology.logs()}"


# --- the processes -----------------------------------------------------------------


def test_every_workload_of_the_chart_runs(topology: Topology) -> None:
    components = sorted(p.plan.workload.component for p in topology.processes)
    assert components == [
        "function-render",
        "function-webhook",
        "predictor-cosyvoice3",
        "router",
        "source-render",
        "source-webhook",
    ]
    assert not topology.exited(), with_logs(topology, str(topology.exited()))
    health = httpx.get(f"{topology.url('router')}/health", timeout=10).json()
    assert health["status"] == "healthy", health
    assert health["v3"]["remote"] is True, health["v3"]
    assert health["v3"]["engine"] == "espeak"
    assert all(service["ok"] for service in health["services"].values()), health


def test_the_render_fills_each_environment_and_the_platform_only_ports(
    topology: Topology,
) -> None:
    """What the platform adds is ports and the sink; the rest came from the render."""
    router = topology.process("router").plan
    assert set(router.injected) == {"PORT"}
    predictor = topology.process("predictor-cosyvoice3").plan
    assert set(predictor.injected) <= {"PORT", "--http_port"}
    source = topology.process("source-render").plan
    assert source.injected == {"K_SINK": topology.url("function-render")}
    for process in topology.processes:
        assert set(process.plan.injected) <= set(PLATFORM_INJECTED)
    # Service names resolved to the processes behind them.
    assert router.env["PREDICTOR_URL_V3"] == topology.url("predictor-cosyvoice3")
    assert router.env["WEBHOOK_SECRET"] == WEBHOOK_SECRET


# --- the API through the router ----------------------------------------------------


def test_the_router_asks_for_the_key_from_the_secret(topology: Topology) -> None:
    reply = httpx.get(f"{topology.url('router')}/api/v3/voices/", timeout=10)
    assert reply.status_code == 401
    assert "detail" in reply.json()


def test_synchronous_synthesis_through_the_predictor(api: httpx.Client, voice: str) -> None:
    reply = api.post("/api/v3/cross-lingual/with-cache", json={"text": TEXT, "voice_id": voice})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["success"] is True
    audio = api.get(body["audio_url"])
    assert audio.status_code == 200
    heard = assert_speech(audio.content, fmt="wav")
    assert abs(heard.duration - body["duration"]) < 0.1


def test_streaming_through_the_predictor(api: httpx.Client, voice: str) -> None:
    response, pieces = read_chunked(api, STREAM, {"text": TEXT, "voice_id": voice})
    assert response.headers["content-type"] == "audio/wav"
    assert len(pieces) >= 2
    assert_speech(b"".join(pieces), fmt="wav")


def test_task_rendered_by_the_function_with_one_signed_webhook(
    topology: Topology, api: httpx.Client, voice: str
) -> None:
    """router → NATS → render source → render function → predictor and S3 → NATS →
    webhook source → webhook function → the receiver, signed with the chart's Secret."""
    receiver = Receiver()
    try:
        created = api.post(
            "/api/v3/cross-lingual/task",
            json={
                "text": TEXT,
                "voice_id": voice,
                "format": "mp3",
                "callback_url": receiver.url("/done"),
            },
        )
        assert created.status_code == 200, created.text
        task_id = created.json()["task_id"]
        try:
            done = wait_for(api, f"/api/v3/cross-lingual/task/{task_id}", timeout=40)
        except AssertionError as error:
            raise AssertionError(with_logs(topology, str(error))) from error
        assert done["status"] == "completed", done
        audio = api.get(done["audio_url"])
        assert audio.status_code == 200
        assert_speech(audio.content, fmt="mp3")

        (delivery,) = receiver.wait("/done", 1, timeout=30)
        secret = topology.env("function-webhook")["WEBHOOK_SECRET"]
        headers = delivery.headers
        assert verify(
            secret,
            headers["x-cosyvoice-timestamp"],
            delivery.body,
            headers["x-cosyvoice-signature"],
        )
        assert delivery.json["task_id"] == task_id
        assert delivery.json["status"] == "completed"
        time.sleep(1.5)  # a second delivery (router and function both sending) would be here
        assert len(receiver.to("/done")) == 1
    finally:
        receiver.close()


# --- the harness refuses what a cluster would refuse --------------------------------


@pytest.fixture(scope="module")
def offline_inputs(chart: Any) -> tuple[dict[str, Any], Secrets]:
    mongo = MongoServer(Path("/nonexistent"), port=27017)
    nats = NatsServer(Path("/nonexistent"), port=4222)
    s3 = S3Server(Path("/nonexistent"), port=9000)
    return chart_values(nats, s3), cluster_secrets(chart.values, mongo)


def test_a_missing_secret_fails_like_a_pod_that_cannot_start(
    chart: Any, offline_inputs: tuple[dict[str, Any], Secrets], tmp_path: Path
) -> None:
    values, secrets = offline_inputs
    objects = objects_of(render(chart, values))
    secrets = {name: data for name, data in secrets.items() if name != "cosyvoice-api-key"}
    with pytest.raises(TopologyError, match="cosyvoice-api-key"):
        plan_workloads(objects, secrets, tmp_path)


def test_a_url_to_a_service_the_chart_does_not_create_fails(
    chart: Any, offline_inputs: tuple[dict[str, Any], Secrets], tmp_path: Path
) -> None:
    values, secrets = offline_inputs
    values = copy.deepcopy(values)
    values["predictor"]["models"] = {
        "cosyvoice2": {"url": "http://elsewhere.tts.svc.cluster.local"}
    }
    objects = objects_of(render(chart, values))
    with pytest.raises(TopologyError, match="elsewhere"):
        plan_workloads(objects, secrets, tmp_path)


def test_a_listen_address_off_the_routed_port_fails(
    chart: Any, offline_inputs: tuple[dict[str, Any], Secrets], tmp_path: Path
) -> None:
    values, secrets = offline_inputs
    objects = objects_of(render(chart, values))
    function = next(o for o in objects if o["metadata"]["name"].endswith("-render"))
    container = function["spec"]["template"]["spec"]["containers"][0]
    for item in container["env"]:
        if item["name"] == "LISTEN_ADDRESS":
            item["value"] = "[::]:9999"
    with pytest.raises(TopologyError, match="LISTEN_ADDRESS"):
        plan_workloads(objects, secrets, tmp_path)


def test_the_chart_managed_secret_is_read_from_the_render(
    chart: Any, offline_inputs: tuple[dict[str, Any], Secrets], tmp_path: Path
) -> None:
    values, secrets = offline_inputs
    values = {**copy.deepcopy(values), "auth": {"apiKey": "from-values"}}
    plans = plan_workloads(objects_of(render(chart, values)), secrets, tmp_path)
    router = next(p for p in plans if p.workload.component == "router")
    assert router.env["API_KEY"] == "from-values"


def test_in_deployment_mode_the_router_listens_where_the_chart_says(
    chart: Any, offline_inputs: tuple[dict[str, Any], Secrets], tmp_path: Path
) -> None:
    """A Deployment gets no PORT from Knative: the rendered one is the container port."""
    values, secrets = offline_inputs
    values = {**copy.deepcopy(values), "router": {"mode": "deployment"}}
    plans = plan_workloads(objects_of(render(chart, values)), secrets, tmp_path)
    router = next(p for p in plans if p.workload.component == "router")
    assert router.workload.kind == "Deployment"
    assert router.injected == {}
    assert router.env["PORT"] == str(router.port)
    assert "cosyvoice-router.tts.svc.cluster.local" in router.workload.hostnames

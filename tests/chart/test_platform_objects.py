"""What platform teams add around the workloads: NetworkPolicies, PodDisruptionBudgets,
Prometheus monitors, and the `helm test` pod.

The switches are off by default (the default install and manifests/ stay as they are);
switched on, every object is valid and selects pods the release really runs. The
Prometheus Operator CRDs are not among the published copies the other checks use, so the
monitors are checked against the part of their schema the chart writes. The `helm test`
script is run here against a real `cosyvoice-api serve`.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.chart.conftest import NAMESPACE, VALUE_SETS, Manifest, Validate, objects_of, render
from tests.chart.test_chart import env_of, find, merged, only

PLATFORM_KINDS = {"NetworkPolicy", "PodMonitor", "ServiceMonitor"}
KNATIVE_NAMESPACES = ["knative-serving", "kourier-system", "istio-system"]

SWITCHES_ON: dict[str, Any] = {
    "networkPolicy": {"enabled": True},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
}
PLATFORM_SETS: dict[str, dict[str, Any]] = {
    "knative": merged(
        SWITCHES_ON,
        {
            "router": {"minScale": 2},
            "predictor": {
                "minReplicas": 2,
                "maxReplicas": 4,
                "models": {"cosyvoice2": {"enabled": True}},
            },
            "functions": {"render": {"minScale": 2}},
        },
    ),
    "deployment": merged(VALUE_SETS["deployment"], SWITCHES_ON),
    "in-process": merged(VALUE_SETS["in-process"], SWITCHES_ON),
}

_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h))+$"}
_SELECTOR = {
    "type": "object",
    "required": ["matchLabels"],
    "properties": {
        "matchLabels": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {"type": "string"},
        }
    },
    "additionalProperties": False,
}
_ENDPOINT = {
    "type": "object",
    "required": ["port", "path"],
    "properties": {
        "port": {"type": "string", "minLength": 1},
        "path": {"type": "string", "pattern": "^/"},
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
    },
    "additionalProperties": False,
}


def _monitor_schema(kind: str, endpoints: str) -> dict[str, Any]:
    """The fields of monitoring.coreos.com/v1 the chart writes, with their CRD types."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "required": ["name", "namespace", "labels"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
                    "namespace": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                },
                "additionalProperties": False,
            },
            "spec": {
                "type": "object",
                "required": ["selector", endpoints],
                "properties": {
                    "selector": _SELECTOR,
                    endpoints: {"type": "array", "minItems": 1, "items": _ENDPOINT},
                },
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    }


MONITOR_SCHEMAS = {
    "ServiceMonitor": jsonschema.Draft7Validator(_monitor_schema("ServiceMonitor", "endpoints")),
    "PodMonitor": jsonschema.Draft7Validator(_monitor_schema("PodMonitor", "podMetricsEndpoints")),
}


@pytest.fixture(scope="module")
def platform_sets(chart: Any) -> dict[str, list[Manifest]]:
    return {name: objects_of(render(chart, values)) for name, values in PLATFORM_SETS.items()}


# --- what the pods of a release look like ------------------------------------------


def workload_pods(objects: list[Manifest]) -> Iterator[tuple[str, dict[str, str], list[int]]]:
    """(name, labels, serving ports) of the pods each workload runs, as the cluster labels them.

    Knative copies the revision template's labels onto its pods; KServe labels predictor
    pods with the InferenceService's name and component.
    """
    for o in objects:
        kind = o["kind"]
        if kind == "InferenceService":
            (container,) = o["spec"]["predictor"]["containers"]
            labels = {
                "serving.kserve.io/inferenceservice": o["metadata"]["name"],
                "component": "predictor",
            }
            yield o["metadata"]["name"], labels, [p["containerPort"] for p in container["ports"]]
        elif kind in ("Deployment", "ContainerSource") or (
            kind == "Service" and o["apiVersion"].startswith("serving.knative.dev/")
        ):
            template = o["spec"]["template"]
            ports = [
                p["containerPort"]
                for c in template["spec"]["containers"]
                for p in c.get("ports", [])
            ]
            yield o["metadata"]["name"], template["metadata"]["labels"], ports


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def policy_for(objects: list[Manifest], pod_name: str) -> Manifest:
    labels = next(labels for name, labels, _ in workload_pods(objects) if name == pod_name)
    (policy,) = [
        p for p in find(objects, "NetworkPolicy") if selects(p["spec"]["podSelector"], labels)
    ]
    return policy


def egress_ports(policy: Manifest) -> set[int]:
    return {port["port"] for rule in policy["spec"]["egress"] for port in rule.get("ports", [])}


def knative_peer() -> dict[str, Any]:
    return {
        "namespaceSelector": {
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "In",
                    "values": KNATIVE_NAMESPACES,
                }
            ]
        }
    }


# --- off by default ---------------------------------------------------------------------


@pytest.mark.parametrize("set_name", list(VALUE_SETS))
def test_platform_objects_are_off_by_default(
    set_name: str, object_sets: dict[str, list[Manifest]]
) -> None:
    assert [o["kind"] for o in object_sets[set_name] if o["kind"] in PLATFORM_KINDS] == []


def test_a_single_replica_gets_no_disruption_budget(
    default_objects: list[Manifest], object_sets: dict[str, list[Manifest]]
) -> None:
    """min-scale 1 and scale-to-zero workloads: a budget would only block node drains."""
    assert find(default_objects, "PodDisruptionBudget") == []
    assert find(object_sets["cpu-predictor"], "PodDisruptionBudget") == []  # minReplicas 1


# --- switched on: valid objects ---------------------------------------------------------------


@pytest.mark.parametrize("set_name", list(PLATFORM_SETS))
def test_platform_objects_are_valid(
    set_name: str, platform_sets: dict[str, list[Manifest]], validate: Validate
) -> None:
    objects = platform_sets[set_name]
    problems: dict[str, list[str]] = {}
    for o in objects:
        where = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in MONITOR_SCHEMAS:
            problems[where] = [e.message for e in MONITOR_SCHEMAS[o["kind"]].iter_errors(o)]
        else:
            problems[where] = validate(o)

    assert {where: found for where, found in problems.items() if found} == {}
    assert find(objects, "NetworkPolicy")
    assert find(objects, "PodMonitor") or find(objects, "ServiceMonitor")


def test_the_monitor_shape_check_catches_mistakes() -> None:
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": "x", "namespace": NAMESPACE, "labels": {}},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "endpoints": [{"port": 8080}]},
    }

    assert len(list(MONITOR_SCHEMAS["PodMonitor"].iter_errors(monitor))) == 2


# --- NetworkPolicy ------------------------------------------------------------------------


@pytest.mark.parametrize("set_name", list(PLATFORM_SETS))
def test_every_workload_has_exactly_one_policy(
    set_name: str, platform_sets: dict[str, list[Manifest]]
) -> None:
    objects = platform_sets[set_name]
    policies = find(objects, "NetworkPolicy")

    for name, labels, _ in workload_pods(objects):
        matching = [
            p["metadata"]["name"] for p in policies if selects(p["spec"]["podSelector"], labels)
        ]
        assert len(matching) == 1, (name, matching)
        (policy,) = [p for p in policies if p["metadata"]["name"] == matching[0]]
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert len(policies) == len(list(workload_pods(objects)))


def test_knative_pods_are_reached_through_knative_only(
    platform_sets: dict[str, list[Manifest]],
) -> None:
    objects = platform_sets["knative"]
    router = policy_for(objects, "cosyvoice-router")
    render_fn = policy_for(objects, "cosyvoice-render")
    predictor = policy_for(objects, "cosyvoice-cosyvoice3")
    source = policy_for(objects, "cosyvoice-source-render")

    assert router["spec"]["ingress"][0] == {"from": [knative_peer()]}
    # Functions: only the sources (through Knative); predictors: only router and render.
    sources = render_fn["spec"]["ingress"][0]["from"][1]["podSelector"]
    assert sources["matchExpressions"][0]["values"] == ["source-render", "source-webhook"]
    callers = [
        peer.get("podSelector", {}).get("matchLabels", {})
        for peer in predictor["spec"]["ingress"][0]["from"]
    ]
    assert [c.get("app.kubernetes.io/component") for c in callers] == [
        None,
        "router",
        "function-render",
    ]
    assert source["spec"]["ingress"] == []  # serves nothing
    # Prometheus reaches /metrics on the API port only.
    assert router["spec"]["ingress"][1]["ports"] == [{"port": 8080, "protocol": "TCP"}]


def test_egress_reaches_exactly_the_services_each_workload_uses(
    platform_sets: dict[str, list[Manifest]],
) -> None:
    objects = platform_sets["knative"]

    # DNS 53, MongoDB 27017, S3 (the port of objectStore.url) 8333, NATS 4222.
    assert egress_ports(policy_for(objects, "cosyvoice-router")) == {53, 27017, 8333, 4222}
    assert egress_ports(policy_for(objects, "cosyvoice-source-webhook")) == {53, 27017, 4222}
    # The predictor stores voice features in S3 and downloads weights (hf://) over HTTPS.
    assert egress_ports(policy_for(objects, "cosyvoice-cosyvoice2")) == {53, 8333, 443}
    # Only the webhook function may reach the internet, on 80 and 443.
    assert egress_ports(policy_for(objects, "cosyvoice-webhook")) == {
        53,
        27017,
        8333,
        4222,
        80,
        443,
    }
    for name in ("cosyvoice-router", "cosyvoice-render", "cosyvoice-source-render"):
        rules = policy_for(objects, name)["spec"]["egress"]
        assert {"to": [knative_peer()]} in rules, name  # predictors and sinks, via Knative
        assert not any("ipBlock" in peer for rule in rules for peer in rule.get("to", [])), name


def _webhook_blocks(objects: list[Manifest], name: str) -> list[dict[str, Any]]:
    (rule,) = [
        rule
        for rule in policy_for(objects, name)["spec"]["egress"]
        if any("ipBlock" in peer for peer in rule.get("to", []))
    ]
    return [peer["ipBlock"] for peer in rule["to"]]


def test_webhooks_reach_the_internet_but_not_private_ranges(
    chart: Any, platform_sets: dict[str, list[Manifest]]
) -> None:
    blocks = _webhook_blocks(platform_sets["knative"], "cosyvoice-webhook")

    assert [b["cidr"] for b in blocks] == ["0.0.0.0/0", "::/0"]
    for block in blocks:
        network = ipaddress.ip_network(block["cidr"])
        excluded = [ipaddress.ip_network(e) for e in block["except"]]
        # The version check is what makes subnet_of valid; typeshed cannot see that.
        assert all(
            e.version == network.version and e.subnet_of(network)  # type: ignore[arg-type]
            for e in excluded
        )
    v4 = [ipaddress.ip_network(e) for e in blocks[0]["except"]]
    for private in ("10.1.2.3", "172.20.0.1", "192.168.1.1", "169.254.169.254", "127.0.0.1"):
        assert any(ipaddress.ip_address(private) in e for e in v4), private

    allowed = objects_of(render(chart, merged(SWITCHES_ON, {"webhook": {"allowPrivate": True}})))
    assert all("except" not in b for b in _webhook_blocks(allowed, "cosyvoice-webhook"))
    # Without the webhook function the router delivers callbacks itself.
    in_process = platform_sets["in-process"]
    assert _webhook_blocks(in_process, "cosyvoice-router")


@pytest.mark.parametrize(
    ("url", "port"),
    [("s3s://s3.amazonaws.com/bucket", 443), ("s3://minio:9000/bucket", 9000), ("s3://s3/b", 80)],
)
def test_object_store_egress_follows_its_url(url: str, port: int, chart: Any) -> None:
    objects = objects_of(render(chart, merged(SWITCHES_ON, {"objectStore": {"url": url}})))

    assert port in egress_ports(policy_for(objects, "cosyvoice-router"))


def test_deployment_router_accepts_the_ingress_controller_and_the_namespace(
    platform_sets: dict[str, list[Manifest]],
) -> None:
    policy = policy_for(platform_sets["deployment"], "cosyvoice-router")
    (api, scrape) = policy["spec"]["ingress"]

    assert api["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert {"podSelector": {}} in api["from"]  # in-cluster clients of the release namespace
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
        "podSelector": {},
    } in api["from"]
    assert scrape["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


# --- PodDisruptionBudget ---------------------------------------------------------------------


def test_every_replicated_workload_gets_a_disruption_budget(
    platform_sets: dict[str, list[Manifest]], object_sets: dict[str, list[Manifest]]
) -> None:
    objects = platform_sets["knative"]
    budgets = {p["metadata"]["name"]: p for p in find(objects, "PodDisruptionBudget")}
    pods = {name: labels for name, labels, _ in workload_pods(objects)}

    assert sorted(budgets) == [
        "cosyvoice-cosyvoice2",
        "cosyvoice-cosyvoice3",
        "cosyvoice-render",
        "cosyvoice-router",
    ]
    for name, budget in budgets.items():
        assert selects(budget["spec"]["selector"], pods[name]), name
        assert not any(
            selects(budget["spec"]["selector"], labels)
            for other, labels in pods.items()
            if other != name
        ), name
    assert budgets["cosyvoice-cosyvoice3"]["spec"]["maxUnavailable"] == 1
    assert budgets["cosyvoice-router"]["spec"]["minAvailable"] == 1
    deployment = only(object_sets["deployment"], "PodDisruptionBudget", "cosyvoice-router")
    assert deployment["spec"]["minAvailable"] == 1


# --- monitors ------------------------------------------------------------------------------


@pytest.mark.parametrize("set_name", list(PLATFORM_SETS))
def test_every_metrics_server_is_scraped_once(
    set_name: str, platform_sets: dict[str, list[Manifest]]
) -> None:
    objects = platform_sets[set_name]
    pods = {name: labels for name, labels, ports in workload_pods(objects) if ports}
    scraped: dict[str, int] = dict.fromkeys(pods, 0)

    for monitor in find(objects, "PodMonitor"):
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        # Knative names the serving port of every revision pod user-port.
        assert (endpoint["port"], endpoint["path"]) == ("user-port", "/metrics")
        for name, labels in pods.items():
            scraped[name] += selects(monitor["spec"]["selector"], labels)
    for monitor in find(objects, "ServiceMonitor"):
        service = only(objects, "Service", monitor["metadata"]["name"])
        assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
        assert monitor["spec"]["endpoints"][0]["port"] in [
            p["name"] for p in service["spec"]["ports"]
        ]
        for name, labels in pods.items():
            scraped[name] += selects({"matchLabels": service["spec"]["selector"]}, labels)

    assert scraped == dict.fromkeys(pods, 1)


# --- helm test -----------------------------------------------------------------------------


def _test_pod(objects: list[Manifest]) -> tuple[Manifest, dict[str, Any]]:
    pod = only(objects, "Pod", "cosyvoice-test-health")
    (container,) = pod["spec"]["containers"]
    return pod, container


@pytest.mark.parametrize(
    ("set_name", "key_ref"),
    [
        ("defaults", None),
        ("deployment", {"name": "cosyvoice-api-key", "key": "api-key"}),
        ("everything", {"name": "cosyvoice-credentials", "key": "api-key"}),
    ],
)
def test_helm_test_pod_uses_the_api_image_and_key(
    set_name: str, key_ref: dict[str, str] | None, object_sets: dict[str, list[Manifest]]
) -> None:
    pod, container = _test_pod(object_sets[set_name])
    router_image = next(
        c["image"]
        for o in object_sets[set_name]
        if o["kind"] in ("Service", "Deployment") and "template" in o["spec"]
        for c in o["spec"]["template"]["spec"]["containers"]
        if c["name"] == "router"
    )
    env = env_of(container)

    assert pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == (
        "before-hook-creation,hook-succeeded"
    )
    assert container["image"] == router_image
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert env["SYNTHESIS_PATH"] == "/api/v3/cross-lingual/with-audio"
    assert int(env["SYNTHESIS_TIMEOUT"]) > 540  # covers a cold predictor
    if key_ref is None:
        assert "API_KEY" not in env
    else:
        assert env["API_KEY"] == {"secretKeyRef": key_ref}


def test_helm_test_pod_can_skip_the_synthesis(chart: Any) -> None:
    objects = objects_of(render(chart, {"tests": {"synthesis": {"enabled": False}}}))

    assert env_of(_test_pod(objects)[1])["SYNTHESIS_PATH"] == ""
    assert find(objects_of(render(chart, {"tests": {"enabled": False}})), "Pod") == []


# The script of the pod, run against real servers.


def _run_helm_test(
    container: dict[str, Any], url: str, api_key: str | None, budget: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in env_of(container).items() if isinstance(v, str)}
    env["ROUTER_URL"] = url
    env["SYNTHESIS_TIMEOUT"] = str(budget)
    if api_key is not None:
        env["API_KEY"] = api_key
    command = [sys.executable, *container["command"][1:]]
    return subprocess.run(
        command,
        env={**env, "PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.e2e.conftest import ApiServer, embedded_env

    data_dir: Path = tmp_path_factory.mktemp("helm-test-api")
    env = {**os.environ, **embedded_env(data_dir), "API_KEY": "helm-test-key"}
    with ApiServer(data_dir, env=env) as server:
        yield server


def test_helm_test_passes_against_a_healthy_release_with_its_key(
    api_server: Any, object_sets: dict[str, list[Manifest]]
) -> None:
    _, container = _test_pod(object_sets["everything"])

    result = _run_helm_test(container, api_server.url, "helm-test-key")

    assert result.returncode == 0, result.stdout + result.stderr
    assert '"status": "healthy"' in result.stdout or '"status":"healthy"' in result.stdout
    assert "POST /api/v3/cross-lingual/with-audio -> 200" in result.stdout
    assert result.stdout.rstrip().endswith("PASS")


def test_helm_test_fails_without_the_key(
    api_server: Any, object_sets: dict[str, list[Manifest]]
) -> None:
    _, container = _test_pod(object_sets["defaults"])

    result = _run_helm_test(container, api_server.url, None)

    assert result.returncode != 0
    assert "synthesis answered 401" in result.stderr


def test_helm_test_fails_on_a_degraded_release(
    tmp_path: Path, object_sets: dict[str, list[Manifest]]
) -> None:
    """A predictor that never comes up: /health stays degraded, the test gives up after
    its budget (the cold-start allowance) instead of passing."""
    from tests.e2e.conftest import ApiServer, embedded_env
    from tests.servers import free_port

    env = {
        **os.environ,
        **embedded_env(tmp_path),
        "PREDICTOR_URL_V3": f"http://127.0.0.1:{free_port()}",
    }
    _, container = _test_pod(object_sets["defaults"])
    with ApiServer(tmp_path, env=env) as server:
        result = _run_helm_test(container, server.url, None, budget=3)

    assert result.returncode != 0
    assert "waiting for the v3 predictor to start" in result.stdout
    assert "/health says 'degraded'" in result.stderr
    assert "POST" not in result.stdout

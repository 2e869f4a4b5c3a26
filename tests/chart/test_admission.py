"""Every documented install passes the admission webhooks, not only the schemas.

Each value set is rendered and every object is checked twice: against its schema with
unknown fields refused (the API server), then against the rules Knative Serving, Knative
Eventing and KServe enforce in their webhooks (tests/chart/admission.py). Each rule has a
test that a bad object is caught, so a checker that lets everything through fails here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.chart import admission
from tests.chart.conftest import VALUE_SETS, Manifest, Validate, helm, render

ADMISSION_SETS = ["defaults", "both-models", "cpu-predictor", "no-functions", "deployment"]


def test_the_required_value_sets_exist() -> None:
    assert set(ADMISSION_SETS) <= set(VALUE_SETS)
    assert VALUE_SETS["deployment"]["router"]["ingress"]["enabled"] is True
    assert VALUE_SETS["deployment"]["auth"]


@pytest.mark.parametrize("set_name", list(VALUE_SETS))
def test_every_object_is_admitted(
    set_name: str, object_sets: dict[str, list[Manifest]], validate: Validate
) -> None:
    refused = {
        f"{o['kind']}/{o['metadata']['name']}": validate(o) + admission.problems(o)
        for o in object_sets[set_name]
    }

    assert {name: found for name, found in refused.items() if found} == {}


@pytest.mark.parametrize("set_name", ADMISSION_SETS)
def test_each_required_set_deploys_its_workloads(
    set_name: str, object_sets: dict[str, list[Manifest]]
) -> None:
    kinds = {o["kind"] for o in object_sets[set_name]}

    assert kinds & {"Deployment", "Service"}
    if set_name == "no-functions":
        assert "ContainerSource" not in kinds
    if set_name == "deployment":
        assert {"Deployment", "Ingress", "PodDisruptionBudget"} <= kinds


# --- each rule catches a bad object -------------------------------------------------------


def _knative(objects: list[Manifest], name: str = "cosyvoice-router") -> Manifest:
    return copy.deepcopy(
        next(
            o for o in objects if admission.is_knative_service(o) and o["metadata"]["name"] == name
        )
    )


def _container(manifest: Manifest) -> dict[str, Any]:
    if manifest["kind"] == "InferenceService":
        return manifest["spec"]["predictor"]["containers"][0]
    return manifest["spec"]["template"]["spec"]["containers"][0]


def _set_port(port: int) -> Callable[[Manifest], None]:
    def mutate(manifest: Manifest) -> None:
        _container(manifest)["ports"][0]["containerPort"] = port

    return mutate


def _add_env(name: str) -> Callable[[Manifest], None]:
    def mutate(manifest: Manifest) -> None:
        _container(manifest)["env"].append({"name": name, "value": "x"})

    return mutate


def _spec(**fields: Any) -> Callable[[Manifest], None]:
    def mutate(manifest: Manifest) -> None:
        manifest["spec"]["template"]["spec"].update(fields)

    return mutate


def _second_port(manifest: Manifest) -> None:
    _container(manifest)["ports"].append({"name": "http1", "containerPort": 9000})


def _port_name(manifest: Manifest) -> None:
    _container(manifest)["ports"][0]["name"] = "http"


def _probe_port(manifest: Manifest) -> None:
    _container(manifest)["readinessProbe"]["httpGet"]["port"] = 9000


def _probe_port_name(manifest: Manifest) -> None:
    _container(manifest)["livenessProbe"]["httpGet"]["port"] = "metrics"


def _long_name(manifest: Manifest) -> None:
    manifest["metadata"]["name"] = "a" * 64


def _not_dns_1035(manifest: Manifest) -> None:
    manifest["metadata"]["name"] = "1router"


def _scale(manifest: Manifest) -> None:
    annotations = manifest["spec"]["template"]["metadata"]["annotations"]
    annotations["autoscaling.knative.dev/min-scale"] = "5"
    annotations["autoscaling.knative.dev/max-scale"] = "2"


def _unmounted_volume(manifest: Manifest) -> None:
    manifest["spec"]["template"]["spec"]["volumes"].append({"name": "spare", "emptyDir": {}})


def _writable_config(manifest: Manifest) -> None:
    spec = manifest["spec"]["template"]["spec"]
    spec["volumes"].append({"name": "ca", "configMap": {"name": "ca"}})
    _container(manifest)["volumeMounts"].append({"name": "ca", "mountPath": "/etc/ca"})


KNATIVE_RULES = [
    pytest.param(_set_port(8012), "reserved by the queue-proxy", id="port-8012"),
    pytest.param(_set_port(8008), "reserved by the queue-proxy", id="port-8008"),
    pytest.param(_set_port(8013), "reserved by the queue-proxy", id="port-8013"),
    pytest.param(_set_port(8022), "reserved by the queue-proxy", id="port-8022"),
    pytest.param(_set_port(9090), "reserved by the queue-proxy", id="port-9090"),
    pytest.param(_set_port(9091), "reserved by the queue-proxy", id="port-9091"),
    pytest.param(_add_env("PORT"), "PORT is a reserved", id="env-PORT"),
    pytest.param(_add_env("K_SERVICE"), "K_SERVICE is a reserved", id="env-K_SERVICE"),
    pytest.param(
        _add_env("K_CONFIGURATION"), "K_CONFIGURATION is a reserved", id="env-K_CONFIGURATION"
    ),
    pytest.param(_add_env("K_REVISION"), "K_REVISION is a reserved", id="env-K_REVISION"),
    pytest.param(_port_name, "is not http1 or h2c", id="port-name"),
    pytest.param(_second_port, "Knative serves exactly one", id="two-ports"),
    pytest.param(_spec(timeoutSeconds=601), "timeoutSeconds 601", id="timeout"),
    pytest.param(
        _spec(responseStartTimeoutSeconds=700), "responseStartTimeoutSeconds", id="first-byte"
    ),
    pytest.param(_probe_port, "is not the serving port", id="probe-port"),
    pytest.param(_probe_port_name, "not the serving port's name", id="probe-port-name"),
    pytest.param(_long_name, "longer than 63", id="name-length"),
    pytest.param(_not_dns_1035, "DNS-1035", id="name-dns-1035"),
    pytest.param(_scale, "min-scale 5 is above max-scale 2", id="scale-bounds"),
    pytest.param(_unmounted_volume, "is not mounted", id="unmounted-volume"),
    pytest.param(_writable_config, "must be readOnly", id="writable-configmap"),
]


@pytest.mark.parametrize(("mutate", "message"), KNATIVE_RULES)
def test_knative_service_rule_catches(
    mutate: Callable[[Manifest], None], message: str, default_objects: list[Manifest]
) -> None:
    router = _knative(default_objects)
    assert admission.problems(router) == []

    mutate(router)

    assert any(message in problem for problem in admission.problems(router)), message


def test_a_raised_cluster_maximum_admits_longer_timeouts(
    default_objects: list[Manifest],
) -> None:
    router = _knative(default_objects)
    _spec(timeoutSeconds=1800)(router)

    assert admission.problems(router) != []
    assert admission.problems(router, max_timeout=3600) == []


def _isvc(objects: list[Manifest]) -> Manifest:
    return copy.deepcopy(next(o for o in objects if o["kind"] == "InferenceService"))


def _storage(uri: str) -> Callable[[Manifest], None]:
    def mutate(manifest: Manifest) -> None:
        for variable in _container(manifest)["env"]:
            if variable["name"] == "STORAGE_URI":
                variable["value"] = uri

    return mutate


def _replicas(manifest: Manifest) -> None:
    manifest["spec"]["predictor"].update(minReplicas=3, maxReplicas=2)


def _gpu_limit(manifest: Manifest) -> None:
    _container(manifest)["resources"]["limits"]["nvidia.com/gpu"] = 2


def _isvc_name(manifest: Manifest) -> None:
    manifest["metadata"]["name"] = "a" * 50


def _predictor_port(manifest: Manifest) -> None:
    container = _container(manifest)
    container["ports"][0]["containerPort"] = 8012
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        container[kind]["httpGet"]["port"] = 8012


def _predictor_timeout(manifest: Manifest) -> None:
    manifest["spec"]["predictor"]["timeout"] = 900


KSERVE_RULES = [
    pytest.param(_storage("hf://Fun-CosyVoice3"), "hf://OWNER/MODEL", id="hf-without-owner"),
    pytest.param(_storage("hf://a/b/c"), "hf://OWNER/MODEL", id="hf-too-deep"),
    pytest.param(_storage("ftp://host/model"), "scheme", id="unknown-scheme"),
    pytest.param(_replicas, "minReplicas 3 is above maxReplicas 2", id="replicas"),
    pytest.param(_gpu_limit, "differs from its limit", id="gpu-limit"),
    pytest.param(_isvc_name, "longer than", id="isvc-name"),
    pytest.param(_predictor_port, "reserved by the queue-proxy", id="predictor-port"),
    pytest.param(_predictor_timeout, "timeout 900", id="predictor-timeout"),
    pytest.param(_add_env("K_REVISION"), "K_REVISION is a reserved", id="predictor-env"),
]


@pytest.mark.parametrize(("mutate", "message"), KSERVE_RULES)
def test_inference_service_rule_catches(
    mutate: Callable[[Manifest], None], message: str, default_objects: list[Manifest]
) -> None:
    isvc = _isvc(default_objects)
    assert admission.problems(isvc) == []

    mutate(isvc)

    assert any(message in problem for problem in admission.problems(isvc)), message


@pytest.mark.parametrize(
    "uri",
    [
        "hf://FunAudioLLM/Fun-CosyVoice3-0.5B-2512",
        "hf://FunAudioLLM/CosyVoice2-0.5B:abc123",
        "s3://models/cosyvoice3",
        "pvc://weights/cosyvoice3",
        "oci://registry.example.com/models/cosyvoice3:1",
    ],
)
def test_storage_uris_kserve_understands_pass(uri: str) -> None:
    assert admission.storage_uri_problem(uri) is None


def _source(objects: list[Manifest]) -> Manifest:
    return copy.deepcopy(next(o for o in objects if o["kind"] == "ContainerSource"))


def _no_sink(manifest: Manifest) -> None:
    del manifest["spec"]["sink"]


def _half_ref(manifest: Manifest) -> None:
    del manifest["spec"]["sink"]["ref"]["name"]


def _relative_uri(manifest: Manifest) -> None:
    manifest["spec"]["sink"] = {"uri": "/render"}


def _no_image(manifest: Manifest) -> None:
    del _container(manifest)["image"]


SOURCE_RULES = [
    pytest.param(_no_sink, "sink needs a ref or a uri", id="no-sink"),
    pytest.param(_half_ref, "sink.ref needs", id="incomplete-ref"),
    pytest.param(_relative_uri, "is not absolute", id="relative-uri"),
    pytest.param(_no_image, "has no image", id="no-image"),
]


@pytest.mark.parametrize(("mutate", "message"), SOURCE_RULES)
def test_container_source_rule_catches(
    mutate: Callable[[Manifest], None], message: str, default_objects: list[Manifest]
) -> None:
    source = _source(default_objects)
    assert admission.problems(source) == []

    mutate(source)

    assert any(message in problem for problem in admission.problems(source)), message


# --- the chart refuses values that would be refused at admission ---------------------------

REFUSED_AT_RENDER = [
    pytest.param(
        {"config": {"predictorTimeout": 600}},
        "must be below router.responseStartTimeoutSeconds",
        id="predictor-timeout-past-first-byte",
    ),
    pytest.param(
        {"router": {"timeoutSeconds": 900, "responseStartTimeoutSeconds": 800}},
        "above knative.maxRevisionTimeoutSeconds",
        id="timeout-past-cluster-max",
    ),
    pytest.param(
        {"router": {"responseStartTimeoutSeconds": 590, "timeoutSeconds": 580}},
        "must not exceed router.timeoutSeconds",
        id="first-byte-past-timeout",
    ),
    pytest.param(
        {"jetstreamSource": {"ackWaitSeconds": 300}},
        "must exceed functions.render.timeoutSeconds",
        id="ack-wait-below-render",
    ),
    pytest.param(
        {"predictor": {"minReplicas": 70, "maxReplicas": 65}},
        "predictor.minReplicas must not exceed predictor.maxReplicas",
        id="replicas-beyond-schema-table",
    ),
]


@pytest.mark.parametrize(("values", "message"), REFUSED_AT_RENDER)
def test_contradicting_values_fail_the_render(
    values: dict[str, Any], message: str, chart: Any
) -> None:
    with pytest.raises((helm.HelmRenderError, helm.HelmValuesError), match=message):
        render(chart, values)


def test_a_documented_longer_maximum_is_accepted(chart: Any) -> None:
    render(
        chart,
        {
            "knative": {"maxRevisionTimeoutSeconds": 1800},
            "router": {"timeoutSeconds": 1800, "responseStartTimeoutSeconds": 1200},
            "config": {"predictorTimeout": 1100},
        },
    )

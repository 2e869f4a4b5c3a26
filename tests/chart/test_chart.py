"""The Helm chart and the plain manifests, rendered and validated offline.

What a platform team would otherwise learn at `helm install` time: objects the API
server or the KServe/Knative webhooks would refuse, containers running as root or
without requests, a predictor that never scales to zero, values that slip through.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import yaml

from tests.chart.conftest import (
    CHART_DIR,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    Manifest,
    Validate,
    helm,
    objects_of,
    render,
)

SET_NAMES = list(VALUE_SETS)
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")


# --- helpers ----------------------------------------------------------------------


def find(objects: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def only(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    matches = find(objects, kind, name)
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def pod_specs(manifest: Manifest) -> Iterator[dict[str, Any]]:
    """The pod spec(s) an object will create, wherever its kind keeps them."""
    kind = manifest["kind"]
    if kind == "Pod":
        yield manifest["spec"]
    elif kind in ("Deployment", "ContainerSource") or (
        kind == "Service" and manifest["apiVersion"].startswith("serving.knative.dev/")
    ):
        yield manifest["spec"]["template"]["spec"]
    elif kind == "InferenceService":
        yield manifest["spec"]["predictor"]


def containers(
    objects: list[Manifest],
) -> Iterator[tuple[Manifest, dict[str, Any], dict[str, Any]]]:
    for manifest in objects:
        for spec in pod_specs(manifest):
            for container in spec["containers"]:
                yield manifest, spec, container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def router_env(objects: list[Manifest]) -> dict[str, Any]:
    """The router's environment, in either mode."""
    for _, _, container in containers(objects):
        if container["name"] == "router":
            return env_of(container)
    raise AssertionError("no router container")


def knative_service(objects: list[Manifest], name: str) -> Manifest:
    return next(
        o
        for o in find(objects, "Service", name)
        if o["apiVersion"].startswith("serving.knative.dev/")
    )


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


# --- chart metadata and lint -------------------------------------------------------


def test_chart_installs_without_fetching_anything(chart: Any) -> None:
    """No subchart to download: NATS is an endpoint, like MongoDB and S3."""
    assert not chart.metadata.get("dependencies")
    assert not (CHART_DIR / "charts").exists()
    assert chart.values["nats"]["url"].startswith("nats://")
    assert chart.metadata["sources"]
    assert chart.metadata["maintainers"][0]["name"]
    assert chart.metadata["icon"].startswith("https://")


@pytest.mark.parametrize("set_name", SET_NAMES)
def test_strict_lint_is_clean(set_name: str) -> None:
    report = helm.lint(CHART_DIR, VALUE_SETS[set_name], namespace=NAMESPACE, strict=True)

    assert report["errors"] == []
    assert [m["error"] for m in report["messages"] if m["severity"] >= 1] == []


def test_notes_tell_which_secrets_to_create(rendered_sets: dict[str, dict[str, str]]) -> None:
    notes = rendered_sets["defaults"]["cosyvoice/templates/NOTES.txt"]

    assert "cosyvoice-mongodb" in notes
    assert "cosyvoice-s3" in notes
    assert "cosyvoice-webhook-signing" in notes
    assert "helm test cosyvoice" in notes
    assert "WARNING" in rendered_sets["everything"]["cosyvoice/templates/NOTES.txt"]


# --- every object is valid ---------------------------------------------------------


@pytest.mark.parametrize("set_name", SET_NAMES)
def test_every_rendered_object_passes_its_schema(
    set_name: str, object_sets: dict[str, list[Manifest]], validate: Validate
) -> None:
    problems = {f"{o['kind']}/{o['metadata']['name']}": validate(o) for o in object_sets[set_name]}

    assert {name: found for name, found in problems.items() if found} == {}


def test_the_tightened_schemas_catch_a_misspelt_field(
    default_objects: list[Manifest], validate: Validate
) -> None:
    isvc = copy.deepcopy(only(default_objects, "InferenceService"))
    isvc["spec"]["predictor"]["minReplica"] = 0
    isvc["spec"]["predictor"]["scaleMetric"] = "gpu"

    assert len(validate(isvc)) == 2


def test_default_install_creates_the_documented_parts(default_objects: list[Manifest]) -> None:
    names = sorted((o["kind"], o["metadata"]["name"]) for o in default_objects)

    assert names == [
        ("ContainerSource", "cosyvoice-source-render"),
        ("ContainerSource", "cosyvoice-source-webhook"),
        ("InferenceService", "cosyvoice-cosyvoice3"),
        ("Pod", "cosyvoice-test-health"),
        ("Service", "cosyvoice-render"),
        ("Service", "cosyvoice-router"),
        ("Service", "cosyvoice-webhook"),
        ("ServiceAccount", "cosyvoice"),
    ]


# --- KServe predictor ----------------------------------------------------------------


def test_inference_service_follows_kserve_rules(default_objects: list[Manifest]) -> None:
    isvc = only(default_objects, "InferenceService", "cosyvoice-cosyvoice3")
    predictor = isvc["spec"]["predictor"]
    (container,) = predictor["containers"]
    env = env_of(container)

    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert predictor["minReplicas"] == 0
    assert predictor["scaleMetric"] == "concurrency"
    assert predictor["scaleTarget"] >= 1
    assert predictor["timeout"] <= 600
    assert container["name"] == "kserve-container"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env["STORAGE_URI"] == "hf://FunAudioLLM/Fun-CosyVoice3-0.5B-2512"
    assert env["MODEL_DIR_V3"] == "/mnt/models"
    assert container["args"] == [
        "--model-name",
        "cosyvoice3",
        "--engine",
        "auto",
        "--http_port",
        "8080",
    ]
    assert container["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/cosyvoice3"


def test_cosyvoice2_gets_its_own_predictor_and_older_kserve_mode(
    object_sets: dict[str, list[Manifest]],
) -> None:
    objects = object_sets["everything"]
    isvc = only(objects, "InferenceService", "cosyvoice-cosyvoice2")
    (container,) = isvc["spec"]["predictor"]["containers"]

    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert env_of(container)["MODEL_DIR"] == "/mnt/models"
    assert env_of(container)["STORAGE_URI"] == "hf://FunAudioLLM/CosyVoice2-0.5B"
    assert container["args"][:2] == ["--model-name", "cosyvoice2"]
    assert isvc["spec"]["predictor"]["runtimeClassName"] == "nvidia"
    assert isvc["spec"]["predictor"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert container["image"] == "registry.example.com/cosyvoice-serving/cosyvoice-predictor:0.1.0"


@pytest.mark.parametrize("set_name", ["defaults", "everything"])
def test_router_reaches_each_predictor_it_deploys(
    set_name: str, object_sets: dict[str, list[Manifest]]
) -> None:
    objects = object_sets[set_name]
    data = router_env(objects)
    deployed = {
        o["spec"]["predictor"]["containers"][0]["args"][1]: o["metadata"]["name"]
        for o in find(objects, "InferenceService")
    }
    urls = {"cosyvoice3": data["PREDICTOR_URL_V3"], "cosyvoice2": data["PREDICTOR_URL_V2"]}

    for model, url in urls.items():
        if model in deployed:
            assert url == f"http://{deployed[model]}-predictor.{NAMESPACE}.svc.cluster.local"
        else:
            assert url == ""


def test_without_predictors_the_router_renders_in_process(
    object_sets: dict[str, list[Manifest]],
) -> None:
    objects = object_sets["in-process"]
    router = knative_service(objects, "cosyvoice-router")
    (container,) = router["spec"]["template"]["spec"]["containers"]

    assert find(objects, "InferenceService") == []
    assert find(objects, "ContainerSource") == []
    env = env_of(container)
    assert env["PREDICTOR_URL_V3"] == ""
    assert env["ENGINE"] == "espeak"
    assert env["WORKER_CONCURRENCY"] == "2"
    assert env["EVENT_BUS_URL"]["secretKeyRef"]["name"] == "nats-credentials"
    # S3 without static keys or a Secret: credentials come from the pod's identity.
    assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env


# --- router ----------------------------------------------------------------------------


def test_router_is_a_warm_knative_service(default_objects: list[Manifest]) -> None:
    router = knative_service(default_objects, "cosyvoice-router")
    template = router["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    (container,) = template["spec"]["containers"]
    env = env_of(container)

    assert annotations["autoscaling.knative.dev/min-scale"] == "1"
    assert 0 < template["spec"]["timeoutSeconds"] <= 600
    assert float(env["PREDICTOR_TIMEOUT"]) < template["spec"]["responseStartTimeoutSeconds"]
    assert template["spec"]["containerConcurrency"] == 100
    assert container["ports"][0]["containerPort"] == 8080
    assert container["startupProbe"]["httpGet"] == {"path": "/health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health"}
    assert "PORT" not in env  # Knative sets PORT and refuses it in a revision
    assert env["WORKER_CONCURRENCY"] == "0"  # the render function renders
    assert env["DATABASE_URL"]["secretKeyRef"] == {"name": "cosyvoice-mongodb", "key": "url"}
    assert "envFrom" not in container


def test_deployment_mode_replaces_the_knative_service(
    object_sets: dict[str, list[Manifest]],
) -> None:
    objects = object_sets["deployment"]
    deployment = only(objects, "Deployment", "cosyvoice-router")
    service = only(objects, "Service", "cosyvoice-router")
    ingress = only(objects, "Ingress", "cosyvoice-router")
    pdb = only(objects, "PodDisruptionBudget", "cosyvoice-router")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]

    assert not any(
        o["apiVersion"].startswith("serving.knative.dev/")
        and o["metadata"]["name"] == "cosyvoice-router"
        for o in objects
    )
    assert deployment["spec"]["replicas"] == 3
    assert service["apiVersion"] == "v1"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] == {
        "name": "cosyvoice-router",
        "port": {"name": "http"},
    }
    assert env_of(container)["PORT"] == "8080"
    assert env_of(container)["API_KEY"]["secretKeyRef"]["name"] == "cosyvoice-api-key"
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/arch": "amd64"}


# --- functions and sources ---------------------------------------------------------


def test_functions_are_cluster_local_knative_services(default_objects: list[Manifest]) -> None:
    for name in ("cosyvoice-render", "cosyvoice-webhook"):
        function = knative_service(default_objects, name)
        spec = function["spec"]["template"]["spec"]
        (container,) = spec["containers"]

        assert function["metadata"]["labels"]["networking.knative.dev/visibility"] == (
            "cluster-local"
        )
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/readiness"
        assert 0 < spec["timeoutSeconds"] <= 600


@pytest.mark.parametrize("set_name", SET_NAMES)
def test_each_source_sinks_into_a_function_of_the_release(
    set_name: str, object_sets: dict[str, list[Manifest]]
) -> None:
    objects = object_sets[set_name]
    functions = {
        o["metadata"]["name"]
        for o in objects
        if o["kind"] == "Service" and o["apiVersion"].startswith("serving.knative.dev/")
    }

    for source in find(objects, "ContainerSource"):
        ref = source["spec"]["sink"]["ref"]
        assert ref["kind"] == "Service" and ref["apiVersion"] == "serving.knative.dev/v1"
        assert ref["name"] in functions


def test_render_source_drains_priorities_highest_first(default_objects: list[Manifest]) -> None:
    source = only(default_objects, "ContainerSource", "cosyvoice-source-render")
    env = env_of(source["spec"]["template"]["spec"]["containers"][0])

    assert env["JETSTREAM_SUBJECTS"].split(",") == [
        "cosyvoice.render.requested.urgent",
        "cosyvoice.render.requested.high",
        "cosyvoice.render.requested.normal",
        "cosyvoice.render.requested.low",
        "cosyvoice.render.submit",
    ]
    assert env["JETSTREAM_STREAM"] == "COSYVOICE"
    assert "JETSTREAM_CONSUMER" not in env  # durable names follow the subjects
    # Without DATABASE_URL the adapter would open SQLite in its pod and never mark a
    # dead-lettered task failed.
    assert env["DATABASE_URL"]["secretKeyRef"] == {"name": "cosyvoice-mongodb", "key": "url"}
    assert env["JETSTREAM_SINK_TIMEOUT"] == "600"
    assert source["spec"]["sink"]["ref"]["name"] == "cosyvoice-render"


def test_a_source_feeding_a_disabled_function_fails_the_render(chart: Any) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"consumers\.render feeds functions\.render"):
        render(chart, {"functions": {"render": {"enabled": False}}})


# --- pods: non-root, resources, probes, labels ---------------------------------------------


@pytest.mark.parametrize("set_name", SET_NAMES)
def test_every_container_runs_as_non_root_with_requests(
    set_name: str, object_sets: dict[str, list[Manifest]]
) -> None:
    seen = 0
    for manifest, spec, container in containers(object_sets[set_name]):
        where = f"{manifest['kind']}/{manifest['metadata']['name']}/{container['name']}"
        pod_context = spec.get("securityContext", {})
        context = container.get("securityContext", {})
        seen += 1

        assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, where
        assert context.get("runAsUser", pod_context.get("runAsUser", 1)) != 0, where
        assert context.get("allowPrivilegeEscalation") is False, where
        assert context.get("capabilities", {}).get("drop") == ["ALL"], where
        assert container["resources"]["requests"], where
        assert "memory" in container["resources"].get("limits", {}), where
    assert seen > 0


@pytest.mark.parametrize("set_name", SET_NAMES)
def test_every_http_server_has_readiness_and_liveness_probes(
    set_name: str, object_sets: dict[str, list[Manifest]]
) -> None:
    for manifest, _, container in containers(object_sets[set_name]):
        if not container.get("ports"):
            continue  # the source adapter and the test pod serve nothing
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        assert container["readinessProbe"]["httpGet"]["path"].startswith("/"), where
        assert container["livenessProbe"]["httpGet"]["path"].startswith("/"), where


@pytest.mark.parametrize("set_name", SET_NAMES)
def test_every_object_carries_the_standard_labels(
    set_name: str, object_sets: dict[str, list[Manifest]]
) -> None:
    for manifest in object_sets[set_name]:
        labels = manifest["metadata"]["labels"]
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"

        assert all(key in labels for key in STANDARD_LABELS), where
        assert labels["app.kubernetes.io/instance"] == RELEASE, where
        assert manifest["metadata"]["namespace"] == NAMESPACE, where
        for spec in pod_specs(manifest):
            assert spec.get("serviceAccountName", RELEASE) == RELEASE, where
    if set_name == "everything":
        assert all(o["metadata"]["labels"]["team"] == "speech" for o in object_sets[set_name])


# --- credentials --------------------------------------------------------------------------


def test_defaults_hold_no_credentials(default_objects: list[Manifest]) -> None:
    assert find(default_objects, "Secret") == []
    for _, _, container in containers(default_objects):
        for item in container.get("env", []):
            if item["name"] in {"DATABASE_URL", "AWS_SECRET_ACCESS_KEY", "WEBHOOK_SECRET"}:
                assert "secretKeyRef" in item["valueFrom"], item["name"]


def test_development_credentials_go_into_a_chart_secret(
    object_sets: dict[str, list[Manifest]],
) -> None:
    objects = object_sets["everything"]
    secret = only(objects, "Secret", "cosyvoice-credentials")
    router = knative_service(objects, "cosyvoice-router")
    env = env_of(router["spec"]["template"]["spec"]["containers"][0])

    assert secret["stringData"] == {
        "aws-access-key-id": "dev-access",
        "aws-secret-access-key": "dev-secret",
        "webhook-secret": "dev-signing-key",
        "api-key": "dev-api-key",
    }
    assert env["API_KEY"]["secretKeyRef"] == {"name": "cosyvoice-credentials", "key": "api-key"}
    assert env["WEBHOOK_SECRET"]["secretKeyRef"]["name"] == "cosyvoice-credentials"


def test_mongodb_community_resource_and_url(object_sets: dict[str, list[Manifest]]) -> None:
    objects = object_sets["everything"]
    mongodb = only(objects, "MongoDBCommunity", "cosyvoice-mongodb")
    router = knative_service(objects, "cosyvoice-router")
    env = env_of(router["spec"]["template"]["spec"]["containers"][0])
    (user,) = mongodb["spec"]["users"]

    assert mongodb["spec"]["type"] == "ReplicaSet"
    assert mongodb["spec"]["security"]["authentication"]["modes"] == ["SCRAM"]
    assert user["passwordSecretRef"] == {"name": "cosyvoice-mongodb-password", "key": "password"}
    assert user["roles"] == [{"name": "readWrite", "db": "cosyvoice"}]
    names = [item["name"] for item in router["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert names.index("MONGODB_PASSWORD") < names.index("DATABASE_URL")  # $(VAR) order
    assert env["DATABASE_URL"] == (
        "mongodb://cosyvoice:$(MONGODB_PASSWORD)@cosyvoice-mongodb-svc.tts.svc.cluster.local:27017"
        "/cosyvoice?replicaSet=cosyvoice-mongodb&authSource=admin"
    )


# --- NATS ---------------------------------------------------------------------------------


def test_nats_is_an_external_endpoint(chart: Any) -> None:
    url = "nats://nats.messaging.svc.cluster.local:4222"
    objects = objects_of(render(chart, {"nats": {"url": url}, "nack": {"enabled": True}}))
    stream = only(objects, "Stream")

    assert router_env(objects)["EVENT_BUS_URL"] == url
    assert stream["spec"]["servers"] == [url]


@pytest.mark.parametrize(("nack", "manage"), [(False, "true"), (True, "false")])
def test_the_stream_has_one_owner(nack: bool, manage: str, chart: Any) -> None:
    """With a NACK Stream object the processes leave the stream's configuration alone."""
    objects = objects_of(render(chart, {"nack": {"enabled": nack}, "nats": {"stream": "TTS"}}))

    for manifest, _, container in containers(objects):
        env = env_of(container)
        if "EVENT_BUS_URL" in env:
            where = f"{manifest['kind']}/{manifest['metadata']['name']}"
            assert env["JETSTREAM_MANAGE_STREAM"] == manage, where
            assert env["JETSTREAM_STREAM"] == "TTS", where


def test_nack_stream_matches_the_event_design(object_sets: dict[str, list[Manifest]]) -> None:
    stream = only(object_sets["everything"], "Stream", "cosyvoice-events")

    assert stream["apiVersion"] == "jetstream.nats.io/v1beta2"
    assert stream["spec"]["name"] == "COSYVOICE"
    assert stream["spec"]["subjects"] == ["cosyvoice.>"]
    assert stream["spec"]["storage"] == "file"
    assert stream["spec"]["replicas"] == 3
    assert stream["spec"]["duplicateWindow"] == "2m"


# --- helm test hook ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("set_name", "url"),
    [
        ("defaults", "http://cosyvoice-router.tts.svc.cluster.local"),
        ("deployment", "http://cosyvoice-router.tts.svc.cluster.local:80"),
    ],
)
def test_helm_test_pod_checks_health(
    set_name: str, url: str, object_sets: dict[str, list[Manifest]]
) -> None:
    pod = only(object_sets[set_name], "Pod", "cosyvoice-test-health")
    (container,) = pod["spec"]["containers"]

    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert env_of(container)["ROUTER_URL"] == url
    # The check itself (healthy only, then a synthesis) is in test_platform_objects.py.
    assert container["command"][:2] == ["python", "-c"]


# --- values.schema.json ------------------------------------------------------------------

BAD_VALUES = [
    pytest.param({"router": {"minScale": "abc"}}, "/router/minScale", id="min-scale-not-a-number"),
    pytest.param({"router": {"minScale": 0}}, "/router/minScale", id="cold-router"),
    pytest.param({"router": {"mode": "serverless"}}, "/router/mode", id="unknown-router-mode"),
    pytest.param({"router": {"timeoutSeconds": 7200}}, "/router/timeoutSeconds", id="timeout"),
    pytest.param({"router": {"port": 8012}}, "/router/port", id="queue-proxy-port"),
    pytest.param({"functions": {"port": 9091}}, "/functions/port", id="function-port"),
    pytest.param(
        {"predictor": {"minReplicas": 3, "maxReplicas": 2}},
        "/predictor/minReplicas",
        id="min-above-max-replicas",
    ),
    pytest.param(
        {"router": {"minScale": 5, "maxScale": 2}}, "/router/minScale", id="min-above-max-scale"
    ),
    pytest.param(
        {"predictor": {"models": {"cosyvoice3": {"storageUri": "hf://Fun-CosyVoice3"}}}},
        "/predictor/models/cosyvoice3/storageUri",
        id="hf-without-owner",
    ),
    pytest.param(
        {"predictor": {"models": {"cosyvoice3": {"storageUri": "ftp://host/model"}}}},
        "/predictor/models/cosyvoice3/storageUri",
        id="storage-scheme",
    ),
    pytest.param({"image": {"digest": "sha256:abc"}}, "/image/digest", id="short-digest"),
    pytest.param({"predictor": {"scaleMetric": "gpu"}}, "/predictor/scaleMetric", id="metric"),
    pytest.param(
        {"predictor": {"deploymentMode": "Standard"}}, "/predictor/deploymentMode", id="mode"
    ),
    pytest.param({"predictor": {"minReplicas": -1}}, "/predictor/minReplicas", id="replicas"),
    pytest.param(
        {"containerSecurityContext": {"runAsNonRoot": False}},
        "/containerSecurityContext/runAsNonRoot",
        id="root",
    ),
    pytest.param({"database": {"url": "postgres://x"}}, "/database/url", id="database-scheme"),
    pytest.param({"objectStore": {"url": "file:///data"}}, "/objectStore/url", id="blob-scheme"),
    pytest.param({"routr": {"mode": "knative"}}, "routr", id="misspelt-top-level-key"),
    pytest.param({"config": {"logLevel": "verbose"}}, "/config/logLevel", id="log-level"),
    pytest.param(
        {"jetstreamSource": {"consumers": {"render": {"function": "email"}}}},
        "/jetstreamSource/consumers/render/function",
        id="unknown-function",
    ),
]


@pytest.mark.parametrize(("values", "where"), BAD_VALUES)
def test_values_schema_rejects_bad_values(values: dict[str, Any], where: str, chart: Any) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        chart.validate_schema(values)


def test_values_schema_accepts_every_value_set(chart: Any) -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    for values in VALUE_SETS.values():
        chart.validate_schema(values)
        jsonschema.validate(merged(chart.values, values), schema)


# --- documentation of values -------------------------------------------------------------


def _documented_params() -> list[str]:
    text = (CHART_DIR / "values.yaml").read_text(encoding="utf-8")
    return re.findall(r"^## @param (\S+) \S", text, flags=re.MULTILINE)


def _leaf_paths(values: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(values, dict) and values:
        for key, value in values.items():
            yield from _leaf_paths(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def _has_path(values: Any, path: str) -> bool:
    for part in path.split("."):
        if not isinstance(values, dict) or part not in values:
            return False
        values = values[part]
    return True


def test_every_value_has_a_param_comment() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
    params = _documented_params()

    undocumented = [
        leaf
        for leaf in _leaf_paths(values)
        if not any(leaf == p or leaf.startswith(p + ".") for p in params)
    ]
    assert undocumented == []
    assert [p for p in params if not _has_path(values, p)] == []
    assert len(params) == len(set(params))


def test_readme_lists_every_param() -> None:
    readme = (CHART_DIR / "README.md").read_text(encoding="utf-8")

    assert [p for p in _documented_params() if f"| `{p}` |" not in readme] == []


# --- manifests/ ----------------------------------------------------------------------------


def _without_helm_bookkeeping(manifest: Manifest) -> Manifest:
    manifest = copy.deepcopy(manifest)
    metadata_blocks = [manifest["metadata"]]
    template = manifest.get("spec", {}).get("template")
    if isinstance(template, dict) and "metadata" in template:
        metadata_blocks.append(template["metadata"])
    for metadata in metadata_blocks:
        for label in HELM_ONLY_LABELS:
            metadata.get("labels", {}).pop(label, None)
        annotations = metadata.get("annotations")
        if annotations is not None:
            annotations.pop("checksum/config", None)
            if not annotations:
                del metadata["annotations"]
    return manifest


def test_manifests_are_valid(manifest_objects: list[Manifest], validate: Validate) -> None:
    problems = {f"{o['kind']}/{o['metadata']['name']}": validate(o) for o in manifest_objects}

    assert {name: found for name, found in problems.items() if found} == {}


def test_manifests_match_the_chart_defaults(
    manifest_objects: list[Manifest], default_objects: list[Manifest]
) -> None:
    chart_side = {
        (o["apiVersion"], o["kind"], o["metadata"]["name"]): _without_helm_bookkeeping(o)
        for o in default_objects
        if "helm.sh/hook" not in o["metadata"].get("annotations", {})
    }
    manifest_side = {
        (o["apiVersion"], o["kind"], o["metadata"]["name"]): o
        for o in manifest_objects
        if o["kind"] != "Namespace"
    }

    assert manifest_side.keys() == chart_side.keys()
    for key, manifest in manifest_side.items():
        assert manifest == chart_side[key], key


def test_manifests_live_in_one_namespace(manifest_objects: list[Manifest]) -> None:
    (namespace,) = [o for o in manifest_objects if o["kind"] == "Namespace"]

    assert namespace["metadata"]["name"] == NAMESPACE
    assert {o["metadata"].get("namespace", NAMESPACE) for o in manifest_objects} == {NAMESPACE}

"""Render the Helm chart offline and validate what it produces.

Rendering and linting go through Helm's own Go SDK (the `helm-python-sdk` wheel), so
templates, `required`/`fail` checks and values.schema.json behave as in `helm install`.
Core Kubernetes objects are checked with the schemas `kubernetes-validate` ships; custom
resources with the openAPIV3Schema of their published CRDs, tightened so that a field the
CRD does not know is an error rather than silently ignored.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import skip_missing_data

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed")

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "cosyvoice"
MANIFESTS_DIR = REPO_ROOT / "manifests"
CRD_DIR = REPO_ROOT.parent / "shared" / "crds"

RELEASE = "cosyvoice"
NAMESPACE = "tts"
KUBE_VERSION = "1.31"

Manifest = dict[str, Any]
Validate = Callable[[Manifest], list[str]]

# Value sets every rendering and admission test runs against: the documented ways to
# install the chart.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "deployment": {
        "router": {
            "mode": "deployment",
            "replicaCount": 3,
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "tls": [{"hosts": ["tts.example.com"], "secretName": "tts-tls"}],
                "hosts": [
                    {"host": "tts.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}
                ],
            },
            "nodeSelector": {"kubernetes.io/arch": "amd64"},
        },
        "auth": {"existingSecret": "cosyvoice-api-key"},
    },
    "both-models": {
        "predictor": {"models": {"cosyvoice2": {"enabled": True}}},
    },
    "cpu-predictor": {
        "predictor": {
            "engine": "espeak",
            "minReplicas": 1,
            "maxReplicas": 2,
            "progressDeadline": "600s",
            "resources": {
                "requests": {"cpu": "1", "memory": "1Gi", "ephemeral-storage": "1Gi"},
                "limits": {"memory": "2Gi", "ephemeral-storage": "2Gi"},
            },
        },
    },
    "no-functions": {
        "functions": {"render": {"enabled": False}, "webhook": {"enabled": False}},
        "jetstreamSource": {"enabled": False},
    },
    "everything": {
        "global": {"imagePullSecrets": ["regcred"], "imageRegistry": "registry.example.com"},
        "commonLabels": {"team": "speech"},
        "image": {"digest": "sha256:" + "a" * 64},
        "predictor": {
            "deploymentMode": "Serverless",
            "models": {"cosyvoice2": {"enabled": True}},
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "runtimeClassName": "nvidia",
            "extraEnv": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
        },
        "nack": {"enabled": True, "replicas": 3},
        "mongodb": {"community": {"enabled": True}},
        "objectStore": {"accessKeyId": "dev-access", "secretAccessKey": "dev-secret"},
        "webhook": {"secret": "dev-signing-key"},
        "auth": {"apiKey": "dev-api-key"},
        "router": {
            "visibility": "cluster-local",
            "annotations": {"example.com/owner": "tts"},
            "extraVolumes": [{"name": "ca", "configMap": {"name": "corporate-ca"}}],
            "extraVolumeMounts": [
                {"name": "ca", "mountPath": "/etc/ssl/corporate", "readOnly": True}
            ],
        },
        "config": {"extraEnv": {"SEGMENT_MAX_CHARS": 300, "DEBUG": False}},
    },
    "in-process": {
        "predictor": {"enabled": False},
        "functions": {"render": {"enabled": False}, "webhook": {"enabled": False}},
        "jetstreamSource": {"enabled": False},
        "config": {"engine": "espeak"},
        "nats": {"existingSecret": "nats-credentials"},
        "auth": {"existingSecret": "cosyvoice-api-key"},
        "objectStore": {"existingSecret": ""},
    },
}

# Custom resources whose CRD is not among the published copies; checked field by field.
UNCHECKED_KINDS = {("mongodbcommunity.mongodb.com/v1", "MongoDBCommunity")}

CRD_FILES = (
    "kserve-inferenceservice.yaml",
    "knative-serving-service.yaml",
    "knative-eventing-containersource.yaml",
    "nack-jetstream-crds.yaml",
)


def parse_documents(text: str) -> list[Manifest]:
    return [doc for doc in yaml.load_all(text, Loader=yaml.CSafeLoader) if doc]


def render(chart: Any, values: dict[str, Any]) -> dict[str, str]:
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects_of(rendered: dict[str, str]) -> list[Manifest]:
    """Every Kubernetes object of a render (NOTES.txt is text, not an object)."""
    objects: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml"):
            objects.extend(parse_documents(text))
    return objects


@pytest.fixture(scope="session")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def rendered_sets(chart: Any) -> dict[str, dict[str, str]]:
    return {name: render(chart, values) for name, values in VALUE_SETS.items()}


@pytest.fixture(scope="session")
def object_sets(rendered_sets: dict[str, dict[str, str]]) -> dict[str, list[Manifest]]:
    return {name: objects_of(rendered) for name, rendered in rendered_sets.items()}


@pytest.fixture(scope="session")
def default_objects(object_sets: dict[str, list[Manifest]]) -> list[Manifest]:
    return object_sets["defaults"]


def _tighten(schema: Any) -> Any:
    """Forbid fields a CRD schema does not declare, as the API server's pruning would drop them.

    Objects marked x-kubernetes-preserve-unknown-fields, or that already say what extra
    properties may hold, are left open.
    """
    if isinstance(schema, dict):
        tightened = {key: _tighten(value) for key, value in schema.items()}
        if (
            "properties" in tightened
            and "additionalProperties" not in tightened
            and not tightened.get("x-kubernetes-preserve-unknown-fields")
        ):
            tightened["additionalProperties"] = False
        return tightened
    if isinstance(schema, list):
        return [_tighten(item) for item in schema]
    return schema


def _crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    validators: dict[tuple[str, str], jsonschema.Draft7Validator] = {}
    for filename in CRD_FILES:
        text = (CRD_DIR / filename).read_text(encoding="utf-8")
        for crd in parse_documents(text):
            group = crd["spec"]["group"]
            kind = crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if not version.get("served", True):
                    continue
                schema = _tighten(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                properties = schema.setdefault("properties", {})
                properties.setdefault("apiVersion", {"type": "string"})
                properties.setdefault("kind", {"type": "string"})
                properties.setdefault("metadata", {"type": "object"})
                api_version = f"{group}/{version['name']}"
                validators[(api_version, kind)] = jsonschema.Draft7Validator(schema)
    return validators


@pytest.fixture(scope="session")
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    if not CRD_DIR.is_dir():
        skip_missing_data(f"published CRDs not found at {CRD_DIR}")
    return _crd_validators()


def _pod_template_problems(template: dict[str, Any]) -> list[str]:
    """Check a ContainerSource template, free-form in its CRD, as a core PodTemplate."""
    wrapper = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "template"},
        "template": template,
    }
    try:
        kubernetes_validate.validate(wrapper, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"spec.template: {error.message}"]
    return []


def _metadata_problems(manifest: Manifest) -> list[str]:
    """CRD schemas leave metadata open; the API server still wants string labels."""
    metadata = manifest.get("metadata", {})
    problems = [] if metadata.get("name") else ["metadata.name is missing"]
    for field in ("labels", "annotations"):
        for key, value in (metadata.get(field) or {}).items():
            if not isinstance(value, str):
                problems.append(f"metadata.{field}.{key}: {value!r} is not a string")
    return problems


@pytest.fixture(scope="session")
def validate(crd_validators: dict[tuple[str, str], jsonschema.Draft7Validator]) -> Validate:
    """Return the problems of one object: an empty list means it is valid."""

    def problems(manifest: Manifest) -> list[str]:
        key = (manifest["apiVersion"], manifest["kind"])
        if key in UNCHECKED_KINDS:
            return []
        if key in crd_validators:
            found = [
                f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
                for error in crd_validators[key].iter_errors(manifest)
            ]
            found += _metadata_problems(manifest)
            if manifest["kind"] == "ContainerSource":
                found += _pod_template_problems(manifest["spec"]["template"])
            return found
        group = manifest["apiVersion"].rpartition("/")[0]
        if "." in group and not group.endswith(".k8s.io"):
            return [f"no schema for custom resource {key}"]
        try:
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            return [f"{'.'.join(str(p) for p in error.path)}: {error.message}"]
        except kubernetes_validate.SchemaNotFoundError as error:
            return [error.message]
        return []

    return problems


@pytest.fixture(scope="session")
def manifest_objects() -> list[Manifest]:
    """The objects of manifests/, in the order kustomization.yaml lists their files."""
    kustomization = yaml.safe_load((MANIFESTS_DIR / "kustomization.yaml").read_text())
    objects: list[Manifest] = []
    for resource in kustomization["resources"]:
        objects.extend(parse_documents((MANIFESTS_DIR / resource).read_text(encoding="utf-8")))
    return objects

"""The rules Knative Serving, Knative Eventing and KServe admission webhooks enforce
beyond their CRD schemas, as a checker for rendered objects.

A CRD schema says which fields exist; the webhooks then refuse objects the schema lets
through. The rules here follow the webhooks' own validation code:

- Knative Serving (`pkg/apis/serving/k8s_validation.go`, `v1/revision_validation.go`):
  the queue-proxy's reserved ports, the reserved variables Knative sets itself, port names
  `http1`/`h2c`, one port across all containers, probes aimed at that port, request
  timeouts within `max-revision-timeout-seconds` (600 unless the cluster raised it),
  `responseStartTimeoutSeconds` within `timeoutSeconds`, min-scale ≤ max-scale, mounted
  volumes, DNS-1035 names of at most 63 characters.
- KServe (InferenceService webhook and storage initializer): DNS-1035 names short
  enough for the `-predictor` Knative Service and its revisions, storage URIs the
  initializer understands (`hf://OWNER/MODEL[:REVISION]` for Hugging Face), minReplicas ≤
  maxReplicas, and the predictor container obeying the Knative rules above (Knative mode
  turns it into a Knative Service). Kubernetes itself wants extended resources such as
  GPUs requested exactly as limited.
- Knative Eventing (ContainerSource webhook): a sink (`ref` or absolute `uri`) and
  containers with an image.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

Manifest = dict[str, Any]

DEFAULT_MAX_REVISION_TIMEOUT = 600
RESERVED_PORTS = frozenset({8008, 8012, 8013, 8022, 9090, 9091})
RESERVED_ENV = frozenset({"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"})
PORT_NAMES = frozenset({"", "http1", "h2c"})
RESERVED_CONTAINER_NAMES = frozenset({"queue-proxy"})
KSERVE_SCHEMES = ("gs://", "s3://", "pvc://", "file://", "http://", "https://", "hdfs://",
                  "webhdfs://", "oci://", "hf://")  # fmt: skip
HF_URI = re.compile(r"^hf://[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(:[\w.-]+)?$")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# KServe names the Knative Service `<isvc>-predictor`; its revisions add `-00001`.
PREDICTOR_SUFFIX = "-predictor-00001"
GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu")


def is_knative_service(manifest: Manifest) -> bool:
    return manifest["kind"] == "Service" and manifest["apiVersion"].startswith(
        "serving.knative.dev/"
    )


def problems(manifest: Manifest, max_timeout: int = DEFAULT_MAX_REVISION_TIMEOUT) -> list[str]:
    """What the admission webhooks would refuse in one object (empty: admitted)."""
    if is_knative_service(manifest):
        return list(_knative_service(manifest, max_timeout))
    if manifest["kind"] == "InferenceService":
        return list(_inference_service(manifest, max_timeout))
    if manifest["kind"] == "ContainerSource":
        return list(_container_source(manifest))
    return list(_extended_resources_of_pods(manifest))


# --- Knative Serving ------------------------------------------------------------------


def _name(name: str, longest: int = 63) -> Iterator[str]:
    if not DNS_1035.match(name):
        yield f"name {name!r} is not a DNS-1035 label"
    if len(name) > longest:
        yield f"name {name!r} is longer than {longest} characters"


def _knative_service(manifest: Manifest, max_timeout: int) -> Iterator[str]:
    yield from _name(manifest["metadata"]["name"])
    template = manifest["spec"]["template"]
    yield from _scale_annotations(template.get("metadata", {}).get("annotations", {}))
    spec = template["spec"]
    timeout = spec.get("timeoutSeconds")
    if timeout is not None and not 0 <= timeout <= max_timeout:
        yield f"timeoutSeconds {timeout} is outside 0..{max_timeout}"
    response_start = spec.get("responseStartTimeoutSeconds")
    if response_start is not None:
        ceiling = timeout if timeout is not None else max_timeout
        if not 0 <= response_start <= ceiling:
            yield f"responseStartTimeoutSeconds {response_start} is outside 0..{ceiling}"
    idle = spec.get("idleTimeoutSeconds")
    if idle is not None and not 0 <= idle <= max_timeout:
        yield f"idleTimeoutSeconds {idle} is outside 0..{max_timeout}"
    yield from knative_pod_spec(spec)


def _scale_annotations(annotations: dict[str, str]) -> Iterator[str]:
    low = annotations.get("autoscaling.knative.dev/min-scale")
    high = annotations.get("autoscaling.knative.dev/max-scale")
    if low is not None and high is not None and int(high) != 0 and int(low) > int(high):
        yield f"min-scale {low} is above max-scale {high}"


def knative_pod_spec(spec: dict[str, Any]) -> Iterator[str]:
    """The pod rules of a Knative revision (also what a Knative-mode predictor becomes)."""
    containers = spec.get("containers") or []
    if not containers:
        yield "no containers"
        return
    ports = [port for container in containers for port in container.get("ports") or []]
    if len(ports) > 1:
        yield f"{len(ports)} container ports: Knative serves exactly one"
    serving = ports[0] if ports else {"containerPort": 8080, "name": ""}
    volumes = {volume["name"]: volume for volume in spec.get("volumes") or []}
    mounted = set()
    for container in containers:
        where = f"container {container.get('name')!r}"
        if container.get("name") in RESERVED_CONTAINER_NAMES:
            yield f"{where}: the name is reserved"
        for port in container.get("ports") or []:
            if port.get("containerPort") in RESERVED_PORTS:
                yield f"{where}: port {port['containerPort']} is reserved by the queue-proxy"
            if port.get("name", "") not in PORT_NAMES:
                yield f"{where}: port name {port['name']!r} is not http1 or h2c"
            if port.get("protocol", "TCP") != "TCP":
                yield f"{where}: port protocol {port['protocol']} is not TCP"
        for variable in container.get("env") or []:
            if variable["name"] in RESERVED_ENV:
                yield f"{where}: {variable['name']} is a reserved environment variable"
        if container.get("ports") or len(containers) == 1:
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                yield from _probe(where, kind, container.get(kind), serving)
        for mount in container.get("volumeMounts") or []:
            mounted.add(mount["name"])
            volume = volumes.get(mount["name"])
            if volume is None:
                yield f"{where}: volumeMount {mount['name']!r} has no matching volume"
            elif not ({"emptyDir", "persistentVolumeClaim"} & volume.keys()) and not mount.get(
                "readOnly"
            ):
                yield f"{where}: volumeMount {mount['name']!r} must be readOnly"
        yield from _extended_resources(where, container.get("resources") or {})
    for name in volumes.keys() - mounted:
        yield f"volume {name!r} is not mounted"


def _probe(
    where: str, kind: str, probe: dict[str, Any] | None, serving: dict[str, Any]
) -> Iterator[str]:
    if probe is None:
        return
    for handler in ("httpGet", "tcpSocket"):
        port = (probe.get(handler) or {}).get("port")
        if port is None:
            continue
        if isinstance(port, str) and port != (serving.get("name") or "http"):
            yield f"{where}: {kind} port {port!r} is not the serving port's name"
        if isinstance(port, int) and port != serving.get("containerPort", 8080):
            yield f"{where}: {kind} port {port} is not the serving port"
    if kind == "readinessProbe" and probe.get("periodSeconds", 1) == 0:
        for field in ("failureThreshold", "timeoutSeconds"):
            if probe.get(field):
                yield f"{where}: {kind}.{field} is not allowed when periodSeconds is 0"


def _extended_resources(where: str, resources: dict[str, Any]) -> Iterator[str]:
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    for name in GPU_RESOURCES:
        if name in requests and str(requests[name]) != str(limits.get(name)):
            yield f"{where}: {name} request {requests[name]} differs from its limit"


def _extended_resources_of_pods(manifest: Manifest) -> Iterator[str]:
    spec = manifest.get("spec") or {}
    pod = spec.get("template", {}).get("spec") if "template" in spec else None
    if manifest["kind"] == "Pod":
        pod = spec
    for container in (pod or {}).get("containers") or []:
        yield from _extended_resources(
            f"container {container.get('name')!r}", container.get("resources") or {}
        )


# --- KServe ---------------------------------------------------------------------------


def storage_uri_problem(uri: str) -> str | None:
    if not uri.startswith(KSERVE_SCHEMES):
        return f"storageUri {uri!r} has a scheme the storage initializer does not know"
    if uri.startswith("hf://") and not HF_URI.match(uri):
        return f"storageUri {uri!r} is not hf://OWNER/MODEL[:REVISION]"
    return None


def _inference_service(manifest: Manifest, max_timeout: int) -> Iterator[str]:
    name = manifest["metadata"]["name"]
    yield from _name(name, longest=63 - len(PREDICTOR_SUFFIX))
    predictor = manifest["spec"]["predictor"]
    low, high = predictor.get("minReplicas", 1), predictor.get("maxReplicas", 0)
    if low < 0:
        yield f"minReplicas {low} is negative"
    if high and low > high:
        yield f"minReplicas {low} is above maxReplicas {high}"
    timeout = predictor.get("timeout")
    if timeout is not None and not 0 < timeout <= max_timeout:
        yield f"timeout {timeout} is outside 1..{max_timeout}"
    uris = [predictor.get("model", {}).get("storageUri")]
    for container in predictor.get("containers") or []:
        uris += [v.get("value") for v in container.get("env") or [] if v["name"] == "STORAGE_URI"]
    for uri in filter(None, uris):
        problem = storage_uri_problem(uri)
        if problem:
            yield problem
    mode = manifest["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode")
    if mode in (None, "Knative", "Serverless"):
        yield from knative_pod_spec(predictor)
    else:
        for container in predictor.get("containers") or []:
            yield from _extended_resources(
                f"container {container.get('name')!r}", container.get("resources") or {}
            )


# --- Knative Eventing -----------------------------------------------------------------


def _container_source(manifest: Manifest) -> Iterator[str]:
    yield from _name(manifest["metadata"]["name"])
    sink = manifest["spec"].get("sink") or {}
    ref, uri = sink.get("ref"), sink.get("uri")
    if not ref and not uri:
        yield "sink needs a ref or a uri"
    if ref and not all(ref.get(field) for field in ("apiVersion", "kind", "name")):
        yield "sink.ref needs apiVersion, kind and name"
    if uri and not ref and not re.match(r"^[a-z][a-z0-9+.-]*://", uri):
        yield f"sink.uri {uri!r} is not absolute"
    containers = manifest["spec"].get("template", {}).get("spec", {}).get("containers") or []
    if not containers:
        yield "template has no containers"
    for container in containers:
        if not container.get("image"):
            yield f"container {container.get('name')!r} has no image"
        yield from _extended_resources(
            f"container {container.get('name')!r}", container.get("resources") or {}
        )

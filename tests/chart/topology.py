"""Every workload of the Helm chart as a local process, configured as the chart renders it.

`Topology` renders helm/cosyvoice and starts one process per workload container of the
render: the predictors (InferenceService), the router and the functions (Knative
Services, or the router's Deployment) and the JetStream sources (ContainerSource). Each
runs the container's command, args and environment AS RENDERED:

- the image's ENTRYPOINT, CMD, ENV and WORKDIR are read from its Dockerfile (`IMAGES`);
  the image's paths map onto this machine (`/opt/venv` is the venv, `/home/cosyvoice`,
  where the chart mounts an emptyDir, is a folder of the process's own);
- `valueFrom.secretKeyRef`/`configMapKeyRef` read the rendered Secrets and ConfigMaps,
  then the Secrets the cluster already holds (made by the test from its values); a key
  found in neither fails here, as the pod would fail to start;
- `$(VAR)` references expand as the kubelet expands them;
- a URL naming a cluster Service (`http://cosyvoice-render.ns.svc.cluster.local`) is
  rewritten to the loopback port of the process behind that Service; a URL naming a
  Service the render does not create is an error.

Nothing is added beyond the render except what the platform injects, all of it in
`PLATFORM_INJECTED` and `_listen_where_routed` below, so a setting the chart forgets
fails here as it would in the cluster.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.chart.conftest import CHART_DIR, NAMESPACE, Manifest, objects_of, render
from tests.servers import HOST, ServerProcess, free_port

REPO_ROOT = CHART_DIR.parents[1]
VENV = Path(sys.executable).parent.parent

# The image each container runs, by the last part of its repository (values.yaml names
# the Dockerfile of each image).
IMAGES: dict[str, Path] = {
    "cosyvoice-api": REPO_ROOT / "Dockerfile",
    "cosyvoice-predictor": REPO_ROOT / "predictor" / "Dockerfile",
}

# Where the images' own paths are on this machine. `{home}` is the process's folder.
IMAGE_PATHS: dict[str, str] = {"/opt/venv": str(VENV), "/home/cosyvoice": "{home}"}

# PATH of the base images (python:3.11-slim, pytorch/pytorch): their Python, here the
# venv's, is on it.
BASE_PATH = f"{VENV / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# What the platform adds to a container on top of the chart's render, and nothing else:
#   PORT          Knative Serving, in every revision (router, functions, predictors):
#                 the port it routes to, the container's port;
#   K_SINK        Knative Eventing, in a ContainerSource: the URL of its spec.sink;
#   --http_port   KServe's model server listens on this flag (8080 without it); KServe
#                 adds no flags to a custom `kserve-container` (--model-name is the
#                 chart's), so the flag is only rewritten or added here for the port.
# Every pod has an address of its own; here all share 127.0.0.1, so a container port
# becomes a free loopback port, in PORT and in the listen settings the render gives
# (HOST, LISTEN_ADDRESS, --http_port), after checking they name the container port.
PLATFORM_INJECTED = ("PORT", "K_SINK", "--http_port")
KSERVE_PORT_FLAG = "--http_port"
KSERVE_DEFAULT_PORT = 8080
WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]")

START_ORDER = ("InferenceService", "Service", "Deployment", "ContainerSource")
COMPONENT_LABEL = "app.kubernetes.io/component"

Secrets = dict[str, dict[str, str]]


class TopologyError(AssertionError):
    """The render cannot run as it stands: the cluster would fail the same way."""


# --- images ------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: dict[str, str]
    workdir: str


def _instructions(dockerfile: Path) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, rest) of the final stage, continuation lines joined."""
    stage: list[tuple[str, str]] = []
    logical = ""
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        logical += stripped
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        keyword, _, rest = logical.partition(" ")
        logical = ""
        if keyword.upper() == "FROM":
            stage = []
        stage.append((keyword.upper(), rest.strip()))
    yield from stage


def _expand_shell(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), text)


def read_image(dockerfile: Path) -> Image:
    """ENTRYPOINT, CMD, ENV and WORKDIR of a Dockerfile's final stage."""
    env = {"PATH": BASE_PATH}
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir = "/"
    for keyword, rest in _instructions(dockerfile):
        if keyword == "ENV":
            tokens = shlex.split(rest)
            pairs = (
                [token.partition("=")[::2] for token in tokens]
                if "=" in tokens[0]
                else [(tokens[0], " ".join(tokens[1:]))]
            )
            for name, value in pairs:
                env[name] = _expand_shell(value, env)
        elif keyword == "ENTRYPOINT":
            entrypoint = tuple(json.loads(rest))
        elif keyword == "CMD":
            cmd = tuple(json.loads(rest))
        elif keyword == "WORKDIR":
            workdir = rest
    return Image(entrypoint, cmd, env, workdir)


def image_of(reference: str) -> Image:
    repository = reference.split("@", 1)[0].rsplit(":", 1)[0].rsplit("/", 1)[-1]
    if repository not in IMAGES:
        raise TopologyError(f"no Dockerfile known for image {reference}")
    return read_image(IMAGES[repository])


def local_path(value: str, home: Path) -> str:
    """An image path (or a colon-separated list of them) as it is on this machine."""
    if not value.startswith("/"):
        return value
    parts = []
    for part in value.split(":"):
        for image_path, here in IMAGE_PATHS.items():
            if part == image_path or part.startswith(image_path + "/"):
                part = here.format(home=home) + part[len(image_path) :]
                break
        parts.append(part)
    return ":".join(parts)


# --- what the render says ------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One container the render asks the cluster to run."""

    kind: str
    name: str
    component: str
    container: dict[str, Any]
    port: int | None  # the container port the platform routes to
    readiness_path: str | None
    sink: dict[str, Any] | None = None
    hostnames: tuple[str, ...] = ()  # cluster names (host or host:port) reaching it
    knative: bool = False


def _service_hostnames(name: str, port: int | None = None) -> tuple[str, ...]:
    hosts = (
        f"{name}.{NAMESPACE}.svc.cluster.local",
        f"{name}.{NAMESPACE}.svc",
        f"{name}.{NAMESPACE}",
    )
    return hosts if port in (None, 80) else tuple(f"{host}:{port}" for host in hosts)


def _container_port(container: dict[str, Any], name: str | int | None = None) -> int | None:
    ports = container.get("ports") or []
    for port in ports:
        if name is None or name in (port.get("name"), port["containerPort"]):
            return int(port["containerPort"])
    return None


def _readiness_path(container: dict[str, Any]) -> str | None:
    probe = container.get("readinessProbe") or {}
    return (probe.get("httpGet") or {}).get("path")


def _the_container(spec: dict[str, Any], owner: str) -> dict[str, Any]:
    containers = spec["containers"]
    if len(containers) != 1:
        raise TopologyError(f"{owner}: expected one container, found {len(containers)}")
    return containers[0]


def workloads_of(objects: list[Manifest]) -> list[Workload]:
    """The containers of a render, predictors first and sources last."""
    found: list[Workload] = []
    services = [o for o in objects if o["apiVersion"] == "v1" and o["kind"] == "Service"]
    for manifest in objects:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        component = manifest["metadata"].get("labels", {}).get(COMPONENT_LABEL, name)
        spec = manifest.get("spec", {})
        if kind == "InferenceService":
            container = _the_container(spec["predictor"], name)
            port = _container_port(container) or KSERVE_DEFAULT_PORT
            # KServe fronts the predictor with a Knative Service `<name>-predictor`.
            hosts = _service_hostnames(f"{name}-predictor") + _service_hostnames(name)
            found.append(
                Workload(
                    kind,
                    name,
                    component,
                    container,
                    port,
                    _readiness_path(container),
                    hostnames=hosts,
                    knative=True,
                )
            )
        elif kind == "Service" and manifest["apiVersion"].startswith("serving.knative.dev/"):
            container = _the_container(spec["template"]["spec"], name)
            found.append(
                Workload(
                    kind,
                    name,
                    component,
                    container,
                    _container_port(container),
                    _readiness_path(container),
                    hostnames=_service_hostnames(name),
                    knative=True,
                )
            )
        elif kind == "Deployment":
            template = spec["template"]
            container = _the_container(template["spec"], name)
            labels = template["metadata"].get("labels", {})
            hosts = ()
            for service in services:
                selector = service["spec"].get("selector") or {}
                if selector and all(labels.get(k) == v for k, v in selector.items()):
                    for port in service["spec"]["ports"]:
                        hosts += _service_hostnames(service["metadata"]["name"], port["port"])
            found.append(
                Workload(
                    kind,
                    name,
                    component,
                    container,
                    _container_port(container),
                    _readiness_path(container),
                    hostnames=hosts,
                )
            )
        elif kind == "ContainerSource":
            container = _the_container(spec["template"]["spec"], name)
            found.append(Workload(kind, name, component, container, None, None, spec["sink"]))
    return sorted(found, key=lambda w: START_ORDER.index(w.kind))


class SecretStore:
    """The Secrets and ConfigMaps a pod may read: the render's, then the cluster's."""

    def __init__(self, objects: list[Manifest], cluster_secrets: Secrets) -> None:
        self.secrets: Secrets = {name: dict(data) for name, data in cluster_secrets.items()}
        self.config_maps: Secrets = {}
        for manifest in objects:
            if manifest["apiVersion"] != "v1":
                continue
            name = manifest["metadata"]["name"]
            if manifest["kind"] == "Secret":
                data = {
                    key: base64.b64decode(value).decode()
                    for key, value in (manifest.get("data") or {}).items()
                }
                self.secrets[name] = {**data, **(manifest.get("stringData") or {})}
            elif manifest["kind"] == "ConfigMap":
                self.config_maps[name] = dict(manifest.get("data") or {})

    def value(self, ref: dict[str, Any], kind: str, where: str) -> str | None:
        store = self.secrets if kind == "Secret" else self.config_maps
        data = store.get(ref["name"])
        if data is None or ref["key"] not in data:
            if ref.get("optional"):
                return None
            raise TopologyError(
                f"{where} needs key {ref['key']!r} of {kind} {ref['name']!r}, "
                "which neither the chart nor the cluster holds"
            )
        return data[ref["key"]]

    def all_of(self, ref: dict[str, Any], kind: str, where: str) -> dict[str, str]:
        store = self.secrets if kind == "Secret" else self.config_maps
        if ref["name"] not in store:
            if ref.get("optional"):
                return {}
            raise TopologyError(f"{where} reads {kind} {ref['name']!r}, which does not exist")
        return store[ref["name"]]


def expand_references(text: str, env: dict[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion: earlier variables only, `$$` escapes."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, text)


def container_env(workload: Workload, store: SecretStore) -> dict[str, str]:
    """The environment the kubelet gives the container, in the render's order."""
    env: dict[str, str] = {}
    where = f"{workload.kind} {workload.name}"
    for source in workload.container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
            if key in source:
                data = store.all_of(source[key], kind, where)
                env.update({prefix + name: value for name, value in data.items()})
    for item in workload.container.get("env") or []:
        name = item["name"]
        value_from = item.get("valueFrom")
        if value_from is None:
            env[name] = expand_references(str(item.get("value", "")), env)
            continue
        if "secretKeyRef" in value_from:
            value = store.value(value_from["secretKeyRef"], "Secret", f"{where} env {name}")
        elif "configMapKeyRef" in value_from:
            value = store.value(value_from["configMapKeyRef"], "ConfigMap", f"{where} env {name}")
        elif value_from.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            value = NAMESPACE
        else:
            raise TopologyError(f"{where} env {name}: {value_from} is not emulated here")
        if value is not None:
            env[name] = value
    return env


class ClusterNames:
    """Cluster Service names → the loopback address of the local process behind them."""

    URL = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<authority>[^/\s,;?#\"']+)")

    def __init__(self) -> None:
        self.addresses: dict[str, str] = {}

    def add(self, hostnames: Iterable[str], port: int) -> None:
        for host in hostnames:
            self.addresses[host] = f"{HOST}:{port}"

    def rewrite(self, text: str, where: str) -> str:
        def replace(match: re.Match[str]) -> str:
            authority = match.group("authority")
            credentials, at, hostport = authority.rpartition("@")
            if match.group("scheme") in ("http", "https") and hostport.endswith(":80"):
                hostport = hostport.removesuffix(":80")
            if hostport in self.addresses:
                scheme = match.group("scheme")
                return f"{scheme}://{credentials}{at}{self.addresses[hostport]}"
            host = hostport.rsplit(":", 1)[0] if hostport.count(":") == 1 else hostport
            if host.endswith((".svc.cluster.local", ".svc", f".{NAMESPACE}")):
                raise TopologyError(
                    f"{where} points at {match.group(0)}, a Service the chart does not create"
                )
            return match.group(0)

        return self.URL.sub(replace, text)


# --- processes -------------------------------------------------------------------------


@dataclass
class Plan:
    """How one workload runs here: argv, environment, folder, port."""

    workload: Workload
    argv: list[str]
    env: dict[str, str]
    home: Path
    port: int
    readiness_url: str | None = None
    injected: dict[str, str] = field(default_factory=dict)


def _split_listen(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _listen_where_routed(plan: Plan, args: list[str]) -> list[str]:
    """Give the process its loopback port where the pod would listen on the container port.

    The rendered listen settings must name the port the platform routes to; the
    process then listens on its own loopback port instead.
    """
    workload, env, port = plan.workload, plan.env, plan.port
    where = f"{workload.kind} {workload.name}"
    if workload.port is None:
        return args

    def routed(value: int, setting: str) -> None:
        if value != workload.port:
            raise TopologyError(
                f"{where}: {setting} listens on {value}, but the platform routes to "
                f"container port {workload.port}"
            )

    if workload.knative:
        plan.injected["PORT"] = str(port)
    elif "PORT" in env:
        routed(int(env["PORT"]), "PORT")
        env["PORT"] = str(port)
    if env.get("HOST") in WILDCARD_HOSTS:
        env["HOST"] = HOST
    if "LISTEN_ADDRESS" in env:
        _, listen_port = _split_listen(env["LISTEN_ADDRESS"])
        routed(listen_port, "LISTEN_ADDRESS")
        env["LISTEN_ADDRESS"] = f"{HOST}:{port}"
    if workload.kind == "InferenceService":
        args = list(args)
        flags = [i for i, arg in enumerate(args) if arg.split("=", 1)[0] == KSERVE_PORT_FLAG]
        if not flags:
            routed(KSERVE_DEFAULT_PORT, f"KServe's default {KSERVE_PORT_FLAG}")
            plan.injected[KSERVE_PORT_FLAG] = str(port)
            args += [KSERVE_PORT_FLAG, str(port)]
        for i in flags:
            if "=" in args[i]:
                routed(int(args[i].split("=", 1)[1]), KSERVE_PORT_FLAG)
                args[i] = f"{KSERVE_PORT_FLAG}={port}"
            else:
                routed(int(args[i + 1]), KSERVE_PORT_FLAG)
                args[i + 1] = str(port)
    return args


def plan_workloads(objects: list[Manifest], cluster_secrets: Secrets, root: Path) -> list[Plan]:
    """The argv and environment of every workload, as the cluster would start it."""
    workloads = workloads_of(objects)
    store = SecretStore(objects, cluster_secrets)
    names = ClusterNames()
    ports: dict[str, int] = {}
    for workload in workloads:
        ports[workload.name] = free_port()
        names.add(workload.hostnames, ports[workload.name])

    plans: list[Plan] = []
    for workload in workloads:
        where = f"{workload.kind} {workload.name}"
        home = root / workload.name
        home.mkdir(parents=True, exist_ok=True)
        image = image_of(workload.container["image"])
        rendered = container_env(workload, store)
        env = {name: local_path(value, home) for name, value in image.env.items()}
        env.setdefault("HOME", str(home))  # the image's user, 10001, lives there
        env.update(
            {
                name: names.rewrite(local_path(value, home), f"{where} env {name}")
                for name, value in rendered.items()
            }
        )
        command = workload.container.get("command") or list(image.entrypoint)
        args = workload.container.get("args")
        if args is None:
            args = [] if workload.container.get("command") else list(image.cmd)
        argv = [
            names.rewrite(expand_references(str(arg), rendered), f"{where} args")
            for arg in [*command, *args]
        ]
        plan = Plan(workload, [], env, home, ports[workload.name])
        argv = argv[:1] + _listen_where_routed(plan, argv[1:])
        if workload.sink is not None:
            plan.injected["K_SINK"] = _sink_url(workload, objects, names)
        executable = shutil.which(argv[0], path=env.get("PATH", BASE_PATH))
        if executable is None:
            raise TopologyError(f"{where}: {argv[0]} is not on the image's PATH")
        plan.argv = [executable, *argv[1:]]
        plan.env.update(plan.injected)
        if "PATH" in plan.env:  # the image's PATH prepends what the base image has
            plan.env["PATH"] = ":".join(dict.fromkeys(plan.env["PATH"].split(":")))
        if workload.readiness_path:
            plan.readiness_url = f"http://{HOST}:{plan.port}{workload.readiness_path}"
        plans.append(plan)
    return plans


def _sink_url(workload: Workload, objects: list[Manifest], names: ClusterNames) -> str:
    """What Knative puts in K_SINK: the address of the sink's Service."""
    sink = workload.sink or {}
    where = f"{workload.kind} {workload.name} sink"
    if "uri" in sink:
        return names.rewrite(sink["uri"], where)
    ref = sink["ref"]
    matches = [
        o
        for o in objects
        if o["apiVersion"] == ref["apiVersion"]
        and o["kind"] == ref["kind"]
        and o["metadata"]["name"] == ref["name"]
    ]
    if not matches:
        raise TopologyError(f"{where} refers to {ref}, which the chart does not create")
    return names.rewrite(f"http://{ref['name']}.{NAMESPACE}.svc.cluster.local", where)


class LocalContainer(ServerProcess):
    """One workload's process: exactly the planned environment, nothing inherited."""

    start_timeout = 120.0

    def __init__(self, plan: Plan) -> None:
        self.name = plan.workload.name
        super().__init__(plan.home, plan.port, plan.env)
        self.plan = plan

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        return self.plan.argv

    def launch(self) -> LocalContainer:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.plan.home,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.plan.env,
            )
        return self

    def ready(self) -> bool:
        if self.plan.readiness_url is None:
            return True
        try:
            return httpx.get(self.plan.readiness_url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        return super().stop(sig, timeout)


class Topology:
    """The chart's workloads, rendered with `values`, running here."""

    def __init__(self, chart: Any, values: dict[str, Any], secrets: Secrets, root: Path) -> None:
        self.objects = objects_of(render(chart, values))
        self.plans = plan_workloads(self.objects, secrets, root)
        self.processes = [LocalContainer(plan) for plan in self.plans]

    def start(self) -> Topology:
        try:
            for kind in START_ORDER:
                tier = [p for p in self.processes if p.plan.workload.kind == kind]
                for process in tier:
                    process.launch()
                for process in tier:
                    process.wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # All at once, as a namespace being deleted: each then only waits for its own exit.
        for process in self.processes:
            if process.running and process.proc is not None:
                process.proc.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            process.stop()

    def __enter__(self) -> Topology:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kill(self, component: str) -> None:
        """SIGKILL a workload's process, as when its node or pod is lost."""
        self.process(component).stop(signal.SIGKILL)

    def stop_workload(self, component: str) -> None:
        """Stop a workload as Kubernetes does (SIGTERM, then SIGKILL after a grace)."""
        self.process(component).stop()

    def start_workload(self, component: str, *, wait: bool = True) -> LocalContainer:
        """Start a stopped workload again with the same command, environment and port."""
        process = self.process(component)
        process.launch()
        if wait:
            process.wait_until_ready()
        return process

    def process(self, component: str) -> LocalContainer:
        matches = [p for p in self.processes if p.plan.workload.component == component]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} workloads of component {component!r}")
        return matches[0]

    def url(self, component: str) -> str:
        return self.process(component).url

    def env(self, component: str) -> dict[str, str]:
        return dict(self.process(component).plan.env)

    def exited(self) -> list[str]:
        return [
            f"{p.name} exited with {p.proc.returncode}" if p.proc else f"{p.name} is stopped"
            for p in self.processes
            if not p.running
        ]

    def logs(self, size: int = 3000) -> str:
        return "\n".join(
            f"--- {p.name} ({' '.join(p.plan.argv[1:])}) ---\n{p.log_tail(size)}"
            for p in self.processes
        )

    def mentions(self, needle: str, limit: int = 40) -> str:
        """The log lines of every process that mention `needle`, for a failure message."""
        lines = [
            f"{p.name}: {line}"
            for p in self.processes
            if p.log_path.exists()
            for line in p.log_path.read_text(errors="replace").splitlines()
            if needle in line
        ]
        return "\n".join(lines[-limit:])

    def describe(self) -> str:
        """Each process with its argv and environment, for a reader of a failure."""
        return "\n".join(
            f"{p.name}: {shlex.join(p.plan.argv)}\n  "
            + "\n  ".join(f"{k}={v}" for k, v in sorted(p.plan.env.items()))
            for p in self.processes
        )

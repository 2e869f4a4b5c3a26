"""The function topology with several render pods, as processes on one machine.

NATS, the API (rendering nothing itself: `WORKER_CONCURRENCY=0`) and `pods` render
functions, each fed by its own JetStream source adapter (what a ContainerSource per pod
amounts to). The sources share the durable render consumers, so JetStream hands each
event to one of them: segment jobs of one long-form task spread over the pods. All share
one SQLite file and one folder as repository and blob store.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.conftest import ApiServer, embedded_env, wait_http
from tests.function_topology import Process, function_process, source_process
from tests.servers import NatsServer, free_port

SEGMENT_LINE = re.compile(r"task (\S+): segment (\d+)/(\d+) rendered")


@dataclass
class RenderPods:
    api: ApiServer
    renders: list[Process] = field(default_factory=list)

    def segments_rendered(self, task_id: str) -> list[list[int]]:
        """Per pod, the segment indexes (0-based) it rendered for `task_id`, in order."""
        return [
            segments_in_log(pod.log.read_text(errors="replace"), task_id) for pod in self.renders
        ]


def segments_in_log(text: str, task_id: str) -> list[int]:
    return [
        int(match.group(2)) - 1
        for match in SEGMENT_LINE.finditer(text)
        if match.group(1) == task_id
    ]


@contextmanager
def render_pods(root: Path, pods: int, **overrides: str) -> Iterator[RenderPods]:
    root.mkdir(parents=True, exist_ok=True)
    processes: list[Process] = []
    with NatsServer(root / "nats") as nats:
        env = {
            **embedded_env(root),
            "EVENT_BUS_URL": nats.url,
            "WORKER_CONCURRENCY": "0",
            "WEBHOOK_SECRET": "render-pods-secret",
            **overrides,
        }
        api = ApiServer(root, env).start()
        topology = RenderPods(api)
        try:
            ports = [free_port() for _ in range(pods)]
            for n, port in enumerate(ports):
                pod = function_process("render", port, env, root, f"render-{n}")
                processes.append(pod)
                topology.renders.append(pod)
            for port in ports:
                wait_http(f"http://127.0.0.1:{port}/health/readiness", 90)
            for n, port in enumerate(ports):
                subjects = "cosyvoice.render.requested.*"
                processes.append(source_process(port, subjects, env, root, f"source-{n}"))
            yield topology
        finally:
            for process in processes:
                process.stop()
            api.stop()

"""A function process (`cosyvoice-api function render`) serves `/metrics` on its event
port and logs the request id an event carries (the CloudEvents attribute `requestid`)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx

from tests.e2e.conftest import BIN, embedded_env
from tests.servers import ServerProcess


class FunctionProcess(ServerProcess):
    name = "function-render"
    start_timeout = 90.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        listen = f"127.0.0.1:{self.port}"
        return [str(BIN / "cosyvoice-api"), "function", "render", "--listen", listen]

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health/readiness", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


def test_function_serves_metrics_and_logs_the_event_request_id(tmp_path: Path) -> None:
    function = FunctionProcess(
        tmp_path, env={**embedded_env(tmp_path), "LOG_FORMAT": "json"}
    ).start()
    try:
        scraped = httpx.get(f"{function.url}/metrics", timeout=10)
        assert scraped.status_code == 200
        assert "cosyvoice_task_transitions" in scraped.text
        request_id = f"fn-{uuid.uuid4().hex[:12]}"
        event = httpx.post(
            function.url,
            content=json.dumps({"task_id": f"missing-{request_id}"}),
            headers={
                "ce-specversion": "1.0",
                "ce-type": "ai.cosyvoice.render.requested.v1",
                "ce-source": "/cosyvoice",
                "ce-id": str(uuid.uuid4()),
                "ce-requestid": request_id,
                "content-type": "application/json",
            },
            timeout=30,
        )
        assert event.status_code == 200, event.text  # a task that does not exist: acked
        deadline = time.monotonic() + 10
        while request_id not in function.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, function.log_path.read_text()[-2000:]
            time.sleep(0.1)
        lines = function.log_path.read_text(errors="replace").splitlines()
        mine = [json.loads(line) for line in lines if request_id in line]
        assert mine and all(record["request_id"] == request_id for record in mine)
    finally:
        function.stop()

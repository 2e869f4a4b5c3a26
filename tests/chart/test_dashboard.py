"""The Grafana dashboard ConfigMap, and the monitors that feed it the right targets."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.chart.conftest import CHART_DIR, NAMESPACE, Manifest, Validate, objects_of, render
from tests.chart.test_chart import env_of, find, knative_service, only, router_env

DASHBOARD_FILE = CHART_DIR / "files" / "dashboards" / "cosyvoice.json"

# Every metric family the platform defines (core/metrics.py): the dashboard shows each.
METRICS = (
    "cosyvoice_http_requests_total",
    "cosyvoice_http_request_duration_seconds_bucket",
    "cosyvoice_time_to_first_audio_seconds_bucket",
    "cosyvoice_real_time_factor_bucket",
    "cosyvoice_engine_slots_busy",
    "cosyvoice_engine_slots",
    "cosyvoice_engine_queue_depth",
    "cosyvoice_task_queue_depth",
    "cosyvoice_task_transitions_total",
    "cosyvoice_webhook_deliveries_total",
    "cosyvoice_backend_errors_total",
)


def _dashboard_objects(chart: Any, **dashboard: Any) -> list[Manifest]:
    values = {"metrics": {"dashboard": {"enabled": True, **dashboard}}}
    return objects_of(render(chart, values))


def _expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_is_not_rendered_by_default(default_objects: list[Manifest]) -> None:
    assert not [
        cm
        for cm in find(default_objects, "ConfigMap")
        if cm["metadata"].get("labels", {}).get("grafana_dashboard")
    ]


def test_enabled_dashboard_is_a_configmap_grafana_loads(chart: Any, validate: Validate) -> None:
    objects = _dashboard_objects(
        chart, labels={"team": "speech"}, annotations={"grafana_folder": "TTS"}
    )
    config_map = only(objects, "ConfigMap", "cosyvoice-dashboard")
    assert validate(config_map) == []
    metadata = config_map["metadata"]
    assert metadata["namespace"] == NAMESPACE
    assert metadata["labels"]["grafana_dashboard"] == "1"
    assert metadata["labels"]["team"] == "speech"
    assert metadata["annotations"] == {"grafana_folder": "TTS"}

    dashboard = json.loads(config_map["data"]["cosyvoice.json"])
    assert dashboard == json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "cosyvoice-serving"
    expressions = " ".join(_expressions(dashboard))
    for metric in METRICS:
        assert re.search(rf"\b{metric}\b", expressions), f"no panel shows {metric}"


def test_every_panel_queries_the_chosen_prometheus(chart: Any) -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    names = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "job"} <= names
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert 'job=~"$job"' in target["expr"], panel["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_monitors_scrape_metrics_on_the_port_the_app_serves(chart: Any) -> None:
    knative = objects_of(render(chart, {"metrics": {"serviceMonitor": {"enabled": True}}}))
    for monitor in find(knative, "PodMonitor"):
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        # Knative names the user container's port user-port in every revision pod.
        assert endpoint == {**endpoint, "port": "user-port", "path": "/metrics"}
    deployment = objects_of(
        render(
            chart,
            {"router": {"mode": "deployment"}, "metrics": {"serviceMonitor": {"enabled": True}}},
        )
    )
    monitor = only(deployment, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    service = only(deployment, "Service", monitor["metadata"]["name"])
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in [port["name"] for port in service["spec"]["ports"]]


def test_router_and_functions_log_json_in_the_chart(default_objects: list[Manifest]) -> None:
    assert router_env(default_objects)["LOG_FORMAT"] == "json"
    for name in ("cosyvoice-render", "cosyvoice-webhook"):
        (container,) = knative_service(default_objects, name)["spec"]["template"]["spec"][
            "containers"
        ]
        assert env_of(container)["LOG_FORMAT"] == "json"

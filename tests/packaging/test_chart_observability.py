"""The chart's observability objects without a cluster: the Grafana dashboard ConfigMap, the PrometheusRule and
the serving PodMonitor, rendered by helm; the alerts checked and unit-tested by the pinned ``promtool`` (built
from Go modules by e2e/localcluster/build-tools.sh, like helm), and every metric a dashboard panel or an alert
queries checked against what the operator and the runtime really export (a scrape of their collectors).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import CHART, REPO, find, helm_template, one
from prometheus_client import REGISTRY, CollectorRegistry

import neuron_operator.cli
import neuron_operator.leader  # registers the leader gauge
import neuron_operator.metrics  # registers the domain metrics
from neuron_operator.resources import names, serving
from neuron_runtime.metrics import Metrics as RuntimeMetrics

RELEASE_NS = "neuron-system"
DASHBOARD = CHART / "dashboards" / "neuron-operator.json"
ALERTS_TEST = Path(__file__).with_name("alerts_test.yaml")
#: Metric names a query may use that no collector of ours exports: Prometheus' own per-target series.
PROMETHEUS_SERIES = frozenset({"up"})
#: Grafana's variables, replaced by what they expand to so promtool can parse the queries.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*", "$deployment": ".*"}

ALL_ON: dict[str, Any] = {
    "grafana": {"dashboard": {"enabled": True}},
    "prometheus": {"rules": {"enabled": True}, "podMonitor": {"enabled": True}},
}


@pytest.fixture(scope="module")
def promtool() -> Path:
    """The pinned promtool (a warm tool cache makes this a few stat() calls; cold: a Go build of minutes)."""
    out = subprocess.run(
        ["bash", str(REPO / "e2e" / "localcluster" / "build-tools.sh"), "promtool"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    dirs = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    path = Path(dirs["PROMTOOL"]) / "promtool"
    assert path.exists(), f"promtool not found at {path}"
    return path


@pytest.fixture(scope="module")
def objects(helm: Path) -> list[dict[str, Any]]:
    return helm_template(helm, ALL_ON, namespace=RELEASE_NS)


def _families(registry: Any) -> list[tuple[str, str]]:
    return [(m.name, m.type) for m in registry.collect()]


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every series name the operator process and a serving pod export, from a scrape of their collectors."""

    class FakeRuntime:  # what _OperatorCollector reads: API writes and reconcile passes
        class kube:
            writes: dict[tuple[str, str], int] = {}

        class queue:
            total_passes: dict[str, int] = {}

    operator = CollectorRegistry()
    operator.register(neuron_operator.cli._OperatorCollector(FakeRuntime()))
    families = _families(REGISTRY) + _families(operator) + _families(RuntimeMetrics().registry)
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    names_ = {name + suffix for name, kind in families for suffix in suffixes.get(kind, ("",))}
    assert "neuron_operator_leader" in names_  # neuron_operator.leader's gauge
    assert "neuron_operator_reconcile_errors_total" in names_  # neuron_operator.metrics
    return names_


def metrics_in(expr: str) -> set[str]:
    """Names of the series a PromQL expression selects (ours are prefixed; `up` is Prometheus')."""
    return set(re.findall(r"\bneuron_(?:operator|runtime)_[a-zA-Z0-9_]+\b", expr)) | (
        {"up"} if re.search(r"\bup\s*\{", expr) else set()
    )


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expr) of every panel target and every templating query of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
            walk(panel.get("panels", []))

    walk(board["panels"])
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            assert inner, f"variable {var['name']}: expected label_values(<selector>, <label>), got {query}"
            found.append((f"variable {var['name']}", inner.group(1)))
    return found


def rule_groups(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return {"groups": one(objects, "PrometheusRule")["spec"]["groups"]}


# ------------------------------------------------------------------------------------------- dashboard


def test_dashboard_configmap(objects: list[dict[str, Any]]) -> None:
    cm = one(objects, "ConfigMap", "neuron-operator-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == RELEASE_NS
    assert cm["data"] == {"neuron-operator.json": DASHBOARD.read_text().rstrip("\n")}
    assert json.loads(cm["data"]["neuron-operator.json"])["uid"] == "neuron-operator"


def test_dashboard_configmap_namespace_labels_and_annotations(helm: Path) -> None:
    values = {
        "grafana": {
            "dashboard": {
                "enabled": True,
                "namespace": "monitoring",
                "labels": {"team": "ml"},
                "annotations": {"grafana_folder": "Neuron"},
            }
        }
    }
    cm = one(helm_template(helm, values, namespace=RELEASE_NS), "ConfigMap")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["team"] == "ml"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Neuron"}


def test_dashboard_covers_the_operator_and_the_runtime() -> None:
    used = set().union(*(metrics_in(expr) for _, expr in dashboard_queries()))
    for needle in (
        "neuron_operator_leader",
        "neuron_operator_reconcile_duration_seconds_bucket",
        "neuron_operator_reconcile_errors_total",
        "neuron_operator_workqueue_depth",
        "neuron_operator_api_writes_total",
        "neuron_operator_compiles_total",
        "neuron_operator_compile_duration_seconds_bucket",
        "neuron_operator_rollout_state",
        "neuron_runtime_request_duration_seconds_bucket",
        "neuron_runtime_requests_total",
        "neuron_runtime_queue_depth_rows",
        "neuron_runtime_batch_size_rows_sum",
        "neuron_runtime_rejections_total",
    ):
        assert needle in used, f"no dashboard panel shows {needle}"


def test_dashboard_queries_only_exported_metrics(exported: set[str]) -> None:
    for where, expr in dashboard_queries():
        used = metrics_in(expr)
        assert used, f"{where}: queries no metric: {expr}"
        assert used <= exported, f"{where}: {sorted(used - exported)} is exported by neither operator nor runtime"


def test_dashboard_queries_parse(promtool: Path, tmp_path: Path) -> None:
    """promtool parses every dashboard query (as a recording rule, Grafana's variables expanded)."""
    rules = []
    for i, (_, query) in enumerate(dashboard_queries()):
        expr = query
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"unexpanded Grafana variable in {query}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboard_panels_have_unique_ids_and_a_datasource() -> None:
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


# -------------------------------------------------------------------------------------------- alerts


def test_rules_reference_only_exported_metrics(objects: list[dict[str, Any]], exported: set[str]) -> None:
    alerts = [r for g in rule_groups(objects)["groups"] for r in g["rules"]]
    assert {r["alert"] for r in alerts} == {
        "NeuronOperatorDown",
        "NeuronOperatorNoLeader",
        "NeuronOperatorReconcileErrors",
        "NeuronCompileFailures",
        "NeuronDeploymentStalled",
        "NeuronServingLatencyHigh",
        "NeuronServingErrors",
        "NeuronServingQueueFull",
    }
    for rule in alerts:
        used = metrics_in(rule["expr"])
        assert used, rule["alert"]
        assert used <= exported | PROMETHEUS_SERIES, f"{rule['alert']}: {sorted(used - exported)} not exported"
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]


def test_promtool_checks_and_unit_tests_the_rules(
    promtool: Path, objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups(objects), sort_keys=False))
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    check = subprocess.run(
        [str(promtool), "check", "rules", "--lint=all", "--lint-fatal", str(tmp_path / "rules.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 8 rules found" in check.stdout
    test = subprocess.run(
        [str(promtool), "test", "rules", str(tmp_path / ALERTS_TEST.name)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert test.returncode == 0, test.stdout + test.stderr


def test_rule_thresholds_come_from_values(helm: Path) -> None:
    values = {"prometheus": {"rules": {"enabled": True, "servingLatencyP99Seconds": 0.25, "servingErrorRatio": 0.01}}}
    rules = {r["alert"]: r for g in rule_groups(helm_template(helm, values))["groups"] for r in g["rules"]}
    assert rules["NeuronServingLatencyHigh"]["expr"].rstrip().endswith("> 0.25")
    assert rules["NeuronServingErrors"]["expr"].rstrip().endswith("> 0.01")


def test_no_leader_alert_only_with_leader_election(helm: Path) -> None:
    def alerts(values: dict[str, Any]) -> set[str]:
        values = {**values, "prometheus": {"rules": {"enabled": True}}}
        return {r["alert"] for g in rule_groups(helm_template(helm, values))["groups"] for r in g["rules"]}

    assert "NeuronOperatorNoLeader" not in alerts({"leaderElection": {"enabled": False}})
    assert {"NeuronOperatorDown", "NeuronOperatorNoLeader"}.isdisjoint(alerts({"replicas": 0}))


def test_operator_alerts_select_the_service_monitors_job(objects: list[dict[str, Any]]) -> None:
    service = one(objects, "Service")
    rules = {r["alert"]: r for g in rule_groups(objects)["groups"] for r in g["rules"]}
    job = f'job="{service["metadata"]["name"]}", namespace="{RELEASE_NS}"'
    assert job in rules["NeuronOperatorDown"]["expr"]
    assert job in rules["NeuronOperatorNoLeader"]["expr"]


# ---------------------------------------------------------------------------------------- PodMonitor


def test_pod_monitor_selects_serving_pods_and_their_port(objects: list[dict[str, Any]]) -> None:
    monitor = one(objects, "PodMonitor")
    assert monitor["metadata"]["namespace"] == RELEASE_NS
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    # The labels and port name the serving builder gives its pods (and only serving pods: component runtime).
    assert monitor["spec"]["selector"]["matchLabels"] == names.common_labels("runtime")
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert (endpoint["port"], endpoint["path"]) == (serving.PORT_NAME, "/metrics")
    label = "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", names.LABEL_DEPLOYMENT)
    assert endpoint["relabelings"] == [
        {"sourceLabels": [label], "targetLabel": "neuron_deployment", "action": "replace"}
    ]


def test_pod_monitor_watches_only_the_watched_namespaces(helm: Path) -> None:
    values = {"watchNamespaces": ["team-a", "team-b"], "prometheus": {"podMonitor": {"enabled": True}}}
    monitor = one(helm_template(helm, values), "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_service_monitor_keeps_the_metrics_namespace_label(helm: Path) -> None:
    values = {"metrics": {"serviceMonitor": {"enabled": True}}}
    monitor = one(helm_template(helm, values), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True


def test_observability_objects_are_off_by_default(helm: Path) -> None:
    objects = helm_template(helm)
    for kind in ("PrometheusRule", "PodMonitor", "ConfigMap"):
        assert not find(objects, kind), kind

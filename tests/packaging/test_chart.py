"""The Helm chart without a cluster: lint, render (default and non-default values), labels, schema, RBAC,
security context, and the NEURON_OPERATOR_* contract with ``OperatorSettings``.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import (
    CHART,
    KUBE_VERSION,
    REPO,
    RULE_SETS,
    STANDARD_LABELS,
    HelmError,
    chart_without_rule,
    container_env,
    default_values,
    find,
    helm_template,
    one,
    rbac_rules,
    run_helm,
)

from neuron_operator import __version__
from neuron_operator.settings import OperatorSettings

RELEASE_NS = "neuron-system"

#: Every non-default value the tests exercise at once.
CUSTOM: dict[str, Any] = {
    "replicas": 2,
    "watchNamespaces": ["team-a", "team-b"],
    "image": {"tag": "1.2.3", "digest": "sha256:" + "ab" * 32},
    "leaderElection": {"leaseName": "custom-lease", "leaseDurationSeconds": 30},
    "runtimeImages": {
        "pullPolicy": "Always",
        "cpu": {"repository": "registry.example.com/rt", "tag": "cpu-1"},
        "neuronx": {"repository": "registry.example.com/rt-neuronx", "tag": "nx-1"},
        "inf1": {"repository": "registry.example.com/rt-inf1", "tag": "inf1-1"},
    },
    "runtimeRunAsRoot": True,
    "compile": {
        "nodeSelector": {"node.kubernetes.io/instance-type": "c7i.4xlarge"},
        "tolerations": [{"key": "compile", "operator": "Exists", "effect": "NoSchedule"}],
        "resources": {"cpu": "8", "memory": "32Gi"},
        "timeoutSeconds": 7200,
        "backoffLimit": 2,
        "jobTTLSeconds": 600,
    },
    "artifacts": {
        "mountPath": "/artifacts",
        "pvc": {"name": "shared-artifacts", "create": True, "storageClassName": "efs-sc", "size": "1Ti"},
    },
    "neuronScheduler": {"name": "neuron-scheduler", "mode": "always"},
    "resyncSeconds": 30.5,
    "backoff": {"baseSeconds": 2, "maxSeconds": 120},
    "health": {"port": 9091},
    "metrics": {
        "port": 9090,
        "service": {"port": 9999},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
    },
    "serviceAccount": {"name": "neuron-op", "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::0:role/x"}},
    "podAnnotations": {"example.com/a": "b"},
    "podLabels": {"team": "ml"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}
                ]
            }
        }
    },
    "priorityClassName": "system-cluster-critical",
    "imagePullSecrets": ["regcred"],
    "argocd": {"healthChecks": True},
    "logLevel": "DEBUG",
    "logFormat": "text",
    "prometheus": {"rules": {"enabled": True}, "podMonitor": {"enabled": True, "labels": {"release": "prom"}}},
}


@pytest.fixture(scope="module")
def default_objects(helm: Path) -> list[dict[str, Any]]:
    return helm_template(helm, namespace=RELEASE_NS)


@pytest.fixture(scope="module")
def custom_objects(helm: Path) -> list[dict[str, Any]]:
    return helm_template(helm, CUSTOM, namespace=RELEASE_NS)


# ------------------------------------------------------------------------------------------------ lint


def test_helm_lint_strict(helm: Path, tmp_path: Path) -> None:
    out = run_helm(helm, "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART))
    assert "0 chart(s) failed" in out
    custom = tmp_path / "custom.yaml"
    custom.write_text(json.dumps(CUSTOM))
    out = run_helm(helm, "lint", "--strict", "--kube-version", KUBE_VERSION, "--values", str(custom), str(CHART))
    assert "0 chart(s) failed" in out


def test_chart_metadata_matches_project() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["kubeVersion"] == ">=1.29.0-0"
    assert chart["appVersion"] == project["version"] == __version__


def test_kube_version_floor(helm: Path) -> None:
    with pytest.raises(HelmError, match="kubeVersion"):
        run_helm(helm, "template", "x", str(CHART), "--kube-version", "1.28.9")


# --------------------------------------------------------------------------------------------- render


def test_default_render(default_objects: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in default_objects)
    assert kinds == sorted(
        [
            "Deployment",
            "ServiceAccount",
            "Service",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        ]
    ), "defaults: operator, SA, metrics Service, cluster-wide + capacity RBAC, leader-election Role; nothing optional"
    deployment = one(default_objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"ghcr.io/neuron-dev/neuron-operator:{__version__}"
    assert container["command"] == ["neuron-operator"]
    assert container["args"] == ["run"]


def test_custom_render(custom_objects: list[dict[str, Any]]) -> None:
    deployment = one(custom_objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["containers"][0]["image"] == "ghcr.io/neuron-dev/neuron-operator:1.2.3@sha256:" + "ab" * 32
    assert pod["serviceAccountName"] == "neuron-op"
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == CUSTOM["nodeSelector"]
    assert pod["tolerations"] == CUSTOM["tolerations"]
    assert pod["affinity"] == CUSTOM["affinity"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert deployment["spec"]["template"]["metadata"]["annotations"] == CUSTOM["podAnnotations"]
    assert deployment["spec"]["template"]["metadata"]["labels"]["team"] == "ml"
    ports = {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]}
    assert ports == {"metrics": 9090, "health": 9091}

    pdb = one(custom_objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    monitor = one(custom_objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    service = one(custom_objects, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9999, "targetPort": "metrics", "protocol": "TCP"}]
    pvc = one(custom_objects, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "shared-artifacts"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["storageClassName"] == "efs-sc"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    sa = one(custom_objects, "ServiceAccount")
    assert sa["metadata"]["annotations"] == CUSTOM["serviceAccount"]["annotations"]


@pytest.mark.parametrize("which", ["default", "custom"])
def test_every_object_has_standard_labels(
    which: str, default_objects: list[dict[str, Any]], custom_objects: list[dict[str, Any]]
) -> None:
    objects = default_objects if which == "default" else custom_objects
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        missing = [k for k in STANDARD_LABELS if k not in labels]
        assert not missing, f"{obj['kind']}/{obj['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == __version__
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert all(k in pod_labels for k in STANDARD_LABELS)


def test_namespaced_objects_name_their_namespace(custom_objects: list[dict[str, Any]]) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    for obj in custom_objects:
        if obj["kind"] in cluster_scoped:
            assert "namespace" not in obj["metadata"]
        elif obj["kind"] not in {"Role", "RoleBinding"} or obj["metadata"]["name"].endswith("leader-election"):
            assert obj["metadata"]["namespace"] == RELEASE_NS, obj["metadata"]


def test_optional_objects_are_off_by_default(default_objects: list[dict[str, Any]]) -> None:
    optional = ("ServiceMonitor", "PodDisruptionBudget", "PersistentVolumeClaim", "ConfigMap", "PrometheusRule")
    for kind in (*optional, "PodMonitor"):
        assert not find(default_objects, kind), f"{kind} rendered although not enabled"


def test_no_operator_pods_with_zero_replicas(helm: Path) -> None:
    objects = helm_template(helm, {"replicas": 0})
    assert one(objects, "Deployment")["spec"]["replicas"] == 0
    assert not find(objects, "PodDisruptionBudget")


def test_service_monitor_needs_the_service(helm: Path) -> None:
    with pytest.raises(HelmError, match=r"metrics\.service\.enabled"):
        helm_template(helm, {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}})


def test_health_and_metrics_ports_differ(helm: Path) -> None:
    with pytest.raises(HelmError, match="must differ"):
        helm_template(helm, {"health": {"port": 8080}})


# ------------------------------------------------------------------------------------------- security


def test_restricted_security_context(default_objects: list[dict[str, Any]]) -> None:
    pod = one(default_objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["containers"][0]["resources"]["limits"]["memory"]


def test_probes_hit_healthz_and_readyz_on_the_health_port(custom_objects: list[dict[str, Any]]) -> None:
    """Liveness /healthz, readiness /readyz: both served by `neuron-operator run` from start-up, standby or
    leader (tests/operator/test_cli_leader.py), so a standby is Ready and never killed for lacking the Lease."""
    container = one(custom_objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert ports[container[probe]["httpGet"]["port"]] == CUSTOM["health"]["port"]


@pytest.mark.parametrize("replicas", [1, 2])
def test_upgrades_roll_one_new_pod_at_a_time_without_dropping_below_replicas(helm: Path, replicas: int) -> None:
    """A new pod starts next to the old ones and becomes Ready as a standby; only then does an old pod stop
    (and release the Lease). tests/packaging/test_chart_upgrade_on_kind.py runs it on the kind cluster."""
    deployment = one(helm_template(helm, {"replicas": replicas}), "Deployment")
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }


def test_downward_api_pod_identity(default_objects: list[dict[str, Any]]) -> None:
    env = {e["name"]: e for e in container_env(one(default_objects, "Deployment"))}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


# ----------------------------------------------------------------------------------------------- RBAC


def _policy_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for o in objects if o["kind"] in {"Role", "ClusterRole"} for r in o.get("rules", [])]


@pytest.mark.parametrize("which", ["default", "custom"])
def test_rbac_has_no_wildcards(
    which: str, default_objects: list[dict[str, Any]], custom_objects: list[dict[str, Any]]
) -> None:
    objects = default_objects if which == "default" else custom_objects
    sources = [r for rules in rbac_rules().values() for r in rules] + _policy_rules(objects)
    assert sources
    for rule in sources:
        for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert not any("*" in item for item in rule.get(key, [])), f"wildcard in {key}: {rule}"


def test_rbac_rules_file_is_the_only_source(
    default_objects: list[dict[str, Any]], custom_objects: list[dict[str, Any]]
) -> None:
    rules = rbac_rules()
    assert set(rules) == set(RULE_SETS)
    roles = {(o["kind"], o["metadata"]["name"]): o["rules"] for o in default_objects if "rules" in o}
    assert roles == {
        ("ClusterRole", "neuron-operator"): rules["workload"] + rules["diagnostics"] + rules["scaling"],
        ("ClusterRole", "neuron-operator-capacity"): rules["capacity"],
        ("Role", "neuron-operator-leader-election"): rules["leaderElection"],
    }
    per_namespace = find(custom_objects, "Role", "neuron-operator")
    assert sorted(r["metadata"]["namespace"] for r in per_namespace) == ["team-a", "team-b"]
    assert all(r["rules"] == rules["workload"] + rules["diagnostics"] + rules["scaling"] for r in per_namespace)
    # Capacity-aware rollouts read nodes and pods cluster-wide, also when watching some namespaces only.
    assert one(custom_objects, "ClusterRole", "neuron-operator-capacity")["rules"] == rules["capacity"]
    assert not find(custom_objects, "ClusterRole", "neuron-operator"), "no cluster-wide workload rules"
    bindings = find(custom_objects, "RoleBinding", "neuron-operator")
    assert {b["metadata"]["namespace"] for b in bindings} == {"team-a", "team-b"}
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "neuron-operator",
        }
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "neuron-op", "namespace": RELEASE_NS}]


def test_rbac_rule_set() -> None:
    """The proven rule set (tests/operator/test_rbac.py removes each rule and watches the scenario fail);
    a change here is deliberate and must be proven there too."""
    flat: dict[tuple[str, str], list[str]] = {}
    for rules in rbac_rules().values():
        for rule in rules:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    flat[(group, resource)] = sorted({*flat.get((group, resource), []), *rule["verbs"]})
    assert flat == {
        ("neuron.dev", "neuronmodels"): ["get", "list", "watch"],
        # patch: the autoscaler's spec.replicas (scaling set)
        ("neuron.dev", "neurondeployments"): ["get", "list", "patch", "watch"],
        ("neuron.dev", "neuronmodels/status"): ["patch"],
        ("neuron.dev", "neurondeployments/status"): ["patch"],
        ("batch", "jobs"): sorted(["get", "list", "watch", "create", "patch"]),
        # delete: a promoted or reverted canary Deployment (scaling set)
        ("apps", "deployments"): sorted(["get", "list", "watch", "create", "patch", "delete"]),
        ("", "services"): sorted(["get", "create", "patch"]),
        ("policy", "poddisruptionbudgets"): sorted(["get", "create", "patch"]),
        ("", "pods"): ["list", "watch"],
        ("", "pods/log"): ["get"],
        ("", "pods/proxy"): ["get"],  # the serving pods' /metrics (scaling set)
        ("", "events"): ["create", "list"],
        ("", "persistentvolumeclaims"): ["get"],
        ("", "nodes"): ["list"],
        ("coordination.k8s.io", "leases"): sorted(["get", "create", "update"]),
    }


def test_one_rule_can_be_dropped(helm: Path, tmp_path: Path) -> None:
    """The hook for the RBAC proof: a chart copy without one rule renders without exactly that rule."""
    chart, removed = chart_without_rule(tmp_path, "workload", 0)
    objects = helm_template(helm, chart=chart)
    workload = one(objects, "ClusterRole", "neuron-operator")["rules"]
    assert removed not in workload
    rules = rbac_rules()
    assert len(workload) == len(rules["workload"]) + len(rules["diagnostics"]) + len(rules["scaling"]) - 1


def test_leader_election_off_drops_the_lease_role(helm: Path) -> None:
    objects = helm_template(helm, {"leaderElection": {"enabled": False}})
    assert not find(objects, "Role")
    env = {e["name"]: e.get("value") for e in container_env(one(objects, "Deployment"))}
    assert env["NEURON_OPERATOR_LEADER_ELECTION"] == "false"


# --------------------------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "replicas=-1"], "replicas"),
        (["--set-string", "replicas=two"], "replicas"),
        (["--set", "unknownKey=1"], "unknownKey"),
        (["--set", "image.unknown=1"], "unknown"),
        (["--set", "compile.resources.gpu=1"], "gpu"),
        (["--set", "neuronScheduler.mode=sometimes"], "mode"),
        (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (["--set", "runtimeImages.pullPolicy=Sometimes"], "pullPolicy"),
        (["--set", "watchNamespaces={Bad_Namespace}"], "watchNamespaces"),
        (["--set", "watchNamespaces={a,a}"], "watchNamespaces"),
        (["--set", "image.digest=sha256:short"], "digest"),
        (["--set", "image.repository=Not A Repo"], "repository"),
        (["--set", "compile.timeoutSeconds=10"], "timeoutSeconds"),
        (["--set", "compile.resources.memory=lots"], "memory"),
        (["--set", "metrics.port=70000"], "port"),
        (["--set", "health.port=0"], "port"),
        (["--set", "resyncSeconds=0"], "resyncSeconds"),
        (["--set", "artifacts.mountPath=relative/path"], "mountPath"),
        (["--set", "artifacts.pvc.accessModes={ReadWriteSometimes}"], "accessModes"),
        (["--set", "metrics.serviceMonitor.interval=soon"], "interval"),
        (["--set", "podDisruptionBudget.maxUnavailable=half"], "maxUnavailable"),
        (["--set", "tolerations[0].operator=Maybe"], "operator"),
        (["--set", "leaderElection.enabled=yes-please"], "enabled"),
        (["--set", "runtimeRunAsRoot=yes-please"], "runtimeRunAsRoot"),
        (["--set", "affinity.nodeAfinity.x=1"], "nodeAfinity"),
        (["--set", "logLevel=TRACE"], "logLevel"),
        (["--set", "logFormat=xml"], "logFormat"),
        (["--set", "grafana.dashboard.unknown=1"], "unknown"),
        (["--set", "prometheus.rules.servingErrorRatio=2"], "servingErrorRatio"),
        (["--set", "prometheus.rules.servingLatencyP99Seconds=0"], "servingLatencyP99Seconds"),
        (["--set", "prometheus.podMonitor.interval=soon"], "interval"),
    ],
)
def test_schema_rejects_bad_values(helm: Path, args: list[str], message: str) -> None:
    with pytest.raises(HelmError) as err:
        run_helm(helm, "template", "x", str(CHART), "--kube-version", KUBE_VERSION, *args)
    assert "schema" in str(err.value)
    assert message in str(err.value)


def _walk_schema(schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths of object schemas that accept undeclared keys (free-form maps must say what values they take)."""
    loose: list[str] = []
    if schema.get("type") == "object":
        extra = schema.get("additionalProperties")
        if "properties" in schema and extra is not False:
            loose.append(path or "/")
        if (
            "properties" not in schema
            and not isinstance(extra, dict)
            and path.rsplit("/", 1)[-1] not in {"global", "nodeAffinity", "podAffinity", "podAntiAffinity"}
        ):
            loose.append(path or "/")
    for key, sub in schema.get("properties", {}).items():
        loose += _walk_schema(sub, f"{path}/{key}")
    if isinstance(schema.get("items"), dict):
        loose += _walk_schema(schema["items"], f"{path}[]")
    return loose


def _value_paths(values: Any, path: str = "") -> set[str]:
    paths = {path} if path else set()
    if isinstance(values, dict):
        for key, sub in values.items():
            paths |= _value_paths(sub, f"{path}/{key}")
    return paths


def _schema_paths(schema: dict[str, Any], path: str = "") -> set[str]:
    paths = {path} if path else set()
    for key, sub in schema.get("properties", {}).items():
        paths |= _schema_paths(sub, f"{path}/{key}")
    return paths


def test_schema_covers_every_value_and_closes_every_level() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert _walk_schema(schema) == [], "object levels that accept unknown keys"
    values = default_values()
    # Free-form maps (nodeSelector, labels, ...) are empty in values.yaml; their schema types the entries.
    in_values = _value_paths(values)
    in_schema = _schema_paths(schema) - {"/global"}
    # Keys the schema allows that values.yaml leaves unset on purpose (no CPU limit: throttling a
    # reconciler only slows it down).
    optional = {
        "/affinity/nodeAffinity",
        "/affinity/podAffinity",
        "/affinity/podAntiAffinity",
        "/resources/requests/ephemeral-storage",
        "/resources/limits/ephemeral-storage",
        "/resources/limits/cpu",
    }
    for tolerations in ("/tolerations", "/compile/tolerations"):
        assert tolerations in in_values
    assert in_values - in_schema == set(), "values without a schema entry"
    assert in_schema - in_values - optional == set(), "schema entries without a value in values.yaml"


def test_values_yaml_documents_every_key() -> None:
    """Each key in values.yaml has a comment right above it, or is a leaf of a commented group."""
    documented: dict[int, bool] = {}  # indentation -> whether the innermost open key there is documented
    undocumented = []
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        indent = len(line) - len(stripped)
        has_comment = i > 0 and lines[i - 1].strip().startswith("#")
        parent_documented = any(documented.get(level, False) for level in range(indent - 2, indent - 1))
        is_group = stripped.endswith(":")
        ok = has_comment or (parent_documented and not is_group) or (parent_documented and indent > 0)
        documented = {level: d for level, d in documented.items() if level < indent}
        documented[indent] = ok
        if not ok:
            undocumented.append(stripped.split(":", 1)[0])
    assert undocumented == []


# ------------------------------------------------------------------------------- NEURON_OPERATOR_* env


def _clear_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("NEURON_OPERATOR_"):
            monkeypatch.delenv(name)


def _settings_from(objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> OperatorSettings:
    """OperatorSettings as the operator container would parse them from the rendered env."""
    _clear_settings_env(monkeypatch)
    for env in container_env(one(objects, "Deployment")):
        if "value" in env:
            monkeypatch.setenv(env["name"], env["value"])
    return OperatorSettings()


def test_every_env_var_is_a_settings_field(default_objects: list[dict[str, Any]]) -> None:
    prefix = OperatorSettings.model_config["env_prefix"]
    names = [e["name"] for e in container_env(one(default_objects, "Deployment"))]
    ours = [n for n in names if n.startswith(prefix)]
    fields = {f"{prefix}{name}".upper() for name in OperatorSettings.model_fields}
    assert sorted(set(ours) - fields) == [], "chart env vars that OperatorSettings ignores"
    assert sorted(fields - set(ours)) == [], "settings the chart cannot set"
    assert len(ours) == len(set(ours))
    assert sorted(set(names) - set(ours)) == ["POD_NAME", "POD_NAMESPACE", "TMPDIR"]


def test_chart_defaults_are_the_operator_defaults(helm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Release `neuron-operator` in `default`: the chart configures exactly OperatorSettings' defaults, but for
    the log format: json in a cluster (log pipelines parse it), text on a terminal."""
    parsed = _settings_from(helm_template(helm, namespace="default"), monkeypatch)
    _clear_settings_env(monkeypatch)
    assert parsed.model_dump() == OperatorSettings().model_dump() | {"log_format": "json"}


def test_custom_values_reach_the_operator(
    custom_objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = _settings_from(custom_objects, monkeypatch)
    assert s.namespaces == ["team-a", "team-b"]
    assert s.runtime_image == "registry.example.com/rt:cpu-1"
    assert s.neuronx_runtime_image == "registry.example.com/rt-neuronx:nx-1"
    assert s.neuron_runtime_image == "registry.example.com/rt-inf1:inf1-1"
    assert s.image_pull_policy == "Always"
    assert s.compile_node_selector == CUSTOM["compile"]["nodeSelector"]
    assert s.compile_tolerations == CUSTOM["compile"]["tolerations"]
    assert (s.compile_cpu, s.compile_memory) == ("8", "32Gi")
    assert (s.compile_timeout_seconds, s.compile_backoff_limit, s.compile_job_ttl_seconds) == (7200, 2, 600)
    assert (s.artifact_pvc, s.artifact_mount_path) == ("shared-artifacts", "/artifacts")
    assert (s.neuron_scheduler_name, s.use_neuron_scheduler) == ("neuron-scheduler", "always")
    assert s.runtime_run_as_root is True
    assert s.runtime_identity() == {"runAsNonRoot": False, "runAsUser": 0, "runAsGroup": 0}
    assert s.resync_seconds == 30.5
    assert (s.backoff_base_seconds, s.backoff_max_seconds) == (2, 120)
    assert s.leader_election is True
    assert (s.leader_election_namespace, s.leader_election_lease) == (RELEASE_NS, "custom-lease")
    assert s.lease_duration_seconds == 30
    assert (s.health_port, s.metrics_port) == (9091, 9090)
    assert (s.log_level, s.log_format) == ("DEBUG", "text")


# ------------------------------------------------------------------------------------- Argo CD, NOTES


def test_argocd_configmap_carries_the_lua_files(custom_objects: list[dict[str, Any]]) -> None:
    data = one(custom_objects, "ConfigMap")["data"]
    assert data == {
        "resource.customizations.health.neuron.dev_NeuronModel": (CHART / "argocd" / "health.lua").read_text(),
        "resource.customizations.health.neuron.dev_NeuronDeployment": (CHART / "argocd" / "health.lua").read_text(),
    }


def test_notes_and_readme_cover_operations() -> None:
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    for needle in ("kubectl get nm,nd -A", "/v2/models/<model>/infer", "kubectl apply --server-side -f", "README"):
        assert needle in notes
    readme = (CHART / "README.md").read_text()
    for heading in ("## Values", "## Upgrading CRDs", "## RBAC", "## Argo CD", "## Sending requests"):
        assert heading in readme
    assert "kubectl apply --server-side -f charts/neuron-operator/crds/" in readme
    for key in _value_paths(default_values()):
        if key.startswith("/resources/"):
            continue  # a Kubernetes ResourceRequirements, documented as a whole
        leaf = key.rsplit("/", 1)[-1]
        assert leaf in readme, f"value {key} is not documented in the chart README"

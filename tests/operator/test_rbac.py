"""The chart's RBAC is exactly what the operator needs, proven on the real control plane.

The chart's ServiceAccount, Roles and bindings are rendered with ``helm template`` and applied; the operator
runs with a token from the TokenRequest API (``kubectl create token``) and must complete the scenario (a real
compile, a served NeuronDeployment, Events) with zero forbidden errors. Then each rule of
``charts/neuron-operator/rbac/rules.yaml`` is removed in turn: the scenario must fail every time, or the rule
is not needed and this test names it.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_support import (
    ARTIFACT_PVC,
    EXEC_NODE_SELECTOR,
    EXEC_NODE_TOLERATIONS,
    REPO,
    create_store,
    mlp_model,
    operator_settings,
    start_operator,
)

from localcluster.kind import KindCluster
from localcluster.wait import WaitTimeout, until

CHART = REPO / "charts" / "neuron-operator"
RULES = yaml.safe_load((CHART / "rbac" / "rules.yaml").read_text())
#: Sets whose every rule the scenario needs (diagnostics and capacity are optional: the operator degrades).
REQUIRED_SETS = ("workload", "leaderElection")
RELEASE = "neuron-operator"
FORBIDDEN_MARKERS = ("forbidden", " 403")


def _deployment() -> dict[str, Any]:
    return {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronDeployment",
        "metadata": {"name": "mlp"},
        "spec": {
            "modelRef": {"name": "mlp"},
            "batching": {"maxBatchSize": 2, "maxDelayMs": 1},
            "pod": {"nodeSelector": EXEC_NODE_SELECTOR, "tolerations": EXEC_NODE_TOLERATIONS},
        },
    }


def _render_rbac(cluster: KindCluster, namespace: str, drop: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The chart's ServiceAccount and RBAC for a release in ``namespace`` watching it, minus rule ``drop``."""
    out = subprocess.run(
        [
            str(cluster.tools.helm),
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            namespace,
            "--set",
            f"watchNamespaces[0]={namespace}",
            "--show-only",
            "templates/rbac.yaml",
            "--show-only",
            "templates/serviceaccount.yaml",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    objs = [o for o in yaml.safe_load_all(out) if o]
    if drop is not None:
        roles = [o for o in objs if o["kind"] in ("Role", "ClusterRole") and drop in o["rules"]]
        assert len(roles) == 1, f"rule {drop} is rendered in {len(roles)} roles"
        roles[0]["rules"].remove(drop)
    for o in objs:  # cluster-scoped names must not collide between runs
        if o["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            o["metadata"]["name"] += f"-{namespace}"
            if o["kind"] == "ClusterRoleBinding":
                o["roleRef"]["name"] += f"-{namespace}"
    return objs


def _token_kubeconfig(cluster: KindCluster, namespace: str, sa: str, dest: Path) -> Path:
    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": admin["clusters"][0]["name"], "user": sa}}],
        "current-context": "sa",
    }
    dest.write_text(json.dumps(cfg))
    return dest


def _forbidden(log: Path) -> list[str]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return [line for line in text.splitlines() if any(m in line.lower() for m in FORBIDDEN_MARKERS)]


def _ready(cluster: KindCluster, namespace: str, kind: str) -> bool:
    proc = cluster.kubectl("get", "-n", namespace, kind, "mlp", "-o", "json", check=False)
    if proc.returncode != 0:
        return False
    conds = json.loads(proc.stdout).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def run_scenario(
    cluster: KindCluster, artifacts: Path, tmp: Path, drop: dict[str, Any] | None = None
) -> tuple[bool, list[str]]:
    """Install the chart's RBAC in a fresh namespace, run the operator as its ServiceAccount, apply a model
    and a deployment. -> (scenario completed, forbidden log lines)"""
    namespace = f"rbac-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    objs = _render_rbac(cluster, namespace, drop)
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    sa = next(o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount")
    kubeconfig = _token_kubeconfig(cluster, namespace, sa, tmp / f"{namespace}.kubeconfig")
    create_store(cluster, namespace, artifacts)
    settings = operator_settings(
        namespaces=[namespace], leader_election_namespace=namespace, leader_election_lease=RELEASE
    )
    log = tmp / f"{namespace}.log"
    op = start_operator(cluster, log, settings, f"rbac-{namespace}", kubeconfig=kubeconfig)
    try:
        for obj in (mlp_model("mlp"), _deployment()):
            cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))
        try:
            until(
                lambda: (
                    bool(_forbidden(log)) or (_ready(cluster, namespace, "nm") and _ready(cluster, namespace, "nd"))
                ),
                timeout=90,
                interval=0.5,
                what="the scenario to complete or a forbidden error",
            )
        except WaitTimeout:
            return False, _forbidden(log)
        events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
        done = (
            not _forbidden(log)
            and _ready(cluster, namespace, "nd")
            and any(e.get("source", {}).get("component") == "neuron-operator" for e in events)
        )
        return done, _forbidden(log)
    finally:
        op.proc.terminate()
        op.proc.wait(timeout=20)
        for o in objs:
            if o["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                cluster.kubectl("delete", o["kind"].lower(), o["metadata"]["name"], "--wait=false", check=False)
        cluster.kubectl("delete", "pv", f"{ARTIFACT_PVC}-{namespace}", "--wait=false", check=False)
        # The custom resources first, while their operator is gone: nothing then reconciles them in a
        # terminating namespace.
        cluster.kubectl("delete", "-n", namespace, "nd,nm", "--all", "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def artifacts(cluster: KindCluster) -> Path:
    """Shared by every run, so later compile Jobs are quick storage cache hits."""
    path = cluster.shared_dir / f"rbac-artifacts-{uuid.uuid4().hex[:6]}"
    path.mkdir()
    return path


@pytest.mark.slow
def test_the_chart_rbac_is_sufficient(cluster: KindCluster, crds: None, artifacts: Path, tmp_path: Path) -> None:
    done, forbidden = run_scenario(cluster, artifacts, tmp_path)
    assert forbidden == []
    assert done


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rule_set", "index"),
    [(name, i) for name in REQUIRED_SETS for i in range(len(RULES[name]))],
    ids=[f"{name}-{'+'.join(r['resources'])}" for name in REQUIRED_SETS for r in RULES[name]],
)
def test_every_rule_is_needed(
    cluster: KindCluster, crds: None, artifacts: Path, tmp_path: Path, rule_set: str, index: int
) -> None:
    rule = RULES[rule_set][index]
    done, _ = run_scenario(cluster, artifacts, tmp_path, drop=rule)
    assert not done, f"the scenario completes without {rule_set} rule {rule}: remove it from rules.yaml"

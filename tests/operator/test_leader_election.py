"""Two operators against the real control plane: one reconciles, the other takes over when it is killed."""

from __future__ import annotations

import json
import signal
import uuid
from pathlib import Path

from operator_support import Operator, Store, mlp_model, operator_settings, start_operator

from localcluster.kind import KindCluster
from localcluster.wait import until


def _ready(cluster: KindCluster, namespace: str, name: str) -> bool:
    obj = json.loads(cluster.kubectl("get", "-n", namespace, "nm", name, "-o", "json").stdout)
    return any(c["type"] == "Ready" and c["status"] == "True" for c in obj.get("status", {}).get("conditions", []))


def _holder(cluster: KindCluster, lease: str) -> str | None:
    out = cluster.kubectl("get", "lease", lease, "-n", "default", "-o", "jsonpath={.spec.holderIdentity}", check=False)
    return out.stdout or None


def test_one_active_reconciler_and_failover(
    cluster: KindCluster, operator: Operator, store: Store, namespace: str, tmp_path: Path
) -> None:
    # The session operator watches every namespace: give the two candidates a namespace of their own.
    lease = f"election-{uuid.uuid4().hex[:6]}"
    own_ns = f"le-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", own_ns)
    settings = operator_settings(
        namespaces=[own_ns],
        leader_election_lease=lease,
        lease_duration_seconds=4.0,
        renew_deadline_seconds=3.0,
        retry_period_seconds=0.5,
        artifact_pvc=f"missing-{own_ns}",  # no compile needs to finish: we watch who reconciles
    )
    a = start_operator(cluster, tmp_path / "a.log", settings, "candidate-a")
    b = start_operator(cluster, tmp_path / "b.log", settings, "candidate-b")
    try:
        leader_id = until(lambda: _holder(cluster, lease), what="a leader")
        leader, follower = (a, b) if leader_id == "candidate-a" else (b, a)
        cluster.kubectl("apply", "-n", own_ns, "-f", "-", input=json.dumps(mlp_model("first")))
        until(lambda: leader.passes("NeuronModel") >= 1, what="the leader to reconcile")
        assert follower.passes("NeuronModel") == 0
        assert sum(follower.writes().values()) == 0

        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait(timeout=10)
        follower_id = "candidate-b" if leader_id == "candidate-a" else "candidate-a"
        until(lambda: _holder(cluster, lease) == follower_id, timeout=30, what="the follower to take over")
        cluster.kubectl("apply", "-n", own_ns, "-f", "-", input=json.dumps(mlp_model("second")))
        until(lambda: follower.passes("NeuronModel") >= 2, timeout=30, what="the new leader to reconcile")
    finally:
        for op in (a, b):
            if op.proc.poll() is None:
                op.proc.terminate()
                op.proc.wait(timeout=20)
        cluster.kubectl("delete", "namespace", own_ns, "--wait=false", check=False)

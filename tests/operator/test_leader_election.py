"""Leader election of real ``neuron-operator run`` processes against the real control plane.

- One reconciles, the other takes over when the leader is SIGKILLed (after the Lease expires) or SIGTERMed
  (at once: it releases the Lease). The takeover times are printed (``TAKEOVER_SECONDS=...``,
  ``TAKEOVER_AFTER_SIGTERM_SECONDS=...``).
- The kube-apiserver (a static pod in the kind control-plane node) is stopped with ``crictl stop`` and the
  kubelet restarts it, while two operators run: sampled throughout, never more than one of them reconciles in
  any interval, a process that loses the Lease exits 1 (and is restarted, as the kubelet would), and the Lease
  is renewed again after the restart (``APISERVER_DOWN_SECONDS=...``).

The candidates watch a namespace of their own: no other operator reconciles their models.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest
from lightkube import Client, KubeConfig
from lightkube.resources.coordination_v1 import Lease
from operator_support import Operator, mlp_model, operator_settings, start_operator

from localcluster.kind import KindCluster
from localcluster.wait import until
from neuron_operator.settings import OperatorSettings

#: Short timings so the scenarios take seconds: renew deadline 3 s < lease duration 4 s.
TIMINGS = {"lease_duration_seconds": 4.0, "renew_deadline_seconds": 3.0, "retry_period_seconds": 0.5}


def _holder(cluster: KindCluster, lease: str) -> str | None:
    out = cluster.kubectl("get", "lease", lease, "-n", "default", "-o", "jsonpath={.spec.holderIdentity}", check=False)
    return out.stdout or None


def _leading(op: Operator) -> float | None:
    """The process's ``neuron_operator_leader`` gauge; None when it does not answer (exited)."""
    try:
        values = [v for k, v in op.metrics().items() if k.startswith("neuron_operator_leader{")]
    except OSError:
        return None
    return values[0] if values else None


def _passes(op: Operator) -> float | None:
    try:
        return op.passes("NeuronModel")
    except OSError:
        return None


@pytest.fixture
def own_namespace(cluster: KindCluster, crds: None) -> Iterator[str]:
    name = f"le-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _settings(namespace: str, lease: str, **overrides: Any) -> OperatorSettings:
    return operator_settings(
        namespaces=[namespace],
        leader_election_lease=lease,
        artifact_pvc=f"missing-{namespace}",  # no compile needs to finish: we watch who reconciles
        **TIMINGS,
        **overrides,
    )


def _stop_all(ops: list[Operator]) -> None:
    for op in ops:
        if op.proc.poll() is None:
            op.proc.terminate()
            try:
                op.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                op.proc.kill()


def _candidate(cluster: KindCluster, log: Path, settings: OperatorSettings, identity: str) -> Operator:
    """``start_operator``, returning once the process runs leader election (its gauge is exported)."""
    op = start_operator(cluster, log, settings, identity)
    until(lambda: _leading(op) is not None, timeout=120, what=f"{identity} to start leader election")
    return op


def _takeover(signalled: Operator, sig: signal.Signals, successor: Operator) -> float:
    """Send ``sig`` to the leader; seconds until ``successor`` reports holding the Lease."""
    t0 = time.monotonic()
    signalled.proc.send_signal(sig)
    until(lambda: _leading(successor) == 1, timeout=30, interval=0.05, what="the standby to take over")
    return time.monotonic() - t0


@pytest.mark.timeout(600)  # three operator processes start, each importing kopf (slow on a loaded machine)
def test_one_active_reconciler_and_failover(cluster: KindCluster, own_namespace: str, tmp_path: Path) -> None:
    lease = f"election-{uuid.uuid4().hex[:6]}"
    settings = _settings(own_namespace, lease)
    a = _candidate(cluster, tmp_path / "a.log", settings, "candidate-a")
    b = _candidate(cluster, tmp_path / "b.log", settings, "candidate-b")
    ops = [a, b]
    try:
        leader_id = until(lambda: _holder(cluster, lease), what="a leader")
        leader, follower = (a, b) if leader_id == "candidate-a" else (b, a)
        follower_id = "candidate-b" if leader_id == "candidate-a" else "candidate-a"
        cluster.kubectl("apply", "-n", own_namespace, "-f", "-", input=json.dumps(mlp_model("first")))
        until(lambda: leader.passes("NeuronModel") >= 1, what="the leader to reconcile")
        assert follower.passes("NeuronModel") == 0
        assert sum(follower.writes().values()) == 0
        assert _leading(leader) == 1
        assert _leading(follower) == 0

        # SIGKILL: no release; the follower waits for the Lease to expire (lease duration, plus a retry).
        killed = _takeover(leader, signal.SIGKILL, follower)
        assert leader.proc.wait(timeout=10) == -signal.SIGKILL
        print(f"TAKEOVER_SECONDS={killed:.2f}")
        assert _holder(cluster, lease) == follower_id
        cluster.kubectl("apply", "-n", own_namespace, "-f", "-", input=json.dumps(mlp_model("second")))
        until(lambda: follower.passes("NeuronModel") >= 2, timeout=30, what="the new leader to reconcile")

        # SIGTERM: the leader stops reconciling, releases the Lease and exits 0; a standby takes it at once.
        c = _candidate(cluster, tmp_path / "c.log", settings, "candidate-c")
        ops.append(c)
        assert _leading(c) == 0
        released = _takeover(follower, signal.SIGTERM, c)
        assert follower.proc.wait(timeout=30) == 0
        print(f"TAKEOVER_AFTER_SIGTERM_SECONDS={released:.2f}")
        assert released < TIMINGS["lease_duration_seconds"], "the Lease was handed over, not left to expire"
        assert _holder(cluster, lease) == "candidate-c"
        until(lambda: c.passes("NeuronModel") >= 1, timeout=30, what="the third leader to reconcile")
    finally:
        _stop_all(ops)
        cluster.kubectl("delete", "lease", lease, "-n", "default", check=False)


# ------------------------------------------------------------------------------- apiserver restart


@dataclass
class Sample:
    t: float
    passes: dict[int, float | None]  # by pid; None: the process does not answer (exited)
    leading: dict[int, float | None]
    exited: dict[int, int | None]
    holder: str | None  # None while the apiserver does not answer
    renew: datetime | None


@dataclass
class Sampler:
    """Samples every process's reconcile passes and leader gauge, and the Lease, every ``interval`` seconds."""

    cluster: KindCluster
    lease: str
    ops: dict[str, Operator]  # by identity; a restarted process replaces its predecessor
    interval: float = 0.25
    samples: list[Sample] = field(default_factory=list)
    history: dict[int, Operator] = field(default_factory=dict)  # every process ever sampled, by pid
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        # Short timeouts: while the apiserver is down a read must not stall the sampling.
        config = KubeConfig.from_file(str(self.cluster.kubeconfig))
        self.client = Client(config, timeout=httpx2.Timeout(1.0), field_manager="neuron-tests")
        self.thread = threading.Thread(target=self._run, name="lease-sampler", daemon=True)

    def _lease(self) -> tuple[str | None, datetime | None]:
        try:
            spec = self.client.get(Lease, self.lease, namespace="default").spec
        except Exception:  # the apiserver is down or restarting
            return None, None
        assert spec is not None
        return spec.holderIdentity, spec.renewTime

    def sample(self) -> Sample:
        ops = list(self.ops.values())
        for op in ops:
            self.history[op.proc.pid] = op
        t = time.monotonic()
        passes = {op.proc.pid: _passes(op) for op in ops}
        leading = {op.proc.pid: _leading(op) for op in ops}
        exited = {op.proc.pid: op.proc.poll() for op in ops}
        holder, renew = self._lease()
        s = Sample(t, passes, leading, exited, holder, renew)
        self.samples.append(s)
        return s

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self.thread.join(timeout=30)


def _apiserver_ready(cluster: KindCluster) -> bool:
    out = cluster.kubectl("get", "--raw", "/readyz", check=False, timeout=5)
    return out.returncode == 0 and out.stdout.strip() == "ok"


def _stop_apiserver(cluster: KindCluster) -> str:
    """``crictl stop`` the kube-apiserver container; the kubelet starts a new one (a static pod)."""
    node = cluster.control_plane_node
    ids = cluster.docker("exec", node, "crictl", "ps", "--name", "kube-apiserver", "-q").stdout.split()
    assert len(ids) == 1, ids
    cluster.docker("exec", node, "crictl", "stop", ids[0], timeout=120)
    return ids[0]


def _new_apiserver_running(cluster: KindCluster, old: str) -> bool:
    node = cluster.control_plane_node
    ids = cluster.docker("exec", node, "crictl", "ps", "--name", "kube-apiserver", "-q", check=False).stdout.split()
    return bool(ids) and old not in ids


@pytest.mark.timeout(900)
def test_an_apiserver_restart_never_makes_two_reconcilers(
    cluster: KindCluster, own_namespace: str, tmp_path: Path
) -> None:
    lease = f"restart-{uuid.uuid4().hex[:6]}"
    settings = _settings(own_namespace, lease, resync_seconds=1.0)
    for i in range(3):  # enough objects that the leader's pass counter moves every fraction of a second
        cluster.kubectl("apply", "-n", own_namespace, "-f", "-", input=json.dumps(mlp_model(f"m{i}")))
    ops = {
        identity: _candidate(cluster, tmp_path / f"{identity}.log", settings, identity)
        for identity in ("candidate-a", "candidate-b")
    }
    restarted: list[Operator] = []
    sampler = Sampler(cluster, lease, ops)
    try:
        leader_id = until(lambda: _holder(cluster, lease), what="a leader")
        until(lambda: ops[leader_id].passes("NeuronModel") >= 3, what="the leader to reconcile")
        with sampler:
            until(lambda: len(sampler.samples) >= 12, timeout=30, what="samples before the restart")
            before = [s for s in sampler.samples if s.renew is not None]
            stopped_at = time.monotonic()
            old = _stop_apiserver(cluster)
            until(lambda: _new_apiserver_running(cluster, old), timeout=180, interval=0.5, what="a new apiserver")
            until(lambda: _apiserver_ready(cluster), timeout=180, interval=0.25, what="the apiserver to be ready")
            back_at = time.monotonic()
            down = back_at - stopped_at
            print(f"APISERVER_DOWN_SECONDS={down:.1f}")

            # A process that lost the Lease exits 1: the kubelet would restart it, so does the test.
            def settled() -> bool:
                for identity, op in list(ops.items()):
                    if op.proc.poll() is not None:
                        assert op.proc.returncode == 1, f"{identity} exited {op.proc.returncode}"
                        log = tmp_path / f"{identity}-restarted.log"
                        ops[identity] = _candidate(cluster, log, settings, identity)
                        restarted.append(op)
                holders = [i for i, op in ops.items() if _leading(op) == 1]
                return len(holders) == 1 and sampler.samples[-1].holder == holders[0]

            until(settled, timeout=120, interval=0.5, what="one leader after the restart")
            leader = next(op for op in ops.values() if _leading(op) == 1)
            moved = leader.passes("NeuronModel")
            until(lambda: leader.passes("NeuronModel") > moved, timeout=30, what="the leader to reconcile again")
            n = len(sampler.samples)
            until(lambda: len(sampler.samples) >= n + 12, timeout=30, what="samples after the restart")
    finally:
        _stop_all([*ops.values()])
        cluster.kubectl("delete", "lease", lease, "-n", "default", check=False)

    samples = sampler.samples
    lost_ids = [op.log.stem for op in restarted]
    print(f"LOST_LEADERSHIP={lost_ids} samples={len(samples)}")

    # Never two reconcilers: in no interval between two samples did two processes' pass counters both move.
    for prev, cur in itertools.pairwise(samples):
        moved_pids = [
            pid
            for pid, n in cur.passes.items()
            if n is not None and prev.passes.get(pid) is not None and n > (prev.passes[pid] or 0)
        ]
        assert len(moved_pids) <= 1, f"two reconcilers between t={prev.t:.2f} and t={cur.t:.2f}: {moved_pids}"
        assert sum(1 for v in cur.leading.values() if v == 1) <= 1, f"two leaders at t={cur.t:.2f}"

    # A process that lost the Lease (its gauge fell from 1) never reconciled again (and exited 1, see above).
    for pid in sampler.history:
        seen = [(i, s.leading[pid]) for i, s in enumerate(samples) if pid in s.leading]
        fell = next((i for (_, was), (i, now) in itertools.pairwise(seen) if was == 1 and now != 1), None)
        if fell is not None:
            after = {samples[i].passes[pid] for i, _ in seen if i >= fell and samples[i].passes[pid] is not None}
            assert len(after) <= 1, f"pid {pid} reconciled after losing the Lease: {sorted(after)}"

    # The Lease keeps moving: renewed again after the restart, by one holder, and still advancing.
    assert before, "the Lease was read before the restart"
    last_before = max(s.renew for s in before if s.renew is not None)
    after_restart = [s for s in samples if s.t > back_at and s.renew is not None]
    renewals = sorted({s.renew for s in after_restart if s.renew is not None})
    assert renewals, "the Lease was read after the restart"
    assert renewals[0] >= last_before
    assert len([r for r in renewals if r > last_before]) >= 2, "renewTime advances after the restart"

"""Load-driven autoscaling and gated canary rollouts of a NeuronDeployment, on the real local control plane.

The scenario operator (this working tree) reads the serving pods' own ``/metrics`` through the apiserver's pod proxy,
writes ``spec.replicas`` (``spec.autoscaling``) and steps a canary Deployment behind the same Service
(``spec.rollout.strategy: Canary``). Load comes from the closed-loop client of the rollout test (``loadclient.py``
in a Pod of the runtime image, through the NeuronDeployment's Service, see ``test_rollout_zero_loss.LoadPod``),
with the options each scenario needs. Each test prints one quotable line of figures and merges them into
``<pytest basetemp>/autoscaling_figures.json``::

    AUTOSCALE {"scale_up_s": ..., "scale_down_s": ..., "lost": 0, "scale_events": [[1, 3], [3, 1]], ...}
    SCALING_LIMITED {"provision": "<condition message>", "cap_min_2": "...", "cap_min_1_event": "...", ...}
    CANARY {"abort_s": ..., "gate": {"canaryRequests": ...}, "revert_s": ..., "promote_s": ..., "load_abort": ...}

- ``test_scales_up_under_load_and_down_after``: the cpu MLP on the node that runs pods for real, 1..3 replicas on
  Concurrency with a target of 1 request per replica. Three clients in a closed loop against a batcher that holds
  each partial batch ``maxDelayMs`` (100 ms; 8 rows never fill) keep about 3 requests inside the pods (Little's
  law; a reading can exceed 3 when slow requests end in it, and then ScalingLimited says MaxReplicas, which is
  allowed): panic scale-up to 3 ready replicas, held, then, load stopped, back to 1 after the scale-down
  stabilization (in one move, or through 2 when a reading straddled the stop). Nothing lost, never above 3.
- ``test_scale_out_beyond_free_neuroncores_is_scaling_limited``: the SIMULATED kwok fleet (its pods look Ready but
  serve nothing, so their metrics are unreadable and the autoscaler holds replicas): minReplicas 2 of 24-core
  replicas on the one inf2.48xlarge raises replicas 1 -> 2, one pod stays Pending and ScalingLimited says 24
  NeuronCores are missing. ``beyondCapacity: Cap`` never goes below minReplicas (capped at 2, still limited);
  with minReplicas 1 it caps at 1 (ScaledDown, the Pending pod removed) and, the autoscaler wanting no more than
  runs, the condition clears. (While the *load* asked for more the cap would hold and stay True; kwok pods report
  no load, so that case is not reachable here.)
- ``test_canary_aborted_at_first_gate_then_reverted_then_promoted``: 2 replicas of the cpu MLP behind a Canary
  rollout, a client sending every 5th request poisoned (first element 7.0) over a fresh connection per request
  (kept-alive connections would stay on the stable pods and the canary would see no traffic). A new model version
  is rolled out by changing the NeuronModel the NeuronDeployment serves (same name): the served model name is the
  NeuronModel's, and the runtime answers 404 for another name before counting it in its metrics, so a ``modelRef``
  switch makes every request routed to a canary pod fail for clients addressing the old name while the gate waits
  for canary requests that never count (measured: 652 of 1749 requests lost in 20 s, "waiting for 20 more canary
  request(s)").
  The other versions are compiled first as their own NeuronModels (same spec, same cache key: the switch is a cache
  hit). (1) ``neuron_runtime.zoo:poisoned_mlp``: the canary answers the poisoned requests 400 and the gate aborts
  at step 1; only poisoned requests fail, and only on the canary. (2) A healthy v2 with a long pause, then the
  model reverted: the canary is removed (CanaryReverted). (3) v2 through two steps: promoted, every pod on the v2
  artifact, nothing lost.

With 2 replicas a weight of at most 50 runs 1 canary + 1 stable pod (50% of the pods) and any weight above 50 runs
2 canary + 1 stable (67%): steps [50, 75] are the two distinct shares (weights stop at 99). The latency gate is set
loose (x10): p99 of a few hundred requests on a 2-CPU host that is starting pods beside them is noise, and these
tests are about the error gate.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from operator_support import EXEC_NODE_SELECTOR, EXEC_NODE_TOLERATIONS, Operator, Store, mlp_model
from test_neuron_on_kind import inf2_model, ready_pods
from test_rollout_zero_loss import LoadPod, apply, condition, current, get, patch
from test_scenarios import wait_condition

from localcluster.kind import KindCluster
from localcluster.wait import until
from neuron_operator.resources.canary import canary_name, is_canary_pod

FIGURES_FILE = "autoscaling_figures.json"
SMALL_REQUESTS = {"requests": {"cpu": "50m", "memory": "256Mi"}}
NEURONCORE = "aws.amazon.com/neuroncore"


# ------------------------------------------------------------------------------------------------ helpers
@dataclass
class TunedLoad(LoadPod):
    """The rollout test's load pod, with the time of its first OK answer."""

    def first_ok_at(self) -> float:
        """Unix time of the client's first progress line with an OK answer (its own clock: the host's)."""
        return float(next(d["t"] for d in self._lines() if d["event"] == "progress" and d["ok"] > 0))


def report(
    capsys: pytest.CaptureFixture[str], tmp_path_factory: pytest.TempPathFactory, key: str, figures: dict[str, Any]
) -> None:
    """Print one quotable line and merge the figures into the session's figures file."""
    path = tmp_path_factory.getbasetemp() / FIGURES_FILE
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = figures
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    with capsys.disabled():
        print(f"\n{key} {json.dumps(figures, sort_keys=True)}\n  (figures: {path})")


def nd_events(cluster: KindCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    selector = f"involvedObject.kind=NeuronDeployment,involvedObject.name={name}"
    items: list[dict[str, Any]] = get(cluster, namespace, "events", "--field-selector", selector)["items"]
    return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


def reasons(events: list[dict[str, Any]]) -> list[str]:
    return [e["reason"] for e in events]


def scale_targets(events: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(from, to) of every ScaledUp/ScaledDown Event (their message starts with "<from> -> <to> replicas")."""
    out = []
    for e in events:
        if e["reason"] in ("ScaledUp", "ScaledDown"):
            m = re.match(r"(\d+) -> (\d+) replicas", e["message"])
            assert m, e["message"]
            out.append((int(m.group(1)), int(m.group(2))))
    return out


def pods_of(cluster: KindCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    return list(get(cluster, namespace, "pods", "-l", f"neuron.dev/deployment={name}")["items"])


def exists(cluster: KindCluster, namespace: str, *ref: str) -> bool:
    return cluster.kubectl("get", "-n", namespace, *ref, check=False).returncode == 0


@dataclass
class ReplicaWatch:
    """Polls a NeuronDeployment and its Deployment, remembering the most replicas either ever asked for."""

    cluster: KindCluster
    namespace: str
    name: str
    most_nd: int = 0
    most_deployment: int = 0
    panic_seen: bool = False
    seen: list[int] = field(default_factory=list)

    def poll(self) -> dict[str, Any]:
        nd = get(self.cluster, self.namespace, "nd", self.name)
        replicas = int(nd["spec"]["replicas"])
        self.most_nd = max(self.most_nd, replicas)
        if not self.seen or self.seen[-1] != replicas:
            self.seen.append(replicas)
        self.panic_seen |= bool(((nd.get("status") or {}).get("autoscaling") or {}).get("panic"))
        with contextlib.suppress(Exception):
            dep = get(self.cluster, self.namespace, "deployment", self.name)
            self.most_deployment = max(self.most_deployment, int(dep["spec"].get("replicas", 0)))
        return nd


# ------------------------------------------------------------------------------------------------ 1. autoscaling
AUTO_MODEL = "mlp"
AUTO_NAME = "auto"
MAX_REPLICAS = 3
INTERVAL_S = 2
SCALE_DOWN_STABILIZATION_S = 12
#: Clients in a closed loop; each keeps one request inside a pod ~100 ms of every cycle (see the module docstring).
AUTO_CLIENTS = 3


def autoscaled_deployment() -> dict[str, Any]:
    return {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronDeployment",
        "metadata": {"name": AUTO_NAME},
        "spec": {
            "modelRef": {"name": AUTO_MODEL},
            "replicas": 1,
            "placement": {"workers": 1, "coresPerWorker": 1},
            # A partial batch waits the whole delay (8 rows never fill with 3 clients; no idle dispatch).
            "batching": {"maxBatchSize": 8, "maxDelayMs": 100, "idleDispatch": False},
            "resources": SMALL_REQUESTS,
            "pod": {"nodeSelector": EXEC_NODE_SELECTOR, "tolerations": EXEC_NODE_TOLERATIONS},
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": MAX_REPLICAS,
                "metric": "Concurrency",
                "target": 1,
                "intervalSeconds": INTERVAL_S,
                "scaleDownStabilizationSeconds": SCALE_DOWN_STABILIZATION_S,
                "panicWindowSeconds": 4,
            },
        },
    }


@pytest.mark.timeout(600)
def test_scales_up_under_load_and_down_after(
    cluster: KindCluster,
    operator: Operator,
    store: Store,
    namespace: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    apply(cluster, namespace, mlp_model(AUTO_MODEL))
    wait_condition(cluster, namespace, "nm", AUTO_MODEL, "Ready", timeout=300)
    apply(cluster, namespace, autoscaled_deployment())
    nd = wait_condition(cluster, namespace, "nd", AUTO_NAME, "Ready", timeout=300)
    url = nd["status"]["endpoint"] + "/infer"
    # Idle: the autoscaler reads the one pod and keeps it.
    idle = until(
        lambda: (
            (o := get(cluster, namespace, "nd", AUTO_NAME))
            and ((o.get("status") or {}).get("autoscaling") or {}).get("reportingPods") == 1
            and o
        ),
        timeout=60,
        what="status.autoscaling with the idle pod's reading",
    )
    assert idle["spec"]["replicas"] == 1, idle["status"]
    assert condition(idle, "ScalingLimited")["status"] == "False", idle["status"]["conditions"]

    watch = ReplicaWatch(cluster, namespace, AUTO_NAME)
    figures: dict[str, Any] = {"scale_down_stabilization_s": SCALE_DOWN_STABILIZATION_S}
    try:
        load = TunedLoad(
            cluster, namespace, "load-autoscale", url, options=(f"--concurrency={AUTO_CLIENTS}", "--interval-ms=20")
        )
        load.start()
        load.wait_ok(1, timeout=180, what="the load client's first OK answer")
        t_load = load.first_ok_at()

        def scaled_up() -> bool:
            o = watch.poll()
            ready = len(ready_pods(cluster, namespace, AUTO_NAME))
            return o["spec"]["replicas"] == MAX_REPLICAS and ready == MAX_REPLICAS

        until(scaled_up, timeout=300, interval=0.5, what=f"{MAX_REPLICAS} ready replicas under load")
        figures["scale_up_s"] = round(time.time() - t_load, 1)
        # A reading over the three ready pods, still under load: the decision holds.
        loaded = until(
            lambda: (
                (o := watch.poll())
                and ((o.get("status") or {}).get("autoscaling") or {}).get("reportingPods") == MAX_REPLICAS
                and o
            ),
            timeout=60,
            interval=0.5,
            what="a reading of the three ready pods",
        )
        auto = loaded["status"]["autoscaling"]
        limited = condition(loaded, "ScalingLimited")
        assert limited is not None, loaded["status"]["conditions"]
        figures |= {
            "load_per_replica_at_3": auto.get("currentLoad"),
            "scaling_limited_at_3": f"{limited['status']}/{limited['reason']}",
        }
        assert auto["metric"] == "Concurrency", auto
        assert auto["target"] == 1, auto
        assert auto["currentLoad"] > 0, auto
        assert auto["desiredReplicas"] == MAX_REPLICAS, auto
        assert (auto["lastScale"]["reason"], auto["lastScale"]["to"]) == ("ScaledUp", MAX_REPLICAS), auto
        assert (limited["status"], limited["reason"]) in {("False", "WithinLimits"), ("True", "MaxReplicas")}, limited
        load.wait_ok(load.ok() + 20, timeout=60, what="more OK answers at 3 replicas")
        assert watch.poll()["spec"]["replicas"] == MAX_REPLICAS

        result = load.stop()
        t_stop = float(result["t"])
        figures |= {
            "lost": result["total"] - result["ok"],
            "total": result["total"],
            "errors": result["errors"],
            "p50_ms": result["p50_ms"],
            "p99_ms": result["p99_ms"],
        }

        def scaled_down() -> bool:
            o = watch.poll()
            return o["spec"]["replicas"] == 1 and len(ready_pods(cluster, namespace, AUTO_NAME)) == 1

        until(scaled_down, timeout=180, interval=0.5, what="back to 1 ready replica after the load")
        scale_down_s = time.time() - t_stop
        figures["scale_down_s"] = round(scale_down_s, 1)
        until(
            lambda: len(pods_of(cluster, namespace, AUTO_NAME)) == 1,
            timeout=120,
            what="the scaled-down pods gone",
        )
        figures["scaled_down_pods_gone_s"] = round(time.time() - t_stop, 1)
    finally:
        events = nd_events(cluster, namespace, AUTO_NAME)
        moves = scale_targets(events)
        figures |= {
            "panic_seen": watch.panic_seen,
            "spec_replicas_seen": watch.seen,
            "scale_events": moves,
            "max_spec_replicas": watch.most_nd,
            "max_deployment_replicas": watch.most_deployment,
        }
        report(capsys, tmp_path_factory, "AUTOSCALE", figures)

    final = wait_condition(cluster, namespace, "nd", AUTO_NAME, "Ready", timeout=60)
    assert result["total"] > 0, result
    assert result["total"] == result["ok"], result["error_samples"]
    assert not result["errors"], result["error_samples"]
    assert "ScaledUp" in reasons(events), reasons(events)
    assert "ScaledDown" in reasons(events), reasons(events)
    assert moves, reasons(events)
    assert all(to <= MAX_REPLICAS for _, to in moves), moves
    assert watch.most_nd <= MAX_REPLICAS, figures
    assert watch.most_deployment <= MAX_REPLICAS, figures
    # The last reading that recommended 3 came at the stop at the earliest: no scale-down before the window.
    assert scale_down_s >= SCALE_DOWN_STABILIZATION_S - 2 * INTERVAL_S, figures
    # Up to 3 under load, then down to 1 (in one move, or through 2 when a reading that straddled the stop
    # recommended 2: the highest recommendation of the window decides each move).
    peak = moves.index(max(moves, key=lambda m: m[1]))
    assert moves[peak][1] == MAX_REPLICAS, moves
    assert all(b > a for a, b in moves[: peak + 1]), moves
    assert all(b < a for a, b in moves[peak + 1 :]), moves
    assert moves[-1][1] == 1, moves
    last = final["status"]["autoscaling"]["lastScale"]
    assert (last["reason"], last["to"]) == ("ScaledDown", 1), last
    assert condition(final, "ScalingLimited")["status"] == "False", final["status"]["conditions"]


# ------------------------------------------------------------------------------------------------ 2. NeuronCores
WIDE_MODEL = "mlp-inf2"
WIDE_NAME = "wide"
BIG_TYPE = "inf2.48xlarge"
BIG_NODE = "inf2-48xlarge-0"  # the fleet's one inf2.48xlarge (localcluster.fleet.DEFAULT_FLEET): 24 NeuronCores
BIG_CORES = 24


def wide_deployment() -> dict[str, Any]:
    """Replicas of all 24 NeuronCores of an inf2.48xlarge: one fits the fleet."""
    return {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronDeployment",
        "metadata": {"name": WIDE_NAME},
        "spec": {
            "modelRef": {"name": WIDE_MODEL},
            "replicas": 1,
            "placement": {"workers": 1, "coresPerWorker": BIG_CORES},
            "instanceTypes": [BIG_TYPE],
            "resources": SMALL_REQUESTS,
            "autoscaling": {"minReplicas": 2, "maxReplicas": 2, "intervalSeconds": 2},
        },
    }


def neuroncores_bound(cluster: KindCluster, node: str) -> int:
    """NeuronCores requested by the pods bound to ``node`` that have not finished (in any namespace)."""
    pods = json.loads(
        cluster.kubectl("get", "pods", "-A", "--field-selector", f"spec.nodeName={node}", "-o", "json").stdout
    )["items"]
    used = 0
    for p in pods:
        if p["status"].get("phase") in ("Succeeded", "Failed"):
            continue
        for c in p["spec"]["containers"]:
            res = c.get("resources") or {}
            used += int((res.get("limits") or {}).get(NEURONCORE) or (res.get("requests") or {}).get(NEURONCORE) or 0)
    return used


def scaling_limited(cluster: KindCluster, namespace: str, probe: Callable[[dict[str, Any]], bool], what: str) -> Any:
    def check() -> dict[str, Any] | None:
        o = get(cluster, namespace, "nd", WIDE_NAME)
        c = condition(o, "ScalingLimited")
        return o if current(o) and c is not None and probe(o) else None

    return until(check, timeout=120, interval=0.5, what=what)


@pytest.mark.timeout(600)
def test_scale_out_beyond_free_neuroncores_is_scaling_limited(
    cluster: KindCluster,
    operator: Operator,
    store: Store,
    namespace: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Tests share the cluster: an earlier test's pods on the node (its namespace is deleted without waiting) go first.
    until(lambda: neuroncores_bound(cluster, BIG_NODE) == 0, timeout=180, what=f"{BIG_NODE} without NeuronCore pods")
    apply(cluster, namespace, inf2_model(WIDE_MODEL))
    wait_condition(cluster, namespace, "nm", WIDE_MODEL, "Ready", timeout=300)
    figures: dict[str, Any] = {}
    try:
        _scaling_limited_phases(cluster, namespace, figures)
    finally:
        figures["events"] = [f"{e['reason']}: {e['message']}" for e in nd_events(cluster, namespace, WIDE_NAME)]
        report(capsys, tmp_path_factory, "SCALING_LIMITED", figures)


def _scaling_limited_phases(cluster: KindCluster, namespace: str, figures: dict[str, Any]) -> None:
    apply(cluster, namespace, wide_deployment())

    # Provision (the default): minReplicas raises replicas to 2; one runs on the node, the other stays Pending.
    def provisioned(o: dict[str, Any]) -> bool:
        c = condition(o, "ScalingLimited")
        assert c is not None
        return (
            o["spec"]["replicas"] == 2
            and (c["status"], c["reason"]) == ("True", "InsufficientNeuronCores")
            and "1 placed and 0 more fit" in c["message"]
        )

    nd = scaling_limited(cluster, namespace, provisioned, "ScalingLimited InsufficientNeuronCores, 1 of 2 placed")
    provision = figures["provision"] = condition(nd, "ScalingLimited")["message"]
    assert f"{BIG_CORES} NeuronCores missing on instance types {BIG_TYPE}" in provision, provision
    assert f"{BIG_NODE}: 0" in provision, provision
    pods = until(
        lambda: (
            (ps := pods_of(cluster, namespace, WIDE_NAME))
            and sorted(p["status"].get("phase") for p in ps) == ["Pending", "Running"]
            and ps
        ),
        timeout=120,
        what="one replica Running and one Pending",
    )
    running = next(p for p in pods if p["status"]["phase"] == "Running")
    pending = next(p for p in pods if p["status"]["phase"] == "Pending")
    assert running["spec"]["nodeName"] == BIG_NODE
    assert not pending["spec"].get("nodeName"), pending["spec"]
    events = nd_events(cluster, namespace, WIDE_NAME)
    assert scale_targets(events) == [(1, 2)], [(e["reason"], e["message"]) for e in events]
    assert "InsufficientNeuronCores" in reasons(events), reasons(events)
    autoscaling = nd["status"]["autoscaling"]
    assert autoscaling["reportingPods"] == 0, autoscaling  # kwok pods serve no metrics: replicas held

    # Cap never goes below minReplicas: still 2, still limited.
    patch(cluster, namespace, f"nd/{WIDE_NAME}", {"spec": {"autoscaling": {"beyondCapacity": "Cap"}}})
    nd = scaling_limited(
        cluster,
        namespace,
        lambda o: condition(o, "ScalingLimited")["message"].startswith("capped at 2 (beyondCapacity Cap)"),
        "ScalingLimited capped at 2",
    )
    cap_min_2 = condition(nd, "ScalingLimited")
    figures["cap_min_2"] = cap_min_2["message"]
    assert (cap_min_2["status"], cap_min_2["reason"]) == ("True", "InsufficientNeuronCores"), cap_min_2
    assert f"{BIG_CORES} NeuronCores missing" in cap_min_2["message"], cap_min_2
    assert nd["spec"]["replicas"] == 2

    # Cap with minReplicas 1: down to what runs; the Pending pod goes.
    patch(cluster, namespace, f"nd/{WIDE_NAME}", {"spec": {"autoscaling": {"minReplicas": 1}}})
    until(
        lambda: get(cluster, namespace, "nd", WIDE_NAME)["spec"]["replicas"] == 1,
        timeout=60,
        what="spec.replicas capped at 1",
    )
    # The Event is written at the end of the pass that patched spec.replicas: wait for it too.
    until(
        lambda: any(e["reason"] == "ScaledDown" for e in nd_events(cluster, namespace, WIDE_NAME)),
        timeout=30,
        what="the ScaledDown Event",
    )
    events = nd_events(cluster, namespace, WIDE_NAME)
    down = [e for e in events if e["reason"] == "ScaledDown"]
    assert len(down) == 1, [(e["reason"], e["message"]) for e in events]
    message = figures["cap_min_1_event"] = down[0]["message"]
    assert message.startswith("2 -> 1 replicas"), message
    assert "capped at 1 (beyondCapacity Cap)" in message, message
    assert f"{BIG_CORES} NeuronCores missing on instance types {BIG_TYPE}" in message, message
    until(
        lambda: (
            [p["metadata"]["name"] for p in pods_of(cluster, namespace, WIDE_NAME)] == [running["metadata"]["name"]]
        ),
        timeout=60,
        what="the Pending replica removed, the running one kept",
    )
    # The autoscaler now wants what runs (no load reading asks for more): nothing is limited.
    nd = scaling_limited(
        cluster,
        namespace,
        lambda o: condition(o, "ScalingLimited")["status"] == "False",
        "ScalingLimited False once capped",
    )
    after = condition(nd, "ScalingLimited")
    figures["after_cap"] = f"{after['status']}/{after['reason']}"
    assert after["reason"] == "WithinLimits", after
    assert nd["spec"]["replicas"] == 1


# ------------------------------------------------------------------------------------------------ 3. canary
CANARY_NAME = "web"
SERVED_MODEL = "mlp"  # the NeuronModel the NeuronDeployment serves; its spec changes, its name (the URL) does not
POISON_EVERY = 5
GATES = {"minRequests": 20, "maxErrorRatio": 0.05, "maxLatencyRatio": 10}


def python_source(factory: str, **args: Any) -> dict[str, Any]:
    return {"python": {"factory": factory, "args": {"in_features": 16, "hidden": 32, "out_features": 4} | args}}


STABLE_SOURCE = python_source("neuron_runtime.zoo:tiny_mlp")
POISONED_SOURCE = python_source("neuron_runtime.zoo:poisoned_mlp")
V2_SOURCE = python_source("neuron_runtime.zoo:tiny_mlp", hidden=48)


def model_with(name: str, source: dict[str, Any]) -> dict[str, Any]:
    model = mlp_model(name)
    model["spec"]["source"] = source
    return model


def canary_deployment(steps: list[dict[str, int]]) -> dict[str, Any]:
    return {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronDeployment",
        "metadata": {"name": CANARY_NAME},
        "spec": {
            "modelRef": {"name": SERVED_MODEL},
            "replicas": 2,
            "placement": {"workers": 1, "coresPerWorker": 1},
            "batching": {"maxBatchSize": 4, "maxDelayMs": 2},
            "resources": SMALL_REQUESTS,
            "pod": {"nodeSelector": EXEC_NODE_SELECTOR, "tolerations": EXEC_NODE_TOLERATIONS},
            "rollout": {"strategy": "Canary", "steps": steps, "gates": GATES},
        },
    }


def canary_of(nd: dict[str, Any]) -> dict[str, Any]:
    return dict((nd.get("status") or {}).get("canary") or {})


def wait_canary(
    cluster: KindCluster,
    namespace: str,
    probe: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 300,
    abort_expected: bool = False,
    before: str | None = None,
) -> dict[str, Any]:
    """Wait for ``probe`` on the NeuronDeployment; a canary of another template than ``before`` (the templateHash
    in status.canary before the change) that aborts fails the wait at once unless an abort is expected."""

    def check() -> dict[str, Any] | None:
        o = get(cluster, namespace, "nd", CANARY_NAME)
        c = canary_of(o)
        if not abort_expected and c.get("phase") == "Aborted" and c.get("templateHash") != before:
            raise AssertionError(f"the canary aborted while waiting for {what}: {c}")
        return o if current(o) and probe(o) else None

    return until(check, timeout=timeout, interval=0.5, what=what, fatal=(AssertionError,))


def artifact_sha(pod_or_deployment: dict[str, Any]) -> str:
    meta = (
        pod_or_deployment["spec"]["template"]["metadata"]
        if pod_or_deployment["kind"] == "Deployment"
        else pod_or_deployment["metadata"]
    )
    return str((meta.get("annotations") or {}).get("neuron.dev/artifact-sha256"))


def serving(cluster: KindCluster, namespace: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The stable Deployment and the canary's pods."""
    stable = get(cluster, namespace, "deployment", CANARY_NAME)
    canary_pods = get(cluster, namespace, "pods", "-l", f"neuron.dev/deployment={CANARY_NAME},neuron.dev/track=canary")
    return stable, list(canary_pods["items"])


def poisoned_split(result: dict[str, Any]) -> dict[str, Any]:
    """Loss of the non-poisoned requests, and how the poisoned ones ended."""
    p = result["poisoned"]
    return {
        "total": result["total"],
        "lost_not_poisoned": result["lost"] - p["lost"],
        "errors_not_poisoned": {k: n - p["errors"].get(k, 0) for k, n in result["errors"].items()}
        if result["errors"]
        else {},
        "poisoned": {"total": p["total"], "ok": p["ok"], "errors": p["errors"]},
    }


@pytest.mark.timeout(1200)
def test_canary_aborted_at_first_gate_then_reverted_then_promoted(
    cluster: KindCluster,
    operator: Operator,
    store: Store,
    namespace: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Every version compiled first (the switches below are cache hits).
    for model in (
        model_with(SERVED_MODEL, STABLE_SOURCE),
        model_with("mlp-poisoned", POISONED_SOURCE),
        model_with("mlp-v2", V2_SOURCE),
    ):
        apply(cluster, namespace, model)
    shas = {}
    for name in (SERVED_MODEL, "mlp-poisoned", "mlp-v2"):
        m = wait_condition(cluster, namespace, "nm", name, "Ready", timeout=400)
        shas[name] = m["status"]["artifact"]["sha256"]
    assert len(set(shas.values())) == 3, shas
    apply(cluster, namespace, canary_deployment([{"weight": 50, "pauseSeconds": 15}]))
    nd = wait_condition(cluster, namespace, "nd", CANARY_NAME, "Ready", timeout=300)
    url = nd["status"]["endpoint"] + "/infer"
    assert url.endswith(f"/v2/models/{SERVED_MODEL}/infer"), url
    assert len(ready_pods(cluster, namespace, CANARY_NAME)) == 2
    canary = Canary(cluster, namespace, url, shas, get(cluster, namespace, "nm", SERVED_MODEL)["status"]["cacheKey"])
    figures: dict[str, Any] = {}
    try:
        aborted_hash = canary.abort_poisoned(figures)
        canary.revert_healthy(figures, aborted_hash)
        canary.promote_healthy(figures)
    finally:
        figures["events"] = [f"{e['reason']}: {e['message']}" for e in nd_events(cluster, namespace, CANARY_NAME)]
        report(capsys, tmp_path_factory, "CANARY", figures)


@dataclass
class Canary:
    """The phases of the canary test, on the NeuronDeployment ``web`` serving NeuronModel ``mlp``."""

    cluster: KindCluster
    namespace: str
    url: str
    shas: dict[str, str]  # artifact sha256 per NeuronModel compiled up front
    key1: str  # cache key of the version the stable pods serve at first

    def switch(self, source: dict[str, Any]) -> None:
        patch(self.cluster, self.namespace, f"nm/{SERVED_MODEL}", {"spec": {"source": source}})

    def steps(self, steps: list[dict[str, int]]) -> None:
        patch(self.cluster, self.namespace, f"nd/{CANARY_NAME}", {"spec": {"rollout": {"steps": steps}}})

    def load(self, name: str) -> TunedLoad:
        run = TunedLoad(
            self.cluster,
            self.namespace,
            name,
            self.url,
            connections="fresh",
            options=(f"--poison-every={POISON_EVERY}",),
        )
        run.start()
        run.wait_ok(40, timeout=180, what=f"{name}: 40 OK answers before the change")
        return run

    def stable_untouched(self, what: str) -> None:
        stable, _ = serving(self.cluster, self.namespace)
        assert stable["metadata"]["annotations"]["neuron.dev/cache-key"] == self.key1, (what, stable["metadata"])
        assert artifact_sha(stable) == self.shas[SERVED_MODEL], what

    def canary_gone(self, what: str) -> dict[str, Any]:
        def gone() -> dict[str, Any] | None:
            o = get(self.cluster, self.namespace, "nd", CANARY_NAME)
            if exists(self.cluster, self.namespace, "deployment", canary_name(CANARY_NAME)):
                return None
            return o if current(o) and not serving(self.cluster, self.namespace)[1] else None

        return until(gone, timeout=300, interval=0.5, what=what)

    def abort_poisoned(self, figures: dict[str, Any]) -> str:
        """(1) A version that fails the poisoned requests: the first gate aborts it. Returns its template hash."""
        cluster, namespace = self.cluster, self.namespace
        run = self.load("load-abort")
        t0 = time.monotonic()
        self.switch(POISONED_SOURCE)
        nd = wait_canary(
            cluster,
            namespace,
            lambda o: canary_of(o).get("phase") == "Aborted",
            "the canary Aborted",
            abort_expected=True,
        )
        aborted = canary_of(nd)
        gate = aborted.get("measurement") or {}
        figures |= {"abort_s": round(time.monotonic() - t0, 1), "abort_message": aborted["message"], "gate": gate}
        assert aborted["step"] == 0, aborted
        assert aborted["steps"] == 1, aborted
        assert gate.get("canaryRequests", 0) >= GATES["minRequests"], aborted
        assert gate["canaryErrors"] / gate["canaryRequests"] > GATES["maxErrorRatio"], aborted
        assert gate.get("stableErrors") == 0, aborted
        assert gate.get("stableRequests", 0) > 0, aborted
        assert "maxErrorRatio" in aborted["message"], aborted
        stalled, ready = condition(nd, "Stalled"), condition(nd, "Ready")
        assert (stalled["status"], stalled["reason"]) == ("True", "CanaryAborted"), stalled
        assert (ready["status"], ready["reason"]) == ("False", "CanaryAborted"), ready
        # Events are written after the status of the same pass: wait for the abort's.
        until(
            lambda: any(e["reason"] == "CanaryAborted" for e in nd_events(cluster, namespace, CANARY_NAME)),
            timeout=30,
            what="the CanaryAborted Event",
        )
        events = nd_events(cluster, namespace, CANARY_NAME)
        aborts = [e for e in events if e["reason"] == "CanaryAborted"]
        assert len(aborts) == 1, [(e["reason"], e["message"]) for e in events]  # one Warning per abort
        assert aborts[0]["type"] == "Warning", aborts
        assert "maxErrorRatio" in aborts[0]["message"], aborts
        assert "CanaryStarted" in reasons(events), reasons(events)
        assert get(cluster, namespace, "deployment", canary_name(CANARY_NAME))["spec"]["replicas"] == 0
        until(lambda: not serving(cluster, namespace)[1], timeout=120, what="the aborted canary's pods gone")
        until(
            lambda: len(ready_pods(cluster, namespace, CANARY_NAME)) == 2,
            timeout=180,
            what="the stable Deployment back at 2 ready replicas",
        )
        self.stable_untouched("after the abort")
        run.wait_ok(run.ok() + 40, timeout=60, what="40 more OK answers after the abort")
        result = run.stop()
        figures["load_abort"] = poisoned_split(result)
        assert result["total"] > 0, result
        # Every non-poisoned request succeeded; the poisoned ones failed only with the canary's own 400s ...
        assert result["lost"] == result["poisoned"]["lost"], figures["load_abort"]
        assert set(result["poisoned"]["errors"]) <= {"http_400"}, figures["load_abort"]
        assert result["poisoned"]["errors"].get("http_400", 0) >= 1, figures["load_abort"]
        # ... and the stable pods served the others.
        assert result["poisoned"]["ok"] >= 1, figures["load_abort"]
        return str(aborted["templateHash"])

    def revert_healthy(self, figures: dict[str, Any], aborted_hash: str) -> None:
        """(2) A healthy version held at its first step, then the model reverted: the canary is removed."""
        cluster, namespace = self.cluster, self.namespace
        self.steps([{"weight": 50, "pauseSeconds": 3600}])
        run = self.load("load-revert")
        self.switch(V2_SOURCE)
        nd = wait_canary(
            cluster,
            namespace,
            lambda o: (
                canary_of(o).get("phase") == "Progressing"
                and canary_of(o).get("stepStartedAt") is not None
                and (canary_of(o).get("measurement") or {}).get("canaryRequests", 0) >= GATES["minRequests"]
            ),
            "the v2 canary measured at its first step",
            before=aborted_hash,
        )
        held = canary_of(nd)
        figures["held"] = {k: held.get(k) for k in ("step", "trafficPercent", "measurement", "message")}
        assert (held["canaryReplicas"], held["stableReplicas"], held["trafficPercent"]) == (1, 1, 50), held
        reconciling = condition(nd, "Reconciling")
        assert (reconciling["status"], reconciling["reason"]) == ("True", "CanaryProgressing"), reconciling
        (canary_pod,) = serving(cluster, namespace)[1]
        assert artifact_sha(canary_pod) == self.shas["mlp-v2"]
        self.stable_untouched("during the v2 canary")
        t0 = time.monotonic()
        self.switch(STABLE_SOURCE)
        nd = self.canary_gone("the canary removed after the revert")
        figures["revert_s"] = round(time.monotonic() - t0, 1)
        assert not canary_of(nd), canary_of(nd)
        until(  # the Event comes at the end of the pass that deleted the canary
            lambda: "CanaryReverted" in reasons(nd_events(cluster, namespace, CANARY_NAME)),
            timeout=30,
            what="the CanaryReverted Event",
        )
        wait_condition(cluster, namespace, "nd", CANARY_NAME, "Ready", timeout=120)
        self.stable_untouched("after the revert")
        run.wait_ok(run.ok() + 40, timeout=60, what="40 more OK answers after the revert")
        result = run.stop()
        figures["load_revert"] = poisoned_split(result)
        # Neither version fails on the poisoned value: nothing at all may fail.
        assert result["total"] > 0, result
        assert result["total"] == result["ok"], figures["load_revert"]

    def promote_healthy(self, figures: dict[str, Any]) -> None:
        """(3) The healthy version through two steps: promoted, every pod on it."""
        cluster, namespace = self.cluster, self.namespace
        self.steps([{"weight": 50, "pauseSeconds": 5}, {"weight": 75, "pauseSeconds": 5}])
        run = self.load("load-promote")
        t0 = time.monotonic()
        self.switch(V2_SOURCE)
        wait_canary(cluster, namespace, lambda o: canary_of(o).get("phase") == "Promoted", "Promoted", timeout=600)
        nd = self.canary_gone("the canary Deployment removed after the promotion")
        figures["promote_s"] = round(time.monotonic() - t0, 1)
        promoted = canary_of(nd)
        figures["promoted"] = {k: promoted.get(k) for k in ("phase", "step", "steps", "measurement")}
        assert promoted["phase"] == "Promoted", promoted
        pods = until(
            lambda: (
                (ps := pods_of(cluster, namespace, CANARY_NAME))
                and len(ps) == 2
                and len(ready_pods(cluster, namespace, CANARY_NAME)) == 2
                and ps
            ),
            timeout=180,
            what="2 pods, both ready, nothing terminating",
        )
        assert {artifact_sha(p) for p in pods} == {self.shas["mlp-v2"]}, [p["metadata"] for p in pods]
        assert not any(is_canary_pod(p) for p in pods), [p["metadata"]["labels"] for p in pods]
        stable, _ = serving(cluster, namespace)
        assert artifact_sha(stable) == self.shas["mlp-v2"]
        wait_condition(cluster, namespace, "nd", CANARY_NAME, "Ready", timeout=120)
        events = reasons(nd_events(cluster, namespace, CANARY_NAME))
        assert events.count("CanaryStepPassed") >= 2, events
        assert "CanaryPromoted" in events, events
        run.wait_ok(run.ok() + 40, timeout=60, what="40 more OK answers after the promotion")
        result = run.stop()
        figures["load_promote"] = poisoned_split(result)
        assert result["total"] > 0, result
        assert result["total"] == result["ok"], figures["load_promote"]

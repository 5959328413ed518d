"""Canary rollouts without a mesh (``resources.canary``): the replica split, the two Deployments, the gates and the
step machine, pass by pass with an explicit clock. The reconciler's side (applying, deleting, reading metrics) is
in ``test_load_reconcile.py``; the real thing on kind in ``test_autoscaling_on_kind.py``."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from neuron_operator.api.deployment import CanaryGates, Rollout
from neuron_operator.api.reasons import Reason
from neuron_operator.resources import canary, loadmetrics
from neuron_operator.resources.canary import Observed, Verdict, plan

T0 = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)


def deployment(image: str, replicas: int, ready: int | None = None, name: str = "web") -> dict[str, Any]:
    ready = replicas if ready is None else ready
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "generation": 2,
            "labels": {"neuron.dev/deployment": "web"},
            "annotations": {"neuron.dev/cache-key": f"key-{image}"},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"neuron.dev/deployment": "web"}},
            "template": {
                "metadata": {"labels": {"neuron.dev/deployment": "web"}},
                "spec": {"containers": [{"name": "runtime", "image": image}]},
            },
        },
        "status": {
            "observedGeneration": 2,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": replicas,
            "availableReplicas": ready,
        },
    }


def rollout(*steps: tuple[int, int], **gates: Any) -> Rollout:
    return Rollout.model_validate(
        {
            "strategy": "Canary",
            "steps": [{"weight": w, "pauseSeconds": p} for w, p in steps],
            **({"gates": gates} if gates else {}),
        }
    )


def observed(**kw: Any) -> Observed:
    base: dict[str, Any] = {
        "replicas": 4,
        "stable": deployment("old", 4),
        "canary": None,
        "desired": deployment("new", 4),
        "previous": None,
        "verdict": None,
        "refused": None,
        "now": T0,
    }
    return Observed(**(base | kw))


def with_status(dep: dict[str, Any], ready: int) -> dict[str, Any]:
    out = copy.deepcopy(dep)
    n = out["spec"]["replicas"]
    out["metadata"]["generation"] = 1
    out["status"] = {
        "observedGeneration": 1,
        "replicas": n,
        "readyReplicas": ready,
        "updatedReplicas": n,
        "availableReplicas": ready,
    }
    return out


PASS = Verdict(True, "gates hold", {"canaryRequests": 60, "canaryErrors": 0, "stableRequests": 100, "stableErrors": 0})


@pytest.mark.parametrize(
    ("replicas", "weight", "split"),
    [
        (4, 25, (1, 3)),
        (4, 50, (2, 2)),
        (4, 60, (3, 1)),
        (1, 10, (1, 1)),
        (2, 90, (2, 1)),
        (10, 5, (1, 9)),
        (0, 50, (0, 0)),
    ],
)
def test_split_rounds_the_canary_up_and_keeps_one_of_each(replicas: int, weight: int, split: tuple[int, int]) -> None:
    assert canary.split(replicas, weight) == split


def test_canary_and_stable_manifests() -> None:
    desired, stable = deployment("new", 4), deployment("old", 4)
    c = canary.canary_manifest(desired, 2)
    assert c["metadata"]["name"] == "web-canary"
    assert c["spec"]["replicas"] == 2
    assert c["spec"]["selector"]["matchLabels"] == {"neuron.dev/deployment": "web", canary.TRACK_LABEL: "canary"}
    labels = c["spec"]["template"]["metadata"]["labels"]
    assert labels[canary.TRACK_LABEL] == "canary"
    assert labels["neuron.dev/deployment"] == "web"
    assert c["spec"]["template"]["spec"] == desired["spec"]["template"]["spec"]
    assert desired["metadata"]["name"] == "web"  # not mutated
    s = canary.stable_manifest(desired, stable, 2)
    assert s["spec"]["template"] == stable["spec"]["template"]
    assert s["spec"]["replicas"] == 2
    assert s["metadata"]["annotations"]["neuron.dev/cache-key"] == "key-old"  # what it serves, not the spec's
    assert canary.is_canary_pod({"metadata": {"labels": labels}})
    assert not canary.is_canary_pod({"metadata": {"labels": {"neuron.dev/deployment": "web"}}})


def window(requests: float, errors: float, fast: float, slow: float = 0.0) -> loadmetrics.Window:
    """``fast`` responses under 10 ms, ``slow`` ones between 0.5 s and 1 s."""
    total = fast + slow
    return loadmetrics.Window(
        seconds=10.0,
        requests=requests,
        errors=errors,
        duration_sum=0.0,
        buckets=((0.01, fast), (0.5, fast), (1.0, total), (float("inf"), total)),
    )


def test_gates_wait_for_min_requests_then_judge_errors_and_latency() -> None:
    gates = CanaryGates(min_requests=50, max_error_ratio=0.05, max_latency_ratio=2.0)
    wait = canary.judge(gates, window(20, 10, 20), window(200, 0, 200))
    assert wait.passed is None
    assert "30 more canary request(s)" in wait.message
    bad = canary.judge(gates, window(100, 10, 100), window(300, 3, 300))  # 0.10 vs 0.01: +0.09 > 0.05
    assert bad.passed is False
    assert "error ratio 0.1000 (10/100) vs stable 0.0100 (3/300)" in bad.message
    assert bad.measurement == {
        "canaryRequests": 100,
        "canaryErrors": 10,
        "stableRequests": 300,
        "stableErrors": 3,
        "canaryP99Ms": pytest.approx(9.9),
        "stableP99Ms": pytest.approx(9.9),
    }
    same_errors = canary.judge(gates, window(100, 5, 100), window(100, 4, 100))  # +0.01: within the budget
    assert same_errors.passed is True
    slow = canary.judge(gates, window(100, 0, 90, slow=10), window(100, 0, 100))
    assert slow.passed is False
    assert "above maxLatencyRatio 2" in slow.message
    # under the floor a ratio means nothing (the histogram's buckets are milliseconds apart there)
    floor = CanaryGates(min_requests=50, max_latency_ratio=2.0, latency_floor_ms=1000.0)
    assert canary.judge(floor, window(100, 0, 90, slow=10), window(100, 0, 100)).passed is True
    no_stable = canary.judge(gates, window(100, 0, 100), loadmetrics.EMPTY_WINDOW)
    assert no_stable.passed is True
    assert "p99 not comparable" in no_stable.message


def step(p: canary.Plan) -> dict[str, Any]:
    assert p.status is not None
    return p.status


def test_a_canary_steps_through_its_weights_and_promotes() -> None:
    r = rollout((25, 30), (50, 30))
    first = plan(r, observed())
    s = step(first)
    # no canary pod is ready yet: the Service sends it nothing
    assert (s["phase"], s["step"], s["canaryReplicas"], s["stableReplicas"], s["trafficPercent"]) == (
        "Progressing",
        0,
        1,
        3,
        0,
    )
    assert "stepStartedAt" not in s
    assert "waiting for 1 canary replica(s)" in s["message"]
    assert [e[1] for e in first.events] == [Reason.CANARY_STARTED]
    assert first.canary is not None
    assert first.canary["spec"]["replicas"] == 1
    assert first.stable["spec"]["replicas"] == 3
    assert first.stable["spec"]["template"]["spec"]["containers"][0]["image"] == "old"
    assert first.progressing is not None
    assert first.aborted is None
    # the canary is ready: the step starts now
    ready_canary = with_status(first.canary, 1)
    started = plan(r, observed(canary=ready_canary, previous=s, now=T0 + timedelta(seconds=5)))
    s = step(started)
    assert started.step_started
    assert s["stepStartedAt"] == "2026-12-07T12:00:05Z"
    assert started.events == ()
    # gates hold but the pause is not over
    holding = plan(r, observed(canary=ready_canary, previous=s, verdict=PASS, now=T0 + timedelta(seconds=20)))
    assert step(holding)["step"] == 0
    assert "the step holds until 2026-12-07T12:00:35Z" in step(holding)["message"]
    assert step(holding)["measurement"] == PASS.measurement
    # pause over, gates hold: next step, the canary grows
    nxt = plan(r, observed(canary=ready_canary, previous=s, verdict=PASS, now=T0 + timedelta(seconds=36)))
    s = step(nxt)
    assert (s["step"], s["canaryReplicas"], s["stableReplicas"], s["weight"]) == (1, 2, 2, 50)
    assert "stepStartedAt" not in s
    assert [e[1] for e in nxt.events] == [Reason.CANARY_STEP_PASSED]
    assert nxt.canary is not None
    assert nxt.canary["spec"]["replicas"] == 2
    # the second step runs to its end: promote
    canary2 = with_status(nxt.canary, 2)
    s = step(plan(r, observed(canary=canary2, previous=s, now=T0 + timedelta(seconds=40))))
    done = plan(r, observed(canary=canary2, previous=s, verdict=PASS, now=T0 + timedelta(seconds=71)))
    s = step(done)
    assert s["phase"] == "Promoting"
    assert [e[1] for e in done.events] == [
        Reason.CANARY_STEP_PASSED,
        Reason.CANARY_PROMOTED,
    ]
    assert done.stable["spec"]["template"]["spec"]["containers"][0]["image"] == "new"
    assert done.stable["spec"]["replicas"] == 4
    assert done.canary is not None
    # the stable Deployment rolls to the new template; the canary stays until every stable replica is new and ready
    rolling = with_status(done.stable, 2)
    s2 = step(plan(r, observed(stable=rolling, canary=canary2, previous=s, now=T0 + timedelta(seconds=75))))
    assert s2["phase"] == "Promoting"
    final = plan(r, observed(stable=with_status(done.stable, 4), canary=canary2, previous=s2, now=T0))
    assert step(final)["phase"] == "Promoted"
    assert final.canary is None
    assert final.progressing is None
    assert step(final)["summary"] == "Promoted"


def test_a_failed_gate_aborts_at_once_and_stays_aborted() -> None:
    r = rollout((50, 600))
    s = step(plan(r, observed()))
    ready = with_status(canary.canary_manifest(deployment("new", 4), 2), 2)
    s = step(plan(r, observed(canary=ready, previous=s)))
    bad = Verdict(False, "canary error ratio 0.2000 (12/60) vs stable 0.0000 (0/80)", {"canaryRequests": 60})
    aborted = plan(r, observed(canary=ready, previous=s, verdict=bad, now=T0 + timedelta(seconds=3)))
    s = step(aborted)
    assert s["phase"] == "Aborted"
    assert s["canaryReplicas"] == 0
    assert s["stableReplicas"] == 4
    assert aborted.aborted is not None
    assert "step 1/1 (weight 50%)" in aborted.aborted
    assert "12/60" in aborted.aborted
    assert aborted.canary is not None
    assert aborted.canary["spec"]["replicas"] == 0
    assert aborted.stable["spec"]["replicas"] == 4
    assert aborted.stable["spec"]["template"]["spec"]["containers"][0]["image"] == "old"
    assert aborted.events == ()  # the Warning is Stalled's Event (one per abort)
    again = plan(r, observed(canary=ready, previous=s, verdict=PASS, now=T0 + timedelta(hours=1)))
    assert step(again)["phase"] == "Aborted"
    assert again.events == ()
    assert again.aborted == aborted.aborted
    # a new template (another spec) starts a new canary
    fresh = plan(r, observed(desired=deployment("newer", 4), previous=step(again)))
    assert step(fresh)["phase"] == "Progressing"
    assert [e[1] for e in fresh.events] == [Reason.CANARY_STARTED]


def test_a_refused_canary_pod_aborts_with_the_runtimes_reason() -> None:
    r = rollout((50, 60))
    s = step(plan(r, observed()))
    refused = plan(r, observed(previous=s, refused="pod web-canary-x: ParityFailed: max abs error 0.3 > atol 1e-4"))
    assert step(refused)["phase"] == "Aborted"
    assert refused.aborted is not None
    assert "ParityFailed: max abs error 0.3" in refused.aborted


def test_waiting_for_requests_never_passes_a_step_and_the_deadline_aborts() -> None:
    r = rollout((50, 5))
    s = step(plan(r, observed()))
    assert s["stepEnteredAt"] == "2026-12-07T12:00:00Z"
    ready = with_status(canary.canary_manifest(deployment("new", 4), 2), 2)
    s = step(plan(r, observed(canary=ready, previous=s)))
    few = Verdict(None, "waiting for 40 more canary request(s)", {"canaryRequests": 10})
    # within the progress deadline (1800 s after the 5 s pause could have ended): wait
    late = plan(r, observed(canary=ready, previous=s, verdict=few, now=T0 + timedelta(seconds=1800)))
    assert step(late)["phase"] == "Progressing"
    assert step(late)["step"] == 0
    assert "waiting for 40 more" in step(late)["message"]
    assert late.events == ()
    # beyond it: no verdict, the canary goes
    gone = plan(r, observed(canary=ready, previous=step(late), verdict=few, now=T0 + timedelta(seconds=1806)))
    assert step(gone)["phase"] == "Aborted"
    assert gone.aborted is not None
    assert "no verdict 1800s after the step's pause (5s) could have ended: waiting for 40 more" in gone.aborted


def test_a_canary_that_never_becomes_ready_is_aborted_at_its_deadline() -> None:
    r = Rollout.model_validate(
        {"strategy": "Canary", "steps": [{"weight": 50, "pauseSeconds": 0}], "gates": {"progressDeadlineSeconds": 60}}
    )
    s = step(plan(r, observed()))
    pending = with_status(canary.canary_manifest(deployment("new", 4), 2), 0)  # e.g. no free NeuronCores
    s = step(plan(r, observed(canary=pending, previous=s, now=T0 + timedelta(seconds=60))))
    assert s["phase"] == "Progressing"
    gone = plan(r, observed(canary=pending, previous=s, now=T0 + timedelta(seconds=61)))
    assert step(gone)["phase"] == "Aborted"
    assert gone.aborted is not None
    assert "waiting for 2 canary replica(s) to be ready" in gone.aborted


def test_a_started_step_keeps_its_start_when_the_replicas_change() -> None:
    r = rollout((50, 30))
    s = step(plan(r, observed()))
    ready = with_status(canary.canary_manifest(deployment("new", 4), 2), 2)
    s = step(plan(r, observed(canary=ready, previous=s)))
    started = s["stepStartedAt"]
    # the autoscaler doubles the replicas: the canary is now short of its 4, the step goes on
    grown = plan(r, observed(replicas=8, canary=ready, previous=s, verdict=PASS, now=T0 + timedelta(seconds=10)))
    assert step(grown)["stepStartedAt"] == started
    assert step(grown)["canaryReplicas"] == 4
    assert "holds until 2026-12-07T12:00:30Z" in step(grown)["message"]  # no countdown: the status stays put


def test_a_suspended_canary_waits_at_zero_without_a_deadline_and_resumes() -> None:
    r = rollout((50, 5))
    s = step(plan(r, observed()))
    ready = with_status(canary.canary_manifest(deployment("new", 4), 2), 2)
    s = step(plan(r, observed(canary=ready, previous=s)))
    asleep = plan(r, observed(replicas=0, canary=ready, previous=s, now=T0 + timedelta(hours=3)))
    s = step(asleep)
    assert (s["phase"], s["canaryReplicas"], s["stableReplicas"]) == ("Progressing", 0, 0)
    assert "stepEnteredAt" not in s
    assert "stepStartedAt" not in s
    assert asleep.stable["spec"]["template"]["spec"]["containers"][0]["image"] == "old"
    assert asleep.canary is not None
    assert asleep.canary["spec"]["replicas"] == 0
    assert asleep.progressing is None
    assert asleep.aborted is None
    awake = plan(r, observed(canary=with_status(asleep.canary, 0), previous=s, now=T0 + timedelta(hours=4)))
    s = step(awake)
    assert s["phase"] == "Progressing"
    assert s["stepEnteredAt"] == "2026-12-07T16:00:00Z"
    assert awake.canary is not None
    assert awake.canary["spec"]["replicas"] == 2

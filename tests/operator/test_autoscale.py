"""The autoscaler's decision rules (``resources.autoscale``), on scripted readings with an explicit clock.

Each test states one rule of the README's "Autoscaling" section: the recommendation, the stabilization windows in
both directions, panic mode, the restart rule, the limits, and where the wanted replicas fit (ScalingLimited).
"""

from __future__ import annotations

from typing import Any

import pytest

from neuron_operator.api.deployment import Autoscaling, LoadMetric, TargetPer
from neuron_operator.api.reasons import Reason
from neuron_operator.resources import autoscale, loadmetrics
from neuron_operator.resources.autoscale import Reading, ScalerMemory, decide


def spec(**kw: Any) -> Autoscaling:
    base: dict[str, Any] = {
        "maxReplicas": 10,
        "scaleDownStabilizationSeconds": 60,
        "panicThreshold": 3.0,
        "panicWindowSeconds": 30,
    }
    return Autoscaling.model_validate(base | kw)


def reading(total: float, pods: int) -> Reading:
    return Reading(total=total, reporting=pods)


def test_recommendation_is_load_over_target_rounded_up_and_clamped() -> None:
    s = spec(minReplicas=2, maxReplicas=5)
    mem = ScalerMemory(created=0.0)
    assert decide(s, mem, 1.0, 2, reading(9.0, 2), target=4.0).desired == 3  # ceil(9/4)
    assert decide(s, ScalerMemory(created=0.0), 1.0, 2, reading(0.0, 2), 4.0).recommendation == 2  # min
    big = decide(s, ScalerMemory(created=0.0), 1.0, 2, reading(11.0, 2), 4.0)  # 5.5 per pod < 3 x 4: no panic
    assert (big.desired, big.limited_by_max, big.panic) == (3, False, False)
    over = decide(s, ScalerMemory(created=0.0), 1.0, 5, reading(40.0, 5), 4.0)
    assert (over.desired, over.recommendation, over.limited_by_max) == (5, 5, True)
    # exactly on target: no extra replica from floating point
    assert decide(s, ScalerMemory(created=0.0), 1.0, 3, reading(12.0, 3), 4.0).desired == 3


def test_scale_up_takes_the_lowest_recommendation_of_its_window() -> None:
    s = spec(scaleUpStabilizationSeconds=10)
    mem = ScalerMemory(created=0.0)
    assert decide(s, mem, 0.0, 1, reading(4.0, 1), 4.0).desired == 1
    # a spike 5 s later is within the window with the earlier "1": hold
    assert decide(s, mem, 5.0, 1, reading(8.0, 1), 4.0).desired == 1
    # 11 s after the first reading only the high ones remain
    assert decide(s, mem, 11.0, 1, reading(8.0, 1), 4.0).desired == 2
    # with no window, the latest recommendation counts at once
    assert decide(spec(), ScalerMemory(created=0.0), 0.0, 1, reading(8.0, 1), 4.0).desired == 2


def test_scale_down_waits_for_a_full_window_of_lower_recommendations() -> None:
    s = spec(scaleDownStabilizationSeconds=60)
    mem = ScalerMemory(created=0.0)
    assert decide(s, mem, 0.0, 3, reading(12.0, 3), 4.0).desired == 3
    assert decide(s, mem, 30.0, 3, reading(0.0, 3), 4.0).desired == 3  # the 3 of t=0 is in the window
    assert decide(s, mem, 59.0, 3, reading(0.0, 3), 4.0).desired == 3
    down = decide(s, mem, 61.0, 3, reading(0.0, 3), 4.0)
    assert down.desired == 1
    assert down.reason(3) is Reason.SCALED_DOWN
    assert "highest recommendation of the last 60s" in down.message


def test_a_fresh_memory_counts_the_running_replicas_so_a_restart_never_scales_down_at_once() -> None:
    s = spec(scaleDownStabilizationSeconds=60)
    mem = ScalerMemory(created=100.0)  # the operator started at t=100 and finds 4 replicas
    assert decide(s, mem, 101.0, 4, reading(0.0, 4), 4.0).desired == 4
    assert decide(s, mem, 159.0, 4, reading(0.0, 4), 4.0).desired == 4
    assert decide(s, mem, 161.0, 4, reading(0.0, 4), 4.0).desired == 1


def test_panic_scales_up_at_once_and_blocks_scale_down_for_its_window() -> None:
    s = spec(scaleUpStabilizationSeconds=60, panicThreshold=2.0, panicWindowSeconds=30)
    mem = ScalerMemory(created=0.0)
    assert decide(s, mem, 0.0, 1, reading(2.0, 1), 4.0).desired == 1
    burst = decide(s, mem, 1.0, 1, reading(20.0, 1), 4.0)  # 20 per replica >= 2 x 4: panic, 5 at once
    assert (burst.desired, burst.panic) == (5, True)
    assert "panic mode" in burst.message
    calm = decide(s, mem, 20.0, 5, reading(0.0, 5), 4.0)  # load gone, still in the panic window
    assert (calm.desired, calm.panic) == (5, True)
    after = decide(s, mem, 40.0, 5, reading(0.0, 5), 4.0)  # panic over; the scale-down window still has the 5
    assert after.panic is False
    assert after.desired == 5


def test_no_reading_holds_the_replicas_within_the_limits() -> None:
    s = spec(minReplicas=2, maxReplicas=4)
    for current, want, why in ((3, 3, "held"), (1, 2, "brought to minReplicas 2"), (7, 4, "brought to maxReplicas 4")):
        d = decide(s, ScalerMemory(created=0.0), 0.0, current, reading(0.0, 0), 4.0)
        assert d.desired == want
        assert d.message == f"no ready pod reported its load: replicas {why}"


def test_target_defaults_fill_one_batch_per_worker() -> None:
    assert autoscale.target_per_replica(spec(), workers=2, max_batch_size=8, cores=2) == 16.0
    queued = spec(metric=LoadMetric.QUEUED_ROWS)
    assert autoscale.target_per_replica(queued, workers=2, max_batch_size=8, cores=2) == 8.0
    per_core = spec(target=3.0, per=TargetPer.NEURON_CORE)
    assert autoscale.target_per_replica(per_core, workers=1, max_batch_size=8, cores=4) == 12.0
    assert autoscale.target_per_replica(spec(target=3.0), workers=1, max_batch_size=8, cores=4) == 3.0


def _sample(at: float, duration_sum: float, in_flight: float = 0.0, queued: float = 0.0) -> loadmetrics.PodSample:
    return loadmetrics.PodSample(
        at=at,
        requests={"200": duration_sum * 10},
        duration_sum=duration_sum,
        duration_count=duration_sum * 10,
        buckets=((0.1, duration_sum * 10), (float("inf"), duration_sum * 10)),
        in_flight=in_flight,
        queued_rows=queued,
    )


def test_concurrency_is_read_by_littles_law_between_readings_and_pods_gone_are_forgotten() -> None:
    mem = ScalerMemory(created=0.0)
    first = autoscale.read_load(mem, LoadMetric.CONCURRENCY, {"a": _sample(0.0, 0.0, in_flight=3.0)}, [])
    assert first.total == 3.0  # first reading of a pod: its in-flight gauge
    # 10 s later the pod spent 25 request-seconds: 2.5 requests in it on average; pod b is new (gauge 1)
    second = autoscale.read_load(
        mem, LoadMetric.CONCURRENCY, {"a": _sample(10.0, 25.0), "b": _sample(10.0, 4.0, in_flight=1.0)}, ["c"]
    )
    assert second.total == pytest.approx(3.5)
    assert (second.reporting, second.unreadable, second.per_replica) == (2, ("c",), pytest.approx(1.75))
    third = autoscale.read_load(mem, LoadMetric.CONCURRENCY, {"b": _sample(20.0, 4.0)}, [])
    assert third.total == 0.0
    assert set(mem.samples) == {"b"}
    rows = autoscale.read_load(mem, LoadMetric.QUEUED_ROWS, {"b": _sample(30.0, 4.0, queued=12.0)}, [])
    assert rows.total == 12.0


# --------------------------------------------------------------------------------------------- capacity

NEURONCORE = "aws.amazon.com/neuroncore"


def node(name: str, itype: str, cores: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"node.kubernetes.io/instance-type": itype}},
        "spec": {},
        "status": {"allocatable": {NEURONCORE: str(cores)}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def pod(name: str, node_name: str | None, cores: int, phase: str = "Running") -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "resources": {"requests": {NEURONCORE: str(cores)}}}]}
    if node_name:
        spec["nodeName"] = node_name
    return {"metadata": {"name": name}, "spec": spec, "status": {"phase": phase}}


POD_SPEC: dict[str, Any] = {
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["inf2.xlarge"]}
                        ]
                    }
                ]
            }
        }
    }
}


def test_placement_counts_what_fits_the_free_neuroncores_of_eligible_nodes() -> None:
    nodes = [node("a", "inf2.xlarge", 2), node("b", "inf2.xlarge", 2), node("big", "inf2.48xlarge", 24)]
    own = [pod("r0", "a", 2), pod("r1", None, 2)]  # one placed, one Pending
    everything = [*own, pod("other", "b", 1)]
    found = autoscale.placement(4, 2, own, POD_SPEC, nodes, everything)
    assert (found.placed, found.fits, found.missing) == (1, 0, 3)  # b has 1 free: not enough for 2 cores
    message = found.message(["inf2.xlarge"])
    assert "3 replica(s) cannot be placed, 6 NeuronCores missing on instance types inf2.xlarge" in message
    assert "a: 0, b: 1" in message
    assert "big" not in message
    s = spec(minReplicas=1)
    assert found.capped(s) == 1
    assert found.capped(spec(minReplicas=2)) == 2  # never below minReplicas
    roomy = autoscale.placement(2, 2, own[:1], POD_SPEC, [*nodes, node("c", "inf2.xlarge", 2)], everything)
    assert (roomy.fits, roomy.missing) == (1, 0)


def test_capacity_is_read_only_for_a_scale_out_of_neuroncore_replicas() -> None:
    placed = [pod("r0", "a", 2), pod("r1", "a", 2)]
    assert autoscale.needs_capacity_check(3, placed, cores=2)
    assert not autoscale.needs_capacity_check(2, placed, cores=2)
    assert not autoscale.needs_capacity_check(5, placed, cores=0)  # cpu replicas need no NeuronCore
    finished = [pod("r0", "a", 2), pod("old", "a", 2, phase="Succeeded")]
    assert autoscale.needs_capacity_check(2, finished, cores=2)


def test_a_terminating_pod_still_holds_its_cores_so_a_replacement_is_not_capped_away() -> None:
    nodes = [node("a", "inf2.xlarge", 4)]
    leaving = pod("r0", "a", 2)
    leaving["metadata"]["deletionTimestamp"] = "2026-12-07T12:00:00Z"
    own = [leaving, pod("r1", "a", 2), pod("r2", None, 2)]  # r2 replaces r0, Pending until r0 is gone
    found = autoscale.placement(2, 2, own, POD_SPEC, nodes, own)
    assert (found.placed, found.fits, found.missing) == (2, 0, 0)
    assert found.capped(spec()) == 2  # Cap keeps both replicas


def test_pods_that_do_not_answer_count_at_target_for_a_scale_down_only() -> None:
    s = spec(scaleDownStabilizationSeconds=0)
    silent = Reading(total=4.0, reporting=2, unreadable=("c", "d"))
    assert decide(s, ScalerMemory(created=0.0), 1.0, 4, silent, 2.0).desired == 4  # (4 + 2 x 2) / 2
    idle = Reading(total=0.0, reporting=2, unreadable=("c", "d"))
    assert decide(s, ScalerMemory(created=0.0), 1.0, 4, idle, 2.0).desired == 2  # (0 + 2 x 2) / 2
    busy = Reading(total=12.0, reporting=2, unreadable=("c",))
    assert decide(s, ScalerMemory(created=0.0), 1.0, 4, busy, 2.0).desired == 6  # a scale-up counts them idle

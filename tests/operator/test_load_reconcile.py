"""The load-aware passes of the NeuronDeployment reconciler, against the in-memory apiserver (``memapi``).

The serving pods' ``/metrics`` come from the runtime's own ``Metrics`` object (``neuron_runtime.metrics``) through
memapi's pod proxy, read by the operator's real ``kube.pod_metrics``. The clock is the test's: a reading happens
when ``intervalSeconds`` has passed, so every scale decision below is at a known time. What is checked: the writes
(spec.replicas through a merge patch, the canary Deployment applied and deleted), the status and conditions, the
Events, and that a pass with nothing new writes nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
from lightkube import ApiError
from test_reconcile_core import NS, World, deployment_manifest, new_world

from neuron_operator.loadaware import LoadState
from neuron_operator.resources import canary
from neuron_operator.resources.pods import TEMPLATE_HASH_LABEL
from neuron_operator.resources.serving import RUNTIME_CONTAINER
from neuron_runtime.metrics import Metrics

PORT = 8080


@pytest.fixture
def world() -> World:
    return new_world()


NEURONCORE = "aws.amazon.com/neuroncore"


def ready_pod(world: World, deployment: str, pod: str, ip: str, ready: bool = True) -> None:
    """A pod of ``deployment``'s template, bound to node ``n1``, with an IP the pod proxy can reach."""
    d = world.api.must("Deployment", deployment, NS)
    template = d["spec"]["template"]
    world.api.seed(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod,
                "namespace": NS,
                "labels": {**template["metadata"]["labels"], TEMPLATE_HASH_LABEL: deployment},
                "annotations": template["metadata"].get("annotations", {}),
            },
            "spec": {**template["spec"], "nodeName": "n1"},
            "status": {
                "phase": "Running",
                "podIP": ip,
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                "containerStatuses": [{"name": RUNTIME_CONTAINER, "ready": ready, "state": {"running": {}}}],
            },
        }
    )


def deployment_ready(world: World, name: str) -> None:
    d = world.api.must("Deployment", name, NS)
    n = int(d["spec"]["replicas"])
    world.api.set_status(
        "Deployment",
        name,
        NS,
        {
            "observedGeneration": d["metadata"]["generation"],
            "replicas": n,
            "updatedReplicas": n,
            "readyReplicas": n,
            "availableReplicas": n,
        },
    )


class Pod:
    """A serving pod's runtime metrics, as its ``/metrics`` renders them."""

    def __init__(self, world: World, name: str) -> None:
        self.world, self.name, self.metrics = world, name, Metrics()
        self.publish()

    def publish(self) -> None:
        self.world.api.set_metrics(NS, self.name, PORT, self.metrics.render().decode())

    def serve(self, n: int, seconds: float, code: str = "200") -> None:
        for _ in range(n):
            self.metrics.requests.labels(code).inc()
            self.metrics.request_latency.observe(seconds)
        self.publish()

    def in_flight(self, n: float) -> None:
        self.metrics.in_flight.set(n)
        self.publish()


def cond(world: World, type_: str, name: str = "cnn") -> tuple[str, str, str]:
    c = next(c for c in world.status("NeuronDeployment", name)["conditions"] if c["type"] == type_)
    return c["status"], c["reason"], c["message"]


def reasons(world: World) -> list[str]:
    return [e[1] for e in world.events()]


AUTOSCALING = {
    "minReplicas": 1,
    "maxReplicas": 4,
    "target": 2.0,
    "intervalSeconds": 5,
    "scaleDownStabilizationSeconds": 30,
    "panicThreshold": 10.0,
}


async def autoscaled(world: World, replicas: int = 1, **autoscaling: Any) -> None:
    await world.compiled_model()
    world.api.seed(deployment_manifest(replicas=replicas, autoscaling=AUTOSCALING | autoscaling))
    await world.deployment_pass()


async def test_the_autoscaler_scales_up_on_load_writes_replicas_and_then_holds(world: World) -> None:
    await autoscaled(world)
    assert world.status("NeuronDeployment")["autoscaling"]["reportingPods"] == 0  # no pod yet
    ready_pod(world, "cnn", "cnn-a", "10.244.1.5")
    a = Pod(world, "cnn-a")
    a.in_flight(7)  # first reading of this pod: its gauge
    world.clock.advance(5)
    writes = await world.deployment_pass()
    spec = world.api.must("NeuronDeployment", "cnn", NS)["spec"]
    assert spec["replicas"] == 4  # ceil(7 / 2)
    assert "patch NeuronDeployment/cnn -> 200" in writes
    auto = world.status("NeuronDeployment")["autoscaling"]
    assert auto["currentLoad"] == 7.0
    assert auto["desiredReplicas"] == 4
    assert auto["summary"] == "7.0/2"
    assert auto["lastScale"]["from"] == 1
    assert auto["lastScale"]["to"] == 4
    assert auto["lastScale"]["reason"] == "ScaledUp"
    assert world.api.must("Deployment", "cnn", NS)["spec"]["replicas"] == 4  # the same pass
    assert (
        world.status("NeuronDeployment")["observedGeneration"]
        == world.api.must("NeuronDeployment", "cnn", NS)["metadata"]["generation"]
    )
    assert "ScaledUp" in reasons(world)
    assert world.requeue == pytest.approx(5.0)
    # The wanted NeuronCores do not fit: no node is known to have any (Provision: created anyway, and said so).
    status, reason, message = cond(world, "ScalingLimited")
    assert (status, reason) == ("True", "InsufficientNeuronCores")
    assert "4 replica(s) of 2 NeuronCores wanted, 1 placed and 0 more fit" in message
    assert "3 replica(s) cannot be placed, 6 NeuronCores missing on instance types inf2.8xlarge, inf2.xlarge" in message
    assert ("Warning", "InsufficientNeuronCores") in [(e[0], e[1]) for e in world.events()]
    # Before the next interval, a pass reads nothing and writes nothing.
    world.clock.advance(2)
    mark = len(world.api.requests)
    assert await world.deployment_pass() == []
    assert not any(r[0] == "proxy" for r in world.api.requests[mark:])
    assert world.requeue == pytest.approx(3.0)


async def test_scale_down_waits_for_its_window_and_idle_readings_write_nothing(world: World) -> None:
    await autoscaled(world, replicas=3)  # the operator starts and finds 3 replicas
    pods = []
    for i in range(3):
        ready_pod(world, "cnn", f"cnn-{i}", f"10.244.1.{10 + i}")
        pods.append(Pod(world, f"cnn-{i}"))
    deployment_ready(world, "cnn")
    for p in pods:
        p.serve(10, 0.5)  # 5 request-seconds each
    world.clock.advance(5)
    await world.deployment_pass()  # first readings: gauges (0) -> recommends 1, the window still has 3
    for p in pods:
        p.serve(10, 0.5)  # 5 request-seconds in 5 s: 1 request in each pod on average -> ceil(3 / 2) = 2
    world.clock.advance(5)
    await world.deployment_pass()
    assert world.status("NeuronDeployment")["autoscaling"]["currentLoad"] == 1.0
    assert world.api.must("NeuronDeployment", "cnn", NS)["spec"]["replicas"] == 3
    # Idle from now: recommendations of 1, but the 30 s window holds the 3 running when the operator started (t=0)
    # through t=30, then the 2 of t=10 through t=40: down in steps, each a full window after the higher recommendation.
    replicas, writes = [], []
    for _ in range(7):
        world.clock.advance(5)
        writes.append(await world.deployment_pass())
        replicas.append(world.api.must("NeuronDeployment", "cnn", NS)["spec"]["replicas"])
    assert replicas == [3, 3, 3, 3, 2, 2, 1]  # t = 15 ... 45
    assert writes[5] == [], "an idle reading that changes nothing writes nothing"
    assert "patch NeuronDeployment/cnn -> 200" in writes[4]
    last = world.status("NeuronDeployment")["autoscaling"]["lastScale"]
    assert (last["from"], last["to"], last["reason"]) == (2, 1, "ScaledDown")
    assert "highest recommendation of the last 30s" in last["message"]
    assert cond(world, "ScalingLimited")[:2] == ("False", "WithinLimits")  # scaling down reads no capacity


async def test_cap_creates_only_what_fits_and_max_replicas_is_reported(world: World) -> None:
    world.api.seed(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "n1", "labels": {"node.kubernetes.io/instance-type": "inf2.xlarge"}},
            "spec": {"taints": [{"key": "aws.amazon.com/neuron", "effect": "NoSchedule"}]},
            "status": {
                "allocatable": {NEURONCORE: "4"},
                "capacity": {NEURONCORE: "4"},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
    )
    await autoscaled(world, beyondCapacity="Cap", maxReplicas=3)
    ready_pod(world, "cnn", "cnn-a", "10.244.1.5")
    Pod(world, "cnn-a").in_flight(40)  # 40 / 2 = 20 replicas wanted: maxReplicas 3, and n1 holds only one more
    world.clock.advance(5)
    await world.deployment_pass()
    assert world.api.must("NeuronDeployment", "cnn", NS)["spec"]["replicas"] == 2
    status, reason, message = cond(world, "ScalingLimited")
    assert (status, reason) == ("True", "InsufficientNeuronCores")
    assert message.startswith("capped at 2 (beyondCapacity Cap): 3 replica(s) of 2 NeuronCores wanted, 1 placed")
    assert "n1: 2" in message
    # Provision: maxReplicas is the limit, and says so
    world.api.edit(
        "NeuronDeployment", "cnn", NS, lambda o: o["spec"]["autoscaling"].__setitem__("beyondCapacity", "Provision")
    )
    world.clock.advance(5)
    await world.deployment_pass()
    assert world.api.must("NeuronDeployment", "cnn", NS)["spec"]["replicas"] == 3


async def test_pods_that_cannot_be_read_hold_the_replicas(world: World) -> None:
    await autoscaled(world, minReplicas=2)
    assert world.api.must("NeuronDeployment", "cnn", NS)["spec"]["replicas"] == 2  # raised to minReplicas
    ready_pod(world, "cnn", "cnn-a", "10.244.1.5")
    ready_pod(world, "cnn", "cnn-b", "10.244.1.6")
    world.api.set_metrics(NS, "cnn-a", PORT, "<html>not prometheus</html>")  # hostile or broken
    # cnn-b: nothing listens on the port
    world.clock.advance(5)
    await world.deployment_pass()
    auto = world.status("NeuronDeployment")["autoscaling"]
    assert auto["reportingPods"] == 0
    assert "currentLoad" not in auto
    assert auto["summary"] == "-/2"
    assert world.api.must("NeuronDeployment", "cnn", NS)["spec"]["replicas"] == 2


async def test_removing_autoscaling_drops_its_status_and_condition(world: World) -> None:
    await autoscaled(world)
    assert "autoscaling" in world.status("NeuronDeployment")
    world.api.edit("NeuronDeployment", "cnn", NS, lambda o: o["spec"].pop("autoscaling"))
    await world.deployment_pass()
    status = world.status("NeuronDeployment")
    assert "autoscaling" not in status
    assert all(c["type"] != "ScalingLimited" for c in status["conditions"])


# ------------------------------------------------------------------------------------------------ canary

CANARY = {"strategy": "Canary", "steps": [{"weight": 50, "pauseSeconds": 10}], "gates": {"minRequests": 20}}


async def canary_started(world: World) -> tuple[Pod, Pod]:
    """A stable Deployment serving; then a spec change starts a canary whose pod is ready with its step begun."""
    await world.compiled_model()
    world.api.seed(deployment_manifest(replicas=2, rollout=CANARY))
    await world.deployment_pass()
    assert world.api.read("Deployment", "cnn-canary", NS) is None  # a first rollout needs no canary
    ready_pod(world, "cnn", "cnn-s0", "10.244.1.5")
    ready_pod(world, "cnn", "cnn-s1", "10.244.1.6")
    deployment_ready(world, "cnn")
    await world.deployment_pass()
    old_template = world.api.must("Deployment", "cnn", NS)["spec"]["template"]
    world.stable_template = old_template
    world.api.edit("NeuronDeployment", "cnn", NS, lambda o: o["spec"]["batching"].__setitem__("maxDelayMs", 7))
    writes = await world.deployment_pass()
    assert "apply Deployment/cnn-canary -> 201" in writes or "apply Deployment/cnn-canary -> 200" in writes
    stable = world.api.must("Deployment", "cnn", NS)
    assert stable["spec"]["template"] == old_template
    assert stable["spec"]["replicas"] == 1
    can = world.api.must("Deployment", "cnn-canary", NS)
    assert can["spec"]["replicas"] == 1
    assert can["spec"]["template"]["metadata"]["labels"][canary.TRACK_LABEL] == "canary"
    status = world.status("NeuronDeployment")
    assert status["canary"]["phase"] == "Progressing"
    assert "waiting for 1 canary replica" in status["canary"]["message"]
    assert cond(world, "Reconciling")[:2] == ("True", "CanaryProgressing")
    assert cond(world, "Ready")[:2] == ("False", "CanaryProgressing")
    assert "CanaryStarted" in reasons(world)
    assert "ArtifactChanged" not in reasons(world)
    assert world.requeue == pytest.approx(2.0)
    world.api.delete("Pod", "cnn-s1", NS)  # the stable Deployment scaled to 1
    ready_pod(world, "cnn-canary", "cnn-c0", "10.244.1.7")
    deployment_ready(world, "cnn-canary")
    deployment_ready(world, "cnn")
    s0, c0 = Pod(world, "cnn-s0"), Pod(world, "cnn-c0")
    world.clock.advance(1)
    await world.deployment_pass()
    assert world.status("NeuronDeployment")["canary"]["stepStartedAt"]
    world.clock.advance(1)
    await world.deployment_pass()  # the step's first measurement: the baselines
    return s0, c0


async def test_a_canary_whose_errors_exceed_the_stable_pods_is_aborted_and_a_revert_removes_it(world: World) -> None:
    s0, c0 = await canary_started(world)
    s0.serve(40, 0.004)
    c0.serve(18, 0.004)
    c0.serve(6, 0.004, code="400")  # 25% errors against 0%
    world.clock.advance(2)
    await world.deployment_pass()
    status = world.status("NeuronDeployment")
    assert status["canary"]["phase"] == "Aborted"
    assert status["canary"]["measurement"] == {
        "canaryRequests": 24,
        "canaryErrors": 6,
        "stableRequests": 40,
        "stableErrors": 0,
        # 0.004 s is in the (2 ms, 5 ms] bucket: histogram_quantile interpolates 2 + 3 x 0.99 = 4.97 ms
        "canaryP99Ms": pytest.approx(4.97),
        "stableP99Ms": pytest.approx(4.97),
    }
    stalled = cond(world, "Stalled")
    assert stalled[:2] == ("True", "CanaryAborted")
    assert "error ratio 0.2500 (6/24) vs stable 0.0000 (0/40)" in stalled[2]
    assert [(e[0], e[1]) for e in world.events() if e[1] == "CanaryAborted"] == [("Warning", "CanaryAborted")]
    assert world.api.must("Deployment", "cnn-canary", NS)["spec"]["replicas"] == 0
    stable = world.api.must("Deployment", "cnn", NS)
    assert stable["spec"]["replicas"] == 2
    assert stable["spec"]["template"] == world.stable_template  # what served before the canary
    # aborted stays aborted: a pass writes nothing new
    deployment_ready(world, "cnn")
    await world.deployment_pass()
    assert await world.deployment_pass() == []
    # a Git revert: the spec asks for the stable template again
    world.api.edit("NeuronDeployment", "cnn", NS, lambda o: o["spec"]["batching"].__setitem__("maxDelayMs", 4))
    writes = await world.deployment_pass()
    assert "delete Deployment/cnn-canary -> 200" in writes
    assert world.api.read("Deployment", "cnn-canary", NS) is None
    assert "canary" not in world.status("NeuronDeployment")
    assert cond(world, "Stalled")[:2] == ("False", "Reconciled")
    assert "CanaryReverted" in reasons(world)


async def test_a_healthy_canary_is_promoted_and_its_deployment_removed(world: World) -> None:
    s0, c0 = await canary_started(world)
    s0.serve(40, 0.004)
    c0.serve(30, 0.004)
    world.clock.advance(5)
    await world.deployment_pass()
    assert world.status("NeuronDeployment")["canary"]["phase"] == "Progressing"  # the pause (10 s) is not over
    world.clock.advance(6)
    await world.deployment_pass()
    status = world.status("NeuronDeployment")
    assert status["canary"]["phase"] == "Promoting"
    assert [r for r in reasons(world) if r.startswith("Canary")] == [
        "CanaryStarted",
        "CanaryProgressing",
        "CanaryStepPassed",
        "CanaryPromoted",
    ]
    stable = world.api.must("Deployment", "cnn", NS)
    can = world.api.must("Deployment", "cnn-canary", NS)
    assert stable["spec"]["replicas"] == 2
    assert is_new(stable["spec"]["template"], can["spec"]["template"])
    # the Deployment controller rolls the stable pods to the new template
    world.roll_out("cnn", template_hash="h2")
    await world.deployment_pass()
    assert world.api.read("Deployment", "cnn-canary", NS) is None
    status = world.status("NeuronDeployment")
    assert status["canary"]["phase"] == "Promoted"
    assert status["canary"]["summary"] == "Promoted"
    assert world.api.read("Pod", "cnn-c0", NS) is None  # its Deployment is gone, and so is the pod
    await world.deployment_pass()
    assert cond(world, "Ready")[:2] == ("True", "ReplicasReady")
    assert await world.deployment_pass() == []


def is_new(stable_template: dict[str, Any], canary_template: dict[str, Any]) -> bool:
    """The stable template is the canary's, but for the track label."""
    labels = dict(canary_template["metadata"]["labels"])
    labels.pop(canary.TRACK_LABEL)
    return stable_template == {**canary_template, "metadata": {**canary_template["metadata"], "labels": labels}}


async def test_an_operator_restart_mid_step_resumes_the_step_and_measures_it_again(world: World) -> None:
    s0, c0 = await canary_started(world)
    started = world.status("NeuronDeployment")["canary"]["stepStartedAt"]
    s0.serve(40, 0.004)
    c0.serve(10, 0.004, code="500")  # served before the restart: the new operator does not see them as the step's
    world.load = LoadState()  # the operator restarts: its memory is gone, the status is not
    world.clock.advance(2)
    await world.deployment_pass()
    status = world.status("NeuronDeployment")["canary"]
    assert (status["phase"], status["step"], status["stepStartedAt"]) == ("Progressing", 0, started)
    assert "waiting for 20 more canary request(s)" in status["message"]  # measured from the restart
    c0.serve(20, 0.004)
    world.clock.advance(20)  # the step's pause (10 s) is long over: the gates decide at once
    await world.deployment_pass()
    assert world.status("NeuronDeployment")["canary"]["phase"] == "Promoting"


async def test_suspending_during_a_canary_or_after_an_abort_never_ships_the_new_template(world: World) -> None:
    s0, c0 = await canary_started(world)
    s0.serve(40, 0.004)
    c0.serve(14, 0.004)
    c0.serve(10, 0.004, code="500")
    world.clock.advance(2)
    await world.deployment_pass()
    assert world.status("NeuronDeployment")["canary"]["phase"] == "Aborted"
    for suspend in (True, False):  # suspend, then resume: the rejected template never reaches the stable pods
        world.api.edit("NeuronDeployment", "cnn", NS, lambda o, v=suspend: o["spec"].__setitem__("suspend", v))
        await world.deployment_pass()
        stable = world.api.must("Deployment", "cnn", NS)
        assert stable["spec"]["template"] == world.stable_template
        assert stable["spec"]["replicas"] == (0 if suspend else 2)
        assert world.status("NeuronDeployment")["canary"]["phase"] == "Aborted"
    assert "CanaryReverted" not in reasons(world)


async def test_a_promotion_whose_status_write_was_lost_is_finished_not_reverted(world: World) -> None:
    s0, c0 = await canary_started(world)
    s0.serve(40, 0.004)
    c0.serve(30, 0.004)
    world.clock.advance(11)
    world.api.inject(
        "patch", "NeuronDeployment", code=500, reason="InternalError", message="etcd", subresource="status"
    )
    with pytest.raises(ApiError):
        await world.deployment_pass()  # the stable Deployment took the new template; the status says Progressing
    assert world.status("NeuronDeployment")["canary"]["phase"] == "Progressing"
    world.load = LoadState()  # and the operator restarts
    await world.deployment_pass()
    assert world.status("NeuronDeployment")["canary"]["phase"] == "Promoting"
    assert "CanaryReverted" not in reasons(world)
    assert world.api.read("Deployment", "cnn-canary", NS) is not None  # it serves until the stable pods are new


async def test_a_pod_proxy_refusal_is_an_unreadable_pod_not_a_failed_pass(world: World) -> None:
    await autoscaled(world, replicas=2)
    ready_pod(world, "cnn", "cnn-a", "10.244.1.5")
    ready_pod(world, "cnn", "cnn-b", "10.244.1.6")
    Pod(world, "cnn-a").in_flight(0)
    Pod(world, "cnn-b").in_flight(0)
    # RBAC refuses one read (the apiserver's own Status), the other is refused by the proxy's destination check
    world.api.inject(
        "proxy",
        "Pod",
        code=403,
        reason="Forbidden",
        message="pods/proxy is forbidden",
        name="cnn-a",
        subresource="proxy",
    )
    world.api.inject(
        "proxy", "Pod", code=500, reason="InternalError", message="boom", name="cnn-b", subresource="proxy"
    )
    world.clock.advance(5)
    await world.deployment_pass()
    auto = world.status("NeuronDeployment")["autoscaling"]
    assert auto["reportingPods"] == 0
    assert world.api.must("NeuronDeployment", "cnn", NS)["spec"]["replicas"] == 2  # held


async def test_unreadable_pods_count_as_at_target_for_a_scale_down(world: World) -> None:
    await autoscaled(world, replicas=4, scaleDownStabilizationSeconds=0)
    pods = []
    for i in range(4):
        ready_pod(world, "cnn", f"cnn-{i}", f"10.244.1.{20 + i}")
        pods.append(Pod(world, f"cnn-{i}"))
    for p in pods[:2]:
        p.in_flight(2)  # at target (2)
    world.api.set_metrics(NS, "cnn-2", PORT, None)  # the two others do not answer (e.g. overloaded)
    world.api.set_metrics(NS, "cnn-3", PORT, None)
    world.clock.advance(5)
    await world.deployment_pass()
    # 4 from the answering pods + 2 x 2 assumed for the silent ones = 8 / 2 = 4: no scale-down
    assert world.api.must("NeuronDeployment", "cnn", NS)["spec"]["replicas"] == 4


async def test_a_stepping_canary_reads_its_pods_at_most_every_two_seconds_and_its_status_stays_put(
    world: World,
) -> None:
    await canary_started(world)  # its last pass read the pods
    mark = len(world.api.requests)
    writes = await world.deployment_pass()  # triggered again at once (a pod event)
    assert not any(r[0] == "proxy" for r in world.api.requests[mark:])
    assert writes == []  # no countdown in the status: nothing to write
    world.clock.advance(2)
    mark = len(world.api.requests)
    await world.deployment_pass()
    assert sum(r[0] == "proxy" for r in world.api.requests[mark:]) == 2  # both pods, once

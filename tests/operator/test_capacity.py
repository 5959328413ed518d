"""Capacity-aware rollouts: ``resources.capacity`` against Nodes and Pods as the apiserver returns them.

The pod specs are the real output of ``serving.build_deployment`` (nodeSelector, the required node affinity
on instance types, the Neuron taint toleration, NeuronCores requested through limits); Nodes look like EKS
Neuron nodes (``node.kubernetes.io/instance-type``, the device plugin's ``aws.amazon.com/neuroncore``
allocatable as a string quantity, ``Ready`` condition, taints) or kwok's fake nodes. Pure: no cluster.
"""

from __future__ import annotations

import copy
import os
from typing import Any
from unittest import mock

import pytest
from dict_builders import build_deployment

from neuron_operator.api import NeuronDeployment, Rollout
from neuron_operator.api.deployment import RolloutStatus
from neuron_operator.catalogue import INSTANCE_TYPE_LABEL, NEURON_TAINT_KEY, NEURONCORE_RESOURCE
from neuron_operator.catalogue import NeuronCoreVersion as V
from neuron_operator.resources.capacity import (
    CUSTOM,
    IN_PLACE,
    NEURONCORE,
    SURGE,
    RolloutPlan,
    eligible,
    explicit_plan,
    free_cores,
    plan_rollout,
)
from neuron_operator.resources.fit import PlacementPlan, plan_placement
from neuron_operator.resources.serving import RUNTIME_CONTAINER, ServedArtifact
from neuron_operator.settings import OperatorSettings

Obj = dict[str, Any]

INF2_TYPES = ["inf2.xlarge", "inf2.8xlarge"]
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
NEURON_TAINT = {"key": NEURON_TAINT_KEY, "value": "true", "effect": "NoSchedule"}
IN_PLACE_TAIL = "replacing pods in place, one replica down at a time"


def _settings() -> OperatorSettings:
    """Settings independent of the developer's NEURON_OPERATOR_* environment (as in test_builders)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NEURON_OPERATOR_")}
    with mock.patch.dict(os.environ, clean, clear=True):
        return OperatorSettings(
            runtime_image="registry.test/neuron-runtime:1.0.0",
            neuronx_runtime_image="registry.test/neuron-runtime-neuronx:1.0.0",
            neuron_runtime_image="registry.test/neuron-runtime-inf1:1.0.0",
        )


SETTINGS = _settings()


# ------------------------------------------------------------------------------------------------ pod specs


def deployment_body(cores: int, instance_types: list[str] | None = None, pod: Obj | None = None) -> Obj:
    spec: Obj = {"modelRef": {"name": "bert"}, "replicas": 2}
    if cores:
        spec["placement"] = {"workers": 1, "coresPerWorker": cores}
    if instance_types is not None:
        spec["instanceTypes"] = instance_types
    if pod is not None:
        spec["pod"] = pod
    return {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronDeployment",
        "metadata": {
            "name": "bert",
            "namespace": "ml",
            "uid": "00000000-0000-4000-8000-000000000001",
            "generation": 1,
            "resourceVersion": "100",
            "creationTimestamp": "2025-01-01T00:00:00Z",
        },
        "spec": spec,
    }


def serving_pod_spec(cores: int = 2, instance_types: list[str] | None = None, pod: Obj | None = None) -> Obj:
    """The runtime pod spec ``build_deployment`` writes for a replica of ``cores`` NeuronCores."""
    types = INF2_TYPES if instance_types is None else instance_types
    body = deployment_body(cores, types if cores else None, pod)
    plan = plan_placement(V.V2 if cores else None, cores, types if cores else None, None, SETTINGS)
    assert isinstance(plan, PlacementPlan), plan
    target = "inf2" if cores else "cpu"
    artifact = ServedArtifact("bert", "c" * 64, "a" * 64, target, "neuron-artifacts", f"/artifacts/{'c' * 64}")
    manifest = build_deployment(body, artifact, plan, SETTINGS)
    result: Obj = manifest["spec"]["template"]["spec"]
    return result


SPEC = serving_pod_spec()


def test_the_pod_spec_is_the_builders() -> None:
    # The fixtures below rely on these parts of the real builder output.
    assert SPEC["tolerations"] == [{"key": NEURON_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
    terms = SPEC["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [
        {"matchExpressions": [{"key": INSTANCE_TYPE_LABEL, "operator": "In", "values": sorted(INF2_TYPES)}]}
    ]
    assert SPEC["containers"][0]["resources"] == {"limits": {NEURONCORE_RESOURCE: "2"}}
    assert NEURONCORE == NEURONCORE_RESOURCE


# ---------------------------------------------------------------------------------------------------- nodes


def node(
    name: str,
    instance_type: str = "inf2.xlarge",
    cores: str | int | None = "2",
    *,
    ready: str | None = "True",
    unschedulable: bool = False,
    taints: list[Obj] | None = None,
    labels: dict[str, str] | None = None,
) -> Obj:
    """A core/v1 Node as ``GET /api/v1/nodes/<name>`` returns it (an EKS Neuron node by default)."""
    all_labels = {
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "topology.kubernetes.io/region": "us-east-1",
        "topology.kubernetes.io/zone": "us-east-1a",
        "eks.amazonaws.com/nodegroup": "neuron",
        INSTANCE_TYPE_LABEL: instance_type,
        **(labels or {}),
    }
    spec: Obj = {"providerID": f"aws:///us-east-1a/{name}"}
    node_taints = [NEURON_TAINT] if taints is None else taints
    if unschedulable:
        spec["unschedulable"] = True
        node_taints = [*node_taints, {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]
    if ready is not None and ready != "True":
        node_taints = [
            *node_taints,
            {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute", "timeAdded": "2025-03-01T12:00:00Z"},
        ]
    if node_taints:
        spec["taints"] = node_taints
    allocatable: Obj = {
        "cpu": "3920m",
        "ephemeral-storage": "95491281146",
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
        "memory": "15270740Ki",
        "pods": "58",
    }
    if cores is not None:
        allocatable |= {"aws.amazon.com/neuron": "1", NEURONCORE_RESOURCE: cores, "aws.amazon.com/neurondevice": "1"}
    conditions = [
        {"type": t, "status": "False", "reason": f"KubeletHasNo{t}", "message": "ok"}
        for t in ("MemoryPressure", "DiskPressure", "PIDPressure")
    ]
    if ready is not None:
        conditions.append(
            {
                "type": "Ready",
                "status": ready,
                "reason": "KubeletReady" if ready == "True" else "NodeStatusUnknown",
                "message": "kubelet is posting ready status" if ready == "True" else "Kubelet stopped posting",
                "lastHeartbeatTime": "2025-03-01T12:00:00Z",
                "lastTransitionTime": "2025-03-01T11:00:00Z",
            }
        )
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "9000", "labels": all_labels},
        "spec": spec,
        "status": {
            "capacity": dict(allocatable),
            "allocatable": allocatable,
            "conditions": conditions,
            "nodeInfo": {"kubeletVersion": "v1.31.2-eks-94953ac", "architecture": "amd64"},
        },
    }


def kwok_node(name: str, instance_type: str = "inf2.xlarge", cores: str = "2") -> Obj:
    """A kwok fake node: its own NoSchedule taint next to the Neuron one."""
    body = node(name, instance_type, cores, taints=[NEURON_TAINT, KWOK_TAINT], labels={"type": "kwok"})
    body["metadata"]["annotations"] = {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"}
    return body


# ----------------------------------------------------------------------------------------------------- pods


def bound_pod(
    name: str,
    node_name: str | None,
    cores: str | int | None = "1",
    *,
    phase: str = "Running",
    limits_only: bool = False,
    namespace: str = "ml",
    deleting: bool = False,
) -> Obj:
    """A core/v1 Pod as the apiserver returns it: extended-resource requests defaulted from limits."""
    limits: Obj = {"memory": "2Gi"}
    requests: Obj = {"cpu": "500m", "memory": "2Gi"}
    if cores is not None:
        limits[NEURONCORE_RESOURCE] = cores
        requests[NEURONCORE_RESOURCE] = cores
    resources = {"limits": limits} if limits_only else {"limits": limits, "requests": requests}
    spec: Obj = {
        "containers": [{"name": RUNTIME_CONTAINER, "image": "registry.test/x:1", "resources": resources}],
        "schedulerName": "default-scheduler",
        "restartPolicy": "Always",
    }
    if node_name is not None:
        spec["nodeName"] = node_name
    metadata: Obj = {"name": name, "namespace": namespace, "uid": f"uid-{name}", "resourceVersion": "1"}
    if deleting:
        metadata["deletionTimestamp"] = "2025-03-01T12:05:00Z"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": {"phase": phase}}


# ------------------------------------------------------------------------------------------ explicit_plan


def test_no_explicit_rollout() -> None:
    assert explicit_plan(Rollout()) is None
    parsed = NeuronDeployment.model_validate(deployment_body(2, INF2_TYPES))
    assert explicit_plan(parsed.spec.rollout) is None


@pytest.mark.parametrize(
    ("rollout", "surge", "unavailable"),
    [
        ({"maxSurge": 2}, 2, 0),
        ({"maxUnavailable": 1}, 0, 1),
        ({"maxUnavailable": "25%"}, 0, "25%"),
        ({"maxSurge": "50%", "maxUnavailable": 0}, "50%", 0),
        ({"maxSurge": 1, "maxUnavailable": 3}, 1, 3),
    ],
)
def test_explicit_rollout_is_custom_with_unset_field_zero(
    rollout: Obj, surge: int | str, unavailable: int | str
) -> None:
    body = deployment_body(2, INF2_TYPES)
    body["spec"]["rollout"] = rollout
    plan = explicit_plan(NeuronDeployment.model_validate(body).spec.rollout)
    assert plan == RolloutPlan(
        CUSTOM, surge, unavailable, f"spec.rollout: maxSurge {surge}, maxUnavailable {unavailable}"
    )
    assert plan.status() == {
        "strategy": "Custom",
        "maxSurge": surge,
        "maxUnavailable": unavailable,
        "message": plan.message,
    }
    RolloutStatus.model_validate(plan.status())


def test_explicit_rollout_from_python_names() -> None:
    assert explicit_plan(Rollout(max_surge=3)) == RolloutPlan(
        CUSTOM, 3, 0, "spec.rollout: maxSurge 3, maxUnavailable 0"
    )


# ------------------------------------------------------------------------------------------------ cpu replicas


@pytest.mark.parametrize(
    ("nodes", "pods"),
    [(None, None), ([], []), ([node("inf-a", cores="0")], [bound_pod("x", "inf-a", "2")])],
)
def test_cpu_replicas_always_surge(nodes: list[Obj] | None, pods: list[Obj] | None) -> None:
    cpu_spec = serving_pod_spec(0)
    assert "tolerations" not in cpu_spec
    assert "affinity" not in cpu_spec
    plan = plan_rollout(0, cpu_spec, nodes, pods, "nodes is forbidden")
    assert plan == RolloutPlan(SURGE, 1, 0, "cpu replicas need no NeuronCore: one extra replica during an update")


# ------------------------------------------------------------------------------------------- unknown capacity


@pytest.mark.parametrize(("nodes", "pods"), [(None, None), (None, []), ([], None)])
def test_unknown_capacity_replaces_in_place_and_says_why(nodes: list[Obj] | None, pods: list[Obj] | None) -> None:
    why = 'no read access to nodes or pods: nodes is forbidden: User "system:serviceaccount:ops:neuron-operator"'
    plan = plan_rollout(2, SPEC, nodes, pods, why)
    assert plan.strategy == IN_PLACE
    assert (plan.max_surge, plan.max_unavailable) == (0, 1)
    assert plan.message == f"node capacity is unknown ({why}): {IN_PLACE_TAIL}"


# --------------------------------------------------------------------------------------------- plan_rollout


def test_an_eligible_node_with_enough_free_cores_surges_there() -> None:
    nodes = [node("inf-a"), node("inf-b")]
    pods = [bound_pod("bert-old-1", "inf-a", "2")]
    plan = plan_rollout(2, SPEC, nodes, pods)
    assert plan == RolloutPlan(SURGE, 1, 0, "node inf-b has 2 free NeuronCores (a replica needs 2): surge by one")
    RolloutStatus.model_validate(plan.status())


def test_only_a_node_with_too_few_free_cores_replaces_in_place() -> None:
    nodes = [node("inf-a"), node("inf-b")]
    pods = [bound_pod("bert-old-1", "inf-a", "2"), bound_pod("other", "inf-b", "1", namespace="team-x")]
    plan = plan_rollout(2, SPEC, nodes, pods)
    assert plan == RolloutPlan(
        IN_PLACE,
        0,
        1,
        f"no eligible node has 2 free NeuronCores (most: 1 on inf-b): {IN_PLACE_TAIL}; "
        "add capacity or set spec.rollout",
    )
    RolloutStatus.model_validate(plan.status())


def test_no_eligible_node_replaces_in_place() -> None:
    plan = plan_rollout(2, SPEC, [], [])
    assert plan == RolloutPlan(IN_PLACE, 0, 1, f"no node can run a replica now: {IN_PLACE_TAIL}")
    wrong = [node("cpu-a", "m5.xlarge", None, taints=[]), node("inf1-a", "inf1.xlarge", "4")]
    assert plan_rollout(2, SPEC, wrong, []) == plan


def test_the_node_with_most_free_cores_is_named() -> None:
    nodes = [node("inf-a", "inf2.8xlarge"), node("inf-b", "inf2.8xlarge"), node("inf-c", "inf2.8xlarge")]
    pods = [bound_pod("p1", "inf-a", "2"), bound_pod("p2", "inf-c", "2")]
    assert plan_rollout(2, SPEC, nodes, pods).message.startswith("node inf-b has 2 free")
    big = serving_pod_spec(2, ["inf2.24xlarge"])
    nodes = [node(n, "inf2.24xlarge", "12") for n in ("inf-c", "inf-a", "inf-b")]
    pods = [bound_pod("p1", "inf-a", "11"), bound_pod("p2", "inf-b", "10"), bound_pod("p3", "inf-c", "11")]
    plan = plan_rollout(4, big, nodes, pods)
    assert plan.strategy == IN_PLACE
    assert "(most: 2 on inf-b)" in plan.message


def test_ties_name_the_first_node_by_name() -> None:
    nodes = [node("inf-c"), node("inf-a"), node("inf-b")]
    assert plan_rollout(2, SPEC, nodes, []).message.startswith("node inf-a has 2 free")
    assert plan_rollout(2, SPEC, list(reversed(nodes)), []).message.startswith("node inf-a has 2 free")


def test_plan_rollout_leaves_its_inputs_alone() -> None:
    nodes = [node("inf-a"), kwok_node("kwok-a")]
    pods = [bound_pod("p", "inf-a", "1")]
    spec = copy.deepcopy(SPEC)
    before = copy.deepcopy((nodes, pods, spec))
    assert plan_rollout(2, spec, nodes, pods) == plan_rollout(2, spec, nodes, pods)
    assert (nodes, pods, spec) == before


# ------------------------------------------------------------------------------------------------- eligible


def test_a_ready_neuron_node_of_an_allowed_type_is_eligible() -> None:
    assert eligible(node("inf-a"), SPEC)
    assert eligible(node("inf-a", "inf2.8xlarge"), SPEC)


def without_labels(body: Obj, *keys: str) -> Obj:
    for key in keys:
        del body["metadata"]["labels"][key]
    return body


@pytest.mark.parametrize(
    "body",
    [
        node("cordoned", unschedulable=True),
        node("not-ready", ready="False"),
        node("unknown", ready="Unknown"),
        node("no-ready-condition", ready=None),
        kwok_node("kwok"),
        node("wrong-type", "inf2.24xlarge", "12"),
        node("inf1", "inf1.xlarge", "4"),
        node("cpu", "m5.large", None, taints=[]),
        without_labels(node("no-type-label"), INSTANCE_TYPE_LABEL),
        node("neuron-no-execute", taints=[{"key": NEURON_TAINT_KEY, "value": "true", "effect": "NoExecute"}]),
        node("dedicated", taints=[NEURON_TAINT, {"key": "dedicated", "value": "training", "effect": "NoSchedule"}]),
    ],
    ids=lambda b: b["metadata"]["name"],
)
def test_nodes_a_replica_cannot_run_on(body: Obj) -> None:
    assert not eligible(body, SPEC)
    assert free_cores([body], [], SPEC) == {}
    assert plan_rollout(2, SPEC, [body], []) == RolloutPlan(
        IN_PLACE, 0, 1, f"no node can run a replica now: {IN_PLACE_TAIL}"
    )


def test_node_selector_mismatch() -> None:
    spec = serving_pod_spec(pod={"nodeSelector": {"pool": "serving", "topology.kubernetes.io/zone": "us-east-1a"}})
    assert spec["nodeSelector"] == {"pool": "serving", "topology.kubernetes.io/zone": "us-east-1a"}
    assert eligible(node("a", labels={"pool": "serving"}), spec)
    assert not eligible(node("b", labels={"pool": "batch"}), spec)
    assert not eligible(node("c"), spec)  # label missing
    assert not eligible(node("d", labels={"pool": "serving", "topology.kubernetes.io/zone": "us-east-1b"}), spec)
    nodes = [node("b", labels={"pool": "batch"}), node("a", labels={"pool": "serving"})]
    assert free_cores(nodes, [], spec) == {"a": 2}


def test_prefer_no_schedule_taints_are_ignored() -> None:
    soft = {"key": "spot", "value": "true", "effect": "PreferNoSchedule"}
    body = node("soft", taints=[NEURON_TAINT, soft])
    assert eligible(body, SPEC)
    assert plan_rollout(2, SPEC, [body], []).strategy == SURGE


def test_a_node_without_taints_is_eligible() -> None:
    assert eligible(node("plain", taints=[]), SPEC)


def test_neuron_taint_with_any_value_is_tolerated() -> None:
    for value in ("true", "", "present"):
        taint = {"key": NEURON_TAINT_KEY, "value": value, "effect": "NoSchedule"}
        assert eligible(node("n", taints=[taint]), SPEC), value
    assert eligible(node("n", taints=[{"key": NEURON_TAINT_KEY, "effect": "NoSchedule"}]), SPEC)


@pytest.mark.parametrize(
    ("toleration", "tolerated"),
    [
        ({"operator": "Exists"}, True),  # empty key + Exists: every taint
        ({"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}, True),
        ({"key": "kwok.x-k8s.io/node", "operator": "Exists"}, True),  # no effect: every effect
        ({"key": "kwok.x-k8s.io/node", "operator": "Equal", "value": "fake", "effect": "NoSchedule"}, True),
        ({"key": "kwok.x-k8s.io/node", "value": "fake"}, True),  # operator defaults to Equal
        ({"key": "kwok.x-k8s.io/node", "operator": "Equal", "value": "real", "effect": "NoSchedule"}, False),
        ({"key": "kwok.x-k8s.io/node", "operator": "Equal", "effect": "NoSchedule"}, False),  # value "" != fake
        ({"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoExecute"}, False),
        ({"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "PreferNoSchedule"}, False),
        ({"key": "kwok.x-k8s.io/other", "operator": "Exists"}, False),
    ],
)
def test_tolerations_from_pod_overrides(toleration: Obj, tolerated: bool) -> None:
    spec = serving_pod_spec(pod={"tolerations": [toleration]})
    assert spec["tolerations"][-1] == {"key": NEURON_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
    assert eligible(kwok_node("kwok"), spec) is tolerated


def test_exists_toleration_with_empty_key_tolerates_every_taint() -> None:
    spec = serving_pod_spec(pod={"tolerations": [{"operator": "Exists"}]})
    body = node(
        "everything",
        taints=[
            NEURON_TAINT,
            KWOK_TAINT,
            {"key": "dedicated", "value": "training", "effect": "NoSchedule"},
            {"key": "maintenance", "effect": "NoExecute"},
        ],
    )
    assert eligible(body, spec)
    assert not eligible(body, SPEC)
    # ... but it does not change the labels a node must have, nor make a NotReady node Ready.
    assert not eligible(node("wrong-type", "trn1.32xlarge", "32", taints=[KWOK_TAINT]), spec)
    assert not eligible(node("not-ready", ready="False"), spec)


def test_no_execute_taint_needs_a_no_execute_toleration() -> None:
    taint = {"key": "maintenance", "value": "soon", "effect": "NoExecute"}
    body = node("n", taints=[NEURON_TAINT, taint])
    assert not eligible(body, SPEC)
    tol = {"key": "maintenance", "operator": "Equal", "value": "soon", "effect": "NoExecute", "tolerationSeconds": 30}
    assert eligible(body, serving_pod_spec(pod={"tolerations": [tol]}))


def test_user_node_affinity_terms_are_ored_and_each_keeps_the_instance_types() -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]}
                        ]
                    },
                    {"matchExpressions": [{"key": "reserved", "operator": "Exists"}]},
                ]
            }
        }
    }
    spec = serving_pod_spec(pod={"affinity": affinity})
    assert eligible(node("od", labels={"karpenter.sh/capacity-type": "on-demand"}), spec)
    assert eligible(node("reserved", labels={"reserved": ""}), spec)
    assert not eligible(node("spot", labels={"karpenter.sh/capacity-type": "spot"}), spec)
    assert not eligible(node("wrong-type", "trn1.2xlarge", labels={"reserved": "yes"}), spec)


@pytest.mark.parametrize(
    ("expression", "labels", "matches"),
    [
        ({"key": "pool", "operator": "NotIn", "values": ["batch"]}, {"pool": "serving"}, True),
        ({"key": "pool", "operator": "NotIn", "values": ["batch"]}, {}, True),  # absent label: NotIn holds
        ({"key": "pool", "operator": "NotIn", "values": ["batch"]}, {"pool": "batch"}, False),
        ({"key": "spot", "operator": "DoesNotExist"}, {}, True),
        ({"key": "spot", "operator": "DoesNotExist"}, {"spot": "true"}, False),
        ({"key": "gen", "operator": "Gt", "values": ["1"]}, {"gen": "5"}, False),  # not built: conservative
    ],
)
def test_node_selector_operators(expression: Obj, labels: dict[str, str], matches: bool) -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [expression]}]
            }
        }
    }
    spec = serving_pod_spec(pod={"affinity": affinity})
    assert eligible(node("n", labels=labels), spec) is matches


def test_match_fields_pin_the_node() -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["inf-a"]}]}
                ]
            }
        }
    }
    spec = serving_pod_spec(pod={"affinity": affinity})
    nodes = [node("inf-a"), node("inf-b")]
    pods = [bound_pod("bert-old-1", "inf-a", "2")]
    assert not eligible(node("inf-b"), spec)
    assert plan_rollout(2, spec, nodes, pods).strategy == IN_PLACE  # inf-a, the only allowed node, is full


# ----------------------------------------------------------------------------------------------- free_cores


def test_free_cores_subtracts_bound_requests_per_node() -> None:
    nodes = [node("inf-a", "inf2.8xlarge"), node("inf-b"), kwok_node("kwok-a"), node("off", unschedulable=True)]
    pods = [
        bound_pod("bert-old-1", "inf-a", "1"),
        bound_pod("bert-old-2", "inf-a", "1"),
        bound_pod("other", "inf-b", "1", namespace="team-x"),
        bound_pod("on-kwok", "kwok-a", "2"),
    ]
    assert free_cores(nodes, pods, SPEC) == {"inf-a": 0, "inf-b": 1}


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_finished_pods_do_not_count(phase: str) -> None:
    pods = [bound_pod("done", "inf-a", "2", phase=phase)]
    assert free_cores([node("inf-a")], pods, SPEC) == {"inf-a": 2}
    assert plan_rollout(2, SPEC, [node("inf-a")], pods).strategy == SURGE


def test_pending_and_terminating_pods_bound_to_the_node_count() -> None:
    pods = [bound_pod("starting", "inf-a", "1", phase="Pending"), bound_pod("leaving", "inf-a", "1", deleting=True)]
    assert free_cores([node("inf-a")], pods, SPEC) == {"inf-a": 0}


def test_pods_not_bound_or_on_other_nodes_do_not_count() -> None:
    pods = [
        bound_pod("unscheduled", None, "2", phase="Pending"),
        bound_pod("elsewhere", "inf-z", "2"),
        bound_pod("kwok-pod", "kwok-a", "2"),
    ]
    nodes = [node("inf-a"), kwok_node("kwok-a")]
    assert free_cores(nodes, pods, SPEC) == {"inf-a": 2}
    assert plan_rollout(2, SPEC, nodes, pods).message.startswith("node inf-a has 2 free")


def test_pods_without_neuron_cores_do_not_count() -> None:
    pods = [bound_pod("daemon", "inf-a", None), bound_pod("cpu-only", "inf-a", None, limits_only=True)]
    assert free_cores([node("inf-a")], pods, SPEC) == {"inf-a": 2}


def test_requests_given_only_as_limits_count() -> None:
    pods = [bound_pod("limits-only", "inf-a", "2", limits_only=True)]
    assert "requests" not in pods[0]["spec"]["containers"][0]["resources"]
    assert free_cores([node("inf-a")], pods, SPEC) == {"inf-a": 0}
    assert plan_rollout(2, SPEC, [node("inf-a")], pods).strategy == IN_PLACE


def test_the_builders_own_pod_counts() -> None:
    # An old replica of this very deployment: the container resources exactly as build_deployment writes them.
    old = bound_pod("bert-7d9c8b6f5-x2x4q", "inf-a")
    old["spec"]["containers"] = copy.deepcopy(SPEC["containers"])
    assert free_cores([node("inf-a", "inf2.8xlarge", "2")], [old], SPEC) == {"inf-a": 0}


def test_every_container_counts() -> None:
    pod = bound_pod("two", "inf-a", "1")
    second = copy.deepcopy(pod["spec"]["containers"][0]) | {"name": "second"}
    second["resources"] = {"limits": {NEURONCORE_RESOURCE: "1"}}
    pod["spec"]["containers"].append(second)
    nodes = [node("inf-a", "inf2.8xlarge", "4")]
    assert free_cores(nodes, [pod], serving_pod_spec(2, ["inf2.8xlarge"])) == {"inf-a": 2}


@pytest.mark.parametrize(("allocatable", "used", "free"), [("2", "1", 1), (2, 1, 1), ("12", "4", 8), ("2", 2, 0)])
def test_quantities_as_strings_or_numbers(allocatable: str | int, used: str | int, free: int) -> None:
    spec = serving_pod_spec(2, ["inf2.24xlarge"])
    nodes = [node("inf-a", "inf2.24xlarge", allocatable)]
    assert free_cores(nodes, [bound_pod("p", "inf-a", used)], spec) == {"inf-a": free}


def test_a_node_without_neuron_allocatable_has_no_free_cores() -> None:
    # The device plugin has not registered yet: an allowed node with no NeuronCore to give.
    nodes = [node("inf-a", cores=None)]
    assert free_cores(nodes, [], SPEC) == {"inf-a": 0}
    plan = plan_rollout(2, SPEC, nodes, [])
    assert plan.strategy == IN_PLACE
    assert "(most: 0 on inf-a)" in plan.message


def test_kwok_nodes_count_once_the_taint_is_tolerated() -> None:
    spec = serving_pod_spec(pod={"tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists"}]})
    nodes = [kwok_node("kwok-a"), kwok_node("kwok-b")]
    pods = [bound_pod("p", "kwok-a", "2")]
    assert free_cores(nodes, pods, spec) == {"kwok-a": 0, "kwok-b": 2}
    assert plan_rollout(2, spec, nodes, pods).message == (
        "node kwok-b has 2 free NeuronCores (a replica needs 2): surge by one"
    )


def test_init_container_requests_count_like_the_scheduler_counts_them() -> None:
    pod = bound_pod("warm", "inf-a", "1")
    pod["spec"]["initContainers"] = [
        {"name": "warmup", "image": "registry.test/x:1", "resources": {"limits": {NEURONCORE_RESOURCE: "2"}}}
    ]
    spec = serving_pod_spec(1)
    assert free_cores([node("inf-a")], [pod], spec) == {"inf-a": 0}
    assert plan_rollout(1, spec, [node("inf-a")], [pod]).strategy == IN_PLACE

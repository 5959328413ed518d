"""The simulated Neuron fleet, defined as data and turned into kwok-managed Node objects.

Capacity comes from the operator's instance catalogue (``neuron_operator.catalogue``) so the fleet and
the operator can never disagree. Labels and taints mirror a real EKS node with the Neuron device plugin:
``node.kubernetes.io/instance-type``, arch/os/hostname, zone/region, the Karpenter accelerator labels and
the conventional ``aws.amazon.com/neuron:NoSchedule`` taint on Neuron nodes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from neuron_operator.catalogue import (
    INSTANCE_TYPE_LABEL,
    NEURON_DEVICE_RESOURCE,
    NEURON_TAINT_KEY,
    NEURONCORE_RESOURCE,
    InstanceType,
    NeuronCoreVersion,
    instance_type,
)

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
REGION = "us-west-2"
ZONES = ("us-west-2a", "us-west-2b", "us-west-2c")
PODS_PER_NODE = 110

_ACCELERATOR_NAME = {
    NeuronCoreVersion.V1: "inferentia",
    NeuronCoreVersion.V2: "inferentia2",
    NeuronCoreVersion.V3: "trainium2",
}


@dataclass(frozen=True)
class NodeGroup:
    """``count`` nodes of one instance type."""

    instance_type: str
    count: int


#: The default fleet (F1): every kind of Neuron node the operator must place onto, plus CPU-only nodes
#: for compile Jobs.
DEFAULT_FLEET: tuple[NodeGroup, ...] = (
    NodeGroup("inf1.xlarge", 2),
    NodeGroup("inf2.xlarge", 2),
    NodeGroup("inf2.24xlarge", 1),
    NodeGroup("inf2.48xlarge", 1),
    NodeGroup("trn1.2xlarge", 1),
    NodeGroup("trn1.32xlarge", 1),
    NodeGroup("m5.xlarge", 2),
)


def node_name(itype: str, index: int) -> str:
    return f"{itype.replace('.', '-')}-{index}"


def _accelerator_name(t: InstanceType) -> str:
    if t.family.startswith("trn1"):
        return "trainium"
    assert t.core_version is not None
    return _ACCELERATOR_NAME[t.core_version]


def node_manifest(itype: str, index: int) -> dict[str, Any]:
    """The Node object for the ``index``-th node of ``itype`` (kwok-managed)."""
    t = instance_type(itype)
    name = node_name(itype, index)
    zone = ZONES[index % len(ZONES)]
    labels = {
        "type": "kwok",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        INSTANCE_TYPE_LABEL: itype,
        "beta.kubernetes.io/instance-type": itype,
        "topology.kubernetes.io/zone": zone,
        "topology.kubernetes.io/region": REGION,
        "karpenter.k8s.aws/instance-family": t.family,
        "karpenter.k8s.aws/instance-cpu": str(t.vcpu),
    }
    resources = {"cpu": str(t.vcpu), "memory": f"{t.memory_gib}Gi", "pods": str(PODS_PER_NODE)}
    taints: list[dict[str, str]] = []
    if t.is_neuron:
        labels |= {
            "neuron.amazonaws.com/neuron-device": "true",
            "karpenter.k8s.aws/instance-accelerator-manufacturer": "aws",
            "karpenter.k8s.aws/instance-accelerator-name": _accelerator_name(t),
            "karpenter.k8s.aws/instance-accelerator-count": str(t.devices),
        }
        resources |= {NEURON_DEVICE_RESOURCE: str(t.devices), NEURONCORE_RESOURCE: str(t.neuron_cores)}
        taints.append({"key": NEURON_TAINT_KEY, "value": "true", "effect": "NoSchedule"})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": taints},
        "status": {
            "capacity": resources,
            "allocatable": dict(resources),
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kernelVersion": "fake",
                "osImage": "Amazon Linux 2023 (Neuron, simulated by kwok)",
                "containerRuntimeVersion": "fake",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kubeProxyVersion": "",
            },
        },
    }


def fleet_manifests(fleet: Iterable[NodeGroup] = DEFAULT_FLEET) -> list[dict[str, Any]]:
    return [node_manifest(g.instance_type, i) for g in fleet for i in range(g.count)]


def total_neuron_cores(fleet: Iterable[NodeGroup] = DEFAULT_FLEET) -> int:
    """NeuronCores the fleet advertises in total (what tests fill exactly)."""
    return sum(instance_type(g.instance_type).neuron_cores * g.count for g in fleet)

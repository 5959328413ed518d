"""The Neuron instance catalogue: the one place that knows what each EC2 instance type offers.

Used by the operator (feasibility, node affinity, scheduler-extension decisions) and by the local
simulated fleet (kwok Node capacity), so the two can never disagree. Pure data and pure lookups: no I/O.

Figures come from the Neuron SDK hardware pages and the device-plugin manifests (see
``shared/docs/neuron-on-kubernetes.md`` §2): devices per instance, NeuronCores per device, the core
generation, device memory, vCPUs and host memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

NEURONCORE_RESOURCE: Final = "aws.amazon.com/neuroncore"
NEURON_DEVICE_RESOURCE: Final = "aws.amazon.com/neuron"
INSTANCE_TYPE_LABEL: Final = "node.kubernetes.io/instance-type"
NEURON_TAINT_KEY: Final = "aws.amazon.com/neuron"


class NeuronCoreVersion(StrEnum):
    """Generation of NeuronCore an artifact is compiled for. Artifacts never cross generations."""

    V1 = "v1"  # Inferentia (inf1): torch-neuron / neuron-cc
    V2 = "v2"  # Inferentia2 and Trainium (inf2, trn1, trn1n): torch-neuronx / neuronx-cc
    V3 = "v3"  # Trainium2 (trn2): torch-neuronx / neuronx-cc, LNC=2 by default


class Target(StrEnum):
    """Compile target named in NeuronModel.spec.target."""

    INF1 = "inf1"
    INF2 = "inf2"
    TRN1 = "trn1"
    TRN2 = "trn2"
    CPU = "cpu"


#: NeuronCore generation each compile target produces; ``cpu`` artifacts need no NeuronCore.
TARGET_CORE_VERSION: Final[dict[Target, NeuronCoreVersion | None]] = {
    Target.INF1: NeuronCoreVersion.V1,
    Target.INF2: NeuronCoreVersion.V2,
    Target.TRN1: NeuronCoreVersion.V2,
    Target.TRN2: NeuronCoreVersion.V3,
    Target.CPU: None,
}


@dataclass(frozen=True, slots=True)
class InstanceType:
    """One EC2 instance type as the Neuron device plugin advertises it."""

    name: str
    family: str
    devices: int
    cores_per_device: int
    core_version: NeuronCoreVersion | None
    device_memory_gib: int
    vcpu: int
    memory_gib: int

    @property
    def neuron_cores(self) -> int:
        """Allocatable ``aws.amazon.com/neuroncore`` on one node of this type."""
        return self.devices * self.cores_per_device

    @property
    def is_neuron(self) -> bool:
        return self.core_version is not None


def _neuron(
    name: str, devices: int, cores: int, version: NeuronCoreVersion, mem: int, vcpu: int, host: int
) -> InstanceType:
    return InstanceType(name, name.split(".", maxsplit=1)[0], devices, cores, version, mem, vcpu, host)


_V1, _V2, _V3 = NeuronCoreVersion.V1, NeuronCoreVersion.V2, NeuronCoreVersion.V3

#: Every instance type the operator knows, keyed by the ``node.kubernetes.io/instance-type`` value.
INSTANCE_TYPES: Final[dict[str, InstanceType]] = {
    t.name: t
    for t in (
        _neuron("inf1.xlarge", 1, 4, _V1, 8, 4, 8),
        _neuron("inf1.2xlarge", 1, 4, _V1, 8, 8, 16),
        _neuron("inf1.6xlarge", 4, 4, _V1, 8, 24, 48),
        _neuron("inf1.24xlarge", 16, 4, _V1, 8, 96, 192),
        _neuron("inf2.xlarge", 1, 2, _V2, 32, 4, 16),
        _neuron("inf2.8xlarge", 1, 2, _V2, 32, 32, 128),
        _neuron("inf2.24xlarge", 6, 2, _V2, 32, 96, 384),
        _neuron("inf2.48xlarge", 12, 2, _V2, 32, 192, 768),
        _neuron("trn1.2xlarge", 1, 2, _V2, 32, 8, 32),
        _neuron("trn1.32xlarge", 16, 2, _V2, 32, 128, 512),
        _neuron("trn1n.32xlarge", 16, 2, _V2, 32, 128, 512),
        # Trn2 at the default LNC=2: 8 physical NC-v3 per device show up as 4 logical cores.
        _neuron("trn2.48xlarge", 16, 4, _V3, 96, 192, 2048),
        # CPU-only types for compile Jobs (compilation needs no NeuronCore).
        InstanceType("m5.xlarge", "m5", 0, 0, None, 0, 4, 16),
        InstanceType("m5.2xlarge", "m5", 0, 0, None, 0, 8, 32),
        InstanceType("c6i.4xlarge", "c6i", 0, 0, None, 0, 16, 32),
    )
}


def instance_type(name: str) -> InstanceType:
    """The catalogue entry for ``name``; ``KeyError`` names the unknown type and the known ones."""
    try:
        return INSTANCE_TYPES[name]
    except KeyError:
        known = ", ".join(sorted(INSTANCE_TYPES))
        raise KeyError(f"unknown instance type {name!r}; known: {known}") from None


def compatible_instance_types(core_version: NeuronCoreVersion) -> list[InstanceType]:
    """Instance types whose NeuronCores can run an artifact of ``core_version``, smallest first.

    NeuronCore-v1 (inf1) and v2 (inf2/trn1) artifacts are never interchangeable; v2 artifacts do not run
    on trn2 without ``NEURON_RT_ALLOW_LEGACY_NEFF`` (not all NEFFs), so we never place them there.
    """
    matches = [t for t in INSTANCE_TYPES.values() if t.core_version == core_version]
    return sorted(matches, key=lambda t: (t.neuron_cores, t.name))

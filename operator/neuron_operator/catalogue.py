"""The Neuron instance catalogue: the one place that knows what each EC2 instance type offers.

Used by the operator (feasibility, node affinity, scheduler-extension decisions) and by the local
simulated fleet (kwok Node capacity), so the two can never disagree. Pure data and pure lookups: no I/O.

Figures come from the Neuron SDK hardware pages and the device-plugin manifests (see
``shared/docs/neuron-on-kubernetes.md`` §2): devices per instance, NeuronCores per device, the core
generation, device memory, vCPUs and host memory; and, per instance type, the device counts the Neuron
scheduler extension accepts for one pod (aws-neuron-sdk ``deploy/infrastructure/scheduler.rst``).
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
    #: Whole-device counts the Neuron scheduler extension accepts for one pod on this type; None: any
    #: count of contiguous devices (the ring of Inf1/Inf2, and types whose rule no source documents).
    extension_device_counts: tuple[int, ...] | None = None

    @property
    def neuron_cores(self) -> int:
        """Allocatable ``aws.amazon.com/neuroncore`` on one node of this type."""
        return self.devices * self.cores_per_device

    @property
    def is_neuron(self) -> bool:
        return self.core_version is not None

    @property
    def extension_core_counts(self) -> tuple[int, ...] | None:
        """The NeuronCore requests per pod the Neuron scheduler extension accepts here (None: any)."""
        if self.extension_device_counts is None:
            return None
        whole = {n * self.cores_per_device for n in self.extension_device_counts}
        return tuple(sorted(whole | {1, self.neuron_cores}))

    def extension_accepts(self, cores: int) -> bool:
        """Whether the Neuron scheduler extension would place a pod requesting ``cores`` NeuronCores here.

        aws-neuron-sdk ``deploy/infrastructure/scheduler.rst``: on trn1.32xlarge and trn1n.32xlarge (2D
        torus) a pod may request only 1, 4, 8 or all 16 devices, any other count is refused ("Instance type
        trn1.32xlarge does not support requests for device: 7") and the pod stays Pending; "for all
        instance types, requesting one or all Neuron cores or devices is always valid". The page states
        the rule in devices only; for ``aws.amazon.com/neuroncore`` requests (what the operator asks for)
        we accept one core, or the cores of exactly 1, 4, 8 or 16 whole devices (2, 8, 16 or 32 cores),
        and refuse every other count, e.g. 4 cores = 2 devices (our choice: the extension is closed
        source; the Neuron runtime's collectives accept the same 1, 2, 8, 16 or 32 cores on trn1,
        huggingface/optimum-neuron#619).
        """
        counts = self.extension_core_counts
        return counts is None or cores in counts


def _neuron(
    name: str,
    devices: int,
    cores: int,
    version: NeuronCoreVersion,
    mem: int,
    vcpu: int,
    host: int,
    extension_devices: tuple[int, ...] | None = None,
) -> InstanceType:
    family = name.split(".", maxsplit=1)[0]
    return InstanceType(name, family, devices, cores, version, mem, vcpu, host, extension_devices)


_V1, _V2, _V3 = NeuronCoreVersion.V1, NeuronCoreVersion.V2, NeuronCoreVersion.V3
#: trn1.32xlarge / trn1n.32xlarge: 16 devices in a 2D torus; the scheduler extension accepts 1, 4, 8 or 16.
_TRN1_TORUS = (1, 4, 8, 16)

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
        _neuron("trn1.32xlarge", 16, 2, _V2, 32, 128, 512, _TRN1_TORUS),
        _neuron("trn1n.32xlarge", 16, 2, _V2, 32, 128, 512, _TRN1_TORUS),
        # Trn2 at the default LNC=2: 8 physical NC-v3 per device show up as 4 logical cores. The
        # scheduler-extension page documents no device-count rule for Trn2 (its 16 devices also form a
        # 4x4 2D torus, about/arch/neuron-hardware/trn2-arch.rst): any count is accepted here (unverified).
        _neuron("trn2.48xlarge", 16, 4, _V3, 96, 192, 2048),
        # The UltraServer node: the same 16 Trainium2 devices, vCPUs and memory as trn2.48xlarge (trn2-arch.rst).
        _neuron("trn2u.48xlarge", 16, 4, _V3, 96, 192, 2048),
        # One Trainium2 device: 4 logical cores at LNC=2 (ai-dynamo/nixl#1994). 12 vCPUs and 128 GiB are
        # from third-party instance tables, not an AWS page we could read (verify). Named by the Neuron DRA
        # driver's node affinity (aws-neuron-sdk deploy/files/manifests/daemonset.yaml).
        _neuron("trn2.3xlarge", 1, 4, _V3, 96, 12, 128),
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

    NeuronCore-v1 (inf1) and v2 (inf2/trn1) artifacts are never interchangeable. A v2 artifact, compiled
    for ``inf2`` or ``trn1``, may go to inf2, trn1 and trn1n alike: both are NeuronCore-v2, and an AWS
    maintainer states that compiling with ``--target trn1`` is safe for inf2 (aws-neuron/aws-neuron-sdk#865);
    the other direction (an ``inf2`` artifact on trn1) is an inference no source states (verify, or pin
    ``spec.instanceTypes``). v2 artifacts run on trn2 only with ``NEURON_RT_ALLOW_LEGACY_NEFF`` (runtime
    2.25+, not all NEFFs: aws-neuron-sdk neuron-runtime/guides/configuration-guide.rst), which the operator
    does not set, so we never place them there; trn2 (v3) artifacts go to trn2 types only.
    """
    matches = [t for t in INSTANCE_TYPES.values() if t.core_version == core_version]
    return sorted(matches, key=lambda t: (t.neuron_cores, t.name))

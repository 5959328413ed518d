"""Feasibility rules: what compiles for which target, and where a NeuronDeployment's pods can run.

Architecture fit (seed 002): decoder and seq2seq models are not supported on Inferentia (inf1); R-CNN
models compile for inf1 with limitations. Models over 2 GB cannot compile for inf1 (protobuf limit), but the
operator never has the model in hand: the compile Job checks the serialized size before tracing
(``neuron_runtime.neuron.check_inf1_model_size``) and fails with reason UnsupportedArchitecture.
Placement (seed 000): NeuronCore-v1 artifacts (inf1) and v2 artifacts (inf2/trn1) are never
interchangeable; a replica's cores (workers x coresPerWorker) must fit on one node of an allowed type; and
when the replica goes through the Neuron scheduler extension, the extension must accept its size on that
type (trn1.32xlarge/trn1n.32xlarge: 1, 4, 8 or 16 devices, or one core; aws-neuron-sdk
deploy/infrastructure/scheduler.rst), or the pods would stay Pending with no status to say why.
"""

from __future__ import annotations

from dataclasses import dataclass

from neuron_operator.api import ModelFamily, NeuronCoreVersion, Reason, Target
from neuron_operator.catalogue import (
    INSTANCE_TYPES,
    InstanceType,
    compatible_instance_types,
)
from neuron_operator.settings import OperatorSettings


@dataclass(frozen=True)
class Fit:
    """The ArchitectureFit verdict: ``ok`` False blocks compilation; a warning alone does not."""

    ok: bool
    reason: Reason  # Fits | PoorFit | UnsupportedArchitecture
    message: str

    @property
    def warning(self) -> bool:
        return self.reason != Reason.FITS


def architecture_fit(target: Target, family: ModelFamily) -> Fit:
    if target is Target.INF1:
        if family in (ModelFamily.DECODER, ModelFamily.SEQ2SEQ):
            return Fit(
                False,
                Reason.UNSUPPORTED_ARCHITECTURE,
                f"{family.value} models are not supported on inf1 (NeuronCore-v1); use target inf2 or trn1",
            )
        if family is ModelFamily.RCNN:
            return Fit(
                True,
                Reason.POOR_FIT,
                "R-CNN models compile for inf1 with limitations (parts of the graph fall back to CPU); "
                "inf2 or trn1 is a better fit",
            )
    return Fit(True, Reason.FITS, f"{family.value} models are supported on {target.value}")


@dataclass(frozen=True)
class PlacementPlan:
    """Where a replica may run: the eligible instance types and the scheduler to use."""

    cores: int  # NeuronCores per replica; 0 for cpu artifacts
    instance_types: tuple[str, ...]  # empty: no Neuron constraint (cpu artifacts)
    scheduler_name: str | None


@dataclass(frozen=True)
class Infeasible:
    """Why no pod can ever be placed; the deployment is Stalled with this reason."""

    reason: Reason  # IncompatibleArtifact | InsufficientNeuronCores | UnsupportedTopology | UnknownInstanceType
    message: str


def plan_placement(
    core_version: NeuronCoreVersion | None,
    cores: int,
    allowed: list[str] | None,
    scheduler_override: str | None,
    settings: OperatorSettings,
) -> PlacementPlan | Infeasible:
    """Choose instance types and scheduler for replicas of ``cores`` NeuronCores running an artifact of
    ``core_version`` (None = a cpu artifact, which needs no NeuronCore)."""
    if core_version is None:
        return PlacementPlan(0, (), scheduler_override)
    unknown = sorted(set(allowed or ()) - set(INSTANCE_TYPES))
    if unknown:
        return Infeasible(Reason.UNKNOWN_INSTANCE_TYPE, f"spec.instanceTypes: unknown instance types {unknown}")
    compatible = compatible_instance_types(core_version)
    if allowed is not None:
        compatible = [t for t in compatible if t.name in allowed]
        if not compatible:
            return Infeasible(
                Reason.INCOMPATIBLE_ARTIFACT,
                f"the artifact is for NeuronCore-{core_version.value}; none of spec.instanceTypes "
                f"{sorted(allowed)} has NeuronCore-{core_version.value} "
                f"(compatible: {[t.name for t in compatible_instance_types(core_version)]})",
            )
    eligible = [t for t in compatible if t.neuron_cores >= cores]
    if not eligible:
        biggest = max(compatible, key=lambda t: t.neuron_cores)
        return Infeasible(
            Reason.INSUFFICIENT_NEURON_CORES,
            f"a replica needs {cores} NeuronCores (spec.placement workers x coresPerWorker) but the largest "
            f"allowed instance type, {biggest.name}, has {biggest.neuron_cores}",
        )
    scheduler = _scheduler(cores, eligible, scheduler_override, settings)
    if scheduler is not None and scheduler == settings.neuron_scheduler_name:
        # The extension refuses some sizes on some types: drop those types, then choose the scheduler
        # again for the ones left (they may all be taken whole, which needs no extension).
        refused = [t for t in eligible if not t.extension_accepts(cores)]
        if refused:
            eligible = [t for t in eligible if t.extension_accepts(cores)]
            if not eligible:
                return Infeasible(Reason.UNSUPPORTED_TOPOLOGY, _topology_message(cores, refused, scheduler))
            scheduler = _scheduler(cores, eligible, scheduler_override, settings)
    return PlacementPlan(cores, tuple(t.name for t in eligible), scheduler)


def _topology_message(cores: int, refused: list[InstanceType], scheduler: str) -> str:
    """Why the Neuron scheduler extension places a replica of ``cores`` NeuronCores on none of ``refused``."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for t in refused:
        assert t.extension_device_counts is not None  # only types with a rule refuse anything
        groups.setdefault(t.extension_device_counts, []).append(t.name)
    rules = []
    for devices, names in groups.items():
        t = INSTANCE_TYPES[names[0]]
        accept = "accepts" if len(names) == 1 else "accept"
        rules.append(
            f"{_join(names)} {accept} only {_or(devices)} devices "
            f"({_or(tuple(n * t.cores_per_device for n in devices))} NeuronCores) per pod with the Neuron "
            "scheduler extension, or a single NeuronCore"
        )
    return (
        f"a replica needs {cores} NeuronCores (spec.placement workers x coresPerWorker), which the Neuron "
        f"scheduler extension (schedulerName {scheduler}) refuses on every allowed instance type large enough: "
        f"{'; '.join(rules)}. Change spec.placement to one of those sizes, or allow other instance types "
        "in spec.instanceTypes"
    )


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _or(values: tuple[int, ...]) -> str:
    text = [str(v) for v in values]
    return text[0] if len(text) == 1 else f"{', '.join(text[:-1])} or {text[-1]}"


def _scheduler(
    cores: int, eligible: list[InstanceType], override: str | None, settings: OperatorSettings
) -> str | None:
    """The Neuron scheduler extension is needed when the runtime requires contiguous cores that the
    default scheduler cannot guarantee: more than one core, but fewer than a whole node."""
    if override:
        return override
    if settings.use_neuron_scheduler == "never":
        return None
    if settings.use_neuron_scheduler == "always":
        return settings.neuron_scheduler_name
    partial = cores > 1 and any(t.neuron_cores > cores for t in eligible)
    return settings.neuron_scheduler_name if partial else None

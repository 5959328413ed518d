"""Feasibility rules: which architectures compile for which target, and where a replica can run.

``architecture_fit`` is the seed-002 table (decoder/seq2seq models never on inf1, R-CNN on inf1 a poor fit;
the >2 GB inf1 limit needs the model itself, so the compile Job checks it: tests/runtime/test_runtime_inf1.py);
``plan_placement`` keeps NeuronCore generations apart, sizes replicas against whole nodes, decides when the
Neuron scheduler extension is needed and drops the instance types where the extension would refuse the
replica's size (trn1.32xlarge/trn1n.32xlarge: 1, 4, 8 or 16 devices). All pure, so the tests are tables and
properties.
"""

from __future__ import annotations

import os
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neuron_operator.api import ModelFamily, Target
from neuron_operator.catalogue import INSTANCE_TYPES, NeuronCoreVersion, compatible_instance_types
from neuron_operator.resources.fit import (
    Infeasible,
    PlacementPlan,
    architecture_fit,
    plan_placement,
)
from neuron_operator.settings import OperatorSettings

V1, V2, V3 = NeuronCoreVersion.V1, NeuronCoreVersion.V2, NeuronCoreVersion.V3


def make_settings(**overrides: Any) -> OperatorSettings:
    """Settings independent of the developer's NEURON_OPERATOR_* environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NEURON_OPERATOR_")}
    with mock.patch.dict(os.environ, clean, clear=True):
        return OperatorSettings(**overrides)


SETTINGS = make_settings()


def plan(
    version: NeuronCoreVersion | None,
    cores: int,
    allowed: list[str] | None = None,
    override: str | None = None,
    settings: OperatorSettings = SETTINGS,
) -> PlacementPlan:
    result = plan_placement(version, cores, allowed, override, settings)
    assert isinstance(result, PlacementPlan), result
    return result


def infeasible(version: NeuronCoreVersion | None, cores: int, allowed: list[str] | None = None) -> Infeasible:
    result = plan_placement(version, cores, allowed, None, SETTINGS)
    assert isinstance(result, Infeasible), result
    return result


# ------------------------------------------------------------------------------------ architecture fit


@pytest.mark.parametrize("family", [ModelFamily.DECODER, ModelFamily.SEQ2SEQ])
def test_decoder_and_seq2seq_are_unsupported_on_inf1(family: ModelFamily) -> None:
    fit = architecture_fit(Target.INF1, family)
    assert (fit.ok, fit.reason, fit.warning) == (False, "UnsupportedArchitecture", True)
    assert family.value in fit.message
    assert "inf2" in fit.message  # the message says what to do instead


def test_rcnn_on_inf1_is_a_poor_fit_but_compiles() -> None:
    fit = architecture_fit(Target.INF1, ModelFamily.RCNN)
    assert (fit.ok, fit.reason, fit.warning) == (True, "PoorFit", True)


@pytest.mark.parametrize("family", list(ModelFamily))
@pytest.mark.parametrize("target", [Target.INF2, Target.TRN1, Target.TRN2, Target.CPU])
def test_everything_fits_elsewhere(target: Target, family: ModelFamily) -> None:
    fit = architecture_fit(target, family)
    assert (fit.ok, fit.reason, fit.warning) == (True, "Fits", False)


@pytest.mark.parametrize(
    "family", [f for f in ModelFamily if f not in (ModelFamily.DECODER, ModelFamily.SEQ2SEQ, ModelFamily.RCNN)]
)
def test_other_families_fit_inf1(family: ModelFamily) -> None:
    assert architecture_fit(Target.INF1, family).reason == "Fits"


# ------------------------------------------------------------------------------------------- placement


def cores_of(types: tuple[str, ...]) -> list[int]:
    return [INSTANCE_TYPES[t].neuron_cores for t in types]


def test_v1_artifacts_only_get_inf1_types() -> None:
    types = plan(V1, 1).instance_types
    assert set(types) == {"inf1.xlarge", "inf1.2xlarge", "inf1.6xlarge", "inf1.24xlarge"}
    assert cores_of(types) == sorted(cores_of(types))  # smallest first


def test_v2_artifacts_get_inf2_and_trn1_types_never_trn2_or_inf1() -> None:
    types = plan(V2, 1).instance_types
    assert set(types) == {
        "inf2.xlarge",
        "inf2.8xlarge",
        "inf2.24xlarge",
        "inf2.48xlarge",
        "trn1.2xlarge",
        "trn1.32xlarge",
        "trn1n.32xlarge",
    }
    assert cores_of(types) == sorted(cores_of(types))
    assert {t.split(".")[0] for t in types} == {"inf2", "trn1", "trn1n"}


def test_v3_artifacts_only_get_trn2() -> None:
    # trn2.3xlarge (one device) is taken whole by 4 cores; the two 48xlarge types have 64.
    assert plan(V3, 4).instance_types == ("trn2.3xlarge", "trn2.48xlarge", "trn2u.48xlarge")
    assert plan(V3, 5).instance_types == ("trn2.48xlarge", "trn2u.48xlarge")


def test_trn2_types_at_the_default_lnc() -> None:
    small, big, ultra = (INSTANCE_TYPES[n] for n in ("trn2.3xlarge", "trn2.48xlarge", "trn2u.48xlarge"))
    assert (small.devices, small.neuron_cores, small.core_version) == (1, 4, V3)
    assert (big.devices, big.neuron_cores) == (ultra.devices, ultra.neuron_cores) == (16, 64)
    assert (big.vcpu, big.memory_gib, big.device_memory_gib) == (ultra.vcpu, ultra.memory_gib, 96)


def test_twelve_cores_fit_the_big_v2_nodes_the_extension_accepts() -> None:
    p = plan(V2, 12)
    assert p.cores == 12
    # 12 cores = 6 trn1 devices, which the scheduler extension refuses on trn1.32xlarge/trn1n.32xlarge.
    assert set(p.instance_types) == {"inf2.24xlarge", "inf2.48xlarge"}
    assert p.scheduler_name == SETTINGS.neuron_scheduler_name
    # Without the extension nothing refuses the size: every node with 12 cores is eligible.
    never = make_settings(use_neuron_scheduler="never")
    p = plan(V2, 12, settings=never)
    assert set(p.instance_types) == {"inf2.24xlarge", "inf2.48xlarge", "trn1.32xlarge", "trn1n.32xlarge"}


def test_instance_types_filter_keeps_only_allowed_compatible_types() -> None:
    p = plan(V2, 2, ["inf2.48xlarge", "inf1.xlarge", "inf2.xlarge"])
    assert p.instance_types == ("inf2.xlarge", "inf2.48xlarge")


def test_filter_is_also_sized() -> None:
    assert plan(V2, 12, ["inf2.8xlarge", "inf2.48xlarge"]).instance_types == ("inf2.48xlarge",)


def test_cpu_artifacts_have_no_neuron_constraint() -> None:
    assert plan(None, 4) == PlacementPlan(0, (), None)
    assert plan(None, 4, ["inf2.xlarge"]) == PlacementPlan(0, (), None)
    assert plan(None, 1, override="custom").scheduler_name == "custom"


@pytest.mark.parametrize(
    ("version", "allowed"),
    [(V2, ["inf1.xlarge", "inf1.24xlarge"]), (V1, ["inf2.48xlarge"]), (V2, ["trn2.48xlarge"]), (V3, ["trn1.2xlarge"])],
)
def test_incompatible_artifact_names_spec_instance_types(version: NeuronCoreVersion, allowed: list[str]) -> None:
    result = infeasible(version, 1, allowed)
    assert result.reason == "IncompatibleArtifact"
    assert "spec.instanceTypes" in result.message
    assert f"NeuronCore-{version.value}" in result.message
    for name in allowed:
        assert name in result.message


@pytest.mark.parametrize(
    ("version", "cores", "allowed", "largest"),
    [(V1, 65, None, 64), (V2, 33, None, 32), (V2, 4, ["inf2.xlarge", "inf2.8xlarge"], 2)],
)
def test_insufficient_neuron_cores_names_spec_placement(
    version: NeuronCoreVersion, cores: int, allowed: list[str] | None, largest: int
) -> None:
    result = infeasible(version, cores, allowed)
    assert result.reason == "InsufficientNeuronCores"
    assert "spec.placement" in result.message
    assert f"needs {cores} NeuronCores" in result.message
    assert f"has {largest}" in result.message


# --------------------------------------------------------------- the scheduler extension's topology rule

TRN1_TORUS = ["trn1.32xlarge", "trn1n.32xlarge"]


@pytest.mark.parametrize("name", TRN1_TORUS)
def test_trn1_torus_accepts_one_core_or_1_4_8_16_devices(name: str) -> None:
    t = INSTANCE_TYPES[name]
    assert t.extension_device_counts == (1, 4, 8, 16)
    assert t.extension_core_counts == (1, 2, 8, 16, 32)
    assert [n for n in range(1, 33) if t.extension_accepts(n)] == [1, 2, 8, 16, 32]


@pytest.mark.parametrize("name", sorted(set(INSTANCE_TYPES) - set(TRN1_TORUS)))
def test_other_types_accept_any_size(name: str) -> None:
    # Inf1/Inf2 are rings (any contiguous count); no source gives a rule for trn2 or the small types.
    t = INSTANCE_TYPES[name]
    assert t.extension_core_counts is None
    assert all(t.extension_accepts(n) for n in range(1, t.neuron_cores + 1))


@pytest.mark.parametrize(
    ("cores", "accepted"),
    [
        (1, True),
        (2, True),
        (3, False),
        (4, False),
        (6, False),
        (8, True),
        (12, False),
        (16, True),
        (24, False),
        (32, True),
    ],
)
def test_trn1_only_deployment(cores: int, accepted: bool) -> None:
    result = plan_placement(V2, cores, TRN1_TORUS, None, SETTINGS)
    if accepted:
        assert isinstance(result, PlacementPlan)
        assert result.instance_types == tuple(TRN1_TORUS)
        assert result.scheduler_name == (SETTINGS.neuron_scheduler_name if 1 < cores < 32 else None)
    else:
        assert isinstance(result, Infeasible)
        assert result.reason == "UnsupportedTopology"


def test_unsupported_topology_message_names_the_rule_and_the_sizes() -> None:
    result = infeasible(V2, 4, ["trn1.32xlarge"])
    assert result.reason == "UnsupportedTopology"
    assert "a replica needs 4 NeuronCores (spec.placement workers x coresPerWorker)" in result.message
    assert (
        "trn1.32xlarge accepts only 1, 4, 8 or 16 devices (2, 8, 16 or 32 NeuronCores) per pod with the Neuron "
        "scheduler extension, or a single NeuronCore" in result.message
    )
    assert f"schedulerName {SETTINGS.neuron_scheduler_name}" in result.message
    assert "spec.instanceTypes" in result.message
    both = infeasible(V2, 6, TRN1_TORUS)
    assert "trn1.32xlarge and trn1n.32xlarge accept only 1, 4, 8 or 16 devices" in both.message


def test_only_the_trn1_torus_nodes_are_big_enough() -> None:
    # 28 cores: inf2.48xlarge (24) is too small, both trn1 types refuse 14 devices.
    result = infeasible(V2, 28)
    assert result.reason == "UnsupportedTopology"
    assert "trn1.32xlarge and trn1n.32xlarge" in result.message


def test_the_refused_types_are_dropped_and_the_scheduler_chosen_again() -> None:
    # 24 cores: inf2.48xlarge is taken whole; trn1 would need the extension, which refuses 12 devices.
    p = plan(V2, 24)
    assert p.instance_types == ("inf2.48xlarge",)
    assert p.scheduler_name is None
    # With the extension always on, inf2.48xlarge stays and the pods still go through it.
    always = make_settings(use_neuron_scheduler="always")
    assert plan(V2, 24, settings=always) == PlacementPlan(24, ("inf2.48xlarge",), always.neuron_scheduler_name)


def test_the_rule_applies_only_to_pods_of_the_extension() -> None:
    never = make_settings(use_neuron_scheduler="never")
    assert plan(V2, 4, TRN1_TORUS, settings=never).instance_types == tuple(TRN1_TORUS)
    # spec.schedulerName naming another scheduler: the operator cannot know its rules.
    assert plan(V2, 4, TRN1_TORUS, override="volcano").instance_types == tuple(TRN1_TORUS)
    # spec.schedulerName naming the extension itself: the rule applies.
    result = plan_placement(V2, 4, TRN1_TORUS, SETTINGS.neuron_scheduler_name, SETTINGS)
    assert isinstance(result, Infeasible)
    assert result.reason == "UnsupportedTopology"


def test_unknown_instance_type_names_the_field() -> None:
    result = infeasible(V2, 1, ["inf9.huge"])
    assert result.reason == "UnknownInstanceType"
    assert "spec.instanceTypes" in result.message
    assert "inf9.huge" in result.message


# ------------------------------------------------------------------------------------- scheduler choice


def test_auto_one_core_needs_no_scheduler_extension() -> None:
    assert plan(V2, 1).scheduler_name is None
    assert plan(V1, 1).scheduler_name is None


def test_auto_whole_nodes_need_no_scheduler_extension() -> None:
    # 32 cores: only trn1.32xlarge and trn1n.32xlarge are eligible, and a replica takes all of either.
    p = plan(V2, 32)
    assert p.instance_types == ("trn1.32xlarge", "trn1n.32xlarge")
    assert p.scheduler_name is None
    # Restricting the types to whole nodes has the same effect.
    assert plan(V2, 2, ["inf2.xlarge", "trn1.2xlarge"]).scheduler_name is None
    assert plan(V1, 4, ["inf1.xlarge", "inf1.2xlarge"]).scheduler_name is None


def test_auto_part_of_a_node_needs_the_scheduler_extension() -> None:
    settings = make_settings(neuron_scheduler_name="neuron-scheduler")
    assert plan(V2, 2, settings=settings).scheduler_name == "neuron-scheduler"
    assert plan(V2, 12, settings=settings).scheduler_name == "neuron-scheduler"
    # Even one eligible type with spare cores is enough to need contiguity from the scheduler.
    assert plan(V2, 2, ["inf2.xlarge", "inf2.24xlarge"], settings=settings).scheduler_name == "neuron-scheduler"


def test_override_wins() -> None:
    for mode in ("auto", "never", "always"):
        settings = make_settings(use_neuron_scheduler=mode)
        assert plan(V2, 1, override="custom", settings=settings).scheduler_name == "custom"
        assert plan(V2, 2, override="custom", settings=settings).scheduler_name == "custom"


def test_never_and_always() -> None:
    never = make_settings(use_neuron_scheduler="never")
    always = make_settings(use_neuron_scheduler="always", neuron_scheduler_name="neuron-scheduler")
    assert plan(V2, 2, settings=never).scheduler_name is None
    assert plan(V2, 12, settings=never).scheduler_name is None
    assert plan(V2, 1, settings=always).scheduler_name == "neuron-scheduler"
    assert plan(V2, 32, settings=always).scheduler_name == "neuron-scheduler"


# ------------------------------------------------------------------------------------------- properties


@given(
    version=st.sampled_from(list(NeuronCoreVersion)),
    cores=st.integers(min_value=1, max_value=80),
    allowed=st.none() | st.lists(st.sampled_from(sorted(INSTANCE_TYPES)), unique=True, max_size=6),
)
def test_every_eligible_type_is_compatible_and_big_enough(
    version: NeuronCoreVersion, cores: int, allowed: list[str] | None
) -> None:
    result = plan_placement(version, cores, allowed, None, SETTINGS)
    compatible = {t.name for t in compatible_instance_types(version)}
    candidates = compatible if allowed is None else compatible & set(allowed)
    big_enough = {n for n in candidates if INSTANCE_TYPES[n].neuron_cores >= cores}
    # The extension is in play when some big-enough node would be taken only in part.
    extension = cores > 1 and any(INSTANCE_TYPES[n].neuron_cores > cores for n in big_enough)
    accepted = {n for n in big_enough if not extension or INSTANCE_TYPES[n].extension_accepts(cores)}
    if isinstance(result, Infeasible):
        assert not accepted
        expected = "IncompatibleArtifact" if not candidates else "InsufficientNeuronCores"
        assert result.reason == (expected if not big_enough else "UnsupportedTopology")
        return
    assert result.cores == cores
    assert set(result.instance_types) == accepted  # nothing eligible is left out, nothing else let in
    for name in result.instance_types:
        t = INSTANCE_TYPES[name]
        assert t.core_version == version
        assert t.neuron_cores >= cores
        if result.scheduler_name is not None:
            assert t.extension_accepts(cores)  # never a size the extension would leave Pending
    # The scheduler extension is asked for exactly when a replica takes part of some eligible node.
    partial = cores > 1 and any(INSTANCE_TYPES[n].neuron_cores > cores for n in result.instance_types)
    assert (result.scheduler_name == SETTINGS.neuron_scheduler_name) is partial

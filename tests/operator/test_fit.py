"""Feasibility rules: which architectures compile for which target, and where a replica can run.

``architecture_fit`` is the seed-002 table (decoder/seq2seq and >2 GiB models never on inf1, R-CNN on inf1
a poor fit); ``plan_placement`` keeps NeuronCore generations apart, sizes replicas against whole nodes and
decides when the Neuron scheduler extension is needed. All pure, so the tests are tables and properties.
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
    INF1_MAX_MODEL_BYTES,
    Infeasible,
    PlacementPlan,
    architecture_fit,
    plan_placement,
)
from neuron_operator.settings import OperatorSettings

V1, V2, V3 = NeuronCoreVersion.V1, NeuronCoreVersion.V2, NeuronCoreVersion.V3
GIB = 1024**3


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


@pytest.mark.parametrize(
    ("size", "ok"),
    [(None, True), (INF1_MAX_MODEL_BYTES - 1, True), (INF1_MAX_MODEL_BYTES, True), (INF1_MAX_MODEL_BYTES + 1, False)],
)
def test_models_over_2_gib_do_not_compile_for_inf1(size: int | None, ok: bool) -> None:
    assert INF1_MAX_MODEL_BYTES == 2 * GIB
    fit = architecture_fit(Target.INF1, ModelFamily.CNN, size)
    assert fit.ok is ok
    if not ok:
        assert fit.reason == "UnsupportedArchitecture"
        assert "2 GiB" in fit.message


def test_size_limit_wins_over_the_rcnn_warning() -> None:
    assert not architecture_fit(Target.INF1, ModelFamily.RCNN, 3 * GIB).ok


@pytest.mark.parametrize("family", list(ModelFamily))
@pytest.mark.parametrize("target", [Target.INF2, Target.TRN1, Target.TRN2, Target.CPU])
def test_everything_fits_elsewhere(target: Target, family: ModelFamily) -> None:
    fit = architecture_fit(target, family, 100 * GIB)
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
    assert plan(V3, 4).instance_types == ("trn2.48xlarge",)


def test_twelve_cores_fit_exactly_the_big_v2_nodes() -> None:
    p = plan(V2, 12)
    assert p.cores == 12
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
    if isinstance(result, Infeasible):
        assert not big_enough
        assert result.reason == ("IncompatibleArtifact" if not candidates else "InsufficientNeuronCores")
        return
    assert result.cores == cores
    assert set(result.instance_types) == big_enough  # nothing eligible is left out, nothing else let in
    for name in result.instance_types:
        t = INSTANCE_TYPES[name]
        assert t.core_version == version
        assert t.neuron_cores >= cores
    # The scheduler extension is asked for exactly when a replica takes part of some eligible node.
    partial = cores > 1 and any(INSTANCE_TYPES[n].neuron_cores > cores for n in result.instance_types)
    assert (result.scheduler_name == SETTINGS.neuron_scheduler_name) is partial

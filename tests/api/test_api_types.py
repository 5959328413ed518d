"""The pydantic API types without a cluster: examples parse, invalid objects are rejected naming the field,
defaults match the CRDs, and the manifest form round-trips."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from typing import Any

import pytest
from api_cases import (
    INVALID,
    REPO,
    Invalid,
    base_deployment,
    base_model,
    deployment_specs,
    examples,
    model_specs,
    wrap,
)
from hypothesis import given, settings
from pydantic import BaseModel, ValidationError

from neuron_operator.api import (
    ArtifactStatus,
    AutoCast,
    Condition,
    ConditionStatus,
    ModelPhase,
    NeuronCoreVersion,
    NeuronDeployment,
    NeuronDeploymentStatus,
    NeuronModel,
    NeuronModelStatus,
    PlacementMode,
    Target,
)

KINDS: dict[str, type[BaseModel]] = {"NeuronModel": NeuronModel, "NeuronDeployment": NeuronDeployment}


def parse(obj: dict[str, Any]) -> BaseModel:
    return KINDS[obj["kind"]].model_validate(obj)


@pytest.mark.parametrize(("filename", "manifest"), examples(), ids=[f for f, _ in examples()])
def test_every_example_parses(filename: str, manifest: dict[str, Any]) -> None:
    parse(manifest)


def test_examples_are_consistent() -> None:
    docs = [m for _, m in examples()]
    models = {m["metadata"]["name"]: m for m in docs if m["kind"] == "NeuronModel"}
    deployments = [m for m in docs if m["kind"] == "NeuronDeployment"]
    assert {m["spec"]["target"] for m in models.values()} >= {"cpu", "inf2"}
    assert {d["spec"].get("placement", {}).get("mode", "pinned") for d in deployments} == {
        "pinned",
        "multicore",
    }
    assert any("buckets" in m["spec"] for m in models.values())
    for dep in deployments:
        assert dep["spec"]["modelRef"]["name"] in models, f"{dep['metadata']['name']}: unknown modelRef"
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names))


def test_runtime_zoo_factories_exist() -> None:
    """Python-factory sources in examples name functions that the runtime's zoo really defines."""
    zoo = ast.parse((REPO / "runtime/neuron_runtime/zoo.py").read_text())
    defined = {node.name for node in zoo.body if isinstance(node, ast.FunctionDef)}
    for _, manifest in examples():
        python = manifest["spec"].get("source", {}).get("python")
        if python:
            module, func = python["factory"].split(":")
            assert module == "neuron_runtime.zoo"
            assert func in defined


@pytest.mark.parametrize("case", INVALID, ids=[c.id for c in INVALID])
def test_pydantic_rejects_invalid(case: Invalid) -> None:
    with pytest.raises(ValidationError) as info:
        parse(case.manifest)
    # The error names the field: either pydantic's location (camelCase aliases) or our message.
    text = str(info.value)
    leaf = case.field.rsplit(".", 1)[-1].split("[")[0]
    assert leaf in text, text


def test_base_manifests_are_valid() -> None:
    parse(base_model())
    parse(base_deployment())


def test_defaults() -> None:
    model = NeuronModel.model_validate(base_model())
    assert model.spec.compiler.auto_cast is AutoCast.NONE  # explicit, the SDK >= 2.27 default
    assert model.spec.compiler.opt_level == 2
    assert model.spec.compiler.timeout_seconds is None  # the operator's compileTimeoutSeconds setting
    assert model.spec.model_family == "other"
    assert model.spec.dynamic_batch is False
    dep = NeuronDeployment.model_validate(wrap("NeuronDeployment", "d", {"modelRef": {"name": "m"}}))
    assert dep.spec.replicas == 1
    assert dep.spec.placement.workers == 1
    assert dep.spec.placement.cores_per_worker == 1
    assert dep.spec.placement.mode is PlacementMode.PINNED
    assert dep.spec.batching.max_batch_size == 8
    assert dep.spec.batching.max_queue == 256
    assert dep.spec.server.port == 8080
    assert dep.spec.rollout.max_surge is None  # capacity-aware (resources.capacity)
    assert dep.spec.rollout.max_unavailable is None
    assert dep.spec.suspend is False


def test_snake_case_in_python_camel_case_on_the_wire() -> None:
    model = NeuronModel.model_validate(base_model())
    manifest = model.to_manifest()
    assert manifest["spec"]["batchSize"] == 2
    assert manifest["spec"]["compiler"]["autoCast"] == "none"
    assert "batch_size" not in manifest["spec"]
    # populate_by_name: Python code may build objects with snake_case names
    again = NeuronModel(metadata=model.metadata, spec=model.spec.model_copy(update={"batch_size": 2}))
    assert again.spec.batch_size == 2


def test_strict_scalars() -> None:
    """The apiserver never coerces; neither do we (else verdicts would differ)."""
    obj = base_model()
    obj["spec"]["dynamicBatch"] = 1
    with pytest.raises(ValidationError):
        NeuronModel.model_validate(obj)
    obj = base_model()
    obj["spec"]["batchSize"] = True
    with pytest.raises(ValidationError):
        NeuronModel.model_validate(obj)


def test_quantities_accept_ints_and_strings() -> None:
    obj = base_deployment()
    obj["spec"]["resources"] = {"requests": {"cpu": 2, "memory": "4Gi"}, "limits": {"cpu": "2500m"}}
    dep = NeuronDeployment.model_validate(obj)
    assert dep.to_manifest()["spec"]["resources"] == obj["spec"]["resources"]


def test_status_round_trip() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    status = NeuronModelStatus(
        observed_generation=3,
        conditions=[Condition(type="Ready", status=ConditionStatus.TRUE, reason="Compiled", last_transition_time=now)],
        phase=ModelPhase.READY,
        cache_key="k" * 64,
        artifact=ArtifactStatus(
            uri="s3://b/k",
            sha256="a" * 64,
            short_digest="a" * 12,
            neuron_core_version=NeuronCoreVersion.V2,
            size_bytes=10,
            compiled_at=now,
            compile_seconds=12.5,
        ),
    )
    model = NeuronModel.model_validate({**base_model(), "status": status.to_manifest()})
    assert model.status == status
    assert model.to_manifest()["status"]["conditions"][0]["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    dep_status = NeuronDeploymentStatus(replicas=2, ready_replicas=1, selector="a=b", ready_summary="1/2")
    dep = NeuronDeployment.model_validate({**base_deployment(), "status": dep_status.to_manifest()})
    assert dep.status == dep_status


def test_target_is_the_catalogue_enum() -> None:
    assert NeuronModel.model_validate(base_model()).spec.target is Target.INF2


def test_compiler_rules_match_the_runtime() -> None:
    """The CRD refuses exactly what the runtime's CompileRequest refuses: the same reserved flags, the same inf1
    casts and optimisation level (the api package may not import the runtime, so the constants are copies)."""
    from neuron_operator.api import model as api_model
    from neuron_runtime import config

    assert api_model.RESERVED_COMPILER_FLAGS == config.RESERVED_COMPILER_FLAGS
    assert api_model.INF1_AUTO_CAST_TYPES == config.INF1_AUTO_CAST_TYPES
    assert api_model.INF1_OPT_LEVEL == config.INF1_OPT_LEVEL
    assert {t.value for t in api_model.AutoCastType} >= set(config.INF1_AUTO_CAST_TYPES)


@pytest.mark.parametrize("auto_cast_type", ["bf16", "fp16"])
def test_inf1_accepts_the_casts_neuron_cc_has(auto_cast_type: str) -> None:
    manifest = base_model()
    manifest["spec"].update(target="inf1", compiler={"autoCast": "all", "autoCastType": auto_cast_type, "optLevel": 2})
    assert NeuronModel.model_validate(manifest).spec.compiler.auto_cast_type.value == auto_cast_type


@settings(max_examples=50, deadline=None)
@given(spec=model_specs(valid_only=True))
def test_generated_valid_model_specs_parse_and_round_trip(spec: dict[str, Any]) -> None:
    model = NeuronModel.model_validate(wrap("NeuronModel", "m", spec))
    assert NeuronModel.model_validate(model.to_manifest()) == model


@settings(max_examples=50, deadline=None)
@given(spec=deployment_specs(valid_only=True))
def test_generated_valid_deployment_specs_parse_and_round_trip(spec: dict[str, Any]) -> None:
    dep = NeuronDeployment.model_validate(wrap("NeuronDeployment", "d", spec))
    assert NeuronDeployment.model_validate(dep.to_manifest()) == dep

"""Field parity between the API and the runtime's settings (``neuron_operator.resources.runtime_settings``).

Every field of each API type is copied to a runtime field or listed as not reaching the runtime (with where it goes
instead); every runtime field is set by the map or listed with where its value comes from. A field added to either
side without that decision fails here, not silently in a pod. Values are then round-tripped: the API objects'
non-default values reach the ServeSettings the pod reads back from its env vars, and the CompileRequest.
"""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field

from neuron_operator.api import deployment as api_dep
from neuron_operator.api import model as api_model
from neuron_operator.resources import runtime_settings as rs
from neuron_operator.resources.runtime_settings import FieldMap
from neuron_runtime import config as rt


def unaccounted(fmap: FieldMap) -> tuple[set[str], set[str]]:
    """(API fields, runtime fields) the map neither copies nor explains."""
    api = set(fmap.api.model_fields) - set(fmap.fields) - set(fmap.api_only)
    runtime = set(fmap.runtime.model_fields) - set(fmap.fields.values()) - set(fmap.runtime_only)
    return api, runtime


@pytest.mark.parametrize("fmap", list(rs.MAPS.values()), ids=lambda m: f"{m.api.__name__}->{m.runtime.__name__}")
def test_every_field_of_both_types_is_mapped_or_explained(fmap: FieldMap) -> None:
    assert unaccounted(fmap) == (set(), set())
    # Explanations name real fields only, and a field is never both copied and explained.
    assert set(fmap.api_only) <= set(fmap.api.model_fields) - set(fmap.fields)
    assert set(fmap.runtime_only) <= set(fmap.runtime.model_fields) - set(fmap.fields.values())
    assert len(set(fmap.fields.values())) == len(fmap.fields)


def test_every_api_type_a_map_reaches_has_its_own_map() -> None:
    """A nested API type copied by a map (inputs, buckets, compiler) is mapped field by field itself."""
    for fmap in rs.MAPS.values():
        for name in fmap.fields:
            annotation = fmap.api.model_fields[name].annotation
            nested = [t for t in getattr(annotation, "__args__", (annotation,)) if isinstance(t, type)]
            for t in nested:
                if issubclass(t, BaseModel):
                    assert t in rs.MAPS, f"{fmap.api.__name__}.{name} is a {t.__name__}, which has no FieldMap"


def test_a_field_added_to_the_api_without_a_decision_is_caught() -> None:
    class BatchingWithMore(api_dep.Batching):
        priority_classes: int = Field(default=0)

    class RuntimeBatchingWithMore(rt.Batching):
        kv_cache_blocks: int = 0

    grown_api = FieldMap(BatchingWithMore, rt.Batching, rs.BATCHING.fields)
    grown_runtime = FieldMap(api_dep.Batching, RuntimeBatchingWithMore, rs.BATCHING.fields)
    assert unaccounted(grown_api) == ({"priority_classes"}, set())
    assert unaccounted(grown_runtime) == (set(), {"kv_cache_blocks"})


def test_every_neurondeployment_spec_field_is_served_or_explained() -> None:
    spec_fields = set(api_dep.NeuronDeploymentSpec.model_fields)
    assert spec_fields == set(rs.SERVE_FROM_SPEC) | set(rs.SPEC_NOT_SERVED)
    assert not set(rs.SERVE_FROM_SPEC) & set(rs.SPEC_NOT_SERVED)
    assert set(rs.SERVER_FIELDS) == set(api_dep.ServerSpec.model_fields)
    served = set(rs.SERVE_FROM_SPEC.values()) | set(rs.SERVER_FIELDS.values())
    assert set(rt.ServeSettings.model_fields) == served | set(rs.SERVE_NOT_FROM_SPEC)
    assert not served & set(rs.SERVE_NOT_FROM_SPEC)
    # The spec's nested types are the ones the maps cover.
    assert rs.MAPS[api_dep.Placement].runtime is rt.Placement
    assert rs.MAPS[api_dep.Batching].runtime is rt.Batching
    assert rs.MAPS[api_dep.Validation].runtime is rt.Parity


def test_the_model_source_is_one_of_the_mapped_sources() -> None:
    assert set(api_model.ModelSource.model_fields) == {"torchscript", "python"}
    assert rs.MAPS[api_model.TorchScriptSource].runtime is rt.TorchScriptSource
    assert rs.MAPS[api_model.PythonSource].runtime is rt.PythonSource


SPEC = api_dep.NeuronDeploymentSpec.model_validate(
    {
        "modelRef": {"name": "m"},
        "placement": {"workers": 2, "coresPerWorker": 2, "mode": "multicore"},
        "batching": {
            "maxBatchSize": 16,
            "maxDelayMs": 7,
            "maxQueue": 333,
            "timeoutMs": 4321,
            "idleDispatch": False,
            "preferredBatchSizes": [4, 8],
        },
        "validation": {"parity": True, "atol": 0.125, "rtol": 0.0625},
        "server": {"port": 9090, "grpcPort": 9091},
    }
)


def test_non_default_values_reach_the_settings_the_pod_reads_back() -> None:
    """Through the env vars the Deployment carries: what the runtime parses is what the API said."""
    settings = rs.serve_settings(SPEC, model_name="m", artifact_dir="/a/k", expected_sha256="f" * 64)
    env = settings.to_env()
    back = rt.ServeSettings(model_name="m", artifact_dir="/a/k")  # defaults: the values below are not them
    read = _from_env(env)
    assert read == settings
    for api_obj, fmap, runtime_obj in (
        (SPEC.placement, rs.PLACEMENT, read.placement),
        (SPEC.batching, rs.BATCHING, read.batching),
        (SPEC.validation, rs.PARITY, read.parity),
    ):
        for api_name, rt_name in fmap.fields.items():
            value = getattr(api_obj, api_name)
            expected = value.value if hasattr(value, "value") else value
            assert getattr(runtime_obj, rt_name) == expected, f"{fmap.api.__name__}.{api_name}"
    assert (read.port, read.grpc_port) == (9090, 9091)
    assert (back.port, back.batching.max_delay_ms) != (9090, 7)


def _from_env(env: dict[str, str]) -> rt.ServeSettings:
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, env, clear=True):
        return rt.ServeSettings()  # type: ignore[call-arg]


def test_serve_settings_refuses_a_field_the_spec_owns() -> None:
    with pytest.raises(AssertionError, match="batching"):
        rs.serve_settings(SPEC, model_name="m", artifact_dir="/a", batching=rt.Batching())


def test_the_compile_request_carries_every_mapped_model_field() -> None:
    spec = api_model.NeuronModelSpec.model_validate(
        {
            "source": {"python": {"factory": "neuron_runtime.zoo:mlp", "args": {"hidden": 8}}},
            "inputs": [{"name": "x", "shape": [4, 16], "dtype": "float16"}],
            "batchSize": 4,
            "batchSizes": [1, 4],
            "target": "inf2",
            "dynamicBatch": True,
            "compiler": {"args": ["--model-type=transformer"], "autoCast": "matmult", "optLevel": 3},
        }
    )
    request = rs.compile_request(spec, {}, "runtime:1")
    assert request.model_dump(exclude={"source", "runtime_image", "compiler", "inputs", "buckets"}) == {
        "batch_size": 4,
        "batch_sizes": [1, 4],
        "target": "inf2",
        "dynamic_batch": True,
    }
    assert request.inputs == [rt.TensorSpec(name="x", shape=[4, 16], dtype="float16")]
    assert request.compiler.args == ["--model-type=transformer"]
    assert (request.compiler.auto_cast, request.compiler.opt_level) == ("matmult", 3)
    assert request.source == rt.PythonSource(factory="neuron_runtime.zoo:mlp", args={"hidden": 8})
    assert request.runtime_image == "runtime:1"


def test_a_pvc_source_is_read_where_the_compile_pod_mounts_it() -> None:
    spec = api_model.NeuronModelSpec.model_validate(
        {
            "source": {"torchscript": {"uri": "pvc://models/a/b.pt", "sha256": "c" * 64}},
            "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}],
            "target": "cpu",
        }
    )
    request = rs.compile_request(spec, {"pvc://models/a/b.pt": "file:///var/lib/neuron/sources/models/a/b.pt"}, "i")
    assert request.source == rt.TorchScriptSource(uri="file:///var/lib/neuron/sources/models/a/b.pt", sha256="c" * 64)

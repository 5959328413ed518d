"""ServeSettings / CompileRequest: env round trip, cache keys, eager validation, and no torch import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from runtime_cases import bert_request, mlp_request

from neuron_runtime.config import Batching, Buckets, CompileRequest, Placement, ServeSettings, artifact_path


@settings(max_examples=60, deadline=None)
@given(
    workers=st.integers(1, 8),
    cores=st.integers(1, 4),
    mode=st.sampled_from(["pinned", "multicore"]),
    max_batch=st.integers(1, 64),
    delay=st.floats(0, 100, allow_nan=False),
    preferred=st.lists(st.integers(1, 64), max_size=4),
    sha=st.one_of(st.none(), st.text("0123456789abcdef", min_size=64, max_size=64)),
    port=st.integers(0, 65535),
)
def test_to_env_reproduces_the_settings(
    workers: int,
    cores: int,
    mode: str,
    max_batch: int,
    delay: float,
    preferred: list[int],
    sha: str | None,
    port: int,
) -> None:
    original = ServeSettings(
        model_name="resnet-50",
        artifact_dir=Path("/artifacts/abc"),
        expected_sha256=sha,
        port=port,
        placement=Placement(workers=workers, cores_per_worker=cores, mode=mode),  # type: ignore[arg-type]
        batching=Batching(
            max_batch_size=max_batch,
            max_delay_ms=delay,
            max_queue=max(256, max_batch),
            preferred_batch_sizes=[p for p in preferred if p <= max_batch],
        ),
    )
    env = original.to_env()
    assert all(k.startswith("NEURON_RUNTIME_") and isinstance(v, str) for k, v in env.items())
    saved = {k: v for k, v in os.environ.items() if k.startswith("NEURON_RUNTIME_")}
    try:
        for key in saved:
            del os.environ[key]
        os.environ.update(env)
        assert ServeSettings() == original  # type: ignore[call-arg]
    finally:
        for key in env:
            os.environ.pop(key, None)
        os.environ.update(saved)


def test_to_env_names() -> None:
    env = ServeSettings(model_name="m", artifact_dir=Path("/a"), batching=Batching(max_batch_size=4)).to_env()
    assert env["NEURON_RUNTIME_MODEL_NAME"] == "m"
    assert env["NEURON_RUNTIME_BATCHING__MAX_BATCH_SIZE"] == "4"
    assert env["NEURON_RUNTIME_PLACEMENT__MODE"] == "pinned"
    assert "NEURON_RUNTIME_EXPECTED_SHA256" not in env


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_batch_size": 4, "preferred_batch_sizes": [8]}, "exceed max_batch_size"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"preferred_batch_sizes": [0]}, ">= 1"),
        ({"max_batch_size": 16, "max_queue": 8}, "max_queue"),
    ],
)
def test_batching_validation_names_the_field(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        Batching(**kwargs)  # type: ignore[arg-type]


def test_buckets_must_ascend() -> None:
    with pytest.raises(ValidationError, match="ascending and unique"):
        Buckets(axis=1, sizes=[64, 32])


def test_compile_request_checks_shapes_against_batch_size() -> None:
    with pytest.raises(ValidationError, match=r"shape\[0\]=4 must equal batch_size=8"):
        mlp_request(batch_size=8)
    with pytest.raises(ValidationError, match=r"buckets\.axis=3 is out of range"):
        bert_request(buckets={"axis": 3, "sizes": [8]})
    with pytest.raises(ValidationError, match=r"pkg\.module:function"):
        mlp_request(source={"kind": "python", "factory": "not a factory"})
    with pytest.raises(ValidationError, match="64 lowercase hex"):
        mlp_request(source={"kind": "torchscript", "uri": "/m.pt", "sha256": "abc"})


def test_cache_key_is_stable_and_covers_every_field() -> None:
    base = mlp_request()
    assert base.cache_key() == mlp_request().cache_key()
    assert len(base.cache_key()) == 64
    variants = [
        mlp_request(target="inf2"),
        mlp_request(dynamic_batch=True),
        mlp_request(runtime_image="img:2"),
        mlp_request(compiler={"auto_cast": "matmult"}),
        mlp_request(compiler={"args": ["--model-type", "transformer"]}),
        mlp_request(inputs=[{"name": "x", "shape": [4, 8], "dtype": "float16"}]),
        mlp_request(source={"kind": "python", "factory": "neuron_runtime.zoo:tiny_mlp", "args": {"seed": 9}}),
    ]
    keys = {v.cache_key() for v in variants}
    assert base.cache_key() not in keys
    assert len(keys) == len(variants)
    assert artifact_path(Path("/root"), base.cache_key()) == Path("/root") / base.cache_key()


def test_cache_key_ignores_field_order() -> None:
    a = CompileRequest.model_validate_json(mlp_request().model_dump_json())
    reordered = dict(reversed(list(mlp_request().model_dump(mode="json").items())))
    assert CompileRequest.model_validate(reordered).cache_key() == a.cache_key()


def test_config_and_cli_do_not_import_torch() -> None:
    code = (
        "import sys, neuron_runtime.config, neuron_runtime.cli, neuron_runtime.artifact; "
        "bad = [m for m in ('torch', 'torch_neuronx', 'aiohttp') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

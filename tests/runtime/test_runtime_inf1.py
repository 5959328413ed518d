"""inf1 (NeuronCore-v1, torch-neuron + neuron-cc) without a device or torch-neuron: the compiler flags, what a
compile request for inf1 may ask for, the reserved flags, the 2 GB model check, and `neuron.trace` through a fake
`torch_neuron` module.

neuron-cc's flags are from its CLI reference (aws-neuron-sdk compiler/neuron-cc/command-line-reference.rst):
`--fast-math` takes `none`, `all` and the casts `fp32-cast-all`, `fp32-cast-all-fp16`, `fp32-cast-matmult`,
`fp32-cast-matmult-bf16`, `fp32-cast-matmult-fp16`; there is no `--target`, `--auto-cast*` or `--optlevel`.
"""

from __future__ import annotations

import itertools
import json
import sys
import types
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from runtime_cases import mlp_request

from neuron_runtime import neuron
from neuron_runtime.config import INF1_AUTO_CAST_TYPES, RESERVED_COMPILER_FLAGS, CompileRequest, CompilerOptions

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch >= 2.9 deprecates TorchScript

#: Every `--fast-math` value neuron-cc documents; the mapping may only produce these.
NEURON_CC_FAST_MATH = {
    "all",
    "none",
    "fast-relayout",
    "no-fast-relayout",
    "fp32-cast-all",
    "fp32-cast-all-fp16",
    "fp32-cast-matmult",
    "fp32-cast-matmult-bf16",
    "fp32-cast-matmult-fp16",
}


def inf1_request(**overrides: Any) -> CompileRequest:
    return mlp_request(target="inf1", **overrides)


# ------------------------------------------------------------------------------------------ compiler_args


@pytest.mark.parametrize(
    ("auto_cast", "auto_cast_type", "fast_math"),
    [
        ("none", "bf16", "none"),
        ("none", "fp16", "none"),
        ("matmult", "bf16", "fp32-cast-matmult-bf16"),
        ("matmult", "fp16", "fp32-cast-matmult-fp16"),
        ("all", "bf16", "fp32-cast-all"),
        ("all", "fp16", "fp32-cast-all-fp16"),
    ],
)
def test_inf1_auto_cast_becomes_fast_math(auto_cast: str, auto_cast_type: str, fast_math: str) -> None:
    options = CompilerOptions.model_validate(
        {"auto_cast": auto_cast, "auto_cast_type": auto_cast_type, "args": ["--neuroncore-pipeline-cores", "1"]}
    )
    args = neuron.compiler_args("inf1", options)
    assert args == ["--fast-math", fast_math, "--neuroncore-pipeline-cores", "1"]
    assert fast_math in NEURON_CC_FAST_MATH


def test_inf1_mapping_covers_exactly_what_inf1_accepts() -> None:
    accepted = set(itertools.product(["none", "matmult", "all"], INF1_AUTO_CAST_TYPES))
    assert set(neuron.INF1_FAST_MATH) == accepted
    assert set(neuron.INF1_FAST_MATH.values()) <= NEURON_CC_FAST_MATH
    # Different casts never share a flag (only `none` ignores the type).
    cast = {k: v for k, v in neuron.INF1_FAST_MATH.items() if k[0] != "none"}
    assert len(set(cast.values())) == len(cast)


@pytest.mark.parametrize("auto_cast_type", ["tf32", "fp8_e4m3"])
def test_compiler_args_refuses_an_inf1_cast_neuron_cc_lacks(auto_cast_type: str) -> None:
    options = CompilerOptions.model_validate({"auto_cast": "all", "auto_cast_type": auto_cast_type})
    with pytest.raises(ValueError, match="bf16 or fp16"):
        neuron.compiler_args("inf1", options)


def test_inf1_flags_have_no_neuronx_cc_options() -> None:
    args = neuron.compiler_args("inf1", CompilerOptions())
    assert args == ["--fast-math", "none"]
    assert not any(a.startswith(("--target", "--auto-cast", "--optlevel", "-O")) for a in args)


@pytest.mark.parametrize("target", ["inf2", "trn1", "trn2"])
def test_neuronx_flags_are_unchanged(target: Any) -> None:
    assert neuron.compiler_args(target, CompilerOptions()) == [
        "--target",
        target,
        "--auto-cast",
        "none",
        "--optlevel=2",
    ]
    options = CompilerOptions(auto_cast="matmult", auto_cast_type="fp8_e4m3", opt_level=3, args=["--verbose"])
    assert neuron.compiler_args(target, options) == [
        *("--target", target, "--auto-cast", "matmult", "--auto-cast-type", "fp8_e4m3"),
        *("--optlevel=3", "--verbose"),
    ]


# -------------------------------------------------------------------------------------- admission (runtime)


@pytest.mark.parametrize("auto_cast", ["none", "matmult", "all"])
@pytest.mark.parametrize("auto_cast_type", ["tf32", "fp8_e4m3"])
def test_inf1_requests_reject_casts_neuron_cc_lacks(auto_cast: str, auto_cast_type: str) -> None:
    with pytest.raises(ValidationError, match=r"auto_cast_type .* not available for target inf1.*bf16 or fp16"):
        inf1_request(compiler={"auto_cast": auto_cast, "auto_cast_type": auto_cast_type})


@pytest.mark.parametrize("opt_level", [1, 3])
def test_inf1_requests_reject_an_optimisation_level(opt_level: int) -> None:
    with pytest.raises(ValidationError, match=r"opt_level .* not available for target inf1.*no optimisation level"):
        inf1_request(compiler={"opt_level": opt_level})


def test_the_same_options_are_valid_for_neuronx_and_cpu() -> None:
    for target in ("inf2", "trn1", "trn2", "cpu"):
        mlp_request(target=target, compiler={"auto_cast": "all", "auto_cast_type": "tf32", "opt_level": 3})


def test_valid_inf1_requests_have_distinct_keys() -> None:
    requests = [
        inf1_request(compiler={"auto_cast": auto_cast, "auto_cast_type": auto_cast_type})
        for auto_cast, auto_cast_type in itertools.product(["matmult", "all"], INF1_AUTO_CAST_TYPES)
    ]
    assert len({r.cache_key() for r in requests}) == len(requests)
    assert inf1_request().cache_key() != mlp_request().cache_key()


@pytest.mark.parametrize(
    "arg",
    [
        "--fast-math",
        "--fast-math=none",
        "--fp32-cast=all",
        "--target=inf2",
        "--auto-cast=all",
        "--auto-cast-type=fp16",
        "--optlevel=1",
        "-O3",
    ],
)
@pytest.mark.parametrize("target", ["inf1", "inf2", "cpu"])
def test_reserved_flags_are_refused_in_compiler_args(arg: str, target: str) -> None:
    assert arg.startswith(RESERVED_COMPILER_FLAGS)
    with pytest.raises(ValidationError, match="reserved"):
        mlp_request(target=target, compiler={"args": [arg]})


def test_a_bad_inf1_request_is_a_bad_request_for_the_cli(tmp_path: Any) -> None:
    from neuron_runtime.cli import main
    from neuron_runtime.contract import CompileFailure

    log = tmp_path / "termination-log"
    data = inf1_request().model_dump(mode="json")
    data["compiler"]["auto_cast_type"] = "tf32"
    code = main(
        [
            "compile",
            "--quiet",
            "--output-root",
            str(tmp_path),
            "--termination-log",
            str(log),
            "--request-json",
            json.dumps(data),
        ]
    )
    assert code == CompileFailure.BAD_REQUEST.exit_code
    assert '"reason":"BadRequest"' in log.read_text()


# ----------------------------------------------------------------------------------------- the 2 GB check


def _mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()


def test_model_size_is_the_serialized_state_dict_or_torchscript() -> None:
    import io

    model = _mlp()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    assert neuron.check_inf1_model_size(model) == len(buffer.getvalue())
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    assert neuron.check_inf1_model_size(scripted) == len(buffer.getvalue())


def test_the_limit_is_protobufs_2_gb() -> None:
    assert neuron.INF1_MAX_MODEL_BYTES == 2**31 - 1
    assert issubclass(neuron.UnsupportedArchitecture, ValueError)


def test_a_model_over_the_limit_is_an_unsupported_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _mlp()
    size = neuron.check_inf1_model_size(model)
    monkeypatch.setattr(neuron, "INF1_MAX_MODEL_BYTES", size)
    assert neuron.check_inf1_model_size(model) == size  # at the limit: fine
    monkeypatch.setattr(neuron, "INF1_MAX_MODEL_BYTES", size - 1)
    with pytest.raises(neuron.UnsupportedArchitecture) as info:
        neuron.check_inf1_model_size(model)
    message = str(info.value)
    assert f"serializes to {size} bytes" in message
    assert f"limit of {size - 1} bytes" in message
    assert "protobuf" in message
    assert "2 GB" in message
    assert "troubleshooting guide" in message  # the source
    assert "inf2 or trn1" in message  # what to do instead


# --------------------------------------------------------------------------- trace through a fake torch_neuron


def test_inf1_trace_passes_fast_math_and_dynamic_batch_to_torch_neuron(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def trace(model: Any, inputs: Any, compiler_args: Any = None, dynamic_batch_size: bool = False) -> Any:
        calls.append({"args": compiler_args, "dynamic_batch_size": dynamic_batch_size})
        return torch.jit.trace(model, inputs)

    fake = types.ModuleType("torch_neuron")
    fake.trace = trace  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch_neuron", fake)
    options = CompilerOptions(auto_cast="all", auto_cast_type="fp16", args=["--neuroncore-pipeline-cores", "1"])
    traced = neuron.trace("inf1", _mlp(), [torch.randn(4, 8)], options, dynamic_batch=True)
    assert isinstance(traced, torch.jit.ScriptModule)
    assert calls == [
        {"args": ["--fast-math", "fp32-cast-all-fp16", "--neuroncore-pipeline-cores", "1"], "dynamic_batch_size": True}
    ]

"""Contract of the SIMULATED Neuron SDK (``e2e/neuron-sdk-sim``) against the documented AWS Neuron APIs.

The signatures are quoted from the Neuron SDK documentation (SDK = github.com/aws-neuron/aws-neuron-sdk), with the
path of each reference; the behaviour checked is what those references (and the issues cited in the simulator)
describe: a Neuron device is needed to trace without ``cpu_backend`` and to run, placement is validated against
the visible cores and counted by absolute core id, a compiled graph only loads once ``torch_neuronx`` is
imported, auto-cast changes the numbers by a bounded amount. The simulator runs in this process and is purged
after each test (``neuron_sim.sim_imported``), so no test leaks its SDK into another.
"""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import json
import logging
import subprocess
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from neuron_sim import (
    CALLS_FILE_ENV,
    TARGET_OVERRIDE_ENV,
    Sim,
    install_sim,
    no_device,
    sim_imported,
    simulated_device,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")

TRACE_RST = "SDK:frameworks/torch/torch-neuronx/api-reference-guide/inference/api-torch-neuronx-trace.rst"
PLACEMENT_RST = "SDK:frameworks/torch/torch-neuronx/api-reference-guide/inference/api-torch-neuronx-core-placement.rst"
TORCH_NEURON_RST = "SDK:frameworks/torch/torch-neuron/api-compilation-python-api.rst"

#: (function, documented parameter list, source). The placement functions are documented as
#: ``torch_neuronx.experimental.*`` there; from SDK 2.25 the same signatures are top-level
#: (SDK:release-notes/prev/2.25.0/nx-pytorch.rst).
DOCUMENTED = [
    (
        "trace",
        "func, example_inputs, *_, input_output_aliases={}, compiler_workdir=None, compiler_args=None, "
        "partitioner_config=None, inline_weights_to_neff=True, cpu_backend=False",
        TRACE_RST,
    ),
    ("dynamic_batch", "neuron_script", TRACE_RST),
    ("move_trace_to_device", "trace, device_id", TRACE_RST),
    ("set_neuron_cores", "trace: torch.jit.ScriptModule, start_nc: int=-1, nc_count: int=-1", PLACEMENT_RST),
    ("set_multicore", "trace: torch.jit.ScriptModule", PLACEMENT_RST),
    ("neuron_cores_context", "start_nc: int=-1, nc_count: int=-1", PLACEMENT_RST),
    ("multicore_context", "", PLACEMENT_RST),
]
TORCH_NEURON_TRACE = ("model, example_inputs, **kwargs", TORCH_NEURON_RST)
PLACEMENT_FUNCTIONS = ("neuron_cores_context", "multicore_context", "set_neuron_cores", "set_multicore")


def documented(params: str) -> list[tuple[str, str, Any]]:
    """(name, kind, default) of a documented parameter list, parsed without evaluating it."""
    args = ast.parse(f"def f({params}): pass").body[0].args  # type: ignore[attr-defined]
    out: list[tuple[str, str, Any]] = []
    positional = args.posonlyargs + args.args
    defaults = [inspect.Parameter.empty] * (len(positional) - len(args.defaults)) + [
        ast.literal_eval(d) for d in args.defaults
    ]
    out += [(a.arg, "POSITIONAL_OR_KEYWORD", d) for a, d in zip(positional, defaults, strict=True)]
    if args.vararg:
        out.append((args.vararg.arg, "VAR_POSITIONAL", inspect.Parameter.empty))
    for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        out.append((a.arg, "KEYWORD_ONLY", inspect.Parameter.empty if d is None else ast.literal_eval(d)))
    if args.kwarg:
        out.append((args.kwarg.arg, "VAR_KEYWORD", inspect.Parameter.empty))
    return out


def actual(func: Any) -> list[tuple[str, str, Any]]:
    return [(p.name, p.kind.name, p.default) for p in inspect.signature(func).parameters.values()]


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {sdk: install_sim(tmp_path_factory.mktemp(f"sim-{sdk}"), sdk) for sdk in ("2.24.0", "2.31.1")}


@pytest.fixture
def sim(sites: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sim]:
    """SDK 2.31.1, no device."""
    monkeypatch.delenv(TARGET_OVERRIDE_ENV, raising=False)
    with no_device(tmp_path), sim_imported(sites["2.31.1"]) as imported:
        yield imported


@pytest.fixture
def sim_224(sites: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sim]:
    monkeypatch.delenv(TARGET_OVERRIDE_ENV, raising=False)
    with no_device(tmp_path), sim_imported(sites["2.24.0"]) as imported:
        yield imported


def mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 8)).eval()


def example(batch: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 32, generator=torch.Generator().manual_seed(seed))


def compile_cpu(sim: Sim, model: torch.nn.Module | None = None, *args: str, batch: int = 4) -> Any:
    compiler_args = ["--target", "inf2", *args]
    return sim.torch_neuronx.trace(model or mlp(), example(batch), compiler_args=compiler_args, cpu_backend=True)


def max_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    assert got.shape == expected.shape
    assert got.dtype == expected.dtype
    return float((got.detach() - expected.detach()).abs().max())


def saved(module: Any, path: Path) -> Path:
    torch.jit.save(module, str(path))
    return path


# ------------------------------------------------------------------------------------------------ install


def test_install_writes_the_packages_and_real_versions(sites: dict[str, Path]) -> None:
    expected = {
        "2.24.0": {"neuronx-cc": "2.19.8089.0", "torch-neuron": "1.13.1.2.11.13.0", "neuron-cc": "1.24.0.0"},
        "2.31.1": {"neuronx-cc": "2.26.6360.0", "torch-neuron": "1.13.1.2.11.13.0", "neuron-cc": "1.24.0.0"},
    }
    neuron_part = {"2.24.0": "2.8.6734", "2.31.1": "2.15.32035"}
    torch_release = ".".join(importlib.metadata.version("torch").split("+")[0].split(".")[:3])
    for sdk, site in sites.items():
        assert {p.name for p in site.iterdir() if not p.name.endswith(".dist-info")} == {
            "torch_neuronx",
            "torch_neuron",
            "neuron_sdk_sim",
        }
        assert (site / "torch_neuronx" / "experimental.py").is_file()
        versions = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions(path=[str(site)])}
        for dist, version in expected[sdk].items():
            assert versions[dist] == f"{version}+neuronsim"
        assert versions["torch-neuronx"] == f"{torch_release}.{neuron_part[sdk]}+neuronsim"
        record = json.loads((site / "neuron_sdk_sim" / "_installed.json").read_text())
        assert record["sdk"] == sdk
        assert record["placement_ga"] is (sdk == "2.31.1")
        assert record["auto_cast_default"] == ("none" if sdk == "2.31.1" else "matmult")


def test_install_over_another_install_replaces_it(tmp_path: Path) -> None:
    install_sim(tmp_path, "2.24.0")
    install_sim(tmp_path, "2.31.1")
    install_sim(tmp_path, "2.31.1")
    names = sorted(p.name for p in tmp_path.glob("*.dist-info"))
    assert len(names) == 4
    assert all("2.26.6360.0" in n or "2.15.32035" in n or "1.24.0.0" in n or "1.13.1.2.11.13.0" in n for n in names)
    assert json.loads((tmp_path / "neuron_sdk_sim" / "_installed.json").read_text())["sdk"] == "2.31.1"


# ---------------------------------------------------------------------------------------------- signatures


@pytest.mark.parametrize("sdk", ["2.24.0", "2.31.1"])
def test_signatures_are_the_documented_ones(sites: dict[str, Path], tmp_path: Path, sdk: str) -> None:
    with no_device(tmp_path), sim_imported(sites[sdk]) as s:
        for name, params, source in DOCUMENTED:
            where = s.torch_neuronx.experimental if name in PLACEMENT_FUNCTIONS else s.torch_neuronx
            assert actual(getattr(where, name)) == documented(params), f"{name} differs from {source}"
            if name in PLACEMENT_FUNCTIONS and sdk == "2.31.1":
                assert actual(getattr(s.torch_neuronx, name)) == documented(params), f"{name} differs from {source}"
        params, source = TORCH_NEURON_TRACE
        assert actual(s.torch_neuron.trace) == documented(params), f"torch_neuron.trace differs from {source}"


def test_sdk_2_24_has_placement_apis_only_under_experimental(sim_224: Sim) -> None:
    for name in PLACEMENT_FUNCTIONS:
        assert not hasattr(sim_224.torch_neuronx, name)
        with pytest.raises(AttributeError, match=f"has no attribute '{name}'"):
            getattr(sim_224.torch_neuronx, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sim_224.torch_neuronx.experimental.set_multicore(torch.nn.Linear(1, 1))  # not a Neuron module: no-op


def test_sdk_2_31_placement_apis_are_top_level_and_experimental_is_deprecated(sim: Sim) -> None:
    tnx = sim.torch_neuronx
    for name in PLACEMENT_FUNCTIONS:
        assert callable(getattr(tnx, name))
    with pytest.warns(DeprecationWarning, match=r"torch_neuronx.experimental.set_multicore will be removed"):
        tnx.experimental.set_multicore(torch.nn.Linear(1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tnx.set_multicore(torch.nn.Linear(1, 1))


def test_unknown_keywords_raise_type_error(sim: Sim) -> None:
    with pytest.raises(TypeError, match="compiler_argz"):
        sim.torch_neuronx.trace(mlp(), example(), compiler_argz=["--target", "inf2"], cpu_backend=True)
    with pytest.raises(TypeError, match="compiler_argz"):
        sim.torch_neuron.trace(mlp(), example(), compiler_argz=["--fast-math", "none"])  # via torch.jit.trace
    with pytest.raises(TypeError):
        sim.torch_neuronx.neuron_cores_context(start=0)


# ------------------------------------------------------------------------------------- compiling off device


def test_trace_without_a_device_needs_cpu_backend(sim: Sim) -> None:
    with pytest.raises(RuntimeError, match=r"PJRT_Client_Create.*num_devices > 0.*cpu_backend=True"):
        sim.torch_neuronx.trace(mlp(), example(), compiler_args=["--target", "inf2"])
    assert sim.sim.calls == []


def test_cpu_backend_needs_a_target(sim: Sim, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeError, match="needs a target"):
        sim.torch_neuronx.trace(mlp(), example(), cpu_backend=True)
    monkeypatch.setenv(TARGET_OVERRIDE_ENV, "trn2")
    sim.torch_neuronx.trace(mlp(), example(), cpu_backend=True)
    name, details = sim.sim.calls[-1]
    assert name == "torch_neuronx.trace"
    assert (details["target"], details["cpu_backend"], details[TARGET_OVERRIDE_ENV]) == ("trn2", True, "trn2")
    monkeypatch.setenv(TARGET_OVERRIDE_ENV, "inf1")
    with pytest.raises(RuntimeError, match="NEURON_PLATFORM_TARGET_OVERRIDE='inf1' is not a Neuron platform"):
        sim.torch_neuronx.trace(mlp(), example(), cpu_backend=True)


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--target", "inf1"], "--target"),
        (["--target=trn3x"], "--target"),
        (["--auto-cast", "matmul"], "--auto-cast"),
        (["--auto-cast", "all", "--auto-cast-type", "int8"], "--auto-cast-type"),
        (["--optlevel", "4"], "--optlevel/-O"),
        (["-O0"], "--optlevel/-O"),
        (["--logical-nc-config", "4"], "--logical-nc-config/-lnc"),
        (["--auto-cast"], "--auto-cast"),
    ],
)
def test_neuronx_cc_flag_values_are_validated(sim: Sim, args: list[str], flag: str) -> None:
    with pytest.raises(RuntimeError, match=f"neuronx-cc: error: argument {flag}"):
        sim.torch_neuronx.trace(mlp(), example(), compiler_args=["--target", "inf2", *args], cpu_backend=True)


def test_compiler_args_as_one_string(sim: Sim, tmp_path: Path) -> None:
    sim.torch_neuronx.trace(
        mlp(),
        example(),
        compiler_args="--target=trn1 --auto-cast=all --auto-cast-type fp16 -O1 --model-type transformer",
        cpu_backend=True,
        compiler_workdir=str(tmp_path / "work"),
    )
    details = sim.sim.calls[-1][1]["neuronx_cc"]
    assert details == {
        "target": "trn1",
        "auto_cast": "all",
        "auto_cast_type": "fp16",
        "optlevel": 1,
        "logical_nc_config": None,
        "passthrough": ["--model-type", "transformer"],
    }
    assert (tmp_path / "work" / "simulated-neuronx-cc.json").is_file()


def test_calls_are_appended_to_the_calls_file(sim: Sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CALLS_FILE_ENV, str(tmp_path / "calls.jsonl"))
    sim.torch_neuronx.dynamic_batch(compile_cpu(sim))
    lines = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert [line["call"] for line in lines] == ["torch_neuronx.trace", "torch_neuronx.dynamic_batch"]
    assert lines[0]["compiler_args"] == ["--target", "inf2"]


# ----------------------------------------------------------------------------------------------- running


def test_a_compiled_module_only_runs_with_a_device(sim: Sim, tmp_path: Path) -> None:
    module = compile_cpu(sim)
    with pytest.raises(RuntimeError, match="The PyTorch Neuron Runtime could not be initialized"):
        module(example())
    with simulated_device(tmp_path) as dev, pytest.MonkeyPatch.context() as mp:
        mp.delenv("NEURON_RT_VISIBLE_CORES")
        with pytest.raises(RuntimeError, match="NEURON_RT_VISIBLE_CORES is not set"):
            module(example())
        assert dev.is_dir()
    assert sim.sim.core_executions() == {}


def test_loading_without_importing_torch_neuronx_fails(sites: dict[str, Path], tmp_path: Path) -> None:
    with no_device(tmp_path), sim_imported(sites["2.31.1"]) as s:
        path = saved(compile_cpu(s), tmp_path / "model.pt")
    # sim_imported purged the simulator: the neuron_sim:: op is gone, as without `import torch_neuronx`
    with pytest.raises(RuntimeError, match="Unknown builtin op: neuron_sim::neuronx_forward"):
        torch.jit.load(str(path))
    with no_device(tmp_path), sim_imported(sites["2.31.1"]):
        assert torch.jit.load(str(path)) is not None


def test_placement_round_robin_by_absolute_core_id(sim: Sim, tmp_path: Path) -> None:
    path = saved(compile_cpu(sim), tmp_path / "model.pt")
    tnx, x = sim.torch_neuronx, example()
    with simulated_device(tmp_path, visible_cores="2,3"):
        first, second, third = (torch.jit.load(str(path)) for _ in range(3))  # default: next core, round-robin
        assert [sim.sim.placement(m) for m in (first, second, third)] == [[(2,)], [(3,)], [(2,)]]
        first(x), second(x), second(x)
        assert sim.sim.core_executions() == {2: 1, 3: 2}

        sim.sim.reset()
        with tnx.neuron_cores_context(start_nc=0, nc_count=2):
            replicated = torch.jit.load(str(path))
        with tnx.neuron_cores_context(start_nc=1):
            pinned = torch.jit.load(str(path))
        with tnx.multicore_context():
            everywhere = torch.jit.load(str(path))
        assert sim.sim.placement(replicated) == [(2, 3)]
        assert sim.sim.placement(pinned) == [(3,)]
        assert sim.sim.placement(everywhere) == [(2, 3)]
        for _ in range(3):
            replicated(x)
        assert sim.sim.core_executions() == {2: 2, 3: 1}
        pinned(x)
        assert sim.sim.core_executions() == {2: 2, 3: 2}

        tnx.set_neuron_cores(pinned, start_nc=0, nc_count=1)  # move a loaded model
        assert sim.sim.placement(pinned) == [(2,)]
        tnx.set_multicore(pinned)
        assert sim.sim.placement(pinned) == [(2, 3)]
        with tnx.neuron_cores_context(start_nc=0):
            extra = torch.jit.load(str(path))  # core 2 now holds one model more than core 3
        assert sim.sim.placement(extra) == [(2,)]
        with tnx.neuron_cores_context():  # start_nc=-1: "the optimal NeuronCore (least used)"
            least = torch.jit.load(str(path))
        assert sim.sim.placement(least) == [(3,)]


@pytest.mark.parametrize(("start_nc", "nc_count"), [(0, 3), (1, 2), (2, -1), (0, 0), (-2, 1), (0, -5)], ids=str)
def test_nc_count_and_start_nc_are_validated_against_the_visible_cores(
    sim: Sim, tmp_path: Path, start_nc: int, nc_count: int
) -> None:
    module = compile_cpu(sim)
    with simulated_device(tmp_path, visible_cores="2,3"):
        with (
            pytest.raises(ValueError, match="NEURON_RT_VISIBLE_CORES=2,3"),
            sim.torch_neuronx.neuron_cores_context(start_nc, nc_count),
        ):
            pass
        with pytest.raises(ValueError, match="NEURON_RT_VISIBLE_CORES=2,3"):
            sim.torch_neuronx.set_neuron_cores(module, start_nc, nc_count)


def test_placement_needs_a_device(sim: Sim) -> None:
    with (
        pytest.raises(RuntimeError, match="Neuron runtime cannot be initialized"),
        sim.torch_neuronx.multicore_context(),
    ):
        pass


def test_replicas_serve_concurrent_calls_on_different_cores(sim: Sim, tmp_path: Path) -> None:
    """Each simulated NeuronCore runs one execution at a time: two calls can only both reach the barrier (held
    while executing) if the module is replicated onto two cores."""
    path = saved(compile_cpu(sim), tmp_path / "model.pt")
    with simulated_device(tmp_path, visible_cores="0-3"):
        with sim.torch_neuronx.neuron_cores_context(start_nc=2, nc_count=2):
            model = torch.jit.load(str(path))
        barrier = threading.Barrier(2, timeout=60)

        def hold(core: int) -> None:
            barrier.wait()  # both calls must be executing (each holding its core) at the same time

        sim.sim.set_execution_hook(hold)
        errors: list[BaseException] = []

        def call() -> None:
            try:
                model(example())
            except BaseException as exc:  # re-raised below
                errors.append(exc)

        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert sim.sim.core_executions() == {2: 1, 3: 1}


def test_dynamic_batch_splits_and_pads_dim_0(sim: Sim, tmp_path: Path) -> None:
    model = mlp()
    module = compile_cpu(sim, model, "--auto-cast", "none")
    with simulated_device(tmp_path, visible_cores="0"):
        with pytest.raises(RuntimeError, match="fixed input shapes"):
            module(example(batch=9))
        assert sim.torch_neuronx.dynamic_batch(module) is module
        x = example(batch=9)
        assert max_error(module(x), model(x)) < 1e-6
        assert sim.sim.core_executions() == {0: 3}  # ceil(9 / 4) executions of the traced batch size
        assert max_error(module(example(batch=2)), model(example(batch=2))) < 1e-6
        reloaded = torch.jit.load(str(saved(module, tmp_path / "dyn.pt")))
        assert reloaded(example(batch=5)).shape == (5, 8)  # the flag is part of the saved model

        two = sim.torch_neuronx.dynamic_batch(
            sim.torch_neuronx.trace(
                lambda a, b: a + b, (example(), example()), compiler_args="--target inf2", cpu_backend=True
            )
        )
        # A ValueError, as documented; it crosses the TorchScript interpreter as a RuntimeError that names it.
        with pytest.raises(RuntimeError, match="ValueError: dynamic batching needs the same 0th dimension"):
            two(example(batch=3), example(batch=5))


def test_auto_cast_changes_the_numbers_by_a_bounded_amount(sim: Sim, tmp_path: Path) -> None:
    """SDK 2.31.1 compiles fp32 as is by default (--auto-cast none since 2.27); matmult/all in bf16, fp16, tf32
    and fp8 differ from the eager model by a bounded, type-dependent amount; outputs stay fp32."""
    model, x = mlp(), example(batch=4)
    with torch.no_grad():
        expected = model(x)
    errors: dict[str, float] = {}
    with simulated_device(tmp_path, visible_cores="0"):
        for label, args in {
            "default": [],
            "none": ["--auto-cast", "none"],
            "matmult-bf16": ["--auto-cast", "matmult"],
            "matmult-fp16": ["--auto-cast", "matmult", "--auto-cast-type", "fp16"],
            "matmult-tf32": ["--auto-cast", "matmult", "--auto-cast-type", "tf32"],
            "all-bf16": ["--auto-cast", "all", "--auto-cast-type", "bf16"],
            "matmult-fp8": ["--auto-cast", "matmult", "--auto-cast-type", "fp8_e4m3"],
        }.items():
            errors[label] = max_error(compile_cpu(sim, model, *args)(x), expected)
    assert errors["default"] == errors["none"] <= 1e-6
    assert 0 < errors["matmult-tf32"] < errors["matmult-bf16"]
    assert 0 < errors["matmult-fp16"] < errors["matmult-bf16"] < 0.05
    assert 0 < errors["all-bf16"] < 0.1
    assert errors["matmult-bf16"] < errors["matmult-fp8"] < 0.5


def test_sdk_2_24_auto_casts_matmult_to_bf16_by_default(sim_224: Sim, tmp_path: Path) -> None:
    model, x = mlp(), example()
    with simulated_device(tmp_path, visible_cores="0"):
        error = max_error(compile_cpu(sim_224, model)(x), model(x))
    assert 1e-6 < error < 0.05
    assert sim_224.sim.calls[-1][1]["neuronx_cc"]["auto_cast"] == "matmult"


# ------------------------------------------------------------------------------------------ torch_neuron


def test_torch_neuron_compiles_off_device_and_runs_on_a_device(sim: Sim, tmp_path: Path) -> None:
    model, x = mlp(), example()
    module = sim.torch_neuron.trace(model, x, compiler_args=["--fast-math", "fp32-cast-matmult-fp16"])
    assert torch.neuron is sim.torch_neuron  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="The PyTorch Neuron Runtime could not be initialized"):
        module(x)
    path = saved(module, tmp_path / "inf1.pt")
    with simulated_device(tmp_path, visible_cores="0-3"):
        loaded = torch.jit.load(str(path))
        error = max_error(loaded(x), model(x))
    assert 0 < error < 0.05
    assert sim.sim.calls[-1][1]["neuron_cc"] == {
        "fast_math": ["fp32-cast-matmult-fp16"],
        "cast_scope": "matmult",
        "cast_type": "fp16",
    }


def test_torch_neuron_dynamic_batch_size(sim: Sim, tmp_path: Path) -> None:
    model = mlp()
    module = sim.torch_neuron.trace(model, example(), dynamic_batch_size=True, compiler_args=["--fast-math", "none"])
    with simulated_device(tmp_path, visible_cores="0"):
        assert module(example(batch=7)).shape == (7, 8)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--fast-math", "fast"], "invalid choice: 'fast'"),
        (["--fast-math", "all", "none"], "'all' and 'none' are mutually exclusive"),
        (["--fast-math", "fp32-cast-all", "fp32-cast-matmult"], "mutually exclusive"),
        (["--fp32-cast", "matmult-tf32"], "argument --fp32-cast: invalid choice"),
    ],
)
def test_neuron_cc_fast_math_is_validated(sim: Sim, args: list[str], match: str) -> None:
    with pytest.raises(subprocess.SubprocessError, match=match):
        sim.torch_neuron.trace(mlp(), example(), compiler_args=args, fallback=False)


def test_neuron_cc_failure_falls_back_to_cpu_by_default(sim: Sim, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="Neuron"):
        module = sim.torch_neuron.trace(mlp(), example(), compiler_args=["--fast-math", "fast"])
    assert "No operator is placed on Neuron runtime; returning a CPU trace" in caplog.text
    assert "neuron_sim::" not in str(module.inlined_graph)
    assert sim.sim.calls[-1][1]["fell_back_to_cpu"] is True


# ------------------------------------------------------------------------------ the runtime on both shapes


@pytest.mark.parametrize("sdk", ["2.24.0", "2.31.1"])
def test_the_runtime_places_models_with_either_sdk_shape(sites: dict[str, Path], tmp_path: Path, sdk: str) -> None:
    """neuron_runtime.neuron.placement_context finds the placement APIs at top level (>= 2.25) or under
    torch_neuronx.experimental (2.24), and the model lands where it asked."""
    from neuron_runtime import neuron

    with no_device(tmp_path), sim_imported(sites[sdk]) as s:
        path = saved(compile_cpu(s), tmp_path / "model.pt")
        with simulated_device(tmp_path, visible_cores="4-7"):
            with warnings.catch_warnings():
                warnings.simplefilter("error", DeprecationWarning)  # 2.31.1: the GA names, no deprecation
                with neuron.placement_context("inf2", start_nc=1, nc_count=2, multicore=False):
                    pair = torch.jit.load(str(path))
                with neuron.placement_context("inf2", start_nc=-1, nc_count=-1, multicore=True):
                    everywhere = torch.jit.load(str(path))
            assert s.sim.placement(pair) == [(5, 6)]
            assert s.sim.placement(everywhere) == [(4, 5, 6, 7)]
            pair(example()), pair(example())
            assert s.sim.core_executions() == {5: 1, 6: 1}

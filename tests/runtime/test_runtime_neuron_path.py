"""The Neuron path of the runtime, end to end, against the SIMULATED Neuron SDK on both SDK shapes.

The simulator (`e2e/neuron-sdk-sim`, held to the documented signatures by `test_neuron_sdk_sim_contract.py`) is
as strict as the real SDK where it matters here: `torch_neuronx.trace` has the documented keyword-only signature
(no **kwargs), compiling without a device needs `cpu_backend=True` and a target, a compiled graph raises when it
is called without a NeuronCore, the placement APIs exist only under `torch_neuronx.experimental` before SDK 2.25
and validate `nc_count` against the visible cores. So:

- compile on a host without a device succeeds only if the compile step never calls the traced graph;
- serving places each worker lane on its own core through whichever placement API the SDK has, and the
  per-core counts (the simulator's and the runtime's `/metrics`) show every requested core busy;
- the parity gate runs on the (simulated) device, and fails with the measured error beyond the tolerance;
- the SDK gate refuses an artifact compiled by a newer SDK than the serving one.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from runtime_cases import mlp_request

from neuron_runtime import compat, parity
from neuron_runtime.compile import CompileResult, compile_artifact
from neuron_runtime.config import Batching, Parity, Placement, ServeSettings
from neuron_runtime.contract import CompileFailure
from neuron_runtime.metrics import Metrics
from neuron_runtime.model import ServedModel
from neuron_sim import install_sim, no_device, sim_env, sim_imported, simulated_device

SDKS = ("2.24.0", "2.31.1")
INF2 = {"target": "inf2", "compiler": {"auto_cast": "matmult", "auto_cast_type": "bf16"}}


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {sdk: install_sim(tmp_path_factory.mktemp(f"sim-{sdk}"), sdk) for sdk in SDKS}


def compile_inf2(site: Path, root: Path, tmp: Path, **overrides: Any) -> CompileResult:
    with sim_imported(site), no_device(tmp):
        return compile_artifact(mlp_request(**{**INF2, **overrides}), root)


def serve_settings(result: CompileResult, **overrides: Any) -> ServeSettings:
    base: dict[str, Any] = {
        "model_name": "mlp",
        "artifact_dir": result.directory,
        "expected_sha256": result.digest,
        "placement": Placement(workers=1, cores_per_worker=2),
        "batching": Batching(max_batch_size=4, max_delay_ms=0),
        "warmup_runs": 1,
    }
    return ServeSettings(**(base | overrides))


async def load_and_check(settings: ServeSettings) -> ServedModel:
    model = ServedModel.load(settings, Metrics())
    model.start()
    await model.check_parity(settings.parity, settings.artifact_dir)
    await model.warmup(settings.warmup_runs)
    return model


def metric_values(metrics: Metrics, name: str) -> dict[str, float]:
    values = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                values[sample.labels["neuroncore"]] = sample.value
    return values


@pytest.mark.parametrize("sdk", SDKS)
def test_neuron_compile_stores_references_and_never_calls_the_graph(
    sdk: str, sites: dict[str, Path], tmp_path: Path
) -> None:
    result = compile_inf2(sites[sdk], tmp_path / "artifacts", tmp_path)
    m = result.manifest
    # The simulator raises on any call of a compiled graph without a NeuronCore: reaching here proves none.
    assert m.max_abs_error is None  # measured on the device by the parity gate, not in the compile Job
    assert (m.target, m.neuron_core_version) == ("inf2", "v2")
    assert m.neuron_package_version is not None
    assert m.compiler_version is not None
    assert [r.cases for r in m.references] == [3]
    ref = torch.load(str(result.directory / m.references[0].file), weights_only=True)
    # The reference outputs are the eager model's (fp32), not the bf16-cast graph's.
    assert ref["outputs"][0][0].dtype == torch.float32


@pytest.mark.parametrize("sdk", SDKS)
async def test_each_lane_runs_on_its_own_core_on_both_sdk_shapes(
    sdk: str, sites: dict[str, Path], tmp_path: Path
) -> None:
    result = compile_inf2(sites[sdk], tmp_path / "artifacts", tmp_path)
    with sim_imported(sites[sdk]) as sim, simulated_device(tmp_path, visible_cores="2,3"):
        sim.sim.reset()
        model = await load_and_check(serve_settings(result))
        try:
            assert model.parity is not None
            assert model.parity.passed
            assert model.parity.workers == 2  # one model copy per core, both checked
            rows = [torch.randn(1, 8) for _ in range(16)]
            await asyncio.gather(*(model.infer(model.prepare({"x": r})) for r in rows))
            by_sim = sim.sim.core_executions()
            by_runtime = metric_values(model.metrics, "neuron_runtime_neuroncore_executions_total")
        finally:
            await model.drain()
            model.shutdown()
    assert set(by_sim) == {2, 3}, by_sim
    assert all(n > 0 for n in by_sim.values()), by_sim
    assert set(by_runtime) == {"2", "3"}, by_runtime
    assert all(n > 0 for n in by_runtime.values()), by_runtime
    assert sum(by_sim.values()) == sum(by_runtime.values())


async def test_placement_on_the_old_sdk_goes_through_experimental(sites: dict[str, Path], tmp_path: Path) -> None:
    old = sites["2.24.0"]
    result = compile_inf2(old, tmp_path / "artifacts", tmp_path)
    with sim_imported(old) as sim, simulated_device(tmp_path, visible_cores="0-1"):
        assert not hasattr(sim.torch_neuronx, "neuron_cores_context")  # the pre-2.25 shape
        model = await load_and_check(serve_settings(result))
        await model.drain()
        model.shutdown()
        placed = [c for c in sim.sim.calls if "cores_context" in str(c[0])]
    assert placed, sim.sim.calls


async def test_parity_fails_beyond_the_tolerance_with_the_measured_error(
    sites: dict[str, Path], tmp_path: Path
) -> None:
    site = sites["2.31.1"]
    result = compile_inf2(site, tmp_path / "artifacts", tmp_path)
    with sim_imported(site), simulated_device(tmp_path, visible_cores="0-1"):
        # bf16 auto-cast on the device against fp32 eager references: the default bf16 tolerance passes ...
        model = await load_and_check(serve_settings(result))
        assert model.parity is not None
        assert model.parity.passed
        assert model.parity.precision == "bf16"
        assert model.parity.max_abs_error > 0
        measured = model.parity.max_abs_error
        await model.drain()
        model.shutdown()
        # ... a tolerance tighter than bf16's rounding does not.
        strict = serve_settings(result, parity=Parity(atol=1e-7, rtol=0.0))
        with pytest.raises(parity.ParityFailed) as failed:
            await load_and_check(strict)
    report = failed.value.report
    assert not report.passed
    assert report.elements_outside > 0
    assert report.max_abs_error == pytest.approx(measured)
    assert "max abs error" in str(failed.value)
    assert "atol 1e-07" in str(failed.value)


def test_sdk_gate_refuses_an_artifact_from_a_newer_sdk(sites: dict[str, Path], tmp_path: Path) -> None:
    result = compile_inf2(sites["2.31.1"], tmp_path / "artifacts", tmp_path)
    with (
        sim_imported(sites["2.24.0"]),
        simulated_device(tmp_path, visible_cores="0-1"),
        pytest.raises(compat.IncompatibleRuntime, match="newer than this image"),
    ):
        ServedModel.load(serve_settings(result), Metrics())
    # The other way round is supported: an older NEFF on a newer runtime.
    old = compile_inf2(sites["2.24.0"], tmp_path / "old-artifacts", tmp_path)
    with sim_imported(sites["2.31.1"]), simulated_device(tmp_path, visible_cores="0-1"):
        model = ServedModel.load(serve_settings(old), Metrics())
        model.shutdown()


@pytest.mark.timeout(120)  # a `neuron-runtime serve` process (torch import) that refuses
def test_serve_writes_a_parity_failure_as_its_termination_message(sites: dict[str, Path], tmp_path: Path) -> None:
    """The contract with the operator: exit 6 and a JSON termination message with the reason and the numbers."""
    site = sites["2.31.1"]
    result = compile_inf2(site, tmp_path / "artifacts", tmp_path)
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "neuron0").touch()
    settings = serve_settings(result, parity=Parity(atol=1e-7, rtol=0.0), host="127.0.0.1", port=0, grpc_port=0)
    log = tmp_path / "termination-log"
    env = sim_env(
        site,
        base={k: v for k, v in os.environ.items() if not k.startswith("NEURON_")},
        NEURON_SIM_DEV_DIR=str(dev),
        NEURON_RT_VISIBLE_CORES="0-1",
        NEURON_RUNTIME_TERMINATION_LOG=str(log),
        **settings.to_env(),
    )
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(Path(__file__).resolve().parents[2])])
    proc = subprocess.run(
        [sys.executable, "-m", "neuron_runtime.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 6, proc.stderr[-3000:]
    message = json.loads(log.read_text())
    assert message["status"] == "Failed"
    assert message["reason"] == "ParityFailed"
    assert message["atol"] == 1e-7
    assert message["maxAbsError"] > 1e-7
    assert "parity FAILED" in message["message"]


def test_inf1_over_the_size_limit_fails_fast_as_unsupported_architecture(
    sites: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from neuron_runtime import cli, neuron

    monkeypatch.setattr(neuron, "INF1_MAX_MODEL_BYTES", 1000)  # the tiny MLP serializes to a few KB
    log = tmp_path / "termination-log"
    request = mlp_request(target="inf1")
    with sim_imported(sites["2.31.1"]) as sim, no_device(tmp_path):
        args = ["compile", "--request-json", request.model_dump_json(), "--output-root", str(tmp_path / "a")]
        code = cli.main([*args, "--termination-log", str(log), "--quiet"])
        traced = [c for c in sim.sim.calls if "trace" in str(c[0])]
    assert code == CompileFailure.UNSUPPORTED_ARCHITECTURE.exit_code == 8
    message = json.loads(log.read_text())
    assert message["reason"] == "UnsupportedArchitecture"
    assert "2 GB" in message["message"] or "protobuf" in message["message"]
    assert traced == []  # failed before tracing

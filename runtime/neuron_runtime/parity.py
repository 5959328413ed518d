"""Parity gate: before a serving pod becomes ready, every graph must reproduce the eager model's outputs.

The compile Job stores reference cases per graph, i.e. per bucket and batch size (the example inputs plus seeded
random inputs, and what the *eager* model returned for them; see `compile`). A Neuron graph cannot run in the
compile Job (no NeuronCore), so this is where its numbers are first checked: on the device, on every worker (every
model copy, hence every core), during warm-up. A failure keeps the pod unready and ends it with a `ParityFailed`
termination message carrying the measured error; the operator shows it as `Stalled/ParityFailed` while the old
replicas keep serving.

Tolerance: an element passes when |got - expected| <= atol + rtol * |expected| (the rule of `torch.allclose`).
When the NeuronDeployment does not set them, the defaults follow the compiler's auto-cast setting, i.e. the
precision the graph computes in (`DEFAULT_TOLERANCES`). These defaults are this project's choice, sized to the
rounding of each type (bf16 keeps 8 significant bits, fp16 and tf32 11, fp8-e4m3 4), not a Neuron figure.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from neuron_runtime.artifact import Manifest
from neuron_runtime.contract import PARITY_LOG_PREFIX

DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    # precision the graph computes in -> (atol, rtol)
    "cpu": (1e-4, 1e-4),  # a CPU TorchScript graph: the eager model's own kernels
    "fp32": (1e-3, 1e-3),  # Neuron, auto-cast none: fp32, different op order and fusion than eager
    "tf32": (1e-2, 1e-2),
    "fp16": (1e-2, 1e-2),
    "bf16": (5e-2, 5e-2),
    "fp8_e4m3": (2.5e-1, 2.5e-1),
}


class ParityFailed(RuntimeError):
    """A graph's outputs on this device differ from the eager reference beyond the tolerance."""

    def __init__(self, report: ParityReport) -> None:
        super().__init__(report.summary())
        self.report = report


@dataclass(frozen=True)
class ParityReport:
    passed: bool
    atol: float
    rtol: float
    precision: str
    graphs: int
    cases: int
    workers: int
    max_abs_error: float
    max_rel_error: float
    elements_outside: int
    worst: str  # where the largest violation (or, when passing, the largest error) was measured

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"parity {verdict}: max abs error {self.max_abs_error:.3g}, max rel error {self.max_rel_error:.3g} "
            f"(atol {self.atol:g}, rtol {self.rtol:g}, {self.precision}); {self.elements_outside} element(s) "
            f"outside over {self.graphs} graph(s) x {self.cases} case(s) x {self.workers} worker(s); worst: "
            f"{self.worst}"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def log_line(self) -> str:
        """The stdout line of a passing check, which the operator reads from the pod's log into status.parity."""
        return f"{PARITY_LOG_PREFIX} {json.dumps(self.as_dict(), sort_keys=True)}"


def precision_of(manifest: Manifest) -> str:
    """The precision the artifact's graphs compute in, from its target and compiler options."""
    if manifest.target == "cpu":
        return "cpu"
    compiler = manifest.request.get("compiler") or {}
    assert isinstance(compiler, dict)
    if compiler.get("auto_cast", "none") == "none":
        # Inferentia (inf1) multiplies in bf16 even with --fast-math none (neuron-cc command-line reference;
        # archive/appnotes/neuron-cc/mixed-precision.rst: the matmult engine is fp16/bf16 only).
        return "bf16" if manifest.target == "inf1" else "fp32"
    return str(compiler.get("auto_cast_type", "bf16"))


def tolerance(manifest: Manifest, atol: float | None, rtol: float | None) -> tuple[float, float, str]:
    precision = precision_of(manifest)
    default_atol, default_rtol = DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["bf16"])
    return (default_atol if atol is None else atol), (default_rtol if rtol is None else rtol), precision


References = dict[tuple[int | None, int], tuple[list[list[torch.Tensor]], ...]]
"""(bucket, batch size) -> (inputs per case, expected outputs per case): keyed like `jobs.Graphs`."""


def load_references(directory: Path, manifest: Manifest) -> References:
    """Every graph's reference cases, read with `weights_only` (no pickled code)."""
    loaded: References = {}
    for ref in manifest.references:
        data = torch.load(str(directory / ref.file), map_location="cpu", weights_only=True)
        loaded[(ref.bucket, ref.batch_size)] = (data["inputs"], data["outputs"])
    return loaded


@dataclass
class _Tally:
    max_abs: float = 0.0
    max_rel: float = 0.0
    outside: int = 0
    worst_score: float = -math.inf
    worst: str = "-"


def compare(
    tally: _Tally, where: str, got: list[torch.Tensor], expected: list[torch.Tensor], atol: float, rtol: float
) -> None:
    """Fold one case's outputs into `tally` (shape or count mismatches count as a full failure)."""
    if len(got) != len(expected):
        tally.outside += 1
        tally.worst_score, tally.worst = math.inf, f"{where}: {len(got)} outputs, expected {len(expected)}"
        tally.max_abs = math.inf
        return
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        if tuple(g.shape) != tuple(e.shape):
            tally.outside += 1
            tally.worst_score = math.inf
            tally.worst = f"{where} output {i}: shape {list(g.shape)}, expected {list(e.shape)}"
            tally.max_abs = math.inf
            continue
        if not e.numel():
            continue
        g64, e64 = g.double(), e.double()
        diff = (g64 - e64).abs()
        bad = ~(diff <= atol + rtol * e64.abs())  # NaN counts as outside
        abs_err = float(diff.max())
        rel_err = float((diff / e64.abs().clamp_min(1e-12)).max())
        tally.max_abs = max(tally.max_abs, abs_err) if not math.isnan(abs_err) else math.inf
        tally.max_rel = max(tally.max_rel, rel_err) if not math.isnan(rel_err) else math.inf
        outside = int(bad.sum())
        tally.outside += outside
        # Excess over the allowed band: the worst element is the one furthest outside it.
        score = float((diff - (atol + rtol * e64.abs())).max())
        if math.isnan(score):
            score = math.inf
        if score > tally.worst_score:
            tally.worst_score = score
            tally.worst = f"{where} output {i}: max abs error {abs_err:.3g}, {outside} element(s) outside"


def report(
    tally: _Tally, atol: float, rtol: float, precision: str, graphs: int, cases: int, workers: int
) -> ParityReport:
    return ParityReport(
        passed=tally.outside == 0,
        atol=atol,
        rtol=rtol,
        precision=precision,
        graphs=graphs,
        cases=cases,
        workers=workers,
        max_abs_error=tally.max_abs,
        max_rel_error=tally.max_rel,
        elements_outside=tally.outside,
        worst=tally.worst,
    )


def new_tally() -> _Tally:
    return _Tally()

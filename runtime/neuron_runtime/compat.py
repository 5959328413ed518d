"""SDK compatibility gate: may this image serve an artifact, given the versions the artifact was compiled with?

Checked by `neuron-runtime serve` before it loads anything (no torch here: pure version arithmetic). A refusal is
an `IncompatibleRuntime` error; the server exits with it as its termination message and the operator reports it
as `Stalled/IncompatibleRuntime` on the NeuronDeployment.

The rules, each with its source:

1. **Same compiler family.** A Neuron artifact needs the target's framework package in the image (torch-neuronx
   for inf2/trn1/trn2, torch-neuron for inf1): the traced graph calls that package's `neuron::` ops, which only
   it registers (SDK:frameworks/torch/torch-neuronx/api-reference-guide/inference/api-torch-neuronx-trace.rst).
2. **The compiler that built the NEFF is not newer than the serving SDK** (major.minor of neuronx-cc / neuron-cc,
   and of the Neuron part of the torch-neuronx version). A NEFF from a newer compiler fails to load on an older
   runtime ("NEFF version: 2.0, features: 0x100 are not supported", aws-neuron/aws-neuron-sdk#820 and #1061);
   the reverse is supported ("Runtime 2.x supports all the models compiled with Neuron Compiler 1.x",
   SDK:neuron-runtime/faq.rst). optimum-neuron records the compiler version with every artifact and checks it at
   load for the same reason (huggingface/optimum-neuron#114, #118).
3. **torch.** torch-neuronx is built for one torch release (its version is `<torch>.<neuron>`, e.g.
   2.1.2.2.18.0), so a Neuron artifact needs the same torch major.minor it was traced with. For `cpu`
   TorchScript, a newer torch loads an older file but not the other way round (TorchScript's forward
   compatibility is not guaranteed), so the serving torch must be at least the compiling one (major.minor).

Unknown versions (a manifest or image that does not say) are not refused: the gate only blocks combinations it
knows to be wrong, and says which versions it compared.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

NEURON_FRAMEWORK = {"inf1": "torch-neuron", "inf2": "torch-neuronx", "trn1": "torch-neuronx", "trn2": "torch-neuronx"}
COMPILER = {"inf1": "neuron-cc", "inf2": "neuronx-cc", "trn1": "neuronx-cc", "trn2": "neuronx-cc"}


class IncompatibleRuntime(RuntimeError):
    """This image cannot serve the artifact: the message says which versions clash and why."""


@dataclass(frozen=True)
class Versions:
    torch: str | None
    framework: str | None  # torch-neuronx / torch-neuron
    compiler: str | None  # neuronx-cc / neuron-cc


def _numbers(version: str) -> tuple[int, ...]:
    """Leading numeric release components: "2.1.2+cpu" -> (2, 1, 2); "2.13.66.0+6dfecc895" -> (2, 13, 66, 0)."""
    parts = []
    for piece in re.split(r"[.+]", version):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def _major_minor(version: str) -> tuple[int, ...]:
    return _numbers(version)[:2]


def neuron_part(framework_version: str) -> tuple[int, ...]:
    """The Neuron release part of a torch-neuronx version `<torch x.y.z>.<neuron a.b.c>` (a.b), else ()."""
    numbers = _numbers(framework_version)
    return numbers[3:5] if len(numbers) >= 5 else ()


def check(target: str, compiled: Versions, serving: Versions) -> list[str]:
    """Every reason this image cannot serve an artifact built with `compiled` versions (empty: compatible)."""
    problems: list[str] = []
    if target in NEURON_FRAMEWORK:
        framework, compiler = NEURON_FRAMEWORK[target], COMPILER[target]
        if serving.framework is None:
            problems.append(f"target {target} needs {framework}, which this image does not have")
            return problems
        if compiled.compiler and serving.compiler and _major_minor(compiled.compiler) > _major_minor(serving.compiler):
            problems.append(
                f"the artifact was compiled by {compiler} {compiled.compiler}, newer than this image's "
                f"{serving.compiler}: an older Neuron runtime cannot load a newer NEFF"
            )
        if compiled.framework and serving.framework:
            old, new = neuron_part(compiled.framework), neuron_part(serving.framework)
            if old and new and old > new:
                problems.append(
                    f"the artifact was traced with {framework} {compiled.framework} (Neuron "
                    f"{'.'.join(map(str, old))}), newer than this image's {serving.framework} "
                    f"(Neuron {'.'.join(map(str, new))})"
                )
        if compiled.torch and serving.torch and _major_minor(compiled.torch) != _major_minor(serving.torch):
            problems.append(
                f"the artifact was traced with torch {compiled.torch}, this image has torch {serving.torch}: "
                f"{framework} is built for one torch release, so serve it with torch "
                f"{'.'.join(map(str, _major_minor(compiled.torch)))}"
            )
    elif compiled.torch and serving.torch and _major_minor(compiled.torch) > _major_minor(serving.torch):
        problems.append(
            f"the artifact was traced with torch {compiled.torch}, newer than this image's torch {serving.torch}"
        )
    return problems


def require_compatible(target: str, compiled: Versions, serving: Versions) -> None:
    problems = check(target, compiled, serving)
    if problems:
        raise IncompatibleRuntime("; ".join(problems))


def serving_versions(found: Mapping[str, str | None]) -> Versions:
    """`Versions` from `neuron.installed_versions()`."""
    return Versions(
        torch=found.get("torchVersion"),
        framework=found.get("neuronPackageVersion"),
        compiler=found.get("compilerVersion"),
    )

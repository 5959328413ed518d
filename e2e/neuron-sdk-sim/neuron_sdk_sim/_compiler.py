"""The simulated compilers' command lines: ``neuronx-cc`` (torch-neuronx) and ``neuron-cc`` (torch-neuron).

Only the flags the simulator acts on are parsed; any other flag is passed through untouched (the real compilers
have many more). Values are checked the way the compilers' argparse front ends do, with argparse-style messages
naming the flag. Sources:

- neuronx-cc: SDK:compiler/neuronx-cc/api-reference-guide/neuron-compiler-cli-reference-guide.rst (``--target``,
  ``--auto-cast``, ``--auto-cast-type``; "If multiple competing options are specified then the option later in the
  command line will supercede previous options"), SDK:release-notes/components/compiler.rst (``trn1n`` target in
  2.5.0.28, ``trn2`` and ``--logical-nc-config``/``-lnc`` in 2.21 beta, ``--optlevel``/``-O`` 1|2|3 in 2.10.0.34,
  ``fp8_e4m3`` in 2.5.0.28, ``--auto-cast`` default ``none`` since SDK 2.27). ``matmult`` is the accepted spelling
  (huggingface/optimum-neuron maps a user's ``matmul`` to ``matmult`` before calling the compiler).
- neuron-cc: SDK:compiler/neuron-cc/command-line-reference.rst (``--fast-math`` and ``--fp32-cast`` values and
  their exclusivity rules).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

NEURONX_TARGETS = ("inf2", "trn1", "trn1n", "trn2")
AUTO_CAST = ("none", "matmult", "all")
AUTO_CAST_TYPES = ("bf16", "fp16", "tf32", "fp8_e4m3")
OPT_LEVELS = ("1", "2", "3")
LNC = ("1", "2")

FAST_MATH = (
    "all",
    "none",
    "fast-relayout",
    "no-fast-relayout",
    "fp32-cast-all",
    "fp32-cast-all-fp16",
    "fp32-cast-matmult",
    "fp32-cast-matmult-bf16",
    "fp32-cast-matmult-fp16",
)
FP32_CAST = ("all", "matmult", "matmult-fp16", "matmult-bf16", "all-fp16")
#: neuron-cc fp32 casting option -> (scope, type) as the simulated Inf1 graph computes it.
_NEURON_CC_CAST = {
    "all": ("all", "bf16"),
    "all-fp16": ("all", "fp16"),
    "matmult": ("matmult", "bf16"),  # matmult-based transposes in fp16 are not simulated
    "matmult-bf16": ("matmult", "bf16"),
    "matmult-fp16": ("matmult", "fp16"),
}


class CompilerError(RuntimeError):
    """The simulated compiler rejected its command line (the real one exits non-zero, the framework raises)."""


def _tokens(compiler_args: str | Sequence[str] | None, compiler: str) -> list[str]:
    if compiler_args is None:
        return []
    if isinstance(compiler_args, str):
        return shlex.split(compiler_args)
    tokens = list(compiler_args)
    for token in tokens:
        if not isinstance(token, str):
            raise TypeError(f"compiler_args must be a str or a list of str, got an item {token!r} ({compiler})")
    return tokens


def _choice(compiler: str, flag: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise CompilerError(
            f"{compiler} failed (simulated Neuron SDK): {compiler}: error: argument {flag}: invalid choice: "
            f"{value!r} (choose from {listed})"
        )
    return value


@dataclass(frozen=True)
class NeuronxArgs:
    """What the simulated neuronx-cc takes from a command line."""

    tokens: tuple[str, ...]
    target: str | None
    auto_cast: str
    auto_cast_type: str
    optlevel: int
    logical_nc_config: int | None
    passthrough: tuple[str, ...] = field(default=())

    def summary(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "auto_cast": self.auto_cast,
            "auto_cast_type": self.auto_cast_type,
            "optlevel": self.optlevel,
            "logical_nc_config": self.logical_nc_config,
            "passthrough": list(self.passthrough),
        }


#: neuronx-cc flag spellings -> (canonical flag for messages, choices).
_NEURONX_FLAGS: dict[str, tuple[str, Sequence[str]]] = {
    "--target": ("--target", NEURONX_TARGETS),
    "--auto-cast": ("--auto-cast", AUTO_CAST),
    "--auto-cast-type": ("--auto-cast-type", AUTO_CAST_TYPES),
    "--optlevel": ("--optlevel/-O", OPT_LEVELS),
    "-O": ("--optlevel/-O", OPT_LEVELS),
    "--logical-nc-config": ("--logical-nc-config/-lnc", LNC),
    "-lnc": ("--logical-nc-config/-lnc", LNC),
}


def parse_neuronx_cc(compiler_args: str | Sequence[str] | None, *, default_auto_cast: str) -> NeuronxArgs:
    """Parse and validate a neuronx-cc command line as ``torch_neuronx.trace(compiler_args=...)`` passes it."""
    tokens = _tokens(compiler_args, "neuronx-cc")
    values: dict[str, str] = {}
    passthrough: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name, eq, inline = token.partition("=")
        if name in _NEURONX_FLAGS:
            canonical, choices = _NEURONX_FLAGS[name]
            if eq:
                value = inline
            elif i + 1 < len(tokens):
                i += 1
                value = tokens[i]
            else:
                raise CompilerError(
                    f"neuronx-cc failed (simulated Neuron SDK): neuronx-cc: error: argument {canonical}: "
                    "expected one argument"
                )
            values[canonical] = _choice("neuronx-cc", canonical, value, choices)  # later ones win
        elif token.startswith("-O") and len(token) > 2 and not token.startswith("-O="):  # -O1, -O2, -O3
            values["--optlevel/-O"] = _choice("neuronx-cc", "--optlevel/-O", token[2:], OPT_LEVELS)
        else:
            passthrough.append(token)
        i += 1
    lnc = values.get("--logical-nc-config/-lnc")
    return NeuronxArgs(
        tokens=tuple(tokens),
        target=values.get("--target"),
        auto_cast=values.get("--auto-cast", default_auto_cast),
        auto_cast_type=values.get("--auto-cast-type", "bf16"),
        optlevel=int(values.get("--optlevel/-O", "2")),
        logical_nc_config=int(lnc) if lnc is not None else None,
        passthrough=tuple(passthrough),
    )


@dataclass(frozen=True)
class NeuronCcArgs:
    """What the simulated neuron-cc takes from a command line: how fp32 operators are cast on Inf1."""

    tokens: tuple[str, ...]
    fast_math: tuple[str, ...]
    cast_scope: str  # "all" | "matmult"
    cast_type: str  # "bf16" | "fp16"

    def summary(self) -> dict[str, Any]:
        return {"fast_math": list(self.fast_math), "cast_scope": self.cast_scope, "cast_type": self.cast_type}


def parse_neuron_cc(compiler_args: str | Sequence[str] | None) -> NeuronCcArgs:
    """Parse and validate neuron-cc's ``--fast-math`` / ``--fp32-cast`` (default ``--fast-math all``).

    ``none`` is "equivalent to fp32-cast-matmult-bf16 no-fast-relayout": even then Inf1 casts matrix
    multiplications to bf16. ``--fp32-cast`` has priority over the casting part of ``--fast-math``.
    """
    tokens = _tokens(compiler_args, "neuron-cc")
    fast_math: list[str] = []
    fp32_cast: str | None = None
    i = 0
    while i < len(tokens):
        name, eq, inline = tokens[i].partition("=")
        if name == "--fast-math":
            given = [inline] if eq else []
            while not eq and i + 1 < len(tokens) and not tokens[i + 1].startswith("-"):
                i += 1
                given.append(tokens[i])
            if not given:
                raise CompilerError(
                    "neuron-cc failed (simulated Neuron SDK): neuron-cc: error: argument --fast-math: "
                    "expected at least one argument"
                )
            fast_math = [_choice("neuron-cc", "--fast-math", v, FAST_MATH) for v in given]
        elif name == "--fp32-cast":
            if eq:
                value = inline
            elif i + 1 < len(tokens):
                i += 1
                value = tokens[i]
            else:
                raise CompilerError(
                    "neuron-cc failed (simulated Neuron SDK): neuron-cc: error: argument --fp32-cast: "
                    "expected one argument"
                )
            fp32_cast = _choice("neuron-cc", "--fp32-cast", value, FP32_CAST)
        i += 1
    _exclusive(fast_math, {"all", "none"})
    _exclusive(fast_math, {v for v in FAST_MATH if v.startswith("fp32-cast-")})
    _exclusive(fast_math, {"fast-relayout", "no-fast-relayout"})
    chosen = fast_math or ["all"]
    cast = "matmult-bf16" if "none" in chosen else "all"
    for value in chosen:
        if value.startswith("fp32-cast-"):
            cast = value.removeprefix("fp32-cast-")
    if fp32_cast is not None:
        cast = fp32_cast
    scope, cast_type = _NEURON_CC_CAST[cast]
    return NeuronCcArgs(tokens=tuple(tokens), fast_math=tuple(chosen), cast_scope=scope, cast_type=cast_type)


def _exclusive(values: list[str], group: set[str]) -> None:
    clash = sorted(v for v in set(values) if v in group)
    if len(clash) > 1:
        raise CompilerError(
            "neuron-cc failed (simulated Neuron SDK): neuron-cc: error: argument --fast-math: "
            f"{' and '.join(repr(v) for v in clash)} are mutually exclusive"
        )

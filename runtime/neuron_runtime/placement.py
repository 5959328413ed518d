"""Which cores each worker gets: parse `NEURON_RT_VISIBLE_CORES` and lay `Placement` out over the visible set.

Pure (no torch): the device plugin hands the pod a set of cores ("0-3", "4,5", "0,2-3"); `start_nc` for the
torch_neuronx placement APIs is *relative* to that set. On `cpu` the same plan pins worker threads to CPU ids,
taken from `NEURON_RT_VISIBLE_CORES` when set, else from the process affinity (`os.sched_getaffinity`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from neuron_runtime.config import Placement

VISIBLE_CORES_ENV = "NEURON_RT_VISIBLE_CORES"
MAX_CORE_INDEX = 4095


class PlacementError(ValueError):
    """The visible cores cannot satisfy the requested placement, or the core list is malformed."""


@dataclass(frozen=True)
class WorkerSlot:
    """One executor: `start_nc`/`nc_count` are relative to the visible cores; `cores` are absolute ids."""

    index: int
    start_nc: int
    nc_count: int
    cores: tuple[int, ...]
    shared_model: bool  # multicore: every slot runs the one model copy loaded with multicore_context()


def parse_visible_cores(value: str) -> list[int]:
    """Parse `NEURON_RT_VISIBLE_CORES`: indices and inclusive ranges, comma-separated ("0,2-3")."""
    cores: list[int] = []
    if not value.strip():
        raise PlacementError(f"{VISIBLE_CORES_ENV} is empty")
    for part in value.split(","):
        item = part.strip()
        try:
            if "-" in item:
                low_text, high_text = item.split("-", 1)
                low, high = int(low_text), int(high_text)
                if low > high:
                    raise PlacementError(f"{VISIBLE_CORES_ENV}={value!r}: range {item!r} is descending")
                cores.extend(range(low, high + 1))
            else:
                cores.append(int(item))
        except ValueError as exc:
            if isinstance(exc, PlacementError):
                raise
            raise PlacementError(
                f"{VISIBLE_CORES_ENV}={value!r}: {item!r} is not a core index or an inclusive range like 0-3"
            ) from None
    if any(c < 0 or c > MAX_CORE_INDEX for c in cores):
        raise PlacementError(f"{VISIBLE_CORES_ENV}={value!r}: core indices must be in 0..{MAX_CORE_INDEX}")
    if len(set(cores)) != len(cores):
        raise PlacementError(f"{VISIBLE_CORES_ENV}={value!r} lists a core twice")
    return cores


def visible_cores(target: str, environ: Mapping[str, str] | None = None) -> list[int]:
    """The core set this process may use: `NEURON_RT_VISIBLE_CORES`, else (cpu) the CPU affinity.

    On Neuron the variable is required: without it the runtime grabs every core of the node, which collides with
    other pods (deepjavalibrary/djl-serving#1079), and we could not check the placement before loading.
    """
    env = os.environ if environ is None else environ
    if VISIBLE_CORES_ENV in env:
        cores = parse_visible_cores(env[VISIBLE_CORES_ENV])
        if target == "cpu":
            allowed = _cpu_set()
            outside = sorted(set(cores) - allowed)
            if outside:
                raise PlacementError(
                    f"{VISIBLE_CORES_ENV} names CPUs {outside} outside this process's affinity {sorted(allowed)}"
                )
        return cores
    if target == "cpu":
        return sorted(_cpu_set())
    raise PlacementError(
        f"{VISIBLE_CORES_ENV} is not set: request aws.amazon.com/neuroncore so the device plugin sets it"
    )


def _cpu_set() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


def plan(placement: Placement, cores: list[int]) -> list[WorkerSlot]:
    """Lay the placement out over `cores`, or raise `PlacementError` saying what does not fit."""
    if not cores:
        raise PlacementError("no visible cores")
    if placement.mode == "multicore":
        return [
            WorkerSlot(index=i, start_nc=i, nc_count=1, cores=(core,), shared_model=True)
            for i, core in enumerate(cores)
        ]
    needed = placement.workers * placement.cores_per_worker
    if needed > len(cores):
        raise PlacementError(
            f"placement needs {placement.workers} workers x {placement.cores_per_worker} cores = {needed} cores, "
            f"but only {len(cores)} are visible ({format_cores(cores)})"
        )
    slots = []
    for i in range(placement.workers):
        start = i * placement.cores_per_worker
        slots.append(
            WorkerSlot(
                index=i,
                start_nc=start,
                nc_count=placement.cores_per_worker,
                cores=tuple(cores[start : start + placement.cores_per_worker]),
                shared_model=False,
            )
        )
    return slots


def format_cores(cores: list[int]) -> str:
    """Inverse of `parse_visible_cores`, with ranges collapsed ("0-3,6")."""
    parts: list[str] = []
    for core in cores:
        if parts and "-" not in parts[-1].split(",")[-1] and int(parts[-1]) == core - 1:
            parts[-1] = f"{parts[-1]}-{core}"
        elif parts and "-" in parts[-1] and int(parts[-1].split("-")[1]) == core - 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{core}"
        else:
            parts.append(str(core))
    return ",".join(parts)

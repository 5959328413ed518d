"""NeuronCore allocation for the local exec node, like the Neuron device plugin (a pure class).

A container with ``limits: {aws.amazon.com/neuroncore: N}`` gets N *contiguous* free core ids; one with
``aws.amazon.com/neuron: D`` gets the 2·D cores of D whole devices (aligned to device boundaries). The ids
reach the process as ``NEURON_RT_VISIBLE_CORES`` in range form — ``"2"`` or ``"2-3"`` — which the Neuron
runtime accepts (the real plugin writes comma lists such as ``"2,3"``; both mean the same).

The allocator is pure state plus ``to_json``/``from_json`` so the agent can persist it under its state dir
and keep allocations across a restart.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

NEURONCORE = "aws.amazon.com/neuroncore"
NEURON_DEVICE = "aws.amazon.com/neuron"


class AllocationError(RuntimeError):
    """Not enough contiguous free cores."""


def devices_for(cores: int) -> int:
    """Devices the node advertises for ``cores`` NeuronCores (2 per device, rounded up)."""
    return math.ceil(cores / 2)


def format_range(start: int, count: int) -> str:
    return str(start) if count == 1 else f"{start}-{start + count - 1}"


def requested_cores(container: Mapping[str, Any], cores_per_device: int = 2) -> tuple[int, int]:
    """(cores, alignment) a container asks for through its limits (requests must equal limits)."""
    res = container.get("resources") or {}
    limits = {**(res.get("requests") or {}), **(res.get("limits") or {})}
    n = int(str(limits.get(NEURONCORE, 0)))
    d = int(str(limits.get(NEURON_DEVICE, 0)))
    if n and d:
        raise ValueError(
            f"containers[{container.get('name')}].resources: request either {NEURONCORE} or {NEURON_DEVICE}, not both"
        )
    if d:
        return d * cores_per_device, cores_per_device
    return n, 1


class CoreAllocator:
    """First-fit contiguous allocation of ``total`` core ids, keyed by an opaque owner string."""

    def __init__(self, total: int, allocations: Mapping[str, tuple[int, int]] | None = None) -> None:
        if total < 0:
            raise ValueError(f"cores: must be >= 0, got {total}")
        self.total = total
        self._alloc: dict[str, tuple[int, int]] = {}
        for key, (start, count) in (allocations or {}).items():
            if start < 0 or count < 1 or start + count > total or not self._is_free(start, count):
                continue  # stale or conflicting entry from an older configuration: drop it
            self._alloc[key] = (start, count)

    def _is_free(self, start: int, count: int) -> bool:
        return all(s + c <= start or start + count <= s for s, c in self._alloc.values())

    def allocate(self, key: str, count: int, align: int = 1) -> tuple[int, int]:
        """Reserve ``count`` contiguous cores (starting at a multiple of ``align``); idempotent per key."""
        if key in self._alloc:
            return self._alloc[key]
        if count < 1:
            raise ValueError(f"core count must be >= 1, got {count}")
        for start in range(0, self.total - count + 1, max(align, 1)):
            if self._is_free(start, count):
                self._alloc[key] = (start, count)
                return start, count
        raise AllocationError(f"no {count} contiguous free NeuronCores (of {self.total}; in use: {self.in_use()})")

    def release(self, key: str) -> None:
        self._alloc.pop(key, None)

    def release_prefix(self, prefix: str) -> None:
        for key in [k for k in self._alloc if k.startswith(prefix)]:
            del self._alloc[key]

    def get(self, key: str) -> tuple[int, int] | None:
        return self._alloc.get(key)

    def in_use(self) -> dict[str, str]:
        return {k: format_range(s, c) for k, (s, c) in sorted(self._alloc.items(), key=lambda kv: kv[1])}

    def keys(self) -> list[str]:
        return list(self._alloc)

    def to_json(self) -> str:
        return json.dumps({"total": self.total, "allocations": self._alloc}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, total: int) -> CoreAllocator:
        data = json.loads(text)
        return cls(total, {k: (int(v[0]), int(v[1])) for k, v in data.get("allocations", {}).items()})

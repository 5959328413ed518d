"""Process-wide bookkeeping of the simulated Neuron SDK: recorded calls and per-NeuronCore executions.

No torch import here, so ``import neuron_sdk_sim`` stays cheap. ``calls`` is the one list object the package
exports: ``reset()`` clears it in place. When ``$NEURON_SIM_CALLS_FILE`` is set every recorded call is also
appended to that file as one JSON line, so a test can see the calls of a subprocess (e.g. ``neuron-runtime
compile``).
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

CALLS_FILE_ENV = "NEURON_SIM_CALLS_FILE"

#: Every call into the simulated SDK, in order: (qualified function name, details).
calls: list[tuple[str, dict[str, Any]]] = []

_lock = threading.Lock()
_executions: Counter[int] = Counter()
_hook: list[Callable[[int], None]] = []  # at most one
_reset_callbacks: list[Callable[[], None]] = []


def record(name: str, details: dict[str, Any]) -> None:
    with _lock:
        calls.append((name, details))
        path = os.environ.get(CALLS_FILE_ENV)
        if path:
            with open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps({"call": name, **details}, default=repr, sort_keys=True) + "\n")


def count_execution(core: int) -> None:
    with _lock:
        _executions[core] += 1


def core_executions() -> dict[int, int]:
    """Executions per NeuronCore, keyed by ABSOLUTE core id (an entry of ``NEURON_RT_VISIBLE_CORES``)."""
    with _lock:
        return dict(sorted(_executions.items()))


def set_execution_hook(hook: Callable[[int], None] | None) -> None:
    """Call ``hook(absolute_core_id)`` in every execution while that NeuronCore is held (for tests; None: off).

    A simulated NeuronCore runs one execution at a time, like a real one: a hook that waits on a
    ``threading.Barrier`` shows deterministically whether calls really run on different cores at once.
    """
    with _lock:
        _hook.clear()
        if hook is not None:
            _hook.append(hook)


def execution_hook() -> Callable[[int], None] | None:
    return _hook[0] if _hook else None


def on_reset(callback: Callable[[], None]) -> None:
    _reset_callbacks.append(callback)


def reset() -> None:
    """Forget recorded calls, execution counts, the execution hook and all placements (round-robin restarts)."""
    with _lock:
        calls.clear()
        _executions.clear()
        _hook.clear()
    for callback in _reset_callbacks:
        callback()

"""The simulated Neuron runtime: compiled graphs, their TorchScript op, NeuronCore placement and execution.

A compiled module (what the simulated ``torch_neuronx.trace`` / ``torch_neuron.trace`` return) is a TorchScript
``ScriptModule`` whose graph is ONE fused op call, like the real one's ``neuron::Model`` + ``neuron::forward*``
(SDK:frameworks/torch/torch-neuronx/api-reference-guide/inference/api-torch-neuronx-trace.rst, "Notes"):

    neuron_sim::neuronx_forward(state, neff, meta, [inputs])   # torch_neuronx (NeuronCore-v2)
    neuron_sim::neuron_forward(state, neff, meta, [inputs])    # torch_neuron (Inf1, NeuronCore-v1)

- ``neff`` (uint8 buffer ``_neuron_sim_neff``): the "compiled" model, a serialized TorchScript graph of the model
  with the auto-cast roundings in it (see ``_autocast``). Stand-in for the real NEFF embedded in the module.
- ``meta`` (string constant): traced input shapes/dtypes, framework, target, compiler settings.
- ``state`` (int64 buffer ``_neuron_sim_state``): ``[process epoch, placement handle, dynamic batch flag]``.

The ops exist only once ``torch_neuronx`` (or ``torch_neuron``) has been imported, like the real ``neuron::``
ops: ``torch.jit.load`` of a compiled module without that import fails with "Unknown builtin op".

Placement follows SDK:.../api-torch-neuronx-core-placement.rst: a module is placed when it is loaded
(``torch.jit.load``, which the simulator wraps once ``torch_neuronx``/``torch_neuron`` is imported) or when traced on
a device; inside ``neuron_cores_context(start_nc, nc_count)`` on visible cores ``start_nc .. start_nc+nc_count-1``
(relative to ``NEURON_RT_VISIBLE_CORES``), replicated, executions round-robin; inside ``multicore_context()`` on
all visible cores; otherwise each loaded module lands on the next visible core, round-robin. A module that reaches
its first execution unplaced (e.g. deep-copied) is placed then, as if loaded. One NeuronCore runs one execution at a
time (a lock per core); replicas of one module on different cores run concurrently.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import logging
import os
import random
import threading
import uuid
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree

from neuron_sdk_sim import _device, _state
from neuron_sdk_sim._autocast import AutoCastMode

log = logging.getLogger("Neuron")

NAMESPACE = "neuron_sim"
OPS = {"torch_neuronx": "neuronx_forward", "torch_neuron": "neuron_forward"}
STATE = "_neuron_sim_state"
NEFF = "_neuron_sim_neff"
_SCHEMA = "(Tensor state, Tensor neff, str meta, Tensor[] inputs) -> Tensor[]"


#: torch's TorchScript and library entry points, typed loosely (torch does not annotate them all).
_Library: Any = torch.library.Library
_jit_trace: Callable[..., Any] = torch.jit.trace

_lock = threading.RLock()
_libraries: dict[str, Any] = {}
#: "original" -> torch.jit.load as it was before the simulator wrapped it.
_loader: dict[str, Callable[..., Any]] = {}
_tls = threading.local()
_graphs: dict[str, torch.jit.ScriptModule] = {}
_infos: dict[str, dict[str, Any]] = {}


# ------------------------------------------------------------------------------------------------ op registry
def register(framework: str) -> None:
    """Define ``neuron_sim::<op>`` for ``framework`` and wrap ``torch.jit.load`` (what importing it does)."""
    with _lock:
        if framework in _libraries:
            return
        name = OPS[framework]
        lib = _Library(NAMESPACE, "FRAGMENT")
        try:
            lib.define(name + _SCHEMA)
        except RuntimeError as exc:
            raise RuntimeError(
                f"{NAMESPACE}::{name} is already defined in this process: two copies of the simulated Neuron SDK "
                "(neuron_sdk_sim) cannot be imported at once"
            ) from exc
        lib.impl(name, _forward, "CPU")
        _libraries[framework] = lib
        _wrap_jit_load()


def unload() -> None:
    """Undo ``register`` (tests): unwrap ``torch.jit.load``, drop the ops, forget placements and cached graphs.

    Modules compiled or loaded before must not be called afterwards.
    """
    with _lock:
        for lib in _libraries.values():
            lib._destroy()
        _libraries.clear()
        if "original" in _loader:
            torch.jit.load = _loader.pop("original")
        _graphs.clear()
        _infos.clear()
    _state.reset()


def _wrap_jit_load() -> None:
    if "original" in _loader:
        return
    original: Callable[..., Any] = torch.jit.load

    @functools.wraps(original)
    def load(*args: Any, **kwargs: Any) -> Any:
        module = original(*args, **kwargs)
        place_loaded(module)
        return module

    _loader["original"] = original
    torch.jit.load = load


def jit_load_unwrapped(f: Any) -> Any:
    loader: Callable[..., Any] = _loader.get("original", torch.jit.load)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.9 deprecates TorchScript
        return loader(f)


# -------------------------------------------------------------------------------------------- compilation
@contextmanager
def _compiling() -> Iterator[None]:
    previous = getattr(_tls, "compiling", False)
    _tls.compiling = True
    try:
        yield
    finally:
        _tls.compiling = previous


def _flat(out: Any) -> list[torch.Tensor]:
    leaves, _ = pytree.tree_flatten(out)
    if not leaves or not all(isinstance(leaf, torch.Tensor) for leaf in leaves):
        raise TypeError(f"a Neuron-compiled model must return tensors (or tuples/lists/dicts of them), got {out!r}")
    return list(leaves)


class _Compiled(torch.nn.Module):
    """What gets traced into the compiled module: one call of the framework's simulated op."""

    def __init__(self, op: Any, meta: str, neff: torch.Tensor, spec: pytree.TreeSpec, dynamic: bool) -> None:
        super().__init__()
        self.op = op
        self.meta = meta
        self.spec = spec
        self.register_buffer(STATE, torch.tensor([0, 0, int(dynamic)], dtype=torch.int64))
        self.register_buffer(NEFF, neff)

    def forward(self, *inputs: torch.Tensor) -> Any:
        outs = self.op(getattr(self, STATE), getattr(self, NEFF), self.meta, list(inputs))
        return pytree.tree_unflatten(list(outs), self.spec)


def compile_module(
    framework: str,
    func: Any,
    example_inputs: Any,
    *,
    cast: tuple[str, str] | None,
    meta: dict[str, Any],
    dynamic_batch: bool = False,
    jit_kwargs: dict[str, Any] | None = None,
) -> torch.jit.ScriptModule:
    """Trace ``func`` (with the auto-cast roundings), serialize it as the "NEFF", and trace the fused-op module."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    for i, t in enumerate(inputs):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"example_inputs[{i}] is not a torch.Tensor ({type(t).__name__})")
    kwargs = {"check_trace": False, "strict": False, **(jit_kwargs or {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.9 deprecates TorchScript
        with torch.no_grad():
            if isinstance(func, torch.jit.ScriptModule):  # already TorchScript: compiled as is, without auto-cast
                graph = func
            elif cast is None:
                graph = _jit_trace(func, inputs, **kwargs)
            else:
                with AutoCastMode(*cast):
                    graph = _jit_trace(func, inputs, **kwargs)
            outputs = graph(*inputs)
        leaves, spec = pytree.tree_flatten(outputs)
        _flat(outputs)
        buffer = io.BytesIO()
        torch.jit.save(graph, buffer)
        neff = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8).clone()
        model_id = uuid.uuid4().hex
        info = {
            "simulated": "neuron_sdk_sim (simulated Neuron SDK, not a real Neuron compilation)",
            "uuid": model_id,
            "framework": framework,
            "inputs": [{"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for t in inputs],
            "outputs": len(leaves),
            **meta,
        }
        text = json.dumps(info, sort_keys=True)
        _graphs[model_id] = graph
        _infos[text] = info
        op = getattr(getattr(torch.ops, NAMESPACE), OPS[framework])
        with _compiling(), torch.no_grad():
            compiled: torch.jit.ScriptModule = _jit_trace(
                _Compiled(op, text, neff, spec, dynamic_batch), inputs, check_trace=False, strict=False
            )
    return compiled


def is_compiled(module: Any) -> bool:
    """Whether ``module`` contains at least one simulated Neuron graph."""
    return bool(_states(module))


def _states(module: Any) -> list[torch.Tensor]:
    if not isinstance(module, torch.nn.Module):
        return []
    return [buf for name, buf in module.named_buffers() if name.rsplit(".", 1)[-1] == STATE]


def set_dynamic_batch(module: Any) -> int:
    states = _states(module)
    with torch.no_grad():
        for state in states:
            state[2] = 1
    return len(states)


# ---------------------------------------------------------------------------------------------- placement
@dataclass
class _Placement:
    cores: tuple[int, ...]  # absolute NeuronCore ids
    owner: Callable[[], torch.Tensor | None] = lambda: None  # weak reference to the module's state buffer
    _next: Iterator[int] = field(default_factory=itertools.count)

    def next_core(self) -> int:
        with _lock:
            return self.cores[next(self._next) % len(self.cores)]


@dataclass(frozen=True)
class _Spec:
    kind: str  # "default" | "cores" | "multicore"
    start_nc: int = -1
    nc_count: int = -1


@dataclass
class _Placements:
    """This process's placements: handle -> cores, the default round-robin position, the active context.

    ``reset()`` starts a new epoch: modules placed before are unplaced again (placed at their next execution).
    """

    #: Tells this process's (and this reset's) placement handles from those saved in a file by another process.
    epoch: int = field(default_factory=lambda: random.getrandbits(62) or 1)
    handles: dict[int, _Placement] = field(default_factory=dict)
    handle_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    default_next: int = 0
    context: _Spec | None = None
    core_locks: dict[int, threading.Lock] = field(default_factory=dict)


_placements = _Placements()


def _reset_placements() -> None:
    with _lock:
        fresh = _Placements(core_locks=_placements.core_locks)
        _placements.__dict__.update(fresh.__dict__)


_state.on_reset(_reset_placements)


def validate(start_nc: int, nc_count: int, visible: Sequence[int]) -> None:
    """ValueError for a start/count the visible cores cannot hold (the API reference: "If the nc_count is an
    invalid number of NeuronCores"). The text is the simulator's own."""
    n = len(visible)
    count = 1 if nc_count == -1 else nc_count
    where = f"{n} NeuronCore(s) are visible to this process ({_device.VISIBLE_CORES_ENV}={visible_spec()})"
    if nc_count == 0 or nc_count < -1:
        raise ValueError(f"nc_count={nc_count} is an invalid number of NeuronCores (use -1 or 1..{n}); {where}")
    if count > n:
        raise ValueError(f"nc_count={nc_count} is an invalid number of NeuronCores: only {where}")
    if start_nc < -1 or start_nc >= n:
        raise ValueError(f"start_nc={start_nc} is not a visible NeuronCore index (use -1 or 0..{n - 1}); {where}")
    if start_nc != -1 and start_nc + count > n:
        raise ValueError(
            f"start_nc={start_nc} with nc_count={nc_count} needs NeuronCores {start_nc}..{start_nc + count - 1}, "
            f"but {where}"
        )


def visible_spec() -> str:
    return os.environ.get(_device.VISIBLE_CORES_ENV, "<unset>")


def _usage() -> Counter[int]:
    """Models per core: placements whose module still exists and still holds them (moved ones do not)."""
    usage: Counter[int] = Counter()
    for handle, placement in list(_placements.handles.items()):
        state = placement.owner()
        if state is None:
            del _placements.handles[handle]  # the module is gone
        elif int(state[0]) == _placements.epoch and int(state[1]) == handle:
            usage.update(placement.cores)
    return usage


def _cores_for(spec: _Spec, visible: Sequence[int]) -> tuple[int, ...]:
    if spec.kind == "multicore":
        return tuple(visible)
    if spec.kind == "default":
        core = visible[_placements.default_next % len(visible)]
        _placements.default_next += 1
        return (core,)
    validate(spec.start_nc, spec.nc_count, visible)
    count = 1 if spec.nc_count == -1 else spec.nc_count
    start = spec.start_nc
    if start == -1:  # "automatically loads to the optimal NeuronCore (least used)"
        usage = _usage()
        windows = range(len(visible) - count + 1)
        start = min(windows, key=lambda s: (sum(usage[c] for c in visible[s : s + count]), s))
    return tuple(visible[start : start + count])


def _assign(state: torch.Tensor, spec: _Spec, visible: Sequence[int]) -> _Placement:
    with _lock:
        placement = _Placement(_cores_for(spec, visible), weakref.ref(state))
        handle = next(_placements.handle_ids)
        _placements.handles[handle] = placement
        with torch.no_grad():
            state[0] = _placements.epoch
            state[1] = handle
    return placement


def place(module: Any, spec: _Spec) -> None:
    """Place every Neuron graph of ``module`` per ``spec`` (raises RuntimeError without usable NeuronCores)."""
    visible = _device.visible_cores()
    for state in _states(module):
        _assign(state, spec, visible)


def place_loaded(module: Any) -> None:
    """Placement at load time: the active placement context, or the next visible core round-robin."""
    if not _states(module):
        return
    if not _device.runtime_usable():
        log.warning(
            "Neuron runtime could not be initialized. Model was not sent to NeuronCore (simulated Neuron SDK: "
            "no usable simulated device; calling the model will fail)"
        )
        return
    place(module, _placements.context or _Spec("default"))


def placement_of(module: Any) -> list[tuple[int, ...]]:
    """Absolute cores of each Neuron graph in ``module`` (empty tuple: not placed in this process)."""
    result = []
    for state in _states(module):
        epoch, handle, _ = (int(v) for v in state.tolist())
        placement = _placements.handles.get(handle) if epoch == _placements.epoch else None
        result.append(placement.cores if placement else ())
    return result


@contextmanager
def placement_context(spec: _Spec) -> Iterator[None]:
    """Models loaded with ``torch.jit.load`` inside are placed per ``spec``. Not thread-safe (as documented)."""
    visible = _device.visible_cores()
    if spec.kind == "cores":
        validate(spec.start_nc, spec.nc_count, visible)
    previous = _placements.context
    _placements.context = spec
    try:
        yield
    finally:
        _placements.context = previous


def _placement_of_state(state: torch.Tensor) -> _Placement:
    with _lock:
        epoch, handle, _ = (int(v) for v in state.tolist())
        placement = _placements.handles.get(handle) if epoch == _placements.epoch else None
        if placement is None:  # never placed in this process: as if loaded now
            placement = _assign(state, _placements.context or _Spec("default"), _device.visible_cores())
        return placement


def _core_lock(core: int) -> threading.Lock:
    with _lock:
        return _placements.core_locks.setdefault(core, threading.Lock())


# ---------------------------------------------------------------------------------------------- execution
def _info(meta: str) -> dict[str, Any]:
    info = _infos.get(meta)
    if info is None:
        info = json.loads(meta)
        _infos[meta] = info
    return info


def _graph(info: dict[str, Any], neff: torch.Tensor) -> torch.jit.ScriptModule:
    model_id = info["uuid"]
    graph = _graphs.get(model_id)
    if graph is None:
        with _lock:
            graph = _graphs.get(model_id)
            if graph is None:
                graph = jit_load_unwrapped(io.BytesIO(neff.numpy().tobytes()))
                _graphs[model_id] = graph
    return graph


def _check_and_split(
    info: dict[str, Any], inputs: list[torch.Tensor], dynamic: bool
) -> tuple[list[list[torch.Tensor]], int]:
    """Chunks of the traced batch size (last one zero-padded) and the real batch size."""
    traced = info["inputs"]
    if len(inputs) != len(traced):
        raise RuntimeError(f"the compiled Neuron model takes {len(traced)} input(s), got {len(inputs)}")
    for i, (t, spec) in enumerate(zip(inputs, traced, strict=True)):
        dtype = str(t.dtype).removeprefix("torch.")
        shape = list(t.shape)
        if dtype != spec["dtype"]:
            raise RuntimeError(
                f"input {i} has dtype {dtype}, but the model was compiled for {spec['dtype']} (Neuron-compiled "
                "models have fixed data types; simulated Neuron SDK)"
            )
        fixed = shape[1:] != spec["shape"][1:] or len(shape) != len(spec["shape"])
        if fixed or (not dynamic and shape != spec["shape"]):
            hint = "" if dynamic else "; torch_neuronx.dynamic_batch() lets dim 0 vary"
            raise RuntimeError(
                f"input {i} has shape {shape}, but the model was compiled for {spec['shape']} (Neuron-compiled "
                f"models have fixed input shapes{hint}; simulated Neuron SDK)"
            )
    if not dynamic or not inputs:
        return [inputs], -1
    sizes = {t.shape[0] for t in inputs}
    if len(sizes) != 1:
        raise ValueError(
            f"dynamic batching needs the same 0th dimension in every input, got {[t.shape[0] for t in inputs]}"
        )
    batch = sizes.pop()
    traced_batch = traced[0]["shape"][0]
    if batch == traced_batch:
        return [inputs], -1
    if batch == 0:
        raise ValueError("dynamic batching cannot run an empty batch (0th dimension is 0)")
    chunks = []
    for start in range(0, batch, traced_batch):
        chunk = []
        for t in inputs:
            part = t[start : start + traced_batch]
            if part.shape[0] < traced_batch:
                pad = part.new_zeros((traced_batch - part.shape[0], *part.shape[1:]))
                part = torch.cat([part, pad])
            chunk.append(part)
        chunks.append(chunk)
    return chunks, batch


def _forward(state: torch.Tensor, neff: torch.Tensor, meta: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    info = _info(meta)
    graph = _graph(info, neff)
    if getattr(_tls, "compiling", False):  # the simulated compiler tracing the fused op
        with torch.no_grad():
            return [t.clone() for t in _flat(graph(*inputs))]
    _device.visible_cores(_device.EXECUTION_ERROR)
    placement = _placement_of_state(state)
    chunks, batch = _check_and_split(info, inputs, bool(int(state[2])))
    results = []
    for chunk in chunks:
        core = placement.next_core()
        with _core_lock(core):
            hook = _state.execution_hook()
            if hook is not None:
                hook(core)
            with torch.no_grad():
                results.append([t.clone() for t in _flat(graph(*chunk))])
            _state.count_execution(core)
    if batch == -1:
        return results[0]
    merged = []
    for i in range(len(results[0])):
        parts = [r[i] for r in results]
        if parts[0].dim() == 0:
            raise RuntimeError(f"output {i} is a scalar: dynamic batching needs a batch dimension in every output")
        merged.append(torch.cat(parts)[:batch])
    return merged

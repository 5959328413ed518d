"""`neuron-runtime compile`: turn a `CompileRequest` into a verified artifact directory, or reuse the cached one.

Steps: cache lookup (no torch import on a hit) → load the source (TorchScript file, or a Python factory plus an
optional state-dict file, sha256-checked) → one trace per bucket at the traced batch size (`torch.jit.trace` on
`cpu`, `neuron.trace` on Neuron targets) → check traced vs eager output on the example inputs → write the
directory atomically with a manifest pinning every file. Seeds are fixed and the manifest is serialised with
sorted keys, so the same request gives the same manifest apart from `created_at` and `compile_seconds`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuron_runtime import artifact
from neuron_runtime.config import (
    MANIFEST_NAME,
    NEURON_CORE_VERSIONS,
    CompileRequest,
    PythonSource,
    TorchScriptSource,
    artifact_path,
)
from neuron_runtime.sources import SourceError, fetch

Progress = Callable[[str], None]
HEARTBEAT_S = 30.0


class TraceError(RuntimeError):
    """Tracing or checking the traced graph failed."""


@dataclass(frozen=True)
class CompileResult:
    manifest: artifact.Manifest
    digest: str
    directory: Path
    cached: bool


def compile_artifact(
    request: CompileRequest, output_root: Path, progress: Progress = lambda _msg: None
) -> CompileResult:
    """Compile `request` into `output_root/<cache_key>`; a verified existing artifact is returned as is."""
    key = request.cache_key()
    final = artifact_path(output_root, key)
    if (final / MANIFEST_NAME).exists():
        try:
            manifest, digest = artifact.verify(final)
        except artifact.ArtifactError as exc:
            progress(f"cached artifact at {final} does not verify ({exc}); recompiling")
        else:
            if manifest.cache_key == key:
                progress(f"cache hit: {final}")
                return CompileResult(manifest, digest, final, cached=True)
            progress(f"cached artifact at {final} has cache key {manifest.cache_key}; recompiling")

    from neuron_runtime import neuron

    if neuron.is_neuron_target(request.target):
        neuron.require(request.target)  # fail before loading a large model
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="neuron-runtime-src-") as scratch:
        model = load_source(request, Path(scratch), progress)
        manifest, digest = artifact.write_atomically(
            final, lambda tmp: _trace_all(request, model, tmp, started, progress)
        )
    progress(f"wrote {final} ({manifest.size_bytes} bytes) in {time.monotonic() - started:.1f}s")
    return CompileResult(manifest, digest, final, cached=False)


def load_source(request: CompileRequest, scratch: Path, progress: Progress) -> Any:
    """Load the model to trace (a `torch.nn.Module` or a `ScriptModule`), verifying any pinned sha256."""
    import torch

    from neuron_runtime.tensors import load_script

    torch.manual_seed(0)
    source = request.source
    if isinstance(source, TorchScriptSource):
        path = fetch(source.uri, scratch, source.sha256, "TorchScript model")
        progress(f"loading TorchScript {path}")
        try:
            return load_script(path).eval()
        except Exception as exc:
            raise SourceError(f"cannot load TorchScript {source.uri}: {exc}") from exc
    assert isinstance(source, PythonSource)
    module_name, _, function_name = source.factory.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise SourceError(f"cannot import factory {source.factory}: {exc}") from exc
    progress(f"building {source.factory}({source.args})")
    try:
        model = factory(**source.args)
    except Exception as exc:
        raise SourceError(f"factory {source.factory} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, torch.nn.Module):
        raise SourceError(f"factory {source.factory} returned {type(model).__name__}, not a torch.nn.Module")
    if source.weights_uri is not None:
        path = fetch(source.weights_uri, scratch, source.weights_sha256, "weights file")
        progress(f"loading weights {path}")
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:
            raise SourceError(f"cannot load weights {source.weights_uri}: {exc}") from exc
    return model.eval()


def example_inputs(request: CompileRequest, bucket: int | None) -> list[Any]:
    """Deterministic example inputs at the traced batch size (bucket axis set to `bucket`).

    Floating inputs are seeded normals; integer and bool inputs are ones (a valid token id / "keep" mask).
    """
    import torch

    from neuron_runtime.tensors import torch_dtype

    generator = torch.Generator().manual_seed(1234)
    bucketed = request.bucketed_inputs()
    tensors = []
    for spec in request.inputs:
        shape = list(spec.shape)
        if bucket is not None and spec.name in bucketed:
            assert request.buckets is not None
            shape[request.buckets.axis] = bucket
        dtype = torch_dtype(spec.dtype)
        if dtype.is_floating_point:
            tensors.append(torch.randn(shape, generator=generator).to(dtype))
        else:
            tensors.append(torch.ones(shape, dtype=dtype))
    return tensors


def trace_for_target(request: CompileRequest, model: Any, inputs: Sequence[Any]) -> Any:
    import torch

    from neuron_runtime import neuron

    if request.target == "cpu":
        if isinstance(model, torch.jit.ScriptModule):
            return model  # already TorchScript: tracing would be a no-op
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.trace(model, tuple(inputs), check_trace=False, _store_inputs=False)  # type: ignore[no-untyped-call]
    return neuron.trace(request.target, model, inputs, request.compiler, request.dynamic_batch)


def _trace_all(request: CompileRequest, model: Any, tmp: Path, started: float, progress: Progress) -> artifact.Manifest:
    import torch

    from neuron_runtime import neuron
    from neuron_runtime.tensors import dtype_name, flatten_outputs

    buckets: list[int | None] = list(request.buckets.sizes) if request.buckets else [None]
    graphs: list[artifact.GraphFile] = []
    max_error = 0.0
    output_shapes: list[list[list[int]]] = []
    output_dtypes: list[str] = []
    for index, bucket in enumerate(buckets, start=1):
        label = f"batch {request.batch_size}" + ("" if bucket is None else f", bucket {bucket}")
        inputs = example_inputs(request, bucket)
        with _heartbeat(progress, f"tracing {label} ({index}/{len(buckets)})"), torch.inference_mode(False):
            try:
                with torch.no_grad():
                    eager = flatten_outputs(model(*inputs))
                    traced = trace_for_target(request, model, inputs)
                    got = flatten_outputs(traced(*inputs))
            except neuron.NeuronPackageMissing:
                raise
            except SourceError:
                raise
            except Exception as exc:
                raise TraceError(f"tracing {label} failed: {type(exc).__name__}: {exc}") from exc
        if len(got) != len(eager) or any(g.shape != e.shape for g, e in zip(got, eager, strict=True)):
            raise TraceError(f"traced graph for {label} returns different output shapes than the eager model")
        for g, e in zip(got, eager, strict=True):
            if e.numel():
                max_error = max(max_error, float((g.float() - e.float()).abs().max()))
        output_shapes.append([list(e.shape) for e in eager])
        output_dtypes = [dtype_name(e.dtype) for e in eager]
        name = artifact.graph_file_name(request.batch_size, bucket)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(traced, str(tmp / name))
        graphs.append(
            artifact.GraphFile(
                file=name,
                bucket=bucket,
                sha256=artifact.sha256_file(tmp / name),
                size_bytes=(tmp / name).stat().st_size,
            )
        )
        progress(f"traced {label} in {time.monotonic() - started:.1f}s total")
    versions = neuron.versions(request.target)
    return artifact.Manifest(
        cache_key=request.cache_key(),
        request=request.model_dump(mode="json"),
        inputs=list(request.inputs),
        outputs=_output_specs(output_shapes, output_dtypes, buckets),
        batch_size=request.batch_size,
        buckets=request.buckets.model_dump(mode="json") if request.buckets else None,
        bucket_axis=request.buckets.axis if request.buckets else None,
        bucketed_inputs=sorted(request.bucketed_inputs()),
        target=request.target,
        dynamic_batch=request.dynamic_batch,
        neuron_core_version=NEURON_CORE_VERSIONS[request.target],
        graphs=graphs,
        files={g.file: g.sha256 for g in graphs},
        torch_version=torch.__version__,
        neuron_package_version=versions["neuronPackageVersion"],
        compiler_version=versions["compilerVersion"],
        max_abs_error=max_error,
        compile_seconds=round(time.monotonic() - started, 3),
        created_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def _output_specs(
    shapes: list[list[list[int]]], dtypes: list[str], buckets: list[int | None]
) -> list[artifact.OutputSpec]:
    """Output specs; an axis equal to the bucket size in every bucket (2+ buckets) is the output's bucket axis."""
    specs = []
    for i, dtype in enumerate(dtypes):
        shape = list(shapes[0][i])
        bucket_axis = None
        if len(buckets) > 1:
            for axis in range(1, len(shape)):
                if all(s[i][axis] == b for s, b in zip(shapes, buckets, strict=True)):
                    bucket_axis = axis
                    shape[axis] = -1
                    break
        specs.append(artifact.OutputSpec(name=f"output{i}", dtype=dtype, shape=shape, bucket_axis=bucket_axis))
    return specs


@contextlib.contextmanager
def _heartbeat(progress: Progress, what: str) -> Iterator[None]:
    """Report `what`, then every HEARTBEAT_S seconds while it runs (Neuron compiles take minutes)."""
    progress(what)
    done = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        while not done.wait(HEARTBEAT_S):
            progress(f"still {what}: {time.monotonic() - started:.0f}s")

    thread = threading.Thread(target=beat, name="compile-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()

"""`neuron-runtime compile`: turn a `CompileRequest` into a verified artifact directory, or reuse the cached one.

Steps: cache lookup (no torch import on a hit) → load the source (TorchScript file, or a Python factory plus an
optional state-dict file, sha256-checked) → one trace per (batch size, bucket): every size of `batch_sizes` (or
just `batch_size`) with every bucket (`torch.jit.trace` on `cpu`, `neuron.trace` on Neuron targets) → reference
data per graph: the example inputs plus a few seeded random inputs, with the *eager* model's outputs for each → on
`cpu` only, check traced vs eager output on them → write the directory atomically with a manifest pinning every
file (graphs and references).

A Neuron-compiled graph is never called here: it can only execute on a NeuronCore (the `torch_neuronx.trace`
reference, "CPU compilation": trace with `cpu_backend=True`, then move model.pt to a Neuron instance), and the
compile Job has none. Its numerical check is the serving pod's parity gate (`neuron_runtime.parity`), which runs
every graph on the stored reference inputs on the device before the pod becomes ready.

Seeds are fixed and the manifest is serialised with sorted keys, so the same request gives the same manifest
apart from `created_at` and `compile_seconds`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import inspect
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from neuron_runtime.objectstore import S3Location

Progress = Callable[[str], None]
HEARTBEAT_S = 30.0


REFERENCE_RANDOM_CASES = 2
"""Seeded random inputs per graph stored as reference cases, besides the example inputs."""


class TraceError(RuntimeError):
    """Tracing or checking the traced graph failed."""


@dataclass(frozen=True)
class CompileResult:
    manifest: artifact.Manifest
    digest: str
    location: str  # the artifact's absolute directory, or its s3://bucket/prefix/<cache key>
    cached: bool

    @property
    def directory(self) -> Path:
        """The local artifact directory (a result published to S3 has none)."""
        if self.location.startswith("s3://"):
            raise ValueError(f"{self.location} is not a local directory")
        return Path(self.location)


def compile_artifact(
    request: CompileRequest, output_root: Path | str, progress: Progress = lambda _msg: None
) -> CompileResult:
    """Compile `request` into `output_root/<cache_key>` (a directory, or `s3://bucket/prefix`); a verified existing
    artifact is returned as is."""
    if isinstance(output_root, str):
        return _compile_to_s3(request, output_root, progress)
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
                _refresh_marker(output_root, key, progress)
                return CompileResult(manifest, digest, str(final.resolve()), cached=True)
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
    _refresh_marker(output_root, key, progress)
    return CompileResult(manifest, digest, str(final.resolve()), cached=False)


def _compile_to_s3(request: CompileRequest, output_root: str, progress: Progress) -> CompileResult:
    """The published artifact under `output_root` when it verifies (HEAD requests only, no graph downloaded), else
    compile into a local scratch root (`TMPDIR`) and publish it: files first, the manifest last."""
    from neuron_runtime import objectstore

    root = objectstore.S3Location.parse(output_root)
    key = request.cache_key()
    s3 = objectstore.client_from_env()
    found = objectstore.find_artifact(s3, root, key, progress)
    if found is not None:
        progress(f"cache hit: {root.child(key).uri}")
        _refresh_marker(root, key, progress, s3)
        return CompileResult(found[0], found[1], root.child(key).uri, cached=True)
    with tempfile.TemporaryDirectory(prefix="neuron-runtime-out-") as local:
        built = compile_artifact(request, Path(local), progress)
        manifest, digest, prefix = objectstore.publish_artifact(s3, Path(built.location), root, progress)
    _refresh_marker(root, manifest.cache_key, progress, s3)
    return CompileResult(manifest, digest, prefix.uri, cached=False)


def _refresh_marker(root: Path | S3Location, key: str, progress: Progress, s3: Any = None) -> None:
    """Mark `key` under the artifact root `root` referenced now (`retention.touch_marker`), so a GC Job whose keep
    list predates this compile does not delete what it returns. Best effort: a failure is reported, never fatal
    (the artifact is fine; only its protection from a concurrent GC run is weaker)."""
    from neuron_runtime import retention

    try:
        retention.touch_marker(root, key, s3=s3)
    except Exception as exc:
        progress(f"could not refresh the GC marker of {key} ({type(exc).__name__}: {exc}); continuing")


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


def example_inputs(
    request: CompileRequest, bucket: int | None, case: int = 0, batch_size: int | None = None
) -> list[Any]:
    """Deterministic inputs at `batch_size` (default: the largest, `request.batch_size`), bucket axis at `bucket`.

    Case 0 (the example inputs traced with): floating inputs are seeded normals; integer and bool inputs are ones
    (a valid token id / "keep" mask). Cases 1..: other seeds, and integer/bool inputs drawn from {0, 1} (still
    valid ids and masks for any model that accepts the ones).
    """
    import torch

    from neuron_runtime.tensors import torch_dtype

    generator = torch.Generator().manual_seed(1234 + case)
    bucketed = request.bucketed_inputs()
    tensors = []
    for spec in request.inputs:
        shape = list(spec.shape)
        if batch_size is not None:
            shape[0] = batch_size
        if bucket is not None and spec.name in bucketed:
            assert request.buckets is not None
            shape[request.buckets.axis] = bucket
        dtype = torch_dtype(spec.dtype)
        if dtype.is_floating_point:
            tensors.append(torch.randn(shape, generator=generator).to(dtype))
        elif case == 0:
            tensors.append(torch.ones(shape, dtype=dtype))
        else:
            tensors.append(torch.randint(0, 2, shape, generator=generator).to(dtype))
    return tensors


def trace_for_target(request: CompileRequest, model: Any, inputs: Sequence[Any]) -> Any:
    import torch

    from neuron_runtime import neuron

    if request.target == "cpu":
        if isinstance(model, torch.jit.ScriptModule):
            return model  # already TorchScript: tracing would be a no-op
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            extra = {"_store_inputs": False} if "_store_inputs" in inspect.signature(torch.jit.trace).parameters else {}
            return torch.jit.trace(model, tuple(inputs), check_trace=False, **extra)  # type: ignore[no-untyped-call]
    return neuron.trace(request.target, model, inputs, request.compiler, request.dynamic_batch)


def _trace_all(request: CompileRequest, model: Any, tmp: Path, started: float, progress: Progress) -> artifact.Manifest:
    """Trace every (batch size, bucket) of the request into `tmp` and return the manifest pinning the files.

    Steps per graph: trace it and run the eager model on the reference cases (`_trace_graph`), on `cpu` compare
    the traced outputs with the eager ones (`_max_traced_error`), check the batch axis (`_check_batch_axis`),
    then save the graph (`_save_graph`) and its reference data (`_save_references`); last, the manifest."""
    import torch

    from neuron_runtime import neuron
    from neuron_runtime.tensors import dtype_name

    buckets: list[int | None] = list(request.buckets.sizes) if request.buckets else [None]
    sizes = request.traced_batch_sizes()
    # The largest batch size first: every smaller one's outputs are checked against it as soon as it is traced.
    plan = [(size, bucket) for size in reversed(sizes) for bucket in buckets]
    graphs: list[artifact.GraphFile] = []
    references: list[artifact.ReferenceFile] = []
    max_error: float | None = 0.0 if request.target == "cpu" else None
    eager_shapes: dict[tuple[int, int | None], list[list[int]]] = {}
    output_dtypes: list[str] = []
    if request.target == "inf1":
        model_bytes = neuron.check_inf1_model_size(model)
        progress(f"serialized model is {model_bytes} bytes (inf1 limit {neuron.INF1_MAX_MODEL_BYTES})")
    for index, (size, bucket) in enumerate(plan, start=1):
        label = f"batch {size}" + ("" if bucket is None else f", bucket {bucket}")
        cases = [example_inputs(request, bucket, case, size) for case in range(REFERENCE_RANDOM_CASES + 1)]
        expected, traced, got = _trace_graph(request, model, cases, label, f"({index}/{len(plan)})", progress)
        eager = expected[0]
        if got is not None:
            max_error = _max_traced_error(got, expected, label, max_error)
        eager_shapes[(size, bucket)] = [list(e.shape) for e in eager]
        _check_batch_axis(eager_shapes, size, bucket, request.batch_size)
        output_dtypes = [dtype_name(e.dtype) for e in eager]
        graphs.append(_save_graph(traced, tmp, size, bucket))
        references.append(_save_references(cases, expected, tmp, size, bucket))
        progress(f"traced {label} in {time.monotonic() - started:.1f}s total")
    graphs.sort(key=lambda g: (g.batch_size, g.bucket or 0))
    references.sort(key=lambda r: (r.batch_size, r.bucket or 0))
    output_shapes = [eager_shapes[(request.batch_size, bucket)] for bucket in buckets]  # specs: the largest size
    versions = neuron.versions(request.target)
    files = {g.file: g.sha256 for g in graphs} | {r.file: r.sha256 for r in references}
    return artifact.Manifest(
        cache_key=request.cache_key(),
        request=request.model_dump(mode="json"),
        inputs=list(request.inputs),
        outputs=_output_specs(output_shapes, output_dtypes, buckets),
        batch_size=request.batch_size,
        batch_sizes=sizes,
        buckets=request.buckets.model_dump(mode="json") if request.buckets else None,
        bucket_axis=request.buckets.axis if request.buckets else None,
        bucketed_inputs=sorted(request.bucketed_inputs()),
        target=request.target,
        dynamic_batch=request.dynamic_batch,
        neuron_core_version=NEURON_CORE_VERSIONS[request.target],
        graphs=graphs,
        references=references,
        files=files,
        torch_version=torch.__version__,
        neuron_package_version=versions["neuronPackageVersion"],
        compiler_version=versions["compilerVersion"],
        max_abs_error=max_error,
        compile_seconds=round(time.monotonic() - started, 3),
        created_at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def _trace_graph(
    request: CompileRequest, model: Any, cases: list[list[Any]], label: str, step: str, progress: Progress
) -> tuple[list[list[Any]], Any, list[list[Any]] | None]:
    """Trace one graph on `cases[0]` and run the eager model on every case; returns (eager outputs per case, the
    traced graph, its outputs per case on `cpu`, else None: a Neuron graph runs only on the device)."""
    import torch

    from neuron_runtime import neuron
    from neuron_runtime.tensors import flatten_outputs

    with _heartbeat(progress, f"tracing {label} {step}"), torch.inference_mode(False):
        try:
            with torch.no_grad():
                expected = [flatten_outputs(model(*inputs)) for inputs in cases]
                traced = trace_for_target(request, model, cases[0])
                # Only a CPU graph may run here; a Neuron graph is checked on the device (parity gate).
                got = [flatten_outputs(traced(*inputs)) for inputs in cases] if request.target == "cpu" else None
        except neuron.NeuronPackageMissing:
            raise
        except SourceError:
            raise
        except Exception as exc:
            raise TraceError(f"tracing {label} failed: {type(exc).__name__}: {exc}") from exc
    return expected, traced, got


def _max_traced_error(
    got: list[list[Any]], expected: list[list[Any]], label: str, max_error: float | None
) -> float | None:
    """Check that the traced graph returns the eager model's output shapes on every case; returns `max_error`
    raised to the largest absolute difference between their outputs."""
    for case_got, case_expected in zip(got, expected, strict=True):
        if len(case_got) != len(case_expected) or any(
            g.shape != e.shape for g, e in zip(case_got, case_expected, strict=True)
        ):
            raise TraceError(f"traced graph for {label} returns different output shapes than the eager model")
        for g, e in zip(case_got, case_expected, strict=True):
            if e.numel():
                assert max_error is not None
                max_error = max(max_error, float((g.float() - e.float()).abs().max()))
    return max_error


def _save_graph(traced: Any, tmp: Path, size: int, bucket: int | None) -> artifact.GraphFile:
    """Save the traced graph for (`size`, `bucket`) into `tmp`; returns its manifest entry."""
    import torch

    name = artifact.graph_file_name(size, bucket)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(traced, str(tmp / name))
    return artifact.GraphFile(
        file=name,
        bucket=bucket,
        batch_size=size,
        sha256=artifact.sha256_file(tmp / name),
        size_bytes=(tmp / name).stat().st_size,
    )


def _save_references(
    cases: list[list[Any]], expected: list[list[Any]], tmp: Path, size: int, bucket: int | None
) -> artifact.ReferenceFile:
    """Save the reference inputs and eager outputs for (`size`, `bucket`) into `tmp`; returns its manifest entry."""
    import torch

    ref_name = artifact.reference_file_name(size, bucket)
    torch.save({"inputs": [list(c) for c in cases], "outputs": [list(o) for o in expected]}, str(tmp / ref_name))
    return artifact.ReferenceFile(
        file=ref_name,
        bucket=bucket,
        batch_size=size,
        sha256=artifact.sha256_file(tmp / ref_name),
        cases=len(cases),
    )


def _check_batch_axis(
    shapes: dict[tuple[int, int | None], list[list[int]]], size: int, bucket: int | None, largest: int
) -> None:
    """With several batch sizes, the eager outputs at `size` may differ from those at the largest size only in
    dimension 0 (the batch): the server splits every output by rows."""
    if size == largest:
        return
    got = shapes[(size, bucket)]
    want = [[size, *s[1:]] for s in shapes[(largest, bucket)]]
    if got != want:
        where = "" if bucket is None else f", bucket {bucket}"
        raise TraceError(
            f"the eager model's outputs at batch {size}{where} have shapes {got}, expected {want}: with "
            "batch_sizes, dimension 0 of every output must be the batch"
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

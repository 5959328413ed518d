"""`compile`: artifacts, cache hits, determinism, sha256 checks on sources and artifacts, HTTP sources, the
termination message and exit codes, and the Neuron path (missing package; the simulated Neuron SDK for the args)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from runtime_cases import MLP_ARGS, mlp_request

from neuron_runtime import zoo
from neuron_runtime.artifact import ArtifactError, Manifest, verify
from neuron_runtime.compile import CompileResult, compile_artifact
from neuron_runtime.config import MANIFEST_NAME, CompileRequest
from neuron_runtime.sources import SourceError
from neuron_sim import Sim, no_device, shared_sim, sim_imported

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")

TIMING_FIELDS = {"created_at", "compile_seconds"}


def manifest_without_timing(m: Manifest) -> dict[str, Any]:
    return {k: v for k, v in m.model_dump(mode="json").items() if k not in TIMING_FIELDS}


def test_artifact_layout_and_manifest(mlp_artifact: CompileResult) -> None:
    m = mlp_artifact.manifest
    assert mlp_artifact.directory.name == m.cache_key == mlp_request(dynamic_batch=True).cache_key()
    names = [MANIFEST_NAME, "model-b4.pt", "reference-b4.pt"]
    assert sorted(p.name for p in mlp_artifact.directory.iterdir()) == names
    assert m.files == {n: hashlib.sha256((mlp_artifact.directory / n).read_bytes()).hexdigest() for n in names[1:]}
    # Reference cases: the example inputs plus seeded random ones, with the eager model's outputs.
    ref = torch.load(str(mlp_artifact.directory / "reference-b4.pt"), weights_only=True)
    assert [r.cases for r in m.references] == [len(ref["inputs"])] == [len(ref["outputs"])] == [3]
    assert not torch.equal(ref["inputs"][0][0], ref["inputs"][1][0])
    assert (m.batch_size, m.target, m.neuron_core_version, m.dynamic_batch) == (4, "cpu", None, True)
    assert m.max_abs_error == 0.0
    assert m.torch_version == torch.__version__
    assert mlp_artifact.digest == hashlib.sha256((mlp_artifact.directory / MANIFEST_NAME).read_bytes()).hexdigest()


def test_bucketed_artifact_has_one_graph_per_bucket(bert_artifact: CompileResult) -> None:
    names = sorted(g.file for g in bert_artifact.manifest.graphs)
    assert names == ["model-b2-s16.pt", "model-b2-s8.pt"]
    assert bert_artifact.manifest.bucket_axis == 1


def test_cache_hit_returns_the_verified_artifact(artifact_root: Path, mlp_artifact: CompileResult) -> None:
    hit = compile_artifact(mlp_request(dynamic_batch=True), artifact_root)
    assert hit.cached
    assert hit.digest == mlp_artifact.digest


def test_corrupt_cached_artifact_is_rebuilt(tmp_path: Path) -> None:
    first = compile_artifact(mlp_request(), tmp_path)
    (first.directory / "model-b4.pt").write_bytes(b"tampered")
    second = compile_artifact(mlp_request(), tmp_path)
    assert not second.cached
    verify(second.directory)


def test_verify_refuses_tampering_and_wrong_digests(tmp_path: Path) -> None:
    result = compile_artifact(mlp_request(), tmp_path)
    verify(result.directory, result.digest)
    with pytest.raises(ArtifactError, match="artifact digest mismatch"):
        verify(result.directory, "0" * 64)
    graph = result.directory / "model-b4.pt"
    graph.write_bytes(graph.read_bytes() + b"x")
    with pytest.raises(ArtifactError, match=r"sha256 mismatch for .*model-b4.pt"):
        verify(result.directory)
    with pytest.raises(ArtifactError, match="cannot read"):
        verify(tmp_path / "nowhere")


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A loopback HTTP server over a temporary directory."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def test_torchscript_over_http_with_sha256(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    root, base = http_root
    model = torch.jit.trace(zoo.tiny_mlp(**MLP_ARGS), torch.randn(4, 8))
    torch.jit.save(model, str(root / "m.pt"))
    digest = hashlib.sha256((root / "m.pt").read_bytes()).hexdigest()
    ok = mlp_request(source={"kind": "torchscript", "uri": f"{base}/m.pt", "sha256": digest})
    assert compile_artifact(ok, tmp_path / "a").manifest.max_abs_error == 0.0
    bad = mlp_request(source={"kind": "torchscript", "uri": f"{base}/m.pt", "sha256": "f" * 64})
    with pytest.raises(SourceError, match=f"has sha256 {digest}, expected f+"):
        compile_artifact(bad, tmp_path / "b")
    with pytest.raises(SourceError, match="cannot download"):
        compile_artifact(mlp_request(source={"kind": "torchscript", "uri": f"{base}/missing.pt"}), tmp_path / "c")


def test_factory_with_weights_file(tmp_path: Path) -> None:
    other = zoo.tiny_mlp(**{**MLP_ARGS, "seed": 42})
    weights = tmp_path / "w.pt"
    torch.save(other.state_dict(), weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    source = {
        "kind": "python",
        "factory": "neuron_runtime.zoo:tiny_mlp",
        "args": MLP_ARGS,
        "weights_uri": weights.as_uri(),
        "weights_sha256": digest,
    }
    result = compile_artifact(mlp_request(source=source), tmp_path / "a")
    graph = torch.jit.load(str(result.directory / "model-b4.pt"))
    x = torch.randn(4, 8)
    with torch.inference_mode():
        torch.testing.assert_close(graph(x), other(x))
    with pytest.raises(SourceError, match="expected"):
        compile_artifact(mlp_request(source={**source, "weights_sha256": "0" * 64}), tmp_path / "b")


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ({"kind": "python", "factory": "no_such_module:f"}, "cannot import factory"),
        ({"kind": "python", "factory": "neuron_runtime.zoo:tiny_mlp", "args": {"bogus": 1}}, "factory .* failed"),
        ({"kind": "torchscript", "uri": "gs://bucket/m.pt"}, "is not supported: use .*s3://"),
        ({"kind": "torchscript", "uri": "/nonexistent/m.pt"}, "does not exist"),
    ],
)
def test_source_errors(tmp_path: Path, source: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SourceError, match=fragment):
        compile_artifact(mlp_request(source=source), tmp_path)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "neuron_runtime.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.timeout(120)  # two `neuron-runtime compile` processes, each importing torch and tracing
@pytest.mark.slow
def test_cli_compile_is_deterministic_then_cache_hit(tmp_path: Path) -> None:
    """Two compile Jobs (fresh processes) of one request write the same manifest apart from timing fields."""
    request = mlp_request().model_dump_json()
    log = tmp_path / "termination-log"
    other = run_cli(
        "compile",
        "--request-json",
        request,
        "--output-root",
        str(tmp_path / "other"),
        "--termination-log",
        str(tmp_path / "other-log"),
    )
    first = run_cli("compile", "--request-json", request, "--output-root", str(tmp_path), "--termination-log", str(log))
    assert first.returncode == 0, first.stderr
    assert other.returncode == 0, other.stderr
    message = json.loads(log.read_text())
    assert message["status"] == "Succeeded"
    assert message["cached"] is False
    manifests = [verify(Path(json.loads(p.read_text())["uri"]))[0] for p in (log, tmp_path / "other-log")]
    assert manifest_without_timing(manifests[0]) == manifest_without_timing(manifests[1])
    assert set(message) == {
        "status",
        "cacheKey",
        "uri",
        "sha256",
        "sizeBytes",
        "totalBytes",
        "compileSeconds",
        "neuronCoreVersion",
        "compilerVersion",
        "torchVersion",
        "cached",
        "maxAbsError",
    }
    written = Path(message["uri"])
    assert message["totalBytes"] == sum(f.stat().st_size for f in written.iterdir())  # graphs, references, manifest
    assert message["totalBytes"] > message["sizeBytes"]
    # second run: the env var carries the request, and a hit must not even import torch
    code = (
        "import os, sys\n"
        "from neuron_runtime.cli import main\n"
        "rc = main(['compile', '--output-root', os.environ['ROOT'], '--quiet'])\n"
        "assert 'torch' not in sys.modules, 'a cache hit imported torch'\n"
        "sys.exit(rc)\n"
    )
    hit = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "ROOT": str(tmp_path),
            "NEURON_RUNTIME_COMPILE_REQUEST": request,
            "NEURON_RUNTIME_TERMINATION_LOG": str(log),
        },
    )
    assert hit.returncode == 0, hit.stderr
    again = json.loads(log.read_text())
    assert again["cached"] is True
    assert again["sha256"] == message["sha256"]
    assert again["uri"] == message["uri"]


@pytest.mark.slow
def test_cli_inf2_without_torch_neuronx_fails_clearly(tmp_path: Path) -> None:
    log = tmp_path / "log"
    result = run_cli(
        "compile",
        "--request-json",
        mlp_request(target="inf2").model_dump_json(),
        "--output-root",
        str(tmp_path),
        "--termination-log",
        str(log),
    )
    assert result.returncode == 5
    message = json.loads(log.read_text())
    assert message["status"] == "Failed"
    assert message["reason"] == "NeuronMissing"
    assert message["message"].startswith(
        "target inf2 needs torch-neuronx, which is not installed in this image; use the Neuron runtime image "
        "or target cpu"
    )
    assert not any(p.name == mlp_request(target="inf2").cache_key() for p in tmp_path.iterdir())


def run_compile_cli(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], int]:
    """`neuron-runtime compile ARGS` in-process -> (exit code, termination message, its size in bytes)."""
    from neuron_runtime.cli import main

    log = tmp_path / "log"
    code = main(["compile", *args, "--output-root", str(tmp_path), "--termination-log", str(log), "--quiet"])
    return code, json.loads(log.read_text()), len(log.read_bytes())


@pytest.mark.parametrize(
    ("args", "code", "reason"),
    [
        (["--request-json", "{not json"], 2, "BadRequest"),
        (["--request-json", '{"source": {"kind": "python", "factory": "x:y"}}'], 2, "BadRequest"),
        ([], 2, "BadRequest"),
    ],
)
def test_cli_bad_requests_exit_2(tmp_path: Path, args: list[str], code: int, reason: str) -> None:
    exit_code, message, size = run_compile_cli(tmp_path, *args)
    assert exit_code == code
    assert message["reason"] == reason
    assert size < 4096


def test_cli_source_failure_exits_3(tmp_path: Path) -> None:
    request = mlp_request(source={"kind": "torchscript", "uri": "/nonexistent.pt"}).model_dump_json()
    code, message, _ = run_compile_cli(tmp_path, "--request-json", request)
    assert code == 3
    assert message["reason"] == "SourceFailed"


def test_cli_trace_failure_exits_4(tmp_path: Path) -> None:
    # the MLP takes 8 features; declaring 9 makes the eager call (and so tracing) fail
    request = mlp_request(inputs=[{"name": "x", "shape": [4, 9], "dtype": "float32"}]).model_dump_json()
    code, message, _ = run_compile_cli(tmp_path, "--request-json", request)
    assert code == 4
    assert message["reason"] == "TraceFailed"
    assert "tracing batch 4 failed" in message["message"]


EXPECTED_TRN1_ARGS = [
    "--target",
    "trn1",
    "--auto-cast",
    "matmult",
    "--auto-cast-type",
    "bf16",
    "--optlevel=3",
    "--model-type",
    "transformer",
]


def trn1_request() -> CompileRequest:
    return mlp_request(
        target="trn1",
        dynamic_batch=True,
        compiler={"auto_cast": "matmult", "opt_level": 3, "args": ["--model-type", "transformer"]},
    )


@pytest.fixture
def simulated_sdk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sim]:
    """The simulated Neuron SDK 2.31.1 imported in this process, no Neuron device (purged afterwards)."""
    monkeypatch.delenv("NEURON_PLATFORM_TARGET_OVERRIDE", raising=False)
    monkeypatch.setattr("neuron_runtime.neuron.device_present", lambda: False)
    with no_device(tmp_path), sim_imported(shared_sim("2.31.1")) as sim:
        yield sim


def test_neuron_path_with_the_simulated_torch_neuronx(tmp_path: Path, simulated_sdk: Sim) -> None:
    """No Neuron device here: the CPU-backend path must pass --target, explicit auto-cast, cpu_backend=True and
    set NEURON_PLATFORM_TARGET_OVERRIDE, and dynamicBatch must call dynamic_batch(). The simulated SDK, like the
    real one, raises if the compile step ever calls the traced module here (no NeuronCore)."""
    result = compile_artifact(trn1_request(), tmp_path)
    trace_calls = [details for name, details in simulated_sdk.sim.calls if name == "torch_neuronx.trace"]
    assert len(trace_calls) == 1
    assert trace_calls[0]["compiler_args"] == EXPECTED_TRN1_ARGS
    assert trace_calls[0]["cpu_backend"] is True
    assert trace_calls[0]["NEURON_PLATFORM_TARGET_OVERRIDE"] == "trn1"
    assert (trace_calls[0]["target"], trace_calls[0]["neuronx_cc"]["optlevel"]) == ("trn1", 3)
    assert [name for name, _ in simulated_sdk.sim.calls] == ["torch_neuronx.trace", "torch_neuronx.dynamic_batch"]
    assert simulated_sdk.sim.core_executions() == {}  # nothing ran on a (simulated) NeuronCore
    assert result.manifest.neuron_core_version == "v2"
    assert result.manifest.target == "trn1"
    assert result.manifest.neuron_package_version == simulated_sdk.torch_neuronx.__version__
    assert result.manifest.compiler_version == "2.26.6360.0+neuronsim"


# -- batch-size buckets (batch_sizes) ------------------------------------------------------------------------------

OLD_MLP_KEY = "26a94290aa986634dac71508699c2879f655c1ff9f8bbb35ff9b9f826d5ba98e"
OLD_BERT_KEY = "e9a3f3741a2eb2f31daa02b878e17550b3985e95ac0ca144c1e25ba0374b12bc"
"""Cache keys of `mlp_request()` and `bert_request()` computed by the runtime before batch_sizes existed."""


@pytest.fixture(scope="module")
def sizes_artifact(tmp_path_factory: pytest.TempPathFactory) -> CompileResult:
    return compile_artifact(mlp_request(batch_sizes=[1, 2, 4]), tmp_path_factory.mktemp("sizes"))


def test_batch_sizes_trace_one_graph_per_size(sizes_artifact: CompileResult) -> None:
    m, directory = sizes_artifact.manifest, sizes_artifact.directory
    assert (m.format_version, m.batch_size, m.batch_sizes) == (3, 4, [1, 2, 4])
    assert [(g.file, g.batch_size, g.bucket) for g in m.graphs] == [
        ("model-b1.pt", 1, None),
        ("model-b2.pt", 2, None),
        ("model-b4.pt", 4, None),
    ]
    assert [(r.file, r.batch_size, r.bucket) for r in m.references] == [
        ("reference-b1.pt", 1, None),
        ("reference-b2.pt", 2, None),
        ("reference-b4.pt", 4, None),
    ]
    for g in m.graphs:
        assert g.sha256 == m.files[g.file] == hashlib.sha256((directory / g.file).read_bytes()).hexdigest()
    assert len(m.files) == 6
    assert [o.shape for o in m.outputs] == [[4, 3]]  # output specs at the largest size
    assert m.request["batch_sizes"] == [1, 2, 4]
    verify(directory, sizes_artifact.digest)


def test_every_batch_size_graph_equals_eager_at_its_size(sizes_artifact: CompileResult) -> None:
    eager = zoo.tiny_mlp(**MLP_ARGS).eval()
    generator = torch.Generator().manual_seed(11)
    for g in sizes_artifact.manifest.graphs:
        graph = torch.jit.load(str(sizes_artifact.directory / g.file))
        ref = torch.load(str(sizes_artifact.directory / f"reference-b{g.batch_size}.pt"), weights_only=True)
        assert all(case[0].shape == (g.batch_size, 8) for case in ref["inputs"])
        x = torch.randn(g.batch_size, 8, generator=generator)
        with torch.no_grad():
            torch.testing.assert_close(graph(x), eager(x), rtol=1e-6, atol=1e-6)
            for inputs, outputs in zip(ref["inputs"], ref["outputs"], strict=True):
                torch.testing.assert_close(graph(*inputs), outputs[0], rtol=1e-6, atol=1e-6)


def test_batch_sizes_with_buckets_trace_every_pair(tmp_path: Path) -> None:
    from runtime_cases import bert_request

    m = compile_artifact(bert_request(batch_sizes=[1, 2]), tmp_path).manifest
    assert [(g.batch_size, g.bucket) for g in m.graphs] == [(1, 8), (1, 16), (2, 8), (2, 16)]
    assert [g.file for g in m.graphs] == ["model-b1-s8.pt", "model-b1-s16.pt", "model-b2-s8.pt", "model-b2-s16.pt"]
    assert [(r.batch_size, r.bucket) for r in m.references] == [(1, 8), (1, 16), (2, 8), (2, 16)]
    assert [o.bucket_axis for o in m.outputs] == [None]


def test_cache_key_of_requests_without_batch_sizes_is_unchanged() -> None:
    from runtime_cases import bert_request

    assert mlp_request().cache_key() == OLD_MLP_KEY
    assert bert_request().cache_key() == OLD_BERT_KEY
    assert "batch_sizes" not in mlp_request().canonical_json()
    assert "batch_sizes" not in json.loads(mlp_request().model_dump_json())
    # [batch_size] alone is the single graph of today: the same request
    assert mlp_request(batch_sizes=[4]).cache_key() == OLD_MLP_KEY
    assert mlp_request(batch_sizes=[4]).batch_sizes == []
    keys = {mlp_request(batch_sizes=s).cache_key() for s in ([1, 4], [2, 4], [1, 2, 4])}
    assert len(keys) == 3
    assert OLD_MLP_KEY not in keys
    again = CompileRequest.model_validate_json(mlp_request(batch_sizes=[1, 4]).model_dump_json())
    assert again.cache_key() == mlp_request(batch_sizes=[1, 4]).cache_key()


@pytest.mark.parametrize(
    ("sizes", "fragment"),
    [
        ([2, 1, 4], "ascending and unique"),
        ([1, 1, 4], "ascending and unique"),
        ([0, 4], ">= 1"),
        ([1, 2], "largest batch size 2 must equal batch_size=4"),
        ([1, 8], "largest batch size 8 must equal batch_size=4"),
    ],
)
def test_bad_batch_sizes_are_refused(sizes: list[int], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as info:
        mlp_request(batch_sizes=sizes)
    assert "batch_sizes" in str(info.value)


def test_outputs_must_follow_the_batch_at_every_size() -> None:
    from neuron_runtime.compile import TraceError, _check_batch_axis

    good = {(4, None): [[4, 3], [4]], (2, None): [[2, 3], [2]]}
    _check_batch_axis(good, 2, None, 4)
    bad = {(4, 8): [[4, 3]], (2, 8): [[4, 3]]}
    with pytest.raises(TraceError, match=r"at batch 2, bucket 8 have shapes \[\[4, 3\]\], expected \[\[2, 3\]\]"):
        _check_batch_axis(bad, 2, 8, 4)


def _as_format_2(directory: Path) -> None:
    """Rewrite an artifact's manifest the way a format 2 runtime wrote it (no batch_sizes, no per-file batch)."""
    data = json.loads((directory / MANIFEST_NAME).read_text())
    data["format_version"] = 2
    del data["batch_sizes"]
    for field in ("graphs", "references"):
        for entry in data[field]:
            del entry["batch_size"]
    (directory / MANIFEST_NAME).write_text(json.dumps(data, sort_keys=True, indent=1) + "\n")


def test_format_2_artifacts_still_verify_and_hit_the_cache(tmp_path: Path) -> None:
    first = compile_artifact(mlp_request(), tmp_path)
    assert first.directory.name == OLD_MLP_KEY
    _as_format_2(first.directory)
    manifest, _digest = verify(first.directory)
    assert (manifest.format_version, manifest.batch_sizes) == (2, [4])
    assert [(g.file, g.batch_size) for g in manifest.graphs] == [("model-b4.pt", 4)]
    assert [(r.file, r.batch_size) for r in manifest.references] == [("reference-b4.pt", 4)]
    hit = compile_artifact(mlp_request(), tmp_path)
    assert hit.cached
    assert hit.manifest.format_version == 2


def test_unknown_format_versions_are_refused_by_version(tmp_path: Path) -> None:
    result = compile_artifact(mlp_request(), tmp_path)
    data = json.loads((result.directory / MANIFEST_NAME).read_text())
    data["format_version"] = 4
    data["a_field_of_format_4"] = True
    (result.directory / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="has format version 4, this runtime reads 2 and 3"):
        verify(result.directory)
    (result.directory / MANIFEST_NAME).write_text("[]")
    with pytest.raises(ArtifactError, match="has format version None"):
        verify(result.directory)


def test_neuron_path_traces_every_batch_size(tmp_path: Path, simulated_sdk: Sim) -> None:
    request = mlp_request(target="trn1", dynamic_batch=True, batch_sizes=[1, 2, 4])
    result = compile_artifact(request, tmp_path)
    names = [name for name, _ in simulated_sdk.sim.calls]
    assert names == ["torch_neuronx.trace", "torch_neuronx.dynamic_batch"] * 3
    assert simulated_sdk.sim.core_executions() == {}
    assert [g.file for g in result.manifest.graphs] == ["model-b1.pt", "model-b2.pt", "model-b4.pt"]
    assert result.manifest.max_abs_error is None


def test_a_gc_marker_that_cannot_be_written_never_fails_the_compile(tmp_path: Path) -> None:
    """Compiles refresh the GC's "last referenced" marker of the key they return (`retention.touch_marker`), best
    effort: here `.neuron-gc` is a file, so no marker can go under it."""
    from neuron_runtime import retention

    (tmp_path / retention.MARKER_DIR).write_text("not a directory")
    messages: list[str] = []
    written = compile_artifact(mlp_request(), tmp_path, messages.append)
    hit = compile_artifact(mlp_request(), tmp_path, messages.append)
    assert not written.cached
    assert hit.cached
    key = written.manifest.cache_key
    assert sum(m.startswith(f"could not refresh the GC marker of {key}") for m in messages) == 2
    assert (tmp_path / retention.MARKER_DIR).read_text() == "not a directory"

"""`python -m benchmarks [--quick] [--models m1,m2,m3,m4]`: serving efficiency as ratios to the in-process limit.

For each model: compile (real `compile_artifact`, target cpu, cached under `.bench/`), measure the in-process
limit, start `neuron-runtime serve` pinned to the server core, sweep closed-loop concurrency and open-loop
Poisson rates with `benchmarks.loadgen` pinned to the client core, stop the server, measure the limit again.
Server-side figures (mean batch, padding, worker busy time, server CPU per request) come from `/metrics` and
`/proc/<pid>/stat` deltas over each window. The run is bounded: every window, start-up and stop has a deadline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Layout:
    """Where things run. `split`: the worker on core 0, the event loop on core 1 with the client (a Neuron host:
    graphs on the accelerator, serving on the host CPUs). `one-core`: the whole server on core 0, the client on
    core 1 (docs §5 protocol). `none`: no pinning."""

    name: str
    server_cpus: set[int] | None
    worker_cores: list[int] | None
    client_core: int | None
    limit_core: int | None


def layouts(cpus: list[int], which: str) -> list[Layout]:
    if len(cpus) < 2 or which == "none":
        return [Layout("none", None, None, None, None)]
    a, b = cpus[0], cpus[1]
    known = {
        "split": Layout("split", {a, b}, [a], b, a),
        "one-core": Layout("one-core", {a}, [a], b, a),
    }
    return [known[name] for name in (["split", "one-core"] if which == "both" else [which])]


@dataclass
class Scenario:
    key: str
    title: str
    factory: str
    inputs: list[dict[str, Any]]
    batch_size: int
    buckets: dict[str, Any] | None = None
    binary: bool = False
    concurrency: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    quick_concurrency: list[int] = field(default_factory=lambda: [1, 32])
    compare_unbatched: bool = False
    open_loop: bool = False
    seq_lengths: list[int] | None = None  # M4: request lengths drawn from these (seeded)


SCENARIOS = {
    "m1": Scenario(
        "m1",
        "weight-heavy MLP 1024-4096-4096-1000 (96 MB), traced bs 8",
        "neuron_runtime.zoo:heavy_mlp",
        [{"name": "x", "shape": [8, 1024], "dtype": "float32"}],
        8,
        compare_unbatched=True,
        open_loop=True,
    ),
    "m2": Scenario(
        "m2",
        "tiny MLP 256-1024-1024-10 (per-request overhead), traced bs 8",
        "neuron_runtime.zoo:tiny_mlp",
        [{"name": "x", "shape": [8, 256], "dtype": "float32"}],
        8,
        concurrency=[1, 8, 32, 64],
    ),
    "m3": Scenario(
        "m3",
        "small ResNet-like CNN 3x64x64 (binary tensors), traced bs 8",
        "neuron_runtime.zoo:small_cnn",
        [{"name": "x", "shape": [8, 3, 64, 64], "dtype": "float32"}],
        8,
        binary=True,
        concurrency=[1, 8, 32],
    ),
    "m4": Scenario(
        "m4",
        "BERT-like encoder, seq buckets 32/64/128, traced bs 8",
        "neuron_runtime.zoo:bert_like",
        [
            {"name": "input_ids", "shape": [8, 128], "dtype": "int64"},
            {"name": "attention_mask", "shape": [8, 128], "dtype": "int64"},
        ],
        8,
        buckets={"axis": 1, "sizes": [32, 64, 128]},
        concurrency=[1, 8, 32],
        seq_lengths=list(range(8, 129)),
    ),
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- compile + in-process limit --------------------------------------------------------------------------------------
def compile_scenario(s: Scenario) -> Path:
    from neuron_runtime.compile import compile_artifact
    from neuron_runtime.config import CompileRequest

    request = CompileRequest.model_validate(
        {
            "source": {"kind": "python", "factory": s.factory},
            "inputs": s.inputs,
            "batch_size": s.batch_size,
            "buckets": s.buckets,
            "target": "cpu",
        }
    )
    result = compile_artifact(request, BENCH_DIR / "artifacts")
    log(
        f"{s.key}: artifact {result.directory.name[:12]} ({'cached' if result.cached else 'compiled'}, "
        f"{result.manifest.size_bytes / 1e6:.0f} MB)"
    )
    return result.directory


NOISE = """
import json, os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
d = [0.1234] * 1024
end = time.time() + float(sys.argv[2])
while time.time() < end:
    json.loads(json.dumps(d))
"""


@contextlib.contextmanager
def busy_core(core: int | None, seconds: float) -> Iterator[None]:
    """A pure-Python JSON loop on `core` (about what the HTTP side does there), bounded to `seconds`."""
    if core is None:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", NOISE, str(core), str(seconds + 5)])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def in_process_limit(
    directory: Path, core: int | None, seconds: float, bucket_mix: dict[int, float] | None
) -> dict[str, float]:
    """Rows/s of the traced graphs called directly at the traced batch size, 1 thread, on the server core."""
    import torch

    from neuron_runtime.artifact import verify

    manifest, _ = verify(directory)
    before = os.sched_getaffinity(0)
    if core is not None:
        os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    per_bucket: dict[int | None, float] = {}
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore", FutureWarning)
            for graph in manifest.graphs:
                module = torch.jit.load(str(directory / graph.file))
                example = []
                for spec in manifest.inputs:
                    shape = list(spec.shape)
                    if graph.bucket is not None and manifest.bucket_axis is not None:
                        shape[manifest.bucket_axis] = graph.bucket
                    dtype = getattr(torch, spec.dtype)
                    example.append(
                        torch.randn(shape).to(dtype) if dtype.is_floating_point else torch.ones(shape, dtype=dtype)
                    )
                for _ in range(3):
                    module(*example)
                n, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds / len(manifest.graphs):
                    module(*example)
                    n += 1
                per_bucket[graph.bucket] = (time.perf_counter() - start) / n
    finally:
        os.sched_setaffinity(0, before)
    bs = manifest.batch_size
    if bucket_mix:
        seconds_per_row = sum(p * per_bucket[b] / bs for b, p in bucket_mix.items())
    else:
        seconds_per_row = min(t / bs for t in per_bucket.values())
    return {"rows_per_s": 1.0 / seconds_per_row, "batch_ms": {str(k): v * 1000 for k, v in per_bucket.items()}}  # type: ignore[dict-item]


# -- request bodies ----------------------------------------------------------------------------------------------
def make_bodies(s: Scenario, workdir: Path, count: int = 32) -> tuple[list[str], dict[int, float] | None]:
    """Pre-encoded request bodies (`path` or `path:header_length`), and the bucket mix they exercise."""
    import numpy as np

    rng = np.random.default_rng(7)
    specs: list[str] = []
    mix: dict[int, float] = {}
    n_bodies = count if s.seq_lengths else 1
    py_rng = random.Random(7)
    for i in range(n_bodies):
        inputs = []
        blobs: list[bytes] = []
        length = py_rng.choice(s.seq_lengths) if s.seq_lengths else None
        if length is not None and s.buckets is not None:
            bucket = min(b for b in s.buckets["sizes"] if b >= length)
            mix[bucket] = mix.get(bucket, 0) + 1 / n_bodies
        for spec in s.inputs:
            shape = [1, *spec["shape"][1:]]
            if length is not None:
                shape[1] = length
            if spec["dtype"] == "float32":
                data = rng.standard_normal(shape, dtype=np.float32)
                datatype = "FP32"
            else:
                ids = spec["name"] == "input_ids"
                data = (rng.integers(1, 8000, shape) if ids else np.ones(shape)).astype(np.int64)
                datatype = "INT64"
            entry: dict[str, Any] = {"name": spec["name"], "shape": shape, "datatype": datatype}
            if s.binary:
                raw = data.tobytes()
                entry["parameters"] = {"binary_data_size": len(raw)}
                blobs.append(raw)
            else:
                entry["data"] = data.ravel().tolist()
            inputs.append(entry)
        header = json.dumps({"id": f"bench-{i}", "inputs": inputs}).encode()
        path = workdir / f"{s.key}-{i}.body"
        path.write_bytes(header + b"".join(blobs))
        specs.append(f"{path}:{len(header)}" if s.binary else str(path))
    return specs, (mix or None)


# -- server process ----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(directory: Path, model: str, layout: Layout, max_batch: int, delay_ms: float) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {
        **os.environ,
        "NEURON_RUNTIME_MODEL_NAME": model,
        "NEURON_RUNTIME_ARTIFACT_DIR": str(directory),
        "NEURON_RUNTIME_HOST": HOST,
        "NEURON_RUNTIME_PORT": str(port),
        "NEURON_RUNTIME_BATCHING__MAX_BATCH_SIZE": str(max_batch),
        "NEURON_RUNTIME_BATCHING__MAX_DELAY_MS": str(delay_ms),
        "NEURON_RUNTIME_BATCHING__MAX_QUEUE": "4096",
        "NEURON_RUNTIME_LOG_LEVEL": "WARNING",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("NEURON_RT_VISIBLE_CORES", None)
    if layout.worker_cores is not None:
        env["NEURON_RT_VISIBLE_CORES"] = ",".join(map(str, layout.worker_cores))
    cpus = layout.server_cpus
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus is not None else None
    # The driver runs no threads of its own, so preexec_fn is safe here.
    proc = subprocess.Popen(
        [sys.executable, "-m", "neuron_runtime.cli", "serve"],
        env=env,
        preexec_fn=preexec,  # noqa: PLW1509
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready in 120 s")
            time.sleep(0.2)
        yield base, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def scrape(base: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, _, value = line.rpartition(" ")
        values[name] = float(value)
    return values


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_load(
    base: str,
    model: str,
    bodies: list[str],
    core: int | None,
    mode: list[str],
    warmup: float,
    duration: float,
    pid: int,
) -> dict[str, Any]:
    before, cpu_before = scrape(base), process_cpu_seconds(pid)
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        "--url",
        f"{base}/v2/models/{model}/infer",
        "--warmup",
        str(warmup),
        "--duration",
        str(duration),
    ]
    for body in bodies:
        cmd += ["--body", body]
    preexec = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    out = subprocess.run(
        [*cmd, *mode], capture_output=True, check=True, timeout=warmup + duration + 90, preexec_fn=preexec, cwd=ROOT
    )
    result: dict[str, Any] = json.loads(out.stdout)
    after, cpu_after = scrape(base), process_cpu_seconds(pid)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    batches = delta("neuron_runtime_batch_size_rows_count")
    executed = delta("neuron_runtime_rows_executed_total")
    busy = sum(
        v - before.get(k, 0.0) for k, v in after.items() if k.startswith("neuron_runtime_worker_busy_seconds_total")
    )
    requests = delta('neuron_runtime_requests_total{code="200"}') or 1.0
    result.update(
        mean_batch=delta("neuron_runtime_batch_size_rows_sum") / batches if batches else 0.0,
        padding_ratio=delta("neuron_runtime_rows_padded_total") / executed if executed else 0.0,
        server_cpu_ms_per_req=(cpu_after - cpu_before) * 1000 / requests,
        worker_busy_ms_per_req=busy * 1000 / requests,
    )
    return result


# -- main --------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="M1 only, 2 concurrencies, short windows (~1 min)")
    parser.add_argument("--models", default=None, help="comma list of m1..m4 (default: all; quick: m1)")
    parser.add_argument("--duration", type=float, help="seconds per measured window")
    parser.add_argument(
        "--layout",
        choices=["split", "one-core", "both", "none"],
        default=None,
        help="core layout (default: both for the full run, split for --quick)",
    )
    parser.add_argument("--json", type=Path, help="also write all results here")
    args = parser.parse_args(argv)

    cpus = sorted(os.sched_getaffinity(0))
    keys = (args.models or ("m1" if args.quick else "m1,m2,m3,m4")).split(",")
    duration = args.duration or (2.0 if args.quick else 4.0)
    warmup = 1.0 if args.quick else 1.5
    limit_seconds = 1.5 if args.quick else 3.0
    BENCH_DIR.mkdir(exist_ok=True)
    import torch

    log(f"torch {torch.__version__}, cpus {cpus}")
    report: dict[str, Any] = {"cpus": cpus, "torch": torch.__version__, "scenarios": {}}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for key in keys:
            s = SCENARIOS[key]
            directory = compile_scenario(s)
            bodies, mix = make_bodies(s, Path(tmp))
            which = args.layout or ("split" if args.quick else ("both" if key == "m1" else "split"))
            for layout in layouts(cpus, which):
                result = run_scenario(s, layout, directory, bodies, mix, args.quick, warmup, duration, limit_seconds)
                report["scenarios"][f"{key}/{layout.name}"] = result
                print_table(s, layout, result)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def run_scenario(
    s: Scenario,
    layout: Layout,
    directory: Path,
    bodies: list[str],
    mix: dict[int, float] | None,
    quick: bool,
    warmup: float,
    duration: float,
    limit_seconds: float,
) -> dict[str, Any]:
    key = s.key
    limit_before = in_process_limit(directory, layout.limit_core, limit_seconds, mix)
    with busy_core(layout.client_core, limit_seconds):
        contended = in_process_limit(directory, layout.limit_core, limit_seconds, mix)
    log(f"{key}/{layout.name}: limit with the client core busy: {contended['rows_per_s']:.0f} rows/s")
    log(
        f"{key}/{layout.name}: in-process limit {limit_before['rows_per_s']:.0f} rows/s "
        f"(batch ms {limit_before['batch_ms']})"
    )
    rows: list[dict[str, Any]] = []
    concurrencies = s.quick_concurrency if quick else s.concurrency

    def load(base: str, pid: int, mode: list[str], config: str, label: str) -> dict[str, Any]:
        r = run_load(base, key, bodies, layout.client_core, mode, warmup, duration, pid)
        r.update(config=config, mode=label)
        rows.append(r)
        log(
            f"{key}/{layout.name}: {config} {label}: {r['throughput']:.0f} rps, p50 {r['p50_ms'] or 0:.2f} ms, "
            f"p99 {r['p99_ms'] or 0:.2f} ms"
        )
        return r

    with server(directory, key, layout, 8, 5.0) as (base, pid):
        for conc in concurrencies:
            load(base, pid, ["closed", "--concurrency", str(conc)], "batch 8, 5 ms", f"closed c={conc}")
        if s.open_loop:
            peak = max(r["throughput"] for r in rows)
            for frac in [0.5] if quick else [0.25, 0.5, 0.9, 1.2]:
                load(base, pid, ["open", "--rate", f"{peak * frac:.1f}"], "batch 8, 5 ms", f"open {frac:.2f}x peak")
    if s.compare_unbatched:
        with server(directory, key, layout, 1, 5.0) as (base, pid):
            for conc in [1, 32] if not quick else [32]:
                load(base, pid, ["closed", "--concurrency", str(conc)], "maxBatchSize 1", f"closed c={conc}")
    limit_after = in_process_limit(directory, layout.limit_core, limit_seconds, mix)
    limit = (limit_before["rows_per_s"] + limit_after["rows_per_s"]) / 2
    drift = abs(limit_before["rows_per_s"] - limit_after["rows_per_s"]) / limit
    return {
        "title": s.title,
        "layout": layout.name,
        "limit_before": limit_before,
        "limit_after": limit_after,
        "limit": limit,
        "limit_drift": drift,
        "limit_contended": contended["rows_per_s"],
        "rows": rows,
    }


def print_table(s: Scenario, layout: Layout, result: dict[str, Any]) -> None:
    limit, drift, rows = result["limit"], result["limit_drift"], result["rows"]
    batch_ms = min(result["limit_before"]["batch_ms"].values())
    print(f"\n## {s.key}: {s.title} (layout {layout.name})")
    print(
        f"in-process limit {limit:.0f} rows/s (mean of before/after, drift {drift:.1%}"
        f"{' FLAGGED' if drift > 0.10 else ''}); traced batch {batch_ms:.2f} ms"
    )
    if result.get("limit_contended"):
        print(
            f"in-process limit with the client/HTTP core busy running Python: {result['limit_contended']:.0f} rows/s "
            f"({result['limit_contended'] / limit:.2f} x the idle-machine limit)"
        )
    print(
        "| config | load | rows/s | ratio to limit | p50 ms | p99 ms | mean batch | padding | "
        "server CPU ms/req | worker busy ms/req | non-200 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        bad = {k: v for k, v in r["statuses"].items() if k != "200"}
        print(
            f"| {r['config']} | {r['mode']} | {r['throughput']:.0f} | {r['throughput'] / limit:.2f} | "
            f"{r['p50_ms'] or 0:.2f} | {r['p99_ms'] or 0:.2f} | {r['mean_batch']:.2f} | {r['padding_ratio']:.2f} | "
            f"{r['server_cpu_ms_per_req']:.3f} | {r['worker_busy_ms_per_req']:.3f} | {bad or r['dropped'] or '-'} |"
        )
    by_mode = {(r["config"], r["mode"]): r for r in rows}
    batched = by_mode.get(("batch 8, 5 ms", "closed c=32"))
    unbatched = by_mode.get(("maxBatchSize 1", "closed c=32"))
    one = by_mode.get(("batch 8, 5 ms", "closed c=1"))
    if batched:
        print(f"- efficiency at 32 clients: {batched['throughput'] / limit:.2f} x limit (target >= 0.85)")
        if result.get("limit_contended"):
            print(f"  ({batched['throughput'] / result['limit_contended']:.2f} x the contended limit)")
    if batched and unbatched:
        print(f"- batching gain at 32 clients: {batched['throughput'] / unbatched['throughput']:.1f}x (target >= 5x)")
    if one and one["p50_ms"] is not None:
        added = one["p50_ms"] - batch_ms
        print(
            f"- added p50 at 1 client: {added:.2f} ms over the {batch_ms:.2f} ms traced batch "
            f"(target <= 1 ms + 5 ms delay)"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())

"""`python -m benchmarks [--quick] [--models m1,m2,m3,m4]`: serving efficiency as ratios to the in-process limit.

For each model: compile (real `compile_artifact`, target cpu, cached under `.bench/`), measure the in-process
limits, start `neuron-runtime serve` pinned to the server cores, drive it with `benchmarks.loadgen` (a separate
process, pinned to the client core), stop it, measure the limits again. On M1 the same run also serves a batch-1
artifact (the batching-gain baseline), a batch-size-bucket artifact when the runtime has them, the three request
protocols (JSON, binary tensors, gRPC) and a 1,000-connection flood. Accounting rules: `benchmarks.accounting`.
Every window, start-up and stop has a deadline.
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

from benchmarks.accounting import (
    Limit,
    cpu_us_per_request,
    failures,
    loadavg,
    sample_from_json,
    verdict,
)

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
LATENCY_ALLOWANCE_MS = 1.5  # target: p50 at 1 client <= in-process batch-1 graph time + this
EFFICIENCY_TARGET = 0.85  # target: throughput at 32 clients >= this x the largest batch graph's in-process limit
GAIN_TARGET = 5.0  # target: batched server >= this x the batch-1 server at 32 clients
BUCKET_SIZES = [1, 2, 4, 8]
FLOOD_CONNECTIONS = 1000
PROTOCOL_CONCURRENCY = 8


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
    targets: bool = False  # M1: batch-1 baseline, batch-size buckets, open loop, overload, verdicts
    protocols: bool = False  # JSON vs binary vs gRPC CPU per request
    seq_lengths: list[int] | None = None  # M4: request lengths drawn from these (seeded)


SCENARIOS = {
    "m1": Scenario(
        "m1",
        "weight-heavy MLP 1024-4096-4096-1000 (96 MB), traced bs 8",
        "neuron_runtime.zoo:heavy_mlp",
        [{"name": "x", "shape": [8, 1024], "dtype": "float32"}],
        8,
        targets=True,
        protocols=True,
    ),
    "m2": Scenario(
        "m2",
        "tiny MLP 256-1024-1024-10 (per-request overhead), traced bs 8",
        "neuron_runtime.zoo:tiny_mlp",
        [{"name": "x", "shape": [8, 256], "dtype": "float32"}],
        8,
        concurrency=[1, 8, 32, 64],
        protocols=True,
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


def machine_line() -> str:
    """Load average and CPU count now (printed with every figure block)."""
    avg = loadavg()
    shown = "n/a" if avg is None else " / ".join(f"{v:.2f}" for v in avg)
    return (
        f"load average (1/5/15 min) {shown}; {os.cpu_count()} CPUs online, "
        f"{len(os.sched_getaffinity(0))} in this process's affinity"
    )


def idle_note(several_batch_sizes: bool) -> str:
    """ ", idle dispatch" when the runtime's default dispatches a partial batch at once to an idle worker for this
    artifact: `idle_dispatch` unset means on with several traced batch sizes, off with one (every server here runs
    the runtime's batching defaults apart from maxBatchSize, maxDelayMs and maxQueue)."""
    from neuron_runtime.config import Batching

    idle = Batching.model_fields.get("idle_dispatch")
    if idle is None:
        return ""
    on = idle.default if idle.default is not None else several_batch_sizes
    return ", idle dispatch" if on else ""


def buckets_available() -> bool:
    from neuron_runtime.config import CompileRequest

    return "batch_sizes" in CompileRequest.model_fields


# -- compile + in-process limit --------------------------------------------------------------------------------------
def compile_scenario(s: Scenario, batch_size: int | None = None, batch_sizes: list[int] | None = None) -> Path:
    """Compile `s` (at `batch_size` instead of its own, and/or with several traced `batch_sizes`)."""
    from neuron_runtime.compile import compile_artifact
    from neuron_runtime.config import CompileRequest

    bs = batch_size or s.batch_size
    data: dict[str, Any] = {
        "source": {"kind": "python", "factory": s.factory},
        "inputs": [{**spec, "shape": [bs, *spec["shape"][1:]]} for spec in s.inputs],
        "batch_size": bs,
        "buckets": s.buckets,
        "target": "cpu",
    }
    if batch_sizes:
        data["batch_sizes"] = batch_sizes
    result = compile_artifact(CompileRequest.model_validate(data), BENCH_DIR / "artifacts")
    log(
        f"{s.key} bs {batch_sizes or bs}: artifact {result.directory.name[:12]} "
        f"({'cached' if result.cached else 'compiled'}, {result.manifest.size_bytes / 1e6:.0f} MB)"
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
) -> dict[str, Any]:
    """Every traced graph called directly in a tight loop at its own batch size, 1 intra-op thread, on `core`.

    Returns `graph_ms` (ms per call, per graph: `bs8`, `bs8/b64`, ...), and for the largest traced batch size
    `rows_per_s` (rows/s: its best graph, or weighted by `bucket_mix`, the share of requests per sequence bucket)
    and `batch_ms` (its fastest graph's time per call).
    """
    import torch

    from neuron_runtime.artifact import verify

    manifest, _ = verify(directory)
    before = os.sched_getaffinity(0)
    if core is not None:
        os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    per_graph: dict[tuple[int, int | None], float] = {}
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore", FutureWarning)
            for graph in manifest.graphs:
                bs = int(getattr(graph, "batch_size", None) or manifest.batch_size)
                module = torch.jit.load(str(directory / graph.file))
                example = []
                for spec in manifest.inputs:
                    shape = [bs, *spec.shape[1:]]
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
                per_graph[(bs, graph.bucket)] = (time.perf_counter() - start) / n
    finally:
        os.sched_setaffinity(0, before)
    largest = max(bs for bs, _ in per_graph)
    top = {bucket: t for (bs, bucket), t in per_graph.items() if bs == largest}
    if bucket_mix:
        seconds_per_row = sum(p * top[b] / largest for b, p in bucket_mix.items())
    else:
        seconds_per_row = min(t / largest for t in top.values())
    return {
        "rows_per_s": 1.0 / seconds_per_row,
        "batch_size": largest,
        "batch_ms": min(top.values()) * 1000,
        "graph_ms": {
            f"bs{bs}" + (f"/b{bucket}" if bucket is not None else ""): t * 1000
            for (bs, bucket), t in sorted(per_graph.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))
        },
    }


# -- request bodies ----------------------------------------------------------------------------------------------
def make_bodies(
    s: Scenario, workdir: Path, *, binary: bool, count: int = 32
) -> tuple[list[str], dict[int, float] | None]:
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
            if binary:
                raw = data.tobytes()
                entry["parameters"] = {"binary_data_size": len(raw)}
                blobs.append(raw)
            else:
                entry["data"] = data.ravel().tolist()
            inputs.append(entry)
        header = json.dumps({"id": f"bench-{i}", "inputs": inputs}).encode()
        path = workdir / f"{s.key}-{'bin' if binary else 'json'}-{i}.body"
        path.write_bytes(header + b"".join(blobs))
        specs.append(f"{path}:{len(header)}" if binary else str(path))
    return specs, (mix or None)


# -- server process ----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Server:
    base: str
    pid: int
    grpc_port: int
    model: str


class ServerFailed(RuntimeError):
    pass


@contextlib.contextmanager
def server(
    directory: Path, model: str, layout: Layout, max_batch: int, delay_ms: float, max_queue: int | None = 4096
) -> Iterator[Server]:
    """`neuron-runtime serve` in a subprocess (stderr to a file); `max_queue=None` keeps the runtime's default."""
    port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "NEURON_RUNTIME_MODEL_NAME": model,
        "NEURON_RUNTIME_ARTIFACT_DIR": str(directory),
        "NEURON_RUNTIME_HOST": HOST,
        "NEURON_RUNTIME_PORT": str(port),
        "NEURON_RUNTIME_GRPC_PORT": str(grpc_port),
        "NEURON_RUNTIME_BATCHING__MAX_BATCH_SIZE": str(max_batch),
        "NEURON_RUNTIME_BATCHING__MAX_DELAY_MS": str(delay_ms),
        "NEURON_RUNTIME_LOG_LEVEL": "WARNING",
        "OMP_NUM_THREADS": "1",
    }
    if max_queue is not None:
        env["NEURON_RUNTIME_BATCHING__MAX_QUEUE"] = str(max_queue)
    env.pop("NEURON_RT_VISIBLE_CORES", None)
    if layout.worker_cores is not None:
        env["NEURON_RT_VISIBLE_CORES"] = ",".join(map(str, layout.worker_cores))
    cpus = layout.server_cpus

    def preexec() -> None:
        import resource

        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 4096:  # the flood opens 1,000 connections
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))

    # A file, not a pipe: a chatty server must never block on a full pipe. Closed in the `finally` below.
    stderr = tempfile.TemporaryFile()  # noqa: SIM115
    # preexec_fn only calls sched_setaffinity and setrlimit (async-signal-safe system calls, no locks taken).
    proc = subprocess.Popen(
        [sys.executable, "-m", "neuron_runtime.cli", "serve"],
        env=env,
        preexec_fn=preexec,  # noqa: PLW1509
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )

    def tail() -> str:
        stderr.seek(0)
        return stderr.read().decode(errors="replace")[-2000:]

    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise ServerFailed(f"server exited with {proc.returncode}: {tail()}")
            try:
                with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ServerFailed(f"server did not become ready in 120 s: {tail()}")
            time.sleep(0.2)
        yield Server(base, proc.pid, grpc_port, model)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stderr.close()


def scrape(base: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, _, value = line.rpartition(" ")
        values[name] = float(value)
    return values


def loadgen_cmd(srv: Server, bodies: list[str], warmup: float, duration: float, *, drain: float = 10.0) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.loadgen", "--url", f"{srv.base}/v2/models/{srv.model}/infer"]
    cmd += ["--warmup", str(warmup), "--duration", str(duration), "--drain", str(drain), "--server-pid", str(srv.pid)]
    for body in bodies:
        cmd += ["--body", body]
    return cmd


def pin(core: int | None) -> list[str]:
    """The load generator pins itself (no preexec_fn: this process has torch's threads by then)."""
    return ["--pin", str(core)] if core is not None else []


def finish_row(result: dict[str, Any], before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Add server-side figures: batching from `/metrics` deltas (whole loadgen run, warm-up included) and host CPU
    per answered request from the loadgen's `/proc` samples at the window's edges."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    batches = delta("neuron_runtime_batch_size_rows_count")
    executed = delta("neuron_runtime_rows_executed_total")
    answered = sum(result["statuses"].values())  # every status the server sent inside the window
    cpu: dict[str, float | None] = {"root": None, "children": None, "total": None}
    if "server_cpu_start" in result and "server_cpu_end" in result:
        cpu = cpu_us_per_request(
            sample_from_json(result["server_cpu_start"]), sample_from_json(result["server_cpu_end"]), answered, CLK_TCK
        )
    result.update(
        mean_batch=delta("neuron_runtime_batch_size_rows_sum") / batches if batches else 0.0,
        padding_ratio=delta("neuron_runtime_rows_padded_total") / executed if executed else 0.0,
        cpu_us=cpu,
    )
    return result


def run_load(
    srv: Server, bodies: list[str], core: int | None, mode: list[str], warmup: float, duration: float
) -> dict[str, Any]:
    """One loadgen process against `srv`; a failed loadgen becomes a row with `skipped`, never an abort."""
    before = scrape(srv.base)
    cmd = [*loadgen_cmd(srv, bodies, warmup, duration), *pin(core), *mode]
    try:
        out = subprocess.run(cmd, capture_output=True, check=True, timeout=warmup + duration + 90, cwd=ROOT)
    except subprocess.CalledProcessError as exc:
        reason = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        return {"skipped": f"load generator failed: {reason[-1] if reason else exc}"}
    except subprocess.TimeoutExpired:
        return {"skipped": "load generator ran past its deadline"}
    return finish_row(json.loads(out.stdout), before, scrape(srv.base))


# -- main --------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="M1 only, fewer loads, short windows (~2 min)")
    parser.add_argument("--models", default=None, help="comma list of m1..m4 (default: all; quick: m1)")
    parser.add_argument("--duration", type=float, help="seconds per measured window")
    parser.add_argument(
        "--layout",
        choices=["split", "one-core", "both", "none"],
        default=None,
        help="core layout (default: both for M1 in the full run, else split)",
    )
    parser.add_argument("--json", type=Path, help="also write all results here")
    args = parser.parse_args(argv)

    cpus = sorted(os.sched_getaffinity(0))
    keys = (args.models or ("m1" if args.quick else "m1,m2,m3,m4")).split(",")
    cfg = Config(
        quick=args.quick,
        duration=args.duration or (2.0 if args.quick else 4.0),
        warmup=1.0 if args.quick else 1.5,
        limit_seconds=1.5 if args.quick else 3.0,
    )
    BENCH_DIR.mkdir(exist_ok=True)
    import torch

    started = time.monotonic()
    log(f"torch {torch.__version__}, cpus {cpus}; {machine_line()}")
    report: dict[str, Any] = {"cpus": cpus, "torch": torch.__version__, "scenarios": {}}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for key in keys:
            s = SCENARIOS[key]
            which = args.layout or ("split" if args.quick else ("both" if key == "m1" else "split"))
            for i, layout in enumerate(layouts(cpus, which)):
                bench = ScenarioRun(s, layout, cfg, Path(tmp), extras=i == 0)
                result = bench.run()
                report["scenarios"][f"{key}/{layout.name}"] = result
                bench.print()
    log(f"done in {time.monotonic() - started:.0f} s; {machine_line()}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


@dataclass(frozen=True)
class Config:
    quick: bool
    duration: float
    warmup: float
    limit_seconds: float


class ScenarioRun:
    """One model in one layout: limits before, the servers and their loads, limits after; then `print()`."""

    def __init__(self, s: Scenario, layout: Layout, cfg: Config, workdir: Path, *, extras: bool) -> None:
        self.s, self.layout, self.cfg, self.workdir = s, layout, cfg, workdir
        self.extras = extras  # the targets/protocol/overload blocks run in the first layout only
        self.rows: list[dict[str, Any]] = []
        self.blocks: dict[str, dict[str, Any]] = {}
        self.skipped: dict[str, str] = {}
        self.limits_before: dict[str, dict[str, Any]] = {}
        self.limits_after: dict[str, dict[str, Any]] = {}
        self.contended: float | None = None
        self.overload: dict[str, Any] | None = None
        self.machine: list[str] = []

    def tag(self) -> str:
        return f"{self.s.key}/{self.layout.name}"

    # -- measuring -------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        s, cfg = self.s, self.cfg
        self.machine.append(f"at start: {machine_line()}")
        artifacts = {"b8": compile_scenario(s)}
        json_bodies, mix = make_bodies(s, self.workdir, binary=s.binary)
        bin_bodies = make_bodies(s, self.workdir, binary=True)[0] if s.protocols else json_bodies
        if s.targets:
            artifacts["b1"] = compile_scenario(s, batch_size=1)
            if self.extras:
                if buckets_available():
                    artifacts["buckets"] = compile_scenario(s, batch_sizes=BUCKET_SIZES)
                else:
                    self.skipped["buckets"] = "batch-size buckets not available"
        core = self.layout.limit_core
        for name, directory in artifacts.items():
            self.limits_before[name] = in_process_limit(directory, core, cfg.limit_seconds, mix)
        with busy_core(self.layout.client_core, cfg.limit_seconds):
            self.contended = in_process_limit(artifacts["b8"], core, cfg.limit_seconds, mix)["rows_per_s"]
        log(f"{self.tag()}: in-process limits before: { {k: v['graph_ms'] for k, v in self.limits_before.items()} }")

        concurrencies = s.quick_concurrency if cfg.quick else s.concurrency
        if not self.extras:
            concurrencies = [c for c in concurrencies if c in (1, 32)]
        main_config = f"bs 8 graph, maxBatchSize 8, 5 ms{idle_note(False)}"
        self.with_server("main", artifacts["b8"], 8, main_config, json_bodies, bin_bodies, concurrencies)
        if s.targets and self.extras:
            config = "bs 1 graph, maxBatchSize 1"
            self.with_server("b1", artifacts["b1"], 1, config, json_bodies, bin_bodies, [1, 32])
            if "buckets" in artifacts:
                config = f"bs {BUCKET_SIZES} graphs, maxBatchSize 8, 5 ms{idle_note(True)}"
                self.with_server("buckets", artifacts["buckets"], 8, config, json_bodies, bin_bodies, [1, 32])
            self.run_overload(artifacts["b8"], json_bodies)
        for name, directory in artifacts.items():
            self.limits_after[name] = in_process_limit(directory, core, cfg.limit_seconds, mix)
        self.machine.append(f"at end: {machine_line()}")
        return {
            "title": s.title,
            "layout": self.layout.name,
            "limits_before": self.limits_before,
            "limits_after": self.limits_after,
            "limit_contended": self.contended,
            "rows": self.rows,
            "overload": self.overload,
            "skipped": self.skipped,
            "machine": self.machine,
        }

    def load(self, srv: Server, bodies: list[str], mode: list[str], config: str, label: str) -> dict[str, Any]:
        r = run_load(srv, bodies, self.layout.client_core, mode, self.cfg.warmup, self.cfg.duration)
        r.update(config=config, mode=label, load1=(loadavg() or (None,))[0])
        self.rows.append(r)
        if "skipped" in r:
            log(f"{self.tag()}: {config} {label}: skipped: {r['skipped']}")
        else:
            log(
                f"{self.tag()}: {config} {label}: {r['throughput']:.0f} rps, p50 {r['p50_ms'] or 0:.2f} ms, "
                f"p99 {r['p99_ms'] or 0:.2f} ms, failures {failures(r) or 0}"
            )
        return r

    def with_server(
        self,
        name: str,
        directory: Path,
        max_batch: int,
        config: str,
        json_bodies: list[str],
        bin_bodies: list[str],
        concurrencies: list[int],
    ) -> None:
        s = self.s
        try:
            with server(directory, s.key, self.layout, max_batch, 5.0) as srv:
                for conc in concurrencies:
                    self.load(srv, json_bodies, ["closed", "--concurrency", str(conc)], config, f"closed c={conc}")
                if name != "main" or not self.extras:
                    return
                if s.targets:
                    peak = self.peak()
                    for frac in [0.5] if self.cfg.quick else [0.25, 0.5, 0.9, 1.2]:
                        mode = ["open", "--rate", f"{peak * frac:.1f}"]
                        self.load(srv, json_bodies, mode, config, f"open {frac:.2f}x peak")
                if s.protocols:
                    self.run_protocols(srv, json_bodies, bin_bodies, config)
        except ServerFailed as exc:
            self.skipped[name] = f"server failed: {str(exc)[:300]}"
            log(f"{self.tag()}: {name}: skipped: {exc}")

    def peak(self) -> float:
        main = [r for r in self.rows if r["config"].startswith("bs 8 graph") and r["mode"].startswith("closed")]
        return max((r.get("throughput", 0.0) for r in main), default=0.0)

    def run_protocols(self, srv: Server, json_bodies: list[str], bin_bodies: list[str], config: str) -> None:
        from benchmarks.grpc_stubs import grpc_unavailable_reason

        c = str(PROTOCOL_CONCURRENCY)
        self.load(srv, json_bodies, ["closed", "--concurrency", c], config, f"protocol JSON c={c}")
        self.load(srv, bin_bodies, ["closed", "--concurrency", c], config, f"protocol binary c={c}")
        reason = grpc_unavailable_reason()
        if reason is not None:
            self.rows.append({"config": config, "mode": f"protocol gRPC c={c}", "skipped": reason})
            log(f"{self.tag()}: gRPC skipped: {reason}")
            return
        try:
            socket.create_connection((HOST, srv.grpc_port), timeout=2).close()
        except OSError as exc:
            reason = f"the server does not listen on its grpc_port {srv.grpc_port} ({exc.strerror or exc})"
            self.rows.append({"config": config, "mode": f"protocol gRPC c={c}", "skipped": reason})
            log(f"{self.tag()}: gRPC skipped: {reason}")
            return
        mode = ["closed", "--concurrency", c, "--protocol", "grpc", "--grpc-target", f"{HOST}:{srv.grpc_port}"]
        self.load(srv, bin_bodies, [*mode, "--model", srv.model], config, f"protocol gRPC c={c}")

    def run_overload(self, directory: Path, bodies: list[str]) -> None:
        """1,000 flooding connections and one well-behaved closed-loop client, started together on the client core,
        against a server with the runtime's default queue bound (so that it sheds load with 429)."""
        from neuron_runtime.config import Batching

        cfg = self.cfg
        queue = Batching.model_fields["max_queue"].default
        try:
            with server(directory, self.s.key, self.layout, 8, 5.0, max_queue=None) as srv:
                before = scrape(srv.base)
                start_at = time.time() + 2.0  # both processes are up and waiting by then
                common = ["--start-at", f"{start_at:.3f}", *pin(self.layout.client_core)]
                flood = [*loadgen_cmd(srv, bodies, cfg.warmup, cfg.duration, drain=5.0), *common]
                flood += ["--max-requests", "1000000", "flood", "--connections", str(FLOOD_CONNECTIONS)]
                polite = [*loadgen_cmd(srv, bodies, cfg.warmup, cfg.duration, drain=5.0), *common]
                polite += ["closed", "--concurrency", "1"]
                procs = [
                    subprocess.Popen(
                        cmd,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        cwd=ROOT,
                    )
                    for cmd in (flood, polite)
                ]
                outs: list[dict[str, Any] | str] = []
                for proc in procs:
                    try:
                        out, err = proc.communicate(timeout=cfg.warmup + cfg.duration + 90)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        out, err = proc.communicate()
                    if proc.returncode == 0:
                        outs.append(json.loads(out))
                    else:
                        lines = err.decode(errors="replace").strip().splitlines()
                        outs.append(f"load generator failed: {lines[-1] if lines else proc.returncode}")
                after = scrape(srv.base)
        except ServerFailed as exc:
            self.skipped["overload"] = f"server failed: {str(exc)[:300]}"
            return
        flood_r, polite_r = outs
        if isinstance(flood_r, str) or isinstance(polite_r, str):
            self.skipped["overload"] = flood_r if isinstance(flood_r, str) else str(polite_r)
            return
        finish_row(flood_r, before, after)
        self.overload = {"flood": flood_r, "client": polite_r, "max_queue": queue, "peak": self.peak()}

    # -- reporting -------------------------------------------------------------------------------------------------
    def limit(self, name: str, what: str = "rows_per_s") -> Limit | None:
        if name not in self.limits_before or name not in self.limits_after:
            return None
        unit = "rows/s" if what == "rows_per_s" else "ms"
        return Limit(f"{name} {what}", self.limits_before[name][what], self.limits_after[name][what], unit)

    def row(self, config_prefix: str, mode: str) -> dict[str, Any] | None:
        for r in self.rows:
            if r["config"].startswith(config_prefix) and r["mode"] == mode and "skipped" not in r:
                return r
        return None

    def print(self) -> None:
        s = self.s
        print(f"\n## {s.key}: {s.title} (layout {self.layout.name})")
        for line in self.machine:
            print(f"machine {line}")
        b8 = self.limit("b8")
        assert b8 is not None
        print("in-process limits (graph called in a loop on the worker core, 1 thread; before → after the servers):")
        for name in self.limits_before:
            lim, ms = self.limit(name), self.limit(name, "batch_ms")
            assert lim is not None
            assert ms is not None
            graphs = ", ".join(f"{k} {v:.2f} ms" for k, v in self.limits_before[name]["graph_ms"].items())
            print(f"- {name}: {lim.describe()}; largest-batch graph {ms.before:.2f}→{ms.after:.2f} ms ({graphs})")
        if "b1" in self.limits_before:
            b1 = self.limit("b1")
            assert b1 is not None
            print(
                f"- in process, the bs 8 graph gives {b8.value / b1.value:.2f}x the rows/s of the bs 1 graph "
                "(the most batching can gain on this model)"
            )
        if self.contended:
            print(
                f"- bs 8 limit with the client/HTTP core busy running Python: {self.contended:.0f} rows/s "
                f"({self.contended / b8.value:.2f} x the idle-machine limit)"
            )
        print(
            "\n| config | load | req/s | ratio to bs 8 limit | p50 ms | p99 ms | failures (rate) | outstanding at end |"
            " mean batch | padding | server CPU µs/req: total (event-loop process + workers) | client CPU | load1 |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in self.rows:
            if "skipped" in r:
                print(f"| {r['config']} | {r['mode']} | skipped: {r['skipped']} |")
                continue
            bad = failures(r)
            shown_bad = ", ".join(f"{k} {v}" for k, v in bad.items()) + f" ({r['error_rate']:.1%})" if bad else "0"
            cpu = r["cpu_us"]
            shown_cpu = (
                f"{cpu['total']:.0f} ({cpu['root']:.0f} + {cpu['children']:.0f})" if cpu["total"] is not None else "-"
            )
            util = f"{r['client_cpu_util']:.0%}" if r.get("client_cpu_util") is not None else "-"
            print(
                f"| {r['config']} | {r['mode']} | {r['throughput']:.0f} | {r['throughput'] / b8.value:.2f} | "
                f"{_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | {shown_bad} | {r['outstanding_at_end']} | "
                f"{r['mean_batch']:.2f} | {r['padding_ratio']:.2f} | {shown_cpu} | {util} | {r['load1']:.2f} |"
            )
        for name, reason in self.skipped.items():
            print(f"- {name}: skipped: {reason}")
        if self.overload is not None:
            self.print_overload()
        if s.targets:
            self.print_verdicts(b8)
        sys.stdout.flush()

    def print_overload(self) -> None:
        o = self.overload
        assert o is not None
        flood, client, peak = o["flood"], o["client"], o["peak"]
        answered = sum(flood["statuses"].values())
        rejected = flood["statuses"].get("429", 0)
        accepted = flood["throughput"] + client["throughput"]
        offered = flood["requests"] / flood["window_s"]
        client_answered = sum(client["statuses"].values())
        client_429 = client["statuses"].get("429", 0) / client_answered if client_answered else 0.0
        print(
            f"\n### overload: {FLOOD_CONNECTIONS} flooding connections + 1 well-behaved client, "
            f"{flood['window_s']:.0f} s window, maxQueue {o['max_queue']} (the runtime's default)"
        )
        avg = flood.get("loadavg_start"), flood.get("loadavg_end")
        print(f"machine load average (1/5/15 min) at the window's start {avg[0]}, end {avg[1]}; {os.cpu_count()} CPUs")
        print(
            f"- accepted (HTTP 200 answered in the window, flood + client): {accepted:.0f} req/s = "
            f"{accepted / peak if peak else 0:.2f} x the measured peak ({peak:.0f} req/s, closed loop above)"
        )
        print(
            f"- flood: {answered} answers in the window, 429 share {rejected / answered if answered else 0:.1%}; "
            f"failures {failures(flood) or 0}; {flood['outstanding_at_end']} outstanding at the end; "
            f"connections open at the window's start/end {flood.get('connections_open_start')}/"
            f"{flood.get('connections_open_end')}"
        )
        print(
            f"- well-behaved client: p50 {_ms(client['p50_ms'])} ms, p99 {_ms(client['p99_ms'])} ms (successes, "
            f"{client['ok']} answered in the window), 429 share {client_429:.1%}, failures {failures(client) or 0}, "
            f"{client['outstanding_at_end']} outstanding at the window's end"
        )
        cpu = flood["cpu_us"]
        if cpu["total"] is not None:
            print(
                f"- server CPU per answer in the window (flood, mostly 429s): {cpu['total']:.0f} µs "
                f"({cpu['root']:.0f} event-loop process + {cpu['children']:.0f} workers)"
            )
        lag = flood["loop_lag_ms"]
        print(
            f"- load generator check: it offered {offered:.0f} req/s = {offered / peak if peak else 0:.1f} x peak and "
            f"the server refused {rejected / answered if answered else 0:.0%} of it, so the offered load exceeded "
            f"what the server accepted; flood process CPU {flood['client_cpu_util'] or 0:.0%} of one core, "
            f"its event-loop lag p99 {lag['p99']:.1f} ms / max {lag['max']:.1f} ms "
            f"(it shares the client core with the well-behaved client"
            f"{' and the server event loop' if self.layout.name == 'split' else ''})"
        )

    def print_verdicts(self, b8: Limit) -> None:
        b1_ms = self.limit("b1", "batch_ms")
        print("\n### targets (measured vs target)")
        print(f"machine {self.machine[-1]}")
        servers = [("bs 8 graph", "old single-graph bs 8 server")]
        if "buckets" in self.limits_before:
            servers.insert(0, ("bs [1, 2, 4, 8]", f"buckets {BUCKET_SIZES} server"))
        else:
            print(f"- buckets server: skipped: {self.skipped.get('buckets', 'run in the first layout only')}")
        for prefix, label in servers:
            one, many = self.row(prefix, "closed c=1"), self.row(prefix, "closed c=32")
            if b1_ms is not None:
                target = b1_ms.value + LATENCY_ALLOWANCE_MS
                print(
                    "- "
                    + verdict(
                        f"{label}, p50 at 1 client (≤ bs 1 graph {b1_ms.value:.2f} ms + {LATENCY_ALLOWANCE_MS} ms)",
                        one["p50_ms"] if one else None,
                        "<=",
                        target,
                        " ms",
                        [b1_ms],
                    )
                )
            print(
                "- "
                + verdict(
                    f"{label}, throughput at 32 clients / bs 8 graph limit {b8.value:.0f} rows/s",
                    many["throughput"] / b8.value if many else None,
                    ">=",
                    EFFICIENCY_TARGET,
                    "",
                    [b8],
                )
            )
        batched, unbatched = self.row("bs 8 graph", "closed c=32"), self.row("bs 1 graph", "closed c=32")
        b1 = self.limit("b1")
        ceiling = f"; in process the bs 8 graph gives {b8.value / b1.value:.2f}x the bs 1 graph" if b1 else ""
        gain = (
            batched["throughput"] / unbatched["throughput"]
            if batched and unbatched and unbatched["throughput"]
            else None
        )
        print(
            "- "
            + verdict("batching gain at 32 clients (bs 8 server / bs 1 server)", gain, ">=", GAIN_TARGET, "x")
            + ceiling
        )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())

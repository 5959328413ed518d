"""S3 artifact storage figures against a real local S3 server (SeaweedFS `weed` on loopback, the local cluster's).

`python -m benchmarks.s3` (part of `make bench`): compiles `neuron_runtime.zoo:heavy_mlp` (~96 MB of fp32 weights,
target `cpu`, cached under `.bench/artifacts`), starts a private `weed` server, then measures, `--runs` times each
(median and range printed):

- **publish**: `objectstore.publish_artifact` to a fresh prefix (what a compile Job does after tracing), MB/s;
- **cache check**: `objectstore.find_artifact` on the published artifact (GET manifest + HEAD per file, no graph);
- **download**: `objectstore.fetch_artifact` into an empty directory (what a serving pod does), MB/s, sha256
  verification included;
- **serve start**, from `neuron-runtime serve` process start to `/v2/health/ready` = 200, three ways: *cold* (S3,
  empty download directory: download + verify + load + parity + warm-up), *warm* (S3, the directory already holds a
  copy that verifies: a restarted container on the same emptyDir) and *volume* (no S3: the artifact on a local disk,
  like a PVC; the baseline a PVC user gets).

Loopback on one machine: the throughputs are this machine's disk, CPU (sha256, boto3) and weed, not a network;
the machine's load average is printed with the figures. Every failed run is counted and shown.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from neuron_runtime import objectstore
from neuron_runtime.compile import CompileResult, compile_artifact
from neuron_runtime.config import CompileRequest, S3Connection

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / ".bench" / "artifacts"
READY_TIMEOUT_S = 300.0


def heavy_request() -> CompileRequest:
    return CompileRequest.model_validate(
        {
            "source": {"kind": "python", "factory": "neuron_runtime.zoo:heavy_mlp"},
            "inputs": [{"name": "x", "shape": [1, 1024], "dtype": "float32"}],
            "batch_size": 1,
            "target": "cpu",
        }
    )


def _stats(values: list[float]) -> str:
    if not values:
        return "no successful run"
    return f"median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"


def _timed(fn: Callable[[], Any], runs: int, errors: list[str], what: str) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        try:
            fn()
        except Exception as exc:
            errors.append(f"{what}: {type(exc).__name__}: {exc}")
            continue
        out.append(time.perf_counter() - started)
    return out


def _serve_start(env: dict[str, str], log: Path) -> float:
    """Seconds from `neuron-runtime serve` start to ready; raises if it exits or takes longer than the deadline."""
    port = _free_port()
    full = {**env, "NEURON_RUNTIME_PORT": str(port), "NEURON_RUNTIME_GRPC_PORT": "0", "NEURON_RUNTIME_MODEL_NAME": "m"}
    started = time.perf_counter()
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "neuron_runtime.cli", "serve"], env=full, stdout=err, stderr=subprocess.STDOUT
        )
    try:
        deadline = started + READY_TIMEOUT_S
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited with {proc.returncode}; see {log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.05)  # polling a subprocess's readiness (a benchmark, not a test)
        raise TimeoutError(f"not ready in {READY_TIMEOUT_S}s")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.s3", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)

    from localcluster.s3 import S3Server
    from localcluster.tools import ensure_tools

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    built: CompileResult = compile_artifact(heavy_request(), ARTIFACTS)
    size = sum((built.directory / name).stat().st_size for name in built.manifest.files)
    print(
        f"artifact: heavy_mlp, {size / 1e6:.1f} MB in {len(built.manifest.files)} files (+ manifest); "
        f"{'cached' if built.cached else 'compiled'} in {time.perf_counter() - t0:.1f}s",
        flush=True,
    )

    errors: list[str] = []
    figures: dict[str, Any] = {"bytes": size, "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp_name:
        tmp = Path(tmp_name)
        server = S3Server(tmp / "weed", ensure_tools(("weed",)).weed)
        server.start()
        try:
            server.wait_ready()
            bucket = "bench"
            server.create_bucket(bucket)
            keys = {"AWS_ACCESS_KEY_ID": server.admin.access_key, "AWS_SECRET_ACCESS_KEY": server.admin.secret_key}
            connection = S3Connection(endpoint_url=server.endpoint_url, region="us-east-1", force_path_style=True)
            os.environ.update(keys)
            s3 = objectstore.client(connection)
            quiet: Callable[[str], None] = lambda _m: None  # noqa: E731
            root = objectstore.S3Location(bucket, "artifacts")

            def publish() -> None:
                fresh = objectstore.S3Location(bucket, f"publish-{uuid.uuid4().hex[:8]}")
                objectstore.publish_artifact(s3, built.directory, fresh, quiet)

            up = _timed(publish, args.runs, errors, "publish")
            objectstore.publish_artifact(s3, built.directory, root, quiet)
            key = built.manifest.cache_key
            check = _timed(lambda: objectstore.find_artifact(s3, root, key, quiet), args.runs, errors, "cache check")

            def download() -> None:
                dest = tmp / f"dl-{uuid.uuid4().hex[:8]}" / key
                objectstore.fetch_artifact(s3, root.child(key), dest, built.digest, quiet)
                shutil.rmtree(dest.parent)

            down = _timed(download, args.runs, errors, "download")
            mb = size / 1e6
            print(f"publish (upload {len(built.manifest.files) + 1} objects): {_stats([mb / t for t in up])} MB/s")
            print(f"cache check (GET manifest + HEAD per file): {_stats([t * 1000 for t in check])} ms")
            print(f"download + sha256 verify: {_stats([mb / t for t in down])} MB/s")
            figures |= {"publish_s": up, "cache_check_s": check, "download_s": down}

            env = {k: v for k, v in os.environ.items() if not k.startswith("NEURON_RUNTIME_")}
            env |= {
                "NEURON_RUNTIME_EXPECTED_SHA256": built.digest,
                "NEURON_RUNTIME_PIN_CPU_THREADS": "false",
                "NEURON_RUNTIME_BATCHING__MAX_BATCH_SIZE": "1",
            }
            s3_env = {**env, **connection.to_env(), "NEURON_RUNTIME_ARTIFACT_URI": root.child(key).uri}
            log = tmp / "serve.log"
            cold: list[float] = []
            warm: list[float] = []
            for _ in range(args.runs):
                target = tmp / f"pod-{uuid.uuid4().hex[:8]}" / key
                run_env = {**s3_env, "NEURON_RUNTIME_ARTIFACT_DIR": str(target)}
                cold += _timed(lambda e=run_env: _serve_start(e, log), 1, errors, "serve cold")
                warm += _timed(lambda e=run_env: _serve_start(e, log), 1, errors, "serve warm")
            volume_env = {**env, "NEURON_RUNTIME_ARTIFACT_DIR": str(built.directory)}
            volume = _timed(lambda: _serve_start(volume_env, log), args.runs, errors, "serve volume")
            print(f"serve start, cold (S3 download + verify + load + parity + warm-up): {_stats(cold)} s")
            print(f"serve start, warm (S3, copy on the emptyDir verifies, no download): {_stats(warm)} s")
            print(f"serve start, volume (artifact on a local disk, the PVC baseline): {_stats(volume)} s")
            figures |= {"serve_cold_s": cold, "serve_warm_s": warm, "serve_volume_s": volume}
            figures["weed_rss_bytes"] = server.rss_bytes()
        finally:
            server.stop()
    figures["load_after"] = os.getloadavg()
    figures["errors"] = errors
    print(f"load average before {figures['load_before'][0]:.2f}, after {figures['load_after'][0]:.2f} (2 cores)")
    print(f"errors: {len(errors)}" + "".join(f"\n  {e}" for e in errors))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

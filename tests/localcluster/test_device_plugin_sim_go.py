"""Runs the Go unit tests of the SIMULATED Neuron device plugin (``e2e/kind/neuron-device-plugin-sim``).

The simulator is the one Go program in a Python project; wrapping ``go test ./...`` here means the single pytest
run CI does also catches a broken simulator, without a cluster and before any kind node starts it. Skipped only
when no ``go`` toolchain is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "e2e" / "kind" / "neuron-device-plugin-sim"
DEFAULT_GO = Path("/usr/local/go/bin/go")


def find_go() -> str | None:
    """``go`` on PATH, else the default install location, else None."""
    found = shutil.which("go")
    if found:
        return found
    return str(DEFAULT_GO) if os.access(DEFAULT_GO, os.X_OK) else None


@pytest.mark.slow
@pytest.mark.timeout(900)  # a cold build of grpc and the kubelet API takes minutes on a busy 2-core machine
def test_go_unit_tests_pass() -> None:
    go = find_go()
    if go is None:
        pytest.skip("no Go toolchain (`go` not on PATH nor at /usr/local/go/bin/go): cannot run the simulator's tests")
    env = {**os.environ, "GOTOOLCHAIN": "local"}  # never download another toolchain
    result = subprocess.run(
        [go, "test", "./..."], cwd=MODULE_DIR, env=env, capture_output=True, text=True, timeout=850, check=False
    )
    assert result.returncode == 0, f"go test ./... failed:\n{result.stdout}\n{result.stderr}"

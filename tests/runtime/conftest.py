"""Fixtures for the runtime tests: tiny compiled artifacts, compiled once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_cases import bert_request, mlp_request

from neuron_runtime.compile import CompileResult, compile_artifact


@pytest.fixture(scope="session")
def artifact_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def mlp_artifact(artifact_root: Path) -> CompileResult:
    return compile_artifact(mlp_request(dynamic_batch=True), artifact_root)


@pytest.fixture(scope="session")
def bert_artifact(artifact_root: Path) -> CompileResult:
    return compile_artifact(bert_request(), artifact_root)

"""`serve_main`'s refusals without a model: each exception of start-up or serving → its exit code and the one-line
JSON termination message (`contract.Failure`), written to the termination log and printed."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from neuron_runtime import cli, contract, objectstore, server
from neuron_runtime.artifact import ArtifactError
from neuron_runtime.compat import IncompatibleRuntime
from neuron_runtime.config import ServeSettings
from neuron_runtime.contract import ServeRefusal
from neuron_runtime.model import ConfigurationError
from neuron_runtime.parity import ParityFailed, ParityReport
from neuron_runtime.placement import PlacementError

URI = "s3://bucket/models/" + "a" * 64


def parity_failed(max_abs_error: float) -> ParityFailed:
    """A failed parity gate measuring `max_abs_error`."""
    report = ParityReport(
        passed=False,
        atol=0.01,
        rtol=0.02,
        precision="fp32",
        graphs=1,
        cases=2,
        workers=1,
        max_abs_error=max_abs_error,
        max_rel_error=0.5,
        elements_outside=3,
        worst="graph g case 0",
    )
    return ParityFailed(report)


@pytest.fixture
def log_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The termination log, named by the environment as in tests (a pod uses kubelet's default path)."""
    path = tmp_path / "termination-log"
    monkeypatch.setenv(contract.TERMINATION_LOG_ENV, str(path))
    return path


def run_refusing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, exc: BaseException, *, uri: str | None = None) -> int:
    """`serve_main` with `exc` raised by the download (`uri` set) or by `serve` (`uri` None)."""

    def raising(*_args: Any, **_kwargs: Any) -> Any:
        raise exc

    async def serve_raising(*_args: Any, **_kwargs: Any) -> int:
        raise exc

    settings = ServeSettings(model_name="m", artifact_dir=tmp_path / "artifact", artifact_uri=uri)
    monkeypatch.setattr(server, "load_settings", lambda _config: settings)
    monkeypatch.setattr(server, "fetch_artifact", raising)
    monkeypatch.setattr(server, "serve", serve_raising)
    return server.serve_main(None)


def message(path: Path) -> dict[str, Any]:
    """The termination message written to `path`, checked to be the one line `contract.Failure` reads back."""
    text = path.read_text()
    assert text.endswith("\n")
    assert text.count("\n") == 1
    assert contract.Failure.parse(text) is not None
    parsed: dict[str, Any] = json.loads(text)
    return parsed


SERVING: list[tuple[Callable[[], BaseException], ServeRefusal, int]] = [
    (lambda: ArtifactError("artifact digest mismatch"), ServeRefusal.ARTIFACT_INVALID, 3),
    (lambda: IncompatibleRuntime("torch 1.13 cannot load it"), ServeRefusal.INCOMPATIBLE_RUNTIME, 7),
    (lambda: PlacementError("no cores"), ServeRefusal.INVALID_PLACEMENT, 2),
    (lambda: ConfigurationError("bad workers"), ServeRefusal.INVALID_PLACEMENT, 2),
    (lambda: server.WorkerCrashLoop("3 deaths"), ServeRefusal.WORKER_CRASH_LOOP, 8),
]


@pytest.mark.parametrize(("make", "refusal", "code"), SERVING)
def test_a_refusal_while_serving_exits_with_its_code_and_message(
    make: Callable[[], BaseException],
    refusal: ServeRefusal,
    code: int,
    log_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    exc = make()
    assert run_refusing(monkeypatch, tmp_path, exc) == code == refusal.exit_code
    assert message(log_path) == {"status": "Failed", "reason": refusal.value, "message": str(exc)}
    assert capsys.readouterr().out.strip().splitlines()[-1] == log_path.read_text().strip()


@pytest.mark.parametrize(
    ("max_abs_error", "written"), [(0.731, 0.731), (math.inf, "inf"), (math.nan, "nan")], ids=["finite", "inf", "nan"]
)
def test_a_failed_parity_gate_reports_the_measured_error_and_the_tolerance(
    max_abs_error: float, written: float | str, log_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exc = parity_failed(max_abs_error)
    assert run_refusing(monkeypatch, tmp_path, exc) == 6
    assert message(log_path) == {
        "status": "Failed",
        "reason": "ParityFailed",
        "message": str(exc),
        "maxAbsError": written,
        "atol": 0.01,
        "rtol": 0.02,
    }


@pytest.mark.parametrize(
    ("exc", "reason", "code"),
    [
        (objectstore.AccessDenied("InvalidAccessKeyId"), "StorageAccessDenied", 9),
        (objectstore.ObjectNotFound("NoSuchKey"), "StorageNotFound", 3),
        (objectstore.StorageUnavailable("connection refused"), "StorageUnavailable", 10),
        (objectstore.StorageError("something else"), "StorageUnavailable", 10),
        (ArtifactError("sha256 mismatch"), "ArtifactInvalid", 3),
    ],
)
def test_a_download_refusal_exits_with_the_storage_code(
    exc: BaseException, reason: str, code: int, log_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_refusing(monkeypatch, tmp_path, exc, uri=URI) == code
    assert message(log_path) == {"status": "Failed", "reason": reason, "message": str(exc)}


def test_an_invalid_artifact_uri_is_an_invalid_setting(
    log_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_refusing(monkeypatch, tmp_path, ValueError("no bucket"), uri=URI) == 2
    assert message(log_path) == {"status": "Failed", "reason": "InvalidSettings", "message": "artifact_uri: no bucket"}


def test_invalid_settings_exit_2_with_the_reason_on_stderr(
    log_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEURON_RUNTIME_MODEL_NAME", "m")
    monkeypatch.setenv("NEURON_RUNTIME_ARTIFACT_DIR", "/nonexistent")
    monkeypatch.setenv("NEURON_RUNTIME_BATCHING__MAX_BATCH_SIZE", "0")
    assert server.serve_main(None) == ServeRefusal.INVALID_SETTINGS.exit_code == 2
    written = message(log_path)
    assert written["reason"] == "InvalidSettings"
    assert written["message"].startswith("invalid serve settings: ")
    assert "invalid serve settings: " in capsys.readouterr().err


def test_the_settings_termination_log_wins_over_the_environment(
    log_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = tmp_path / "chosen"
    settings = ServeSettings(model_name="m", artifact_dir=tmp_path, termination_log=chosen)

    async def serve_raising(*_args: Any, **_kwargs: Any) -> int:
        raise server.WorkerCrashLoop("died")

    monkeypatch.setattr(server, "load_settings", lambda _config: settings)
    monkeypatch.setattr(server, "serve", serve_raising)
    assert server.serve_main(None) == 8
    assert message(chosen)["reason"] == "WorkerCrashLoop"
    assert not log_path.exists()


def test_an_unwritable_termination_log_is_noted_and_the_line_still_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    unwritable = tmp_path / "missing-dir" / "termination-log"
    monkeypatch.setenv(contract.TERMINATION_LOG_ENV, str(unwritable))
    assert run_refusing(monkeypatch, tmp_path, ArtifactError("bad")) == 3
    out, err = capsys.readouterr()
    assert f"cannot write termination message to {unwritable}" in err
    assert json.loads(out.strip().splitlines()[-1])["reason"] == "ArtifactInvalid"


def test_the_termination_log_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(contract.TERMINATION_LOG_ENV, str(tmp_path / "log"))
    assert cli.termination_log_path(None) == tmp_path / "log"
    monkeypatch.delenv(contract.TERMINATION_LOG_ENV)
    default = Path(contract.DEFAULT_TERMINATION_LOG)
    assert cli.termination_log_path(None) == (default if default.exists() else None)


def test_an_unexpected_error_is_not_a_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KeyError):
        run_refusing(monkeypatch, tmp_path, KeyError("bug"))

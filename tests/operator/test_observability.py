"""The operator's logs and metrics without a cluster: log formats and levels, the decision line, the domain
metrics (on a fresh registry, and their registration on the default one), the work queue's instrumentation
under fake loop time, and ``neuron-operator run``'s log flags.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from lightkube import ApiError
from prometheus_client import REGISTRY, CollectorRegistry

from neuron_operator import cli, logs, metrics
from neuron_operator.metrics import ROLLOUT_STATES, OperatorMetrics, error_reason
from neuron_operator.settings import OperatorSettings
from neuron_operator.workqueue import WorkQueue, current_pass, describe_error

KIND = "NeuronDeployment"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Tests reconfigure the root logger; put it back as pytest had it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in logs.QUIET_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in quiet.items():
        logging.getLogger(name).setLevel(lvl)


def capture(level: str = "INFO", fmt: str = "text") -> io.StringIO:
    stream = io.StringIO()
    logs.configure(level, fmt, stream=stream)
    return stream


# --------------------------------------------------------------------------------------------- logs


def test_json_lines_carry_time_level_logger_message_and_fields() -> None:
    out = capture(fmt="json")
    logging.getLogger("neuron_operator.test").warning(
        "pod %s is %s", "bert-0", "pending", extra=logs.fields(name="bert", namespace="ml")
    )
    logging.getLogger("neuron_operator.test").info("plain", extra={"reason": "Scaling"})
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["time"].endswith("Z")
    assert {k: first[k] for k in ("level", "logger", "message", "name", "namespace")} == {
        "level": "WARNING",
        "logger": "neuron_operator.test",
        "message": "pod bert-0 is pending",
        "name": "bert",  # a LogRecord-reserved key is fine through logs.fields()
        "namespace": "ml",
    }
    assert set(second) == {"time", "level", "logger", "message", "reason"}
    assert second["reason"] == "Scaling"


def test_json_keeps_the_traceback_in_one_line() -> None:
    out = capture(fmt="json")
    try:
        raise TimeoutError
    except TimeoutError:
        logging.getLogger("x").exception("failed")
    (line,) = out.getvalue().splitlines()
    assert "TimeoutError" in json.loads(line)["exception"]


def test_text_renders_fields_as_key_value_pairs() -> None:
    out = capture()
    logging.getLogger("neuron_operator.test").info(
        "hello", extra=logs.fields(name="bert", changed=True, reason="spec changed", n=3, missing=None)
    )
    line = out.getvalue().strip()
    assert " INFO neuron_operator.test: hello " in line
    assert line.endswith('name=bert changed=true reason="spec changed" n=3 missing=null')


def test_decision_is_one_structured_info_line() -> None:
    out = capture(fmt="json")
    logs.decision(
        logging.getLogger("neuron_operator.reconcile"),
        kind=KIND,
        namespace="ml",
        name="bert",
        pass_no=3,
        decision="ScaleUp",
        changed=True,
        reason="Scaling",
        replicas=2,
    )
    (line,) = out.getvalue().splitlines()
    assert json.loads(line) | {"time": None} == {
        "time": None,
        "level": "INFO",
        "logger": "neuron_operator.reconcile",
        "message": "decision",
        "kind": KIND,
        "namespace": "ml",
        "name": "bert",
        "object": "ml/bert",
        "pass": 3,
        "decision": "ScaleUp",
        "changed": True,
        "reason": "Scaling",
        "replicas": 2,
    }


def test_decision_in_text() -> None:
    out = capture()
    logs.decision(
        logging.getLogger("r"), kind=KIND, namespace="ml", name="bert", decision="None", changed=False, reason="Ready"
    )
    assert (
        out.getvalue()
        .strip()
        .endswith(
            "r: decision kind=NeuronDeployment namespace=ml name=bert object=ml/bert pass=0 decision=None "
            "changed=false reason=Ready"
        )
    )  # pass 0: called outside a work-queue pass


@pytest.mark.parametrize("name", logs.QUIET_LOGGERS)
def test_chatty_libraries_are_quiet_at_info(name: str) -> None:
    out = capture("INFO")
    logging.getLogger(name).info("HTTP Request: GET https://apiserver/... 200 OK")
    logging.getLogger(f"{name}.child").info("also quiet")
    logging.getLogger(name).warning("kept")
    assert out.getvalue().count("\n") == 1
    assert "kept" in out.getvalue()


def test_debug_lets_every_library_through() -> None:
    out = capture("DEBUG")
    logging.getLogger("httpx").info("HTTP Request: GET https://apiserver/ 200 OK")
    logging.getLogger("kopf.objects").info("Handler 'x' succeeded.")
    assert out.getvalue().count("\n") == 2


def test_warning_level_drops_the_operators_info() -> None:
    out = capture("WARNING")
    logging.getLogger("neuron_operator.x").info("quiet")
    logging.getLogger("httpx").warning("loud")
    assert out.getvalue().count("\n") == 1


def test_configure_replaces_its_own_handler_only() -> None:
    root = logging.getLogger()
    other = logging.NullHandler()
    root.addHandler(other)
    capture()
    capture(fmt="json")
    ours = [h for h in root.handlers if isinstance(h.formatter, logs.JsonFormatter | logs.TextFormatter)]
    assert len(ours) == 1
    assert isinstance(ours[0].formatter, logs.JsonFormatter)
    assert other in root.handlers


@pytest.mark.parametrize(("level", "fmt", "message"), [("LOUD", "text", "log level"), ("INFO", "xml", "log format")])
def test_configure_rejects_bad_values(level: str, fmt: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        logs.configure(level, fmt)


# ------------------------------------------------------------------------------------------ the CLI


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[OperatorSettings]:
    """``cli.main`` up to the operator loop: no HTTP server, no cluster; records the settings it would run."""
    for name in list(os.environ):
        if name.startswith("NEURON_OPERATOR_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(cli, "start_http_server", lambda port: None)
    seen: list[OperatorSettings] = []

    def fake_run(coro: Any) -> int:
        frame = coro.cr_frame
        seen.append(next(v for v in frame.f_locals.values() if isinstance(v, OperatorSettings)))
        coro.close()
        return 0

    monkeypatch.setattr(cli.asyncio, "run", fake_run)
    return seen


def _formatter() -> logging.Formatter | None:
    return next(h.formatter for h in logging.getLogger().handlers if isinstance(h, logs._OperatorHandler))


def test_cli_logs_as_the_settings_say(ran: list[OperatorSettings], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURON_OPERATOR_LOG_FORMAT", "json")
    monkeypatch.setenv("NEURON_OPERATOR_LOG_LEVEL", "WARNING")
    assert cli.main(["run"]) == 0
    assert (ran[-1].log_level, ran[-1].log_format) == ("WARNING", "json")
    assert isinstance(_formatter(), logs.JsonFormatter)
    assert logging.getLogger().level == logging.WARNING


def test_cli_flags_win(ran: list[OperatorSettings], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURON_OPERATOR_LOG_FORMAT", "json")
    monkeypatch.setenv("NEURON_OPERATOR_LOG_LEVEL", "ERROR")
    assert cli.main(["run", "--log-format", "text", "--log-level", "INFO"]) == 0
    assert (ran[-1].log_level, ran[-1].log_format) == ("INFO", "text")
    assert isinstance(_formatter(), logs.TextFormatter)
    assert cli.main(["run", "--verbose", "--log-level", "ERROR"]) == 0  # --verbose forces DEBUG
    assert ran[-1].log_level == "DEBUG"
    assert logging.getLogger("httpx").level == logging.NOTSET


def test_settings_reject_a_bad_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURON_OPERATOR_LOG_LEVEL", "TRACE")
    with pytest.raises(ValueError, match="log_level"):
        OperatorSettings()


# ------------------------------------------------------------------------------------------ metrics


def scrape(registry: CollectorRegistry) -> dict[str, float]:
    """Every sample as ``name{k="v",...}`` -> value (labels sorted)."""
    out: dict[str, float] = {}
    for family in registry.collect():
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


@pytest.fixture
def fresh() -> tuple[OperatorMetrics, CollectorRegistry]:
    m = OperatorMetrics()
    registry = CollectorRegistry()
    registry.register(m)
    return m, registry


def test_compile_outcomes_and_durations(fresh: tuple[OperatorMetrics, CollectorRegistry]) -> None:
    m, registry = fresh
    m.observe_compile("Compiled", 42.0)
    m.observe_compile("CacheHit", None)
    m.observe_compile("CacheHit", None)
    m.observe_compile("CompileFailed", 600.0)
    s = scrape(registry)
    assert s['neuron_operator_compiles_total{outcome="Compiled"}'] == 1
    assert s['neuron_operator_compiles_total{outcome="CacheHit"}'] == 2
    assert s['neuron_operator_compiles_total{outcome="CompileFailed"}'] == 1
    assert s["neuron_operator_compile_duration_seconds_count"] == 2
    assert s["neuron_operator_compile_duration_seconds_sum"] == 642.0
    assert s['neuron_operator_compile_duration_seconds_bucket{le="60.0"}'] == 1


def test_rollout_state_is_one_hot_and_forgotten(fresh: tuple[OperatorMetrics, CollectorRegistry]) -> None:
    m, registry = fresh
    m.set_rollout_state("ml", "bert", "RollingOut")
    m.set_rollout_state("ml", "gpt", "Ready")
    m.set_rollout_state("ml", "bert", "Stalled")

    def states(name: str) -> dict[str, float]:
        prefix = 'neuron_operator_rollout_state{name="' + name + '",namespace="ml",state="'
        return {k[len(prefix) : -2]: v for k, v in scrape(registry).items() if k.startswith(prefix)}

    assert states("bert") == {s: float(s == "Stalled") for s in ROLLOUT_STATES}
    assert states("gpt") == {s: float(s == "Ready") for s in ROLLOUT_STATES}
    m.set_rollout_state("ml", "gpt", "Degraded")  # a state not listed is exported too
    assert states("gpt") == {**dict.fromkeys(ROLLOUT_STATES, 0.0), "Degraded": 1.0}
    m.forget("ml", "bert")
    m.forget("ml", "bert")
    assert states("bert") == {}


def _api_error(code: int, reason: str) -> ApiError:
    request = httpx.Request("PATCH", "https://apiserver/apis/apps/v1/namespaces/ml/deployments/bert")
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code}
    return ApiError(request=request, response=httpx.Response(code, json=body, request=request))


def test_error_reason_names_the_api_reason_or_the_exception_type() -> None:
    assert error_reason(_api_error(409, "Conflict")) == "Conflict"
    assert error_reason(TimeoutError()) == "TimeoutError"
    assert error_reason(httpx.ConnectError("refused")) == "ConnectError"


def test_describe_error_never_empty() -> None:
    assert describe_error(TimeoutError()) == "TimeoutError()"
    assert describe_error(RuntimeError("boom")) == "boom"


def test_module_functions_record_on_the_default_registry() -> None:
    def value(name: str, labels: dict[str, str]) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = value("neuron_operator_compiles_total", {"outcome": "Compiled"})
    metrics.observe_compile("Compiled", 12.5)
    assert value("neuron_operator_compiles_total", {"outcome": "Compiled"}) == before + 1
    metrics.set_rollout_state("obs-test", "bert", "Suspended")
    assert value("neuron_operator_rollout_state", {"namespace": "obs-test", "name": "bert", "state": "Suspended"}) == 1
    metrics.forget("obs-test", "bert")
    assert (
        REGISTRY.get_sample_value(
            "neuron_operator_rollout_state", {"namespace": "obs-test", "name": "bert", "state": "Suspended"}
        )
        is None
    )


def test_registering_twice_is_refused_not_duplicated() -> None:
    with pytest.raises(ValueError, match="Duplicated"):
        REGISTRY.register(OperatorMetrics())
    import importlib

    assert importlib.import_module("neuron_operator.metrics").METRICS is metrics.METRICS


# --------------------------------------------------------------------- the work queue, in loop time


class Gate:
    """A reconcile that blocks until released, records its pass number, and fails when told."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.passes: list[int] = []
        self.error: Exception | None = None
        self.hold = 0.0

    async def __call__(self, namespace: str, name: str) -> None:
        self.passes.append(current_pass())
        self.started.set()
        if self.hold:
            await asyncio.sleep(self.hold)  # loop time: exact
        await self.release.wait()
        if self.error is not None:
            raise self.error


class Errors:
    """``on_error`` callback: collects failures; ``wait(n)`` returns once ``n`` have happened."""

    def __init__(self) -> None:
        self.seen: list[BaseException] = []
        self._changed = asyncio.Condition()

    def __call__(self, key: object, exc: BaseException) -> None:
        self.seen.append(exc)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, n: int) -> None:
        async with asyncio.timeout(3600), self._changed:
            await self._changed.wait_for(lambda: len(self.seen) >= n)


@pytest.mark.looptime
async def test_queue_reports_durations_errors_and_depth(fresh: tuple[OperatorMetrics, CollectorRegistry]) -> None:
    m, registry = fresh
    gate = Gate()
    gate.hold = 2.5
    errors = Errors()
    queue = WorkQueue(
        reconcilers={KIND: gate}, resync=60.0, backoff_base=1.0, backoff_cap=8.0, on_error=errors, metrics=m
    )
    depth, running = (
        f'neuron_operator_workqueue_depth{{kind="{KIND}"}}',
        f'neuron_operator_workqueue_running{{kind="{KIND}"}}',
    )
    workers = f'neuron_operator_workqueue_workers{{kind="{KIND}"}}'
    try:
        assert (scrape(registry)[depth], scrape(registry)[workers]) == (0, 0)  # the kind's series exist at once
        queue.trigger(KIND, "ml", "bert")
        queue.trigger(KIND, "ml", "gpt")
        s = scrape(registry)  # triggered, not started yet
        assert (s[depth], s[running], s[workers]) == (2, 0, 2)
        await gate.started.wait()
        await asyncio.sleep(0)
        s = scrape(registry)
        assert (s[depth], s[running], s[workers]) == (0, 2, 2)
        queue.trigger(KIND, "ml", "bert")  # during the pass: one more pass is queued
        assert scrape(registry)[depth] == 1
        gate.error = _api_error(409, "Conflict")
        gate.release.set()
        await errors.wait(4)
        gate.error = TimeoutError()
        await errors.wait(6)
        s = scrape(registry)
        assert s[f'neuron_operator_reconcile_errors_total{{kind="{KIND}",reason="Conflict"}}'] == 4
        assert s[f'neuron_operator_reconcile_errors_total{{kind="{KIND}",reason="TimeoutError"}}'] >= 1
        count = s[f'neuron_operator_reconcile_duration_seconds_count{{kind="{KIND}"}}']
        assert count >= 6
        assert s[f'neuron_operator_reconcile_duration_seconds_sum{{kind="{KIND}"}}'] == 2.5 * count
        assert s[f'neuron_operator_reconcile_duration_seconds_bucket{{kind="{KIND}",le="2.5"}}'] == count
        assert s[f'neuron_operator_reconcile_duration_seconds_bucket{{kind="{KIND}",le="1.0"}}'] == 0
        assert gate.passes[:2] == [1, 1]  # bert's and gpt's first passes
        assert sorted(set(gate.passes)) == list(range(1, max(gate.passes) + 1))
    finally:
        await queue.stop()
    assert scrape(registry)[workers] == 0


@pytest.mark.looptime
async def test_a_failure_without_message_is_logged_with_its_type(caplog: pytest.LogCaptureFixture) -> None:
    async def fail(namespace: str, name: str) -> None:
        raise TimeoutError

    errors = Errors()
    queue = WorkQueue(reconcilers={KIND: fail}, resync=60.0, on_error=errors, metrics=OperatorMetrics())
    try:
        with caplog.at_level(logging.WARNING, logger="neuron_operator.workqueue"):
            queue.trigger(KIND, "ml", "bert")
            await errors.wait(1)
    finally:
        await queue.stop()
    record = next(r for r in caplog.records if r.name == "neuron_operator.workqueue")
    assert record.getMessage() == "reconcile NeuronDeployment/ml/bert failed (retry in 1.0s): TimeoutError()"
    assert logs.record_fields(record) == {
        "kind": KIND,
        "namespace": "ml",
        "name": "bert",
        "reason": "TimeoutError",
        "retry_in": 1.0,
    }


@pytest.mark.looptime
async def test_current_pass_counts_passes_of_each_object() -> None:
    seen: list[tuple[str, int]] = []
    done = asyncio.Event()

    async def rec(namespace: str, name: str) -> None:
        seen.append((name, current_pass()))
        if len(seen) >= 4:
            done.set()

    queue = WorkQueue(reconcilers={KIND: rec}, resync=10.0, metrics=OperatorMetrics())
    try:
        queue.trigger(KIND, "ml", "a")
        async with asyncio.timeout(60):
            await done.wait()
    finally:
        await queue.stop()
    assert seen[:4] == [("a", 1), ("a", 2), ("a", 3), ("a", 4)]
    assert current_pass() == 0

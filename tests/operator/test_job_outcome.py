"""``resources.compile.job_outcome``: reading a compile Job and its pods into running / succeeded / failed.

The Job and pod shapes are the Job controller's and kubelet's (conditions with ``status: "True"``, the
``compile`` container's ``state.terminated``); the termination messages are written by the runtime's own
``write_termination_message``, so a change of format on either side shows here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from runtime_lines import termination_line

from neuron_operator.resources.compile import job_outcome
from neuron_runtime.contract import CompileResult

AT = "2025-03-01T12:05:00Z"
AT_DT = datetime(2025, 3, 1, 12, 5, tzinfo=UTC)
RESULT = {
    "status": "Succeeded",
    "cacheKey": "b" * 64,
    "uri": "/var/lib/neuron/artifacts/" + "b" * 64,
    "sha256": "a" * 64,
    "compileSeconds": 3.5,
    "cached": False,
}


def message(payload: dict[str, Any]) -> str:
    return termination_line(payload) + "\n"


def job(*conditions: tuple[str, str] | tuple[str, str, str], message_text: str | None = None) -> dict[str, Any]:
    """A Job with conditions (type, reason[, status]) that changed at AT."""
    conds = []
    for c in conditions:
        type_, reason = c[0], c[1]
        status = c[2] if len(c) > 2 else "True"
        cond = {"type": type_, "status": status, "reason": reason, "lastTransitionTime": AT}
        if message_text is not None:
            cond["message"] = message_text
        conds.append(cond)
    return {"metadata": {"name": "compile-x"}, "status": {"conditions": conds}}


def pod(
    name: str = "compile-x-abcde",
    *,
    text: str | None = None,
    exit_code: int = 0,
    finished: str = AT,
    reason: str = "Completed",
    running: bool = False,
) -> dict[str, Any]:
    state: dict[str, Any]
    if running:
        state = {"running": {"startedAt": AT}}
    else:
        state = {"terminated": {"exitCode": exit_code, "reason": reason, "finishedAt": finished}}
        if text is not None:
            state["terminated"]["message"] = text
    return {
        "metadata": {"name": name, "creationTimestamp": AT},
        "status": {"containerStatuses": [{"name": "compile", "state": state}]},
    }


def test_no_finished_condition_is_running() -> None:
    assert job_outcome(job(), []).state == "Running"
    assert job_outcome(job(), [pod(running=True)]).state == "Running"
    # Conditions that are not True (and other types) do not finish a Job.
    pending = job(("Complete", "", "False"), ("Failed", "BackoffLimitExceeded", "False"), ("Suspended", "x"))
    assert job_outcome(pending, [pod(text=message(RESULT))]).state == "Running"


def test_complete_with_a_result_succeeds_with_it_and_its_time() -> None:
    outcome = job_outcome(job(("SuccessCriteriaMet", ""), ("Complete", "")), [pod(text=message(RESULT))])
    assert outcome.state == "Succeeded"
    assert outcome.result == CompileResult.model_validate(RESULT)
    assert outcome.finished_at == AT_DT
    assert outcome.reason is None


def test_complete_without_a_result_is_no_result() -> None:
    for pods in ([], [pod()], [pod(text="not json")], [pod(text=json.dumps({**RESULT, "status": "Failed"}))]):
        outcome = job_outcome(job(("Complete", "")), pods)
        assert outcome.state == "Failed"
        assert outcome.reason == "NoResult"
        assert "no result" in (outcome.message or "")
        assert outcome.finished_at == AT_DT
    assert job_outcome(job(("Complete", "")), [pod(exit_code=0)]).exit_code == 0
    assert job_outcome(job(("Complete", "")), []).exit_code is None


def test_a_failure_takes_the_runtime_reason_message_and_exit_code() -> None:
    text = message({"status": "Failed", "reason": "TraceFailed", "message": "neuronx-cc: unsupported op aten::foo"})
    outcome = job_outcome(job(("Failed", "PodFailurePolicy")), [pod(text=text, exit_code=4, reason="Error")])
    assert (outcome.state, outcome.reason, outcome.exit_code) == ("Failed", "TraceFailed", 4)
    assert outcome.message == "neuronx-cc: unsupported op aten::foo"
    assert outcome.finished_at == AT_DT


def test_the_json_is_read_from_the_last_line_of_a_log_fallback_message() -> None:
    """terminationMessagePolicy FallbackToLogsOnError: progress lines may precede the JSON line."""
    text = "[neuron-runtime compile] loading\n[neuron-runtime compile] tracing\n" + message(
        {"status": "Failed", "reason": "SourceFailed", "message": "sha256 mismatch"}
    )
    outcome = job_outcome(job(("Failed", "PodFailurePolicy")), [pod(text=text, exit_code=3, reason="Error")])
    assert (outcome.reason, outcome.message) == ("SourceFailed", "sha256 mismatch")


def test_an_unknown_runtime_reason_is_compile_failed_and_keeps_its_name() -> None:
    text = message({"status": "Failed", "reason": "Exploded", "message": "kaboom"})
    outcome = job_outcome(job(("Failed", "BackoffLimitExceeded")), [pod(text=text, exit_code=1, reason="Error")])
    assert outcome.reason == "CompileFailed"
    assert outcome.message == "Exploded: kaboom"


def test_the_deadline_is_a_compile_timeout() -> None:
    timed_out = job(("Failed", "DeadlineExceeded"), message_text="Job was active longer than specified deadline")
    outcome = job_outcome(timed_out, [pod(text="partial log", exit_code=137, reason="Error")])
    assert (outcome.reason, outcome.message) == ("CompileTimeout", "Job was active longer than specified deadline")
    assert job_outcome(job(("Failed", "DeadlineExceeded")), []).message == "compile exceeded its timeout"


def test_an_oom_kill_says_so() -> None:
    outcome = job_outcome(job(("Failed", "BackoffLimitExceeded")), [pod(exit_code=137, reason="OOMKilled")])
    assert outcome.reason == "OOMKilled"
    assert "memory" in (outcome.message or "")
    assert outcome.exit_code == 137


def test_a_failure_without_a_json_message_keeps_what_there_is() -> None:
    # The container's own text (the log tail kubelet copied), else the Job's condition message, else its reason.
    outcome = job_outcome(job(("Failed", "BackoffLimitExceeded")), [pod(text="Segmentation fault", exit_code=139)])
    assert (outcome.reason, outcome.message, outcome.exit_code) == ("CompileFailed", "Segmentation fault", 139)
    failed = job(("Failed", "BackoffLimitExceeded"), message_text="Job has reached the specified backoff limit")
    outcome = job_outcome(failed, [])
    assert (outcome.reason, outcome.message, outcome.exit_code) == (
        "CompileFailed",
        "Job has reached the specified backoff limit",
        None,
    )
    assert job_outcome(job(("Failed", "BackoffLimitExceeded")), []).message == "BackoffLimitExceeded"
    assert job_outcome(job(("Failed", "")), []).message == "Failed"


def test_the_newest_pod_wins() -> None:
    old = pod(
        "compile-x-old",
        text=message({"status": "Failed", "reason": "InternalError", "message": "first try"}),
        exit_code=1,
        finished="2025-03-01T12:01:00Z",
        reason="Error",
    )
    new = pod(
        "compile-x-new",
        text=message({"status": "Failed", "reason": "TraceFailed", "message": "second try"}),
        exit_code=4,
        finished="2025-03-01T12:04:00Z",
        reason="Error",
    )
    for pods in ([old, new], [new, old]):
        outcome = job_outcome(job(("Failed", "BackoffLimitExceeded")), pods)
        assert (outcome.reason, outcome.message, outcome.exit_code) == ("TraceFailed", "second try", 4)
    # A pod still running has no say.
    outcome = job_outcome(job(("Failed", "BackoffLimitExceeded")), [new, pod("compile-x-live", running=True)])
    assert outcome.reason == "TraceFailed"


def test_a_long_message_is_cut_to_its_head_on_one_line() -> None:
    long = "neuronx-cc failed:\n" + "\n".join(f"  frame {i}: {'x' * 40}" for i in range(100))
    outcome = job_outcome(job(("Failed", "BackoffLimitExceeded")), [pod(text=long, exit_code=1, reason="Error")])
    assert outcome.message is not None
    assert len(outcome.message) <= 1024
    assert outcome.message.startswith("neuronx-cc failed: frame 0:")
    assert outcome.message.endswith("…")
    assert "\n" not in outcome.message


def test_the_runtime_success_message_parses_back_to_what_it_wrote() -> None:
    """The operator reads exactly the line the runtime writes (sorted keys, compact separators)."""
    line = termination_line(RESULT)
    assert json.loads(line) == RESULT
    assert job_outcome(job(("Complete", "")), [pod(text=line)]).result == CompileResult.model_validate(RESULT)

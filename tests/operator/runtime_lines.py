"""Termination messages exactly as the runtime writes them: the contract's message of the payload's kind
(``neuron_runtime.contract``), through ``neuron_runtime.cli.write_termination_message``. A payload the contract
refuses fails here, so the fixtures the operator's tests read are ones the runtime can write."""

from __future__ import annotations

from typing import Any

from neuron_runtime.cli import write_termination_message
from neuron_runtime.contract import CompileResult, Failure, GcResult, TerminationMessage


def termination_line(payload: dict[str, Any]) -> str:
    succeeded: type[TerminationMessage] = GcResult if "expiredCount" in payload else CompileResult
    kind = Failure if payload.get("status") == "Failed" else succeeded
    return write_termination_message(None, kind.model_validate(payload))

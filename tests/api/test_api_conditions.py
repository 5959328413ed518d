"""neuron_operator.conditions: transition times move only on a status flip; inputs are never mutated."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from neuron_operator.api import Condition, ConditionStatus, ConditionType, ModelPhase, model_phase
from neuron_operator.conditions import (
    condition_status,
    get_condition,
    is_current,
    is_false,
    is_true,
    remove_condition,
    set_condition,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class FakeClock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start
        self.calls = 0

    def __call__(self) -> datetime:
        self.calls += 1
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)


def test_new_condition_gets_the_clock_time() -> None:
    clock = FakeClock()
    conds = set_condition(
        [], ConditionType.READY, False, "Compiling", "job started", clock=clock, observed_generation=1
    )
    assert conds == [
        Condition(
            type="Ready",
            status=ConditionStatus.FALSE,
            reason="Compiling",
            message="job started",
            last_transition_time=T0,
            observed_generation=1,
        )
    ]


def test_same_status_keeps_transition_time_but_updates_the_rest() -> None:
    clock = FakeClock()
    first = set_condition(None, "Ready", "False", "Pending", clock=clock, observed_generation=1)
    clock.advance(60)
    calls = clock.calls
    second = set_condition(
        first, "Ready", ConditionStatus.FALSE, "Compiling", "running", clock=clock, observed_generation=2
    )
    assert second[0].last_transition_time == T0
    assert (second[0].reason, second[0].message, second[0].observed_generation) == ("Compiling", "running", 2)
    assert clock.calls == calls  # the clock is not even read


def test_flip_moves_transition_time() -> None:
    clock = FakeClock()
    conds = set_condition(None, "Ready", False, "Compiling", clock=clock)
    clock.advance(90)
    conds = set_condition(conds, "Ready", True, "Compiled", clock=clock)
    assert conds[0].status is ConditionStatus.TRUE
    assert conds[0].last_transition_time == T0 + timedelta(seconds=90)


def test_input_is_not_mutated_and_order_is_kept() -> None:
    clock = FakeClock()
    conds = set_condition(None, "Ready", False, "Pending", clock=clock)
    conds = set_condition(conds, "Reconciling", True, "Compiling", clock=clock)
    conds = set_condition(conds, "Stalled", False, "Reconciled", clock=clock)
    snapshot = list(conds)
    dumped = [c.model_dump() for c in conds]
    clock.advance(5)
    updated = set_condition(conds, "Reconciling", False, "Reconciled", clock=clock)
    assert conds == snapshot
    assert [c.model_dump() for c in conds] == dumped
    assert updated is not conds
    assert [c.type for c in updated] == ["Ready", "Reconciling", "Stalled"]
    assert updated[1].last_transition_time == T0 + timedelta(seconds=5)
    with pytest.raises(ValidationError):  # conditions are frozen values
        conds[0].reason = "X"  # type: ignore[misc]


def test_readers() -> None:
    clock = FakeClock()
    conds = set_condition(None, "Ready", True, "Compiled", clock=clock, observed_generation=4)
    conds = set_condition(conds, "Stalled", False, "Reconciled", clock=clock)
    assert is_true(conds, "Ready")
    assert not is_false(conds, "Ready")
    assert is_false(conds, "Stalled")
    assert not is_true(conds, "Stalled")
    assert condition_status(conds, "Schedulable") is ConditionStatus.UNKNOWN
    assert get_condition(conds, "Schedulable") is None
    assert get_condition(None, "Ready") is None
    assert is_current(conds, "Ready", 4)
    assert not is_current(conds, "Ready", 5)
    assert [c.type for c in remove_condition(conds, "Ready")] == ["Stalled"]


def test_reason_must_be_camel_case() -> None:
    with pytest.raises(ValidationError, match="reason"):
        set_condition(None, "Ready", True, "not a reason", clock=FakeClock())


def test_unknown_status_is_rejected() -> None:
    with pytest.raises(ValueError, match="Maybe"):
        set_condition(None, "Ready", "Maybe", "Compiled", clock=FakeClock())


@pytest.mark.parametrize(
    ("conditions", "phase"),
    [
        ([], ModelPhase.PENDING),
        ([("Reconciling", True)], ModelPhase.COMPILING),
        ([("Reconciling", False), ("Stalled", True)], ModelPhase.FAILED),
        ([("Ready", True), ("Stalled", False)], ModelPhase.READY),
        ([("Ready", False), ("Reconciling", False), ("Stalled", False)], ModelPhase.PENDING),
    ],
)
def test_model_phase_summarises_conditions(conditions: list[tuple[str, bool]], phase: ModelPhase) -> None:
    conds: list[Condition] = []
    for type_, status in conditions:
        conds = set_condition(conds, type_, status, "Reconciled", clock=FakeClock())
    assert model_phase(conds) is phase

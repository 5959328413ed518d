"""Pure helpers for Kubernetes-style status conditions (``status.conditions`` of both kinds).

``set_condition`` follows cert-manager's and apimachinery's ``SetStatusCondition``: it replaces the entry of
the same type, moves ``lastTransitionTime`` only when the status flips, and otherwise keeps the original time
while updating reason, message and observedGeneration. The clock is injected, the input is never mutated and
a new list comes back, so reconcile code stays deterministic and testable without a cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

from neuron_operator.api.common import Condition, ConditionStatus

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The default clock: now, in UTC, truncated to seconds (Kubernetes stores RFC 3339 seconds)."""
    return datetime.now(UTC).replace(microsecond=0)


def _status(value: ConditionStatus | str | bool) -> ConditionStatus:
    if isinstance(value, bool):
        return ConditionStatus.TRUE if value else ConditionStatus.FALSE
    return ConditionStatus(value)


def set_condition(
    conditions: Sequence[Condition] | None,
    type: str,
    status: ConditionStatus | str | bool,
    reason: str,
    message: str = "",
    *,
    clock: Clock = utc_now,
    observed_generation: int | None = None,
) -> list[Condition]:
    """A copy of ``conditions`` with condition ``type`` set; the order of the others is kept.

    ``lastTransitionTime`` becomes ``clock()`` for a new condition or when ``status`` differs from the current
    one; otherwise it is kept. ``clock`` is called only when a transition happens.
    """
    new_status = _status(status)
    result: list[Condition] = []
    found = False
    for cond in conditions or ():
        if cond.type != type:
            result.append(cond)
            continue
        found = True
        transition = cond.last_transition_time if cond.status == new_status else clock()
        result.append(
            Condition(
                type=type,
                status=new_status,
                reason=reason,
                message=message,
                last_transition_time=transition,
                observed_generation=observed_generation,
            )
        )
    if not found:
        result.append(
            Condition(
                type=type,
                status=new_status,
                reason=reason,
                message=message,
                last_transition_time=clock(),
                observed_generation=observed_generation,
            )
        )
    return result


def remove_condition(conditions: Sequence[Condition] | None, type: str) -> list[Condition]:
    """A copy of ``conditions`` without condition ``type``."""
    return [c for c in conditions or () if c.type != type]


def get_condition(conditions: Iterable[Condition] | None, type: str) -> Condition | None:
    """The condition of ``type``, or None."""
    return next((c for c in conditions or () if c.type == type), None)


def condition_status(conditions: Iterable[Condition] | None, type: str) -> ConditionStatus:
    """Status of condition ``type``; ``Unknown`` when absent (the Kubernetes convention)."""
    cond = get_condition(conditions, type)
    return ConditionStatus.UNKNOWN if cond is None else cond.status


def is_true(conditions: Iterable[Condition] | None, type: str) -> bool:
    """Whether condition ``type`` is present with status True."""
    return condition_status(conditions, type) == ConditionStatus.TRUE


def is_false(conditions: Iterable[Condition] | None, type: str) -> bool:
    """Whether condition ``type`` is present with status False."""
    return condition_status(conditions, type) == ConditionStatus.FALSE


def is_current(conditions: Iterable[Condition] | None, type: str, generation: int) -> bool:
    """Whether condition ``type`` was computed from ``generation`` (so GitOps tools can trust it)."""
    cond = get_condition(conditions, type)
    return cond is not None and cond.observed_generation == generation

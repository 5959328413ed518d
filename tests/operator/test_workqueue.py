"""The per-object work queue under fake loop time (``looptime``): coalescing, resync, backoff, cancellation.

``@pytest.mark.looptime`` makes the event loop's clock fake: ``asyncio.sleep(300)`` and ``wait_for(...,
timeout=60)`` return at once while ``loop.time()`` advances by exactly that much, so the tests can state
times exactly ("the retry comes 4 s after the third failure") and finish in milliseconds. Passes are
synchronised with asyncio Events; a sleep in a test only moves fake time forward to show that nothing
happens meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from neuron_operator.workqueue import Backoff, Key, WorkQueue

pytestmark = pytest.mark.looptime

KIND = "NeuronModel"
RESYNC = 60.0
#: Loop-time limit of any wait in these tests (fake time: costs nothing, but a lost pass fails, not hangs).
WAIT_LIMIT = 3600.0


class Reconciler:
    """A fake reconcile: records the loop time of every pass; can be held open or made to fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str, str]] = []
        self.gate: asyncio.Event | None = None  # while set to an unset Event, passes block on it
        self.fail = False
        self.cancelled = asyncio.Event()
        self._changed = asyncio.Condition()

    @property
    def times(self) -> list[float]:
        return [t for t, _, _ in self.calls]

    async def __call__(self, namespace: str, name: str) -> None:
        self.calls.append((asyncio.get_running_loop().time(), namespace, name))
        async with self._changed:
            self._changed.notify_all()
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        if self.fail:
            raise RuntimeError("apiserver unavailable")

    async def wait_calls(self, n: int) -> None:
        """Wait (in loop time) until ``n`` passes have started; fail instead of hanging."""
        async with asyncio.timeout(WAIT_LIMIT):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.calls) >= n)


def now() -> float:
    return asyncio.get_running_loop().time()


@dataclass
class Harness:
    queue: WorkQueue
    rec: Reconciler
    errors: list[tuple[Key, BaseException]]


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    rec = Reconciler()
    errors: list[tuple[Key, BaseException]] = []
    queue = WorkQueue(
        reconcilers={KIND: rec},
        resync=RESYNC,
        backoff_base=1.0,
        backoff_cap=8.0,
        on_error=lambda key, exc: errors.append((key, exc)),
    )
    yield Harness(queue, rec, errors)
    await queue.stop()


async def test_a_trigger_runs_one_pass(harness: Harness) -> None:
    queue, rec = harness.queue, harness.rec
    start = now()
    queue.trigger(KIND, "ml", "bert")
    await rec.wait_calls(1)
    assert rec.calls == [(start, "ml", "bert")]
    await asyncio.sleep(RESYNC - 1)  # fake time: nothing else happens before the resync
    assert len(rec.calls) == 1
    assert queue.passes(KIND, "ml", "bert") == 1


async def test_triggers_during_a_pass_coalesce_into_one_more_pass(harness: Harness) -> None:
    queue, rec = harness.queue, harness.rec
    rec.gate = asyncio.Event()
    queue.trigger(KIND, "ml", "bert")
    await rec.wait_calls(1)
    for _ in range(25):  # watch events of the object and its children while the pass runs
        queue.trigger(KIND, "ml", "bert")
    rec.gate.set()
    await rec.wait_calls(2)
    assert rec.times[1] == rec.times[0]  # the extra pass follows at once...
    await asyncio.sleep(RESYNC - 1)
    assert len(rec.calls) == 2  # ...and there is exactly one
    assert queue.passes(KIND, "ml", "bert") == 2


async def test_triggers_between_passes_run_at_once(harness: Harness) -> None:
    queue, rec = harness.queue, harness.rec
    queue.trigger(KIND, "ml", "bert")
    await rec.wait_calls(1)
    await asyncio.sleep(10)
    queue.trigger(KIND, "ml", "bert")
    queue.trigger(KIND, "ml", "bert")
    await rec.wait_calls(2)
    assert rec.times[1] - rec.times[0] == 10
    await asyncio.sleep(RESYNC - 1)
    assert len(rec.calls) == 2


async def test_resync_runs_a_pass_every_resync_seconds(harness: Harness) -> None:
    queue, rec = harness.queue, harness.rec
    start = now()
    queue.trigger(KIND, "ml", "bert")
    await rec.wait_calls(4)
    assert [t - start for t in rec.times] == [0, RESYNC, 2 * RESYNC, 3 * RESYNC]


async def test_a_trigger_restarts_the_resync_period(harness: Harness) -> None:
    queue, rec = harness.queue, harness.rec
    start = now()
    queue.trigger(KIND, "ml", "bert")
    await rec.wait_calls(1)
    await asyncio.sleep(20)
    queue.trigger(KIND, "ml", "bert")
    await rec.wait_calls(3)
    assert [t - start for t in rec.times] == [0, 20, 20 + RESYNC]


async def test_failures_back_off_exponentially_up_to_the_cap(harness: Harness) -> None:
    queue, rec, errors = harness.queue, harness.rec, harness.errors
    rec.fail = True
    queue.trigger(KIND, "ml", "bert")
    await rec.wait_calls(8)
    gaps = [b - a for a, b in zip(rec.times, rec.times[1:], strict=False)]
    assert gaps == [1, 2, 4, 8, 8, 8, 8]
    assert len(errors) >= 7
    assert all(key == (KIND, "ml", "bert") and isinstance(exc, RuntimeError) for key, exc in errors)


async def test_triggers_during_backoff_cause_no_extra_pass(harness: Harness) -> None:
    queue, rec = harness.queue, harness.rec
    rec.fail = True
    queue.trigger(KIND, "ml", "bert")
    await rec.wait_calls(3)  # failures at 0, 1, 3; now waiting 4 s
    t = rec.times[-1]
    for _ in range(3):
        await asyncio.sleep(1)
        for _ in range(10):  # a storm of watch events must not turn into a hot loop
            queue.trigger(KIND, "ml", "bert")
    assert len(rec.calls) == 3
    await rec.wait_calls(4)
    assert rec.times[3] == t + 4  # the retry comes when the backoff says, once
    await asyncio.sleep(7.5)
    assert len(rec.calls) == 4


async def test_success_resets_the_backoff(harness: Harness) -> None:
    queue, rec = harness.queue, harness.rec
    rec.fail = True
    queue.trigger(KIND, "ml", "bert")
    await rec.wait_calls(4)  # 0, 1, 3, 7
    rec.fail = False
    await rec.wait_calls(5)  # 15: succeeds
    rec.fail = True
    queue.trigger(KIND, "ml", "bert")
    await rec.wait_calls(7)
    start = rec.times[4]
    assert [t - start for t in rec.times[4:]] == [0, 0, 1]  # back to the base delay


async def test_forget_cancels_the_worker(harness: Harness) -> None:
    queue, rec = harness.queue, harness.rec
    rec.gate = asyncio.Event()
    queue.trigger(KIND, "ml", "bert")
    await rec.wait_calls(1)
    queue.forget(KIND, "ml", "bert")  # the object was deleted
    async with asyncio.timeout(1):
        await rec.cancelled.wait()  # the running pass is cancelled
    assert queue.passes(KIND, "ml", "bert") == 0
    await asyncio.sleep(10 * RESYNC)
    assert len(rec.calls) == 1  # and no resync follows
    queue.forget(KIND, "ml", "bert")  # forgetting twice is harmless


async def test_forget_between_passes_stops_the_resync(harness: Harness) -> None:
    queue, rec = harness.queue, harness.rec
    queue.trigger(KIND, "ml", "bert")
    await rec.wait_calls(1)
    queue.forget(KIND, "ml", "bert")
    await asyncio.sleep(10 * RESYNC)
    assert len(rec.calls) == 1
    # A new object of the same name gets a fresh worker.
    queue.trigger(KIND, "ml", "bert")
    await rec.wait_calls(2)
    assert queue.passes(KIND, "ml", "bert") == 1


async def test_objects_are_reconciled_independently(harness: Harness) -> None:
    queue, rec = harness.queue, harness.rec
    rec.gate = asyncio.Event()
    queue.trigger(KIND, "ml", "a")
    queue.trigger(KIND, "ml", "b")
    queue.trigger(KIND, "other", "a")
    await rec.wait_calls(3)  # three passes in flight at once: one slow object does not block another
    assert sorted((ns, name) for _, ns, name in rec.calls) == [("ml", "a"), ("ml", "b"), ("other", "a")]
    rec.gate.set()


async def test_kinds_have_their_own_reconcilers() -> None:
    models, deployments = Reconciler(), Reconciler()
    queue = WorkQueue(reconcilers={"NeuronModel": models, "NeuronDeployment": deployments}, resync=RESYNC)
    try:
        queue.trigger("NeuronDeployment", "ml", "bert")
        await deployments.wait_calls(1)
        assert models.calls == []
        assert queue.passes("NeuronModel", "ml", "bert") == 0
        assert queue.passes("NeuronDeployment", "ml", "bert") == 1
    finally:
        await queue.stop()


async def test_stop_cancels_every_worker() -> None:
    rec = Reconciler()
    rec.gate = asyncio.Event()
    idle = Reconciler()
    queue = WorkQueue(reconcilers={KIND: rec, "Idle": idle}, resync=RESYNC)
    for name in ("a", "b", "c"):
        queue.trigger(KIND, "ml", name)
    queue.trigger("Idle", "ml", "x")
    await rec.wait_calls(3)
    await idle.wait_calls(1)
    await queue.stop()  # returns only once every worker has ended
    assert rec.cancelled.is_set()
    for name in ("a", "b", "c"):
        assert queue.passes(KIND, "ml", name) == 0
    await asyncio.sleep(10 * RESYNC)
    assert len(rec.calls) == 3
    assert len(idle.calls) == 1


def test_backoff_sequence() -> None:
    backoff = Backoff(base=0.5, cap=10)
    assert [backoff.next() for _ in range(8)] == [0.5, 1, 2, 4, 8, 10, 10, 10]
    backoff.reset()
    assert backoff.next() == 0.5

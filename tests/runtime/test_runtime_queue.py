"""The batcher's timing and admission rules, driven by a fake clock and asyncio.Event gates (no sleeps)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from neuron_runtime.batching.queue import Batcher, DispatchInfo, QueueFull, ShuttingDown
from neuron_runtime.config import Batching


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """An `execute` that records batches and blocks each one until the test opens its gate."""

    def __init__(self, gated: bool = False, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.fail_on = fail_on

    async def __call__(self, items: Sequence[str]) -> list[str]:
        self.batches.append(list(items))
        self.started.set()
        await self.gate.wait()
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError(f"model failed on {self.fail_on}")
        return [f"out-{i}" for i in items]


def make(recorder: Recorder, clock: FakeClock, **kwargs: object) -> Batcher[str, str]:
    in_flight = int(kwargs.pop("max_in_flight", 2))  # type: ignore[call-overload]
    partial = int(kwargs.pop("partial_in_flight", in_flight))  # type: ignore[call-overload]
    kwargs.setdefault("idle_dispatch", False)  # the delay rules alone; idle dispatch has its own tests below
    dispatched: list[DispatchInfo] = []
    batcher: Batcher[str, str] = Batcher(
        recorder,
        Batching(**kwargs),  # type: ignore[arg-type]
        max_in_flight=in_flight,
        partial_in_flight=partial,
        clock=clock,
        on_dispatch=dispatched.append,
    )
    batcher.start()
    batcher.dispatched = dispatched  # type: ignore[attr-defined]
    return batcher


async def test_full_batch_dispatches_at_once() -> None:
    clock, rec = FakeClock(), Recorder()
    b = make(rec, clock, max_batch_size=3, max_delay_ms=5)
    futures = [b.submit("k", f"r{i}", 1) for i in range(3)]
    assert await asyncio.gather(*futures) == ["out-r0", "out-r1", "out-r2"]
    assert rec.batches == [["r0", "r1", "r2"]]
    assert clock.now == 100.0  # no time passed: the size rule fired


async def test_partial_batch_waits_exactly_max_delay_from_the_oldest_request() -> None:
    clock, rec = FakeClock(), Recorder()
    b = make(rec, clock, max_batch_size=8, max_delay_ms=5)
    first = b.submit("k", "a", 1)
    clock.advance(0.003)
    second = b.submit("k", "b", 1)
    await b.wait_idle()
    assert rec.batches == []
    clock.advance(0.0019)  # oldest has waited 4.9 ms
    b.poke()
    await b.wait_idle()
    assert rec.batches == []
    clock.advance(0.0001)  # 5.0 ms
    b.poke()
    assert await asyncio.gather(first, second) == ["out-a", "out-b"]
    assert rec.batches == [["a", "b"]]
    assert b.dispatched[0].waits == pytest.approx((0.005, 0.002))  # type: ignore[attr-defined]


async def test_rows_not_requests_fill_a_batch() -> None:
    clock, rec = FakeClock(), Recorder()
    b = make(rec, clock, max_batch_size=4, max_delay_ms=5)
    f1 = b.submit("k", "three-rows", 3)
    f2 = b.submit("k", "two-rows", 2)  # 5 rows > 4: the first batch closes with 3 rows, the second waits
    assert await f1 == "out-three-rows"
    await b.wait_idle()
    assert rec.batches == [["three-rows"]]
    clock.advance(0.005)
    b.poke()
    assert await f2 == "out-two-rows"


async def test_shapes_queue_separately_and_the_oldest_ready_goes_first() -> None:
    clock, rec = FakeClock(), Recorder()
    b = make(rec, clock, max_batch_size=4, max_delay_ms=5, max_in_flight=1)
    short = b.submit(32, "s1", 1)
    clock.advance(0.001)
    long_ = b.submit(128, "l1", 1)
    clock.advance(0.010)  # both expired; 32 is older
    b.poke()
    await asyncio.gather(short, long_)
    assert rec.batches == [["s1"], ["l1"]]


async def test_preferred_size_dispatches_without_waiting() -> None:
    clock, rec = FakeClock(), Recorder()
    b = make(rec, clock, max_batch_size=8, max_delay_ms=5, preferred_batch_sizes=[2])
    futures = [b.submit("k", x, 1) for x in "ab"]
    await asyncio.gather(*futures)
    assert rec.batches == [["a", "b"]]
    assert clock.now == 100.0


async def test_batches_keep_growing_while_every_worker_is_busy() -> None:
    clock, rec = FakeClock(), Recorder(gated=True)
    b = make(rec, clock, max_batch_size=4, max_delay_ms=5, max_in_flight=1)
    first = b.submit("k", "a", 1)
    clock.advance(0.005)
    b.poke()
    await rec.started.wait()  # batch [a] is executing and holds the only slot
    later = [b.submit("k", x, 1) for x in "bcd"]
    clock.advance(0.050)  # long expired, but no slot: they must wait and stay together
    b.poke()
    await b.wait_idle()
    assert rec.batches == [["a"]]
    rec.gate.set()
    await asyncio.gather(first, *later)
    assert rec.batches == [["a"], ["b", "c", "d"]]


async def test_queue_bound_rejects_and_keeps_what_it_accepted() -> None:
    clock, rec = FakeClock(), Recorder(gated=True)
    b = make(rec, clock, max_batch_size=2, max_delay_ms=5, max_queue=4, max_in_flight=1)
    accepted = [b.submit("k", f"r{i}", 1) for i in range(2)]
    await rec.started.wait()  # [r0, r1] executing, queue empty
    accepted += [b.submit("k", f"r{i}", 1) for i in range(2, 6)]
    with pytest.raises(QueueFull, match="4 rows queued, limit 4"):
        b.submit("k", "r6", 1)
    rec.gate.set()
    assert await asyncio.gather(*accepted) == [f"out-r{i}" for i in range(6)]


async def test_cancelled_request_leaves_the_queue() -> None:
    clock, rec = FakeClock(), Recorder()
    b = make(rec, clock, max_batch_size=4, max_delay_ms=5, max_queue=4)
    gone = b.submit("k", "gone", 3)
    gone.cancel()
    await asyncio.sleep(0)  # let the done-callback run (a scheduling step, not a timing wait)
    assert b.queued_rows == 0
    kept = b.submit("k", "kept", 4)  # fits only because the cancelled rows were released
    assert await kept == "out-kept"
    assert rec.batches == [["kept"]]


async def test_failing_batch_fails_only_its_own_requests() -> None:
    clock, rec = FakeClock(), Recorder(fail_on="bad")
    b = make(rec, clock, max_batch_size=2, max_delay_ms=5)
    doomed = [b.submit("k", "ok1", 1), b.submit("k", "bad", 1)]
    fine = [b.submit("k", "ok2", 1), b.submit("k", "ok3", 1)]
    results = await asyncio.gather(*doomed, *fine, return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    assert isinstance(results[1], RuntimeError)
    assert results[2:] == ["out-ok2", "out-ok3"]


async def test_wrong_result_count_fails_the_batch() -> None:
    async def short(items: Sequence[str]) -> list[str]:
        return []

    b: Batcher[str, str] = Batcher(short, Batching(max_batch_size=1), clock=FakeClock())
    b.start()
    with pytest.raises(RuntimeError, match="produced 0 results"):
        await b.submit("k", "x", 1)


async def test_close_flushes_the_queue_and_refuses_new_work() -> None:
    clock, rec = FakeClock(), Recorder()
    b = make(rec, clock, max_batch_size=8, max_delay_ms=60_000)
    pending = b.submit("k", "a", 1)
    await b.wait_idle()
    assert rec.batches == []
    await b.close()
    assert await pending == "out-a"
    with pytest.raises(ShuttingDown):
        b.submit("k", "late", 1)


async def test_partial_batch_waits_for_an_idle_worker_but_a_full_one_pipelines() -> None:
    clock, rec = FakeClock(), Recorder(gated=True)
    b = make(rec, clock, max_batch_size=2, max_delay_ms=5, max_in_flight=2, partial_in_flight=1)
    first = [b.submit("k", x, 1) for x in "ab"]  # full: dispatched at once, held by the gate
    await rec.started.wait()
    lone = b.submit("k", "c", 1)
    clock.advance(0.010)  # expired, but the only worker is busy: a partial batch must keep waiting
    b.poke()
    await b.wait_idle()
    assert rec.batches == [["a", "b"]]
    second = b.submit("k", "d", 1)  # now full: it may queue behind the running batch
    await b.wait_idle()
    assert rec.batches == [["a", "b"], ["c", "d"]]
    rec.gate.set()
    assert await asyncio.gather(*first, lone, second) == ["out-a", "out-b", "out-c", "out-d"]


# -- idle dispatch ---------------------------------------------------------------------------------------------------
async def test_idle_dispatch_sends_a_partial_batch_at_once_when_a_worker_is_idle() -> None:
    clock, rec = FakeClock(), Recorder(gated=True)
    b = make(rec, clock, max_batch_size=8, max_delay_ms=5, idle_dispatch=True, max_in_flight=2, partial_in_flight=1)
    first = b.submit("k", "a", 1)
    await rec.started.wait()
    assert rec.batches == [["a"]]  # no time passed: the only worker was idle
    assert clock.now == 100.0
    # While the worker is busy, requests batch up; the delay expiring does not send a partial batch to wait
    # behind the running one.
    later = [b.submit("k", f"r{i}", 1) for i in range(3)]
    clock.advance(0.010)
    b.poke()
    await b.wait_idle()
    assert rec.batches == [["a"]]
    rec.gate.set()
    assert await first == "out-a"
    assert await asyncio.gather(*later) == ["out-r0", "out-r1", "out-r2"]
    assert rec.batches == [["a"], ["r0", "r1", "r2"]]  # sent together as soon as the worker was free


async def test_idle_dispatch_still_pipelines_full_batches() -> None:
    clock, rec = FakeClock(), Recorder(gated=True)
    b = make(rec, clock, max_batch_size=2, max_delay_ms=5, idle_dispatch=True, max_in_flight=2, partial_in_flight=1)
    futures = [b.submit("k", "a", 1)]
    await rec.started.wait()
    futures += [b.submit("k", f"r{i}", 1) for i in range(2)]
    await b.wait_idle()
    assert rec.batches == [["a"], ["r0", "r1"]]  # a full batch queues behind the running one
    futures.append(b.submit("k", "x", 1))
    await b.wait_idle()
    assert len(rec.batches) == 2  # a partial one does not (two in flight, no idle worker)
    rec.gate.set()
    assert await asyncio.gather(*futures) == ["out-a", "out-r0", "out-r1", "out-x"]


async def test_a_per_request_exception_fails_only_that_request() -> None:
    clock = FakeClock()

    async def execute(items: Sequence[str]) -> list[str | BaseException]:
        return [ValueError(f"bad {i}") if i.startswith("bad") else f"out-{i}" for i in items]

    b: Batcher[str, str] = Batcher(execute, Batching(max_batch_size=3, idle_dispatch=False), clock=clock)
    b.start()
    futures = [b.submit("k", item, 1) for item in ("a", "bad1", "c")]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert results[0] == "out-a"
    assert results[2] == "out-c"
    assert isinstance(results[1], ValueError)
    assert str(results[1]) == "bad bad1"

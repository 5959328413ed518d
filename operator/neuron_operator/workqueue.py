"""A per-object work queue: one worker per custom resource, coalesced triggers, resync and backoff.

Watch events (of the object or of its children) only *trigger* a worker; the worker runs the
level-triggered reconcile at most once at a time per object, again after ``resync`` seconds (drift repair,
missed events), and after an exponential backoff on failure — never in a hot loop. Independent of kopf
and of Kubernetes, so it is tested with a fake clock.

Every pass is measured on the loop's clock (``neuron_operator_reconcile_duration_seconds``; failures also
count in ``neuron_operator_reconcile_errors_total``), and the queue's depth is read at scrape time
(``neuron_operator.metrics``). ``current_pass()`` tells a running reconcile its pass number (for its
decision log line).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from neuron_operator.logs import fields
from neuron_operator.metrics import METRICS, OperatorMetrics, error_reason

log = logging.getLogger(__name__)

Key = tuple[str, str, str]  # (kind, namespace, name)
#: A pass; it may return seconds until its object needs the next one (sooner than the resync), else None.
Reconcile = Callable[[str, str], Awaitable[float | None]]

_current_pass: contextvars.ContextVar[int] = contextvars.ContextVar("neuron_operator_pass", default=0)


def current_pass() -> int:
    """Number (from 1) of the reconcile pass running in this task for its object; 0 outside a pass."""
    return _current_pass.get()


def describe_error(exc: BaseException) -> str:
    """``str(exc)``, or ``repr(exc)`` when that is empty (``TimeoutError()`` has no message)."""
    return str(exc) or repr(exc)


@dataclass
class Backoff:
    base: float
    cap: float
    failures: int = 0

    def next(self) -> float:
        delay = float(min(self.cap, self.base * (2**self.failures)))
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


@dataclass
class _Worker:
    trigger: asyncio.Event
    task: asyncio.Task[None]
    backoff: Backoff
    passes: int = 0
    running: bool = False


@dataclass
class WorkQueue:
    """Runs ``reconcilers[kind](namespace, name)`` for every triggered key."""

    reconcilers: dict[str, Reconcile]
    resync: float
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    on_error: Callable[[Key, BaseException], None] | None = None
    #: Where pass durations and errors are recorded (the process-wide default registry's, unless a test
    #: passes its own); the queue's depth is read from ``depth()``/``running()``/``worker_count()``.
    metrics: OperatorMetrics = field(default=METRICS, repr=False)
    _workers: dict[Key, _Worker] = field(default_factory=dict)
    #: Completed passes per kind (successful or not), exported as a metric.
    total_passes: collections.Counter[str] = field(default_factory=collections.Counter)
    _stopped: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.metrics.track_queue(self)

    def trigger(self, kind: str, namespace: str, name: str) -> None:
        if self._stopped:  # after stop() (e.g. leadership lost) nothing reconciles again
            return
        key = (kind, namespace, name)
        worker = self._workers.get(key)
        if worker is None or worker.task.done():
            event = asyncio.Event()
            task = asyncio.get_running_loop().create_task(self._run(key, event))
            worker = _Worker(event, task, Backoff(self.backoff_base, self.backoff_cap))
            self._workers[key] = worker
        worker.trigger.set()

    def forget(self, kind: str, namespace: str, name: str) -> None:
        worker = self._workers.pop((kind, namespace, name), None)
        if worker is not None:
            worker.task.cancel()

    def passes(self, kind: str, namespace: str, name: str) -> int:
        worker = self._workers.get((kind, namespace, name))
        return worker.passes if worker else 0

    def depth(self) -> dict[str, int]:
        """Objects per kind triggered and waiting for their pass (behind a running pass or a backoff)."""
        return self._count(lambda w: w.trigger.is_set())

    def running(self) -> dict[str, int]:
        """Passes running now, per kind."""
        return self._count(lambda w: w.running)

    def worker_count(self) -> dict[str, int]:
        """Objects with a live worker, per kind."""
        return self._count(lambda w: not w.task.done())

    def _count(self, predicate: Callable[[_Worker], bool]) -> dict[str, int]:
        counts = dict.fromkeys(self.reconcilers, 0)  # every kind, so a series exists before its first object
        for (kind, _, _), worker in list(self._workers.items()):  # a copy: scrapes run in another thread
            if predicate(worker):
                counts[kind] = counts.get(kind, 0) + 1
        return counts

    async def stop(self) -> None:
        """Cancel every worker; triggers are ignored from now on (idempotent)."""
        self._stopped = True
        tasks = [w.task for w in self._workers.values()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._workers.clear()

    async def _run(self, key: Key, trigger: asyncio.Event) -> None:
        kind, namespace, name = key
        reconcile = self.reconcilers[kind]
        while True:
            await trigger.wait()
            trigger.clear()
            worker = self._workers.get(key)
            if worker is None:
                return
            loop = asyncio.get_running_loop()
            started = loop.time()
            worker.running = True
            token = _current_pass.set(worker.passes + 1)
            error: Exception | None = None
            sooner: float | None = None
            try:
                sooner = await reconcile(namespace, name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: log, back off, retry (level-triggered)
                error = exc
            finally:
                worker.running = False
                _current_pass.reset(token)
            self.metrics.observe_reconcile(kind, loop.time() - started, error)
            worker.passes += 1
            self.total_passes[kind] += 1
            if error is not None:
                delay = worker.backoff.next()
                message = describe_error(error)
                log.warning(
                    "reconcile %s/%s/%s failed (retry in %.1fs): %s",
                    kind,
                    namespace,
                    name,
                    delay,
                    message,
                    extra=fields(kind=kind, namespace=namespace, name=name, reason=error_reason(error), retry_in=delay),
                )
                if self.on_error is not None:
                    self.on_error(key, error)
                # Triggers during the backoff are coalesced into the retry, never a hot loop.
                await asyncio.sleep(delay)
            else:
                worker.backoff.reset()
                wait = self.resync if sooner is None else max(0.0, min(self.resync, float(sooner)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(trigger.wait(), timeout=wait)
            trigger.set()

"""A per-object work queue: one worker per custom resource, coalesced triggers, resync and backoff.

Watch events (of the object or of its children) only *trigger* a worker; the worker runs the
level-triggered reconcile at most once at a time per object, again after ``resync`` seconds (drift repair,
missed events), and after an exponential backoff on failure — never in a hot loop. Independent of kopf
and of Kubernetes, so it is tested with a fake clock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Key = tuple[str, str, str]  # (kind, namespace, name)
Reconcile = Callable[[str, str], Awaitable[None]]


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


@dataclass
class WorkQueue:
    """Runs ``reconcilers[kind](namespace, name)`` for every triggered key."""

    reconcilers: dict[str, Reconcile]
    resync: float
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    on_error: Callable[[Key, BaseException], None] | None = None
    _workers: dict[Key, _Worker] = field(default_factory=dict)
    #: Completed passes per kind (successful or not), exported as a metric.
    total_passes: collections.Counter[str] = field(default_factory=collections.Counter)

    def trigger(self, kind: str, namespace: str, name: str) -> None:
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

    async def stop(self) -> None:
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
            try:
                await reconcile(namespace, name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: log, back off, retry (level-triggered)
                worker.passes += 1
                self.total_passes[kind] += 1
                delay = worker.backoff.next()
                log.warning("reconcile %s/%s/%s failed (retry in %.1fs): %s", kind, namespace, name, delay, exc)
                if self.on_error is not None:
                    self.on_error(key, exc)
                # Triggers during the backoff are coalesced into the retry, never a hot loop.
                await asyncio.sleep(delay)
            else:
                worker.passes += 1
                self.total_passes[kind] += 1
                worker.backoff.reset()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(trigger.wait(), timeout=self.resync)
            trigger.set()

"""Leader election on a coordination.k8s.io/v1 Lease (the client-go algorithm, simplified).

With ``replicas: 2`` only the holder of the Lease reconciles; the other waits (a standby). The holder
renews every ``retry_period``. Every failed attempt counts against ``renew_deadline``: an ``ApiError``, a
connection error (the HTTP client's ``HTTPError``, ``OSError``), or a request that hangs (each attempt is bounded by
``asyncio.wait_for``). When no renewal has succeeded for ``renew_deadline`` — or another holder is observed —
``hold`` returns: leadership is lost and the process stops reconciling and exits, so Kubernetes restarts it as
a standby. Because ``renew_deadline < lease_duration`` the old leader has stopped before a standby may take an
unrenewed Lease (``renewTime + leaseDurationSeconds`` in the past). Optimistic locking (resourceVersion)
makes candidates racing for an expired Lease safe: exactly one update succeeds.

On graceful shutdown ``release`` hands the Lease over at once (client-go ``ReleaseOnCancel``): holder "",
``leaseDurationSeconds: 1``, so a standby acquires it at its next attempt instead of after the lease duration.

Lease timestamps come from the injected ``clock``; the renew deadline is a local duration and is measured on
the event loop's monotonic clock, so a wall-clock step can neither end nor stretch a leadership.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

from lightkube import ApiError
from prometheus_client import Gauge

from neuron_operator.kube import Kube

log = logging.getLogger(__name__)
MICRO = "%Y-%m-%dT%H:%M:%S.%fZ"


def _http_client_error() -> type[Exception]:
    """The base exception of the HTTP client lightkube talks through, whose transport errors (ConnectError,
    ReadTimeout, ...) lightkube lets through unwrapped: ``httpx2.HTTPError`` since lightkube 1.0 (a fork of httpx
    with its own classes), ``httpx.HTTPError`` before. Found from ``ApiError`` (a subclass), so the operator
    imports neither client: httpx is not even installed in the operator image."""
    return cast(type[Exception], next(c for c in ApiError.__mro__ if c.__name__ == "HTTPError"))


HTTP_ERROR: Final = _http_client_error()
#: Failures of one attempt that count against the renew deadline (apiserver down, slow, or refusing).
#: ``ApiError`` is an ``HTTP_ERROR``; listed for the reader. ``TimeoutError`` is also asyncio's (3.11+).
TRANSIENT_ERRORS: Final = (ApiError, HTTP_ERROR, OSError, TimeoutError)

#: 1 while this process holds the Lease (and reconciles), 0 as a standby or after losing it.
LEADER: Final = Gauge(
    "neuron_operator_leader",
    "1 while this operator process holds the leader-election Lease and reconciles, else 0",
    ["identity"],
)


def _now() -> datetime:
    return datetime.now(UTC)


def _parse(ts: str | None) -> datetime | None:
    if not ts:
        return None
    return (
        datetime.strptime(ts, MICRO).replace(tzinfo=UTC)
        if "." in ts
        else datetime.fromisoformat(ts.replace("Z", "+00:00"))
    )


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        if not retry_period > 0:
            raise ValueError(f"retry_period: must be positive, got {retry_period}")
        if not renew_deadline > retry_period:
            raise ValueError(f"renew_deadline: must be longer than retry_period ({retry_period}), got {renew_deadline}")
        if not lease_duration > renew_deadline:
            raise ValueError(
                f"lease_duration: must be longer than renew_deadline ({renew_deadline}), got {lease_duration} "
                "(the leader must stop before a standby may take its Lease)"
            )
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.lease_duration, self.renew_deadline, self.retry_period = (
            lease_duration,
            renew_deadline,
            retry_period,
        )
        self.clock = clock
        #: Bound of one attempt (a read and a write): a hung request fails it, and at least two attempts fit
        #: in the renew deadline, so one hung connection does not by itself cost the leadership.
        self.attempt_timeout = renew_deadline / 2
        self._leading = False
        #: Loop time at which the last successful acquire/renew attempt started.
        self._last_renew: float | None = None
        #: Holder seen by the last attempt that read the Lease.
        self.observed_holder: str | None = None
        self._gauge = LEADER.labels(identity)
        self._gauge.set(0)

    @property
    def is_leader(self) -> bool:
        """True from a successful ``acquire`` until ``hold`` returns or ``release`` is called."""
        return self._leading

    def _set_leading(self, leading: bool) -> None:
        self._leading = leading
        self._gauge.set(1 if leading else 0)

    def _spec(self, acquire_time: str | None, transitions: int) -> dict[str, Any]:
        now = self.clock().strftime(MICRO)
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_duration),
            "acquireTime": acquire_time or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True when we hold the Lease afterwards. API and connection errors propagate."""
        lease = await self.kube.get("Lease", self.name, self.namespace)
        if lease is None:
            manifest = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(None, 0),
            }
            obj, created = await self.kube.create(manifest)
            self.observed_holder = (obj.get("spec") or {}).get("holderIdentity")
            return created
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        self.observed_holder = holder
        renewed = _parse(spec.get("renewTime"))
        duration = timedelta(seconds=float(spec.get("leaseDurationSeconds") or self.lease_duration))
        expired = renewed is None or renewed + duration < self.clock()
        if holder not in (None, "", self.identity) and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        lease["spec"] = self._spec(spec.get("acquireTime") if holder == self.identity else None, transitions)
        try:
            await self.kube.replace(lease)
        except ApiError as exc:
            if exc.status.code == 409:  # someone else won the race
                return False
            raise
        self.observed_holder = self.identity
        return True

    async def _attempt(self, within: float) -> bool | None:
        """One attempt bounded to ``within`` seconds: its answer, or None when it failed (error or timeout)."""
        try:
            return await asyncio.wait_for(self.try_acquire_or_renew(), timeout=max(within, 0.0))
        except TRANSIENT_ERRORS as exc:
            what = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            log.warning("leader election %s/%s: attempt failed: %s", self.namespace, self.name, what)
        except Exception:  # a malformed Lease, a bug: never silent, never fatal to the loop
            log.exception("leader election %s/%s: attempt failed", self.namespace, self.name)
        return None

    async def acquire(self) -> None:
        """Block until we hold the Lease; every failure is retried after ``retry_period``."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            if await self._attempt(self.attempt_timeout):
                self._last_renew = started
                self._set_leading(True)
                log.info("acquired leader lease %s/%s as %s", self.namespace, self.name, self.identity)
                return
            await asyncio.sleep(self.retry_period)

    async def hold(self) -> None:
        """Renew every ``retry_period`` until leadership is lost, then return (never raises but CancelledError).

        Lost: no renewal succeeded for ``renew_deadline`` (measured from the start of the last successful
        attempt, which is no later than the renewTime it wrote), or an attempt read another holder / lost an
        update race. Each attempt is bounded by ``attempt_timeout`` and by the deadline, so this returns at the
        deadline even while a request hangs.
        """
        loop = asyncio.get_running_loop()
        last_ok = self._last_renew if self._last_renew is not None else loop.time()
        while True:
            remaining = last_ok + self.renew_deadline - loop.time()
            await asyncio.sleep(min(self.retry_period, max(remaining, 0.0)))
            started = loop.time()
            remaining = last_ok + self.renew_deadline - started
            if remaining <= 0:
                log.error(
                    "lost leader lease %s/%s: not renewed for %.1fs (renew deadline)",
                    self.namespace,
                    self.name,
                    started - last_ok,
                )
                break
            result = await self._attempt(min(remaining, self.attempt_timeout))
            if result:
                last_ok = self._last_renew = started
            elif result is False:
                log.error(
                    "lost leader lease %s/%s: held by %r", self.namespace, self.name, self.observed_holder or "another"
                )
                break
        self._set_leading(False)

    async def release(self) -> bool:
        """On graceful shutdown: give the Lease up if we hold it, so a standby takes over at once.

        The update is optimistic-locked on the Lease just read; errors are logged, never raised. True when
        released.
        """
        if not self._leading:
            return False
        self._set_leading(False)
        try:
            return await asyncio.wait_for(self._release(), timeout=self.renew_deadline)
        except Exception as exc:
            log.warning("leader election: could not release lease %s/%s: %s", self.namespace, self.name, exc)
            return False

    async def _release(self) -> bool:
        lease = await self.kube.get("Lease", self.name, self.namespace)
        spec = (lease or {}).get("spec") or {}
        if lease is None or spec.get("holderIdentity") != self.identity:
            log.info("leader lease %s/%s is not ours any more: nothing to release", self.namespace, self.name)
            return False
        now = self.clock().strftime(MICRO)
        lease["spec"] = {
            **spec,
            "holderIdentity": "",
            "leaseDurationSeconds": 1,
            "acquireTime": now,
            "renewTime": now,
        }
        await self.kube.replace(lease)  # 409 if it changed since we read it: then it is not ours to release
        log.info("released leader lease %s/%s", self.namespace, self.name)
        return True

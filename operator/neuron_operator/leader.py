"""Leader election on a coordination.k8s.io/v1 Lease (the client-go algorithm, simplified).

With ``replicas: 2`` only the holder of the Lease reconciles; the other waits. The holder renews every
``retry_period``; if it cannot renew within ``renew_deadline`` it stops (and the process exits, so
Kubernetes restarts it as a follower). A follower takes over once the Lease has not been renewed for
``lease_duration``. Optimistic locking (resourceVersion) makes two candidates racing for an expired Lease
safe: exactly one update succeeds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from lightkube import ApiError

from neuron_operator.kube import Kube

log = logging.getLogger(__name__)
MICRO = "%Y-%m-%dT%H:%M:%S.%fZ"


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
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.lease_duration, self.renew_deadline, self.retry_period = (
            lease_duration,
            renew_deadline,
            retry_period,
        )
        self.clock = clock

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
        """One attempt; True when we hold the Lease afterwards."""
        lease = await self.kube.get("Lease", self.name, self.namespace)
        if lease is None:
            manifest = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(None, 0),
            }
            _, created = await self.kube.create(manifest)
            return created
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
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
        return True

    async def acquire(self) -> None:
        """Block until we are the leader."""
        while True:
            try:
                if await self.try_acquire_or_renew():
                    log.info("acquired leader lease %s/%s as %s", self.namespace, self.name, self.identity)
                    return
            except ApiError as exc:
                log.warning("leader election: %s", exc)
            await asyncio.sleep(self.retry_period)

    async def hold(self) -> None:
        """Renew until renewal fails for longer than ``renew_deadline``; then return (leadership lost)."""
        last_ok = self.clock()
        while True:
            await asyncio.sleep(self.retry_period)
            try:
                ok = await self.try_acquire_or_renew()
            except ApiError as exc:
                log.warning("leader election: renew failed: %s", exc)
                ok = False
            if ok:
                last_ok = self.clock()
            elif not ok and (self.clock() - last_ok).total_seconds() > self.renew_deadline:
                log.error("lost leader lease %s/%s", self.namespace, self.name)
                return

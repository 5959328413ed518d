"""The periodic artifact garbage collector (opt-in: ``gc_enabled``): observe, decide (``resources.retention``), act.

It runs as one more kind of the work queue (``KIND``, one object), so it runs only where the queue runs, on the
leader, stops with it when leadership is lost, and gets the queue's resync, backoff and metrics. Each pass:

1. in a new interval slot (``gc_interval_seconds``), lists every NeuronModel and operator-owned Deployment in
   scope and creates the slot's GC Job of every storage location in use (create-or-get: the Job name hashes the
   location and the slot, so a restarted operator finds the Jobs it created). A claim that does not exist gets
   no Job (it would wait in Pending);
2. reads every finished GC Job not reported yet: marks it reported (an annotation, server-side applied; passes
   never overlap, and a restarted operator sees the mark), then emits an Event on it and updates the metrics
   (``neuron_operator_artifact_gc_expired``, ``neuron_operator_artifact_gc_deleted_bytes_total``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from lightkube import ApiError

from neuron_operator import metrics
from neuron_operator.api import Reason
from neuron_operator.conditions import utc_now
from neuron_operator.kube import Kube
from neuron_operator.resources import names
from neuron_operator.resources.retention import (
    ANNOTATION_REPORTED,
    COMPONENT,
    LABEL_SLOT,
    build_gc_job,
    gc_job_name,
    gc_locations,
    gc_outcome,
    interval_slot,
    outcome_message,
)
from neuron_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

#: The work-queue kind of the collector, and its one object's (namespace, name).
KIND: Final = "ArtifactGC"
OBJECT: Final = ("", "artifacts")
JOB_LABELS: Final = {names.MANAGED_BY: names.OPERATOR, names.COMPONENT: COMPONENT}


class ArtifactGC:
    """State of the collector in one operator process: the slot whose Jobs exist, the last run's counts."""

    def __init__(self, kube: Kube, settings: OperatorSettings, clock: Callable[[], datetime] = utc_now) -> None:
        self.kube, self.settings, self.clock = kube, settings, clock
        self.applied_slot: int | None = None
        #: (storage, mode) -> (newest slot reported, expired count per Job of that slot).
        self._expired: dict[tuple[str, str], tuple[int, dict[str, int]]] = {}

    def _scopes(self) -> list[str | None]:
        return list(self.settings.namespaces) or [None]

    async def _list(self, kind: str, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for namespace in self._scopes():
            found += await self.kube.list(kind, namespace, labels=labels)
        return found

    async def run_pass(self, _namespace: str = "", _name: str = "") -> None:
        """One pass (the work queue's reconcile signature)."""
        now = self.clock()
        slot = interval_slot(now, self.settings.gc_interval_seconds)
        if slot != self.applied_slot:
            await self.start_jobs(slot)
            self.applied_slot = slot
        await self.report(now)

    async def start_jobs(self, slot: int) -> list[str]:
        """Create the GC Job of every storage location in use for ``slot``; returns the names of those created."""
        models = await self._list("NeuronModel")
        deployments = await self._list("Deployment", labels=names.common_labels("runtime"))
        created_names: list[str] = []
        for location in gc_locations(models, deployments, self.settings):
            if location.claim is not None:
                claim = await self.kube.get("PersistentVolumeClaim", location.claim, location.namespace)
                if claim is None:
                    log.info("artifact GC: claim %s/%s does not exist: skipped", location.namespace, location.claim)
                    continue
            job, created = await self.kube.create(build_gc_job(location, self.settings, slot))
            if created:
                created_names.append(gc_job_name(location, slot))
                log.info(
                    "artifact GC: created Job %s/%s for %s (%d referenced keys)",
                    location.namespace,
                    job["metadata"]["name"],
                    location.id,
                    len(location.keep),
                )
        return created_names

    async def report(self, now: datetime) -> None:
        """Report every finished GC Job once: Event and metrics."""
        for job in await self._list("Job", labels=JOB_LABELS):
            await self._report_job(job, now)

    async def _report_job(self, listed: dict[str, Any], now: datetime) -> None:
        meta = listed["metadata"]
        if (meta.get("annotations") or {}).get(ANNOTATION_REPORTED) or meta.get("deletionTimestamp"):
            return
        pods = await self.kube.list("Pod", meta["namespace"], labels={"job-name": meta["name"]})
        outcome = gc_outcome(listed, pods)
        if outcome is None:
            return
        mark = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "annotations": {ANNOTATION_REPORTED: now.strftime("%Y-%m-%dT%H:%M:%SZ")},
            },
        }
        try:
            job = {**await self.kube.apply(mark), "apiVersion": "batch/v1", "kind": "Job"}
        except ApiError as exc:
            if exc.status.code == 404:  # deleted meanwhile (its TTL): nothing to report on
                return
            raise
        message = outcome_message(job, outcome)
        if outcome.succeeded:
            reason = Reason.ARTIFACTS_EXPIRED if outcome.mode == "dry_run" else Reason.ARTIFACTS_COLLECTED
            await self.kube.event(job, "Normal", reason, message, now)
            self._observe(job, outcome.storage, outcome.mode, outcome.expired, outcome.deleted_bytes)
        else:
            await self.kube.event(job, "Warning", Reason.ARTIFACT_GC_FAILED, message, now)
        log.info("artifact GC: Job %s/%s: %s", meta["namespace"], meta["name"], message)

    def _observe(self, job: dict[str, Any], storage: str, mode: str, expired: int, deleted_bytes: int) -> None:
        """The gauge sums the expired artifacts of the newest slot's Jobs of a (storage, mode)."""
        try:
            slot = int(((job["metadata"].get("labels") or {}).get(LABEL_SLOT)) or 0)
        except ValueError:
            slot = 0
        newest, counts = self._expired.get((storage, mode), (slot, {}))
        if slot > newest:
            newest, counts = slot, {}
        if slot == newest:
            counts[job["metadata"]["name"]] = expired
        self._expired[(storage, mode)] = (newest, counts)
        metrics.observe_gc(storage, mode, sum(counts.values()), deleted_bytes)

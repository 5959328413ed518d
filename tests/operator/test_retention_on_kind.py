"""The artifact garbage collector on the real control plane: real compile Jobs write two artifacts to a real
PersistentVolumeClaim, one model is deleted, then GC passes (``gc.ArtifactGC``, in this process, against the
cluster's apiserver, its clock injected) run real GC Jobs from the runtime image: a dry run that deletes nothing
and says so in an Event, then a deleting run that removes the unreferenced artifact and leaves the referenced one
verifying. The minimum age is 0 here (below what the settings accept: set on a copy) so that no test waits.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from lightkube import AsyncClient, KubeConfig
from operator_support import Operator, Store, mlp_model
from test_scenarios import apply, get, wait_condition

from localcluster.kind import KindCluster
from localcluster.wait import until
from neuron_operator import gc
from neuron_operator.kube import Kube
from neuron_operator.resources.retention import ANNOTATION_REPORTED, COMPONENT, interval_slot
from neuron_operator.settings import OperatorSettings
from neuron_runtime import artifact
from neuron_runtime.config import MANIFEST_NAME
from neuron_runtime.retention import MARKER_DIR


def gc_jobs(cluster: KindCluster, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get(cluster, namespace, "jobs", "-l", f"app.kubernetes.io/component={COMPONENT}")[
        "items"
    ]
    return items


def gc_events(cluster: KindCluster, namespace: str, job: str) -> list[tuple[str, str]]:
    """The operator's Events on a GC Job (not the Job controller's SuccessfulCreate, Completed)."""
    items = get(cluster, namespace, "events", "--field-selector", f"involvedObject.name={job}")["items"]
    ours = ("ArtifactsExpired", "ArtifactsCollected", "ArtifactGCFailed")
    return [(e["reason"], e["message"]) for e in items if e["reason"] in ours]


def run_gc(
    cluster: KindCluster, namespace: str, settings: OperatorSettings, now: datetime
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A GC pass that creates this slot's Job; the Job finishes; a second pass reports it. -> (Job, its Events)"""

    async def passes() -> None:
        kube = Kube(AsyncClient(KubeConfig.from_file(str(cluster.kubeconfig)), field_manager="neuron-operator"))
        try:
            collector = gc.ArtifactGC(kube, settings, lambda: now)
            await collector.run_pass()
            name = next(
                j["metadata"]["name"]
                for j in gc_jobs(cluster, namespace)
                if j["metadata"]["labels"]["neuron.dev/gc-slot"] == str(collector.applied_slot)
            )

            def finished() -> bool:
                conditions = get(cluster, namespace, "job", name).get("status", {}).get("conditions") or []
                return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions)

            await asyncio.to_thread(until, finished, timeout=180, interval=1, what=f"GC Job {name} to finish")
            await collector.run_pass()
        finally:
            await kube.client.close()

    asyncio.run(passes())
    slot = str(interval_slot(now, settings.gc_interval_seconds))
    [job] = [j for j in gc_jobs(cluster, namespace) if j["metadata"]["labels"]["neuron.dev/gc-slot"] == slot]
    assert job["metadata"]["annotations"][ANNOTATION_REPORTED]
    return job, gc_events(cluster, namespace, job["metadata"]["name"])


def test_unreferenced_artifacts_are_reported_then_collected(
    cluster: KindCluster, operator: Operator, store: Store, namespace: str
) -> None:
    kept_model, gone_model = mlp_model("kept"), mlp_model("gone")
    gone_model["spec"]["source"]["python"]["args"]["out_features"] = 3  # another artifact
    apply(cluster, namespace, kept_model)
    apply(cluster, namespace, gone_model)
    kept = wait_condition(cluster, namespace, "nm", "kept", "Ready", timeout=300)["status"]["cacheKey"]
    gone = wait_condition(cluster, namespace, "nm", "gone", "Ready", timeout=300)["status"]["cacheKey"]
    assert kept != gone
    assert (store.path / kept / MANIFEST_NAME).exists()
    assert (store.path / gone / MANIFEST_NAME).exists()
    cluster.kubectl("delete", "nm", "gone", "-n", namespace)

    # Minimum age 0: an unreferenced artifact expires at once. Only this namespace is in scope.
    settings = operator.settings.model_copy(
        update={"gc_enabled": True, "gc_min_age_seconds": 0, "gc_delete": False, "namespaces": [namespace]}
    )
    now = datetime.now(UTC)
    job, events = run_gc(cluster, namespace, settings, now)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--delete" not in args
    [(reason, message)] = events
    assert reason == "ArtifactsExpired"
    assert "dry run over pvc:" in message
    assert "1 artifacts expired" in message
    assert gone[:16] in message
    assert (store.path / gone / MANIFEST_NAME).exists()  # nothing deleted
    assert (store.path / kept / MANIFEST_NAME).exists()
    marker = store.path / MARKER_DIR / kept  # the referenced artifact's "last referenced" marker
    assert marker.exists()

    # The next interval, deleting.
    settings = settings.model_copy(update={"gc_delete": True})
    job, events = run_gc(cluster, namespace, settings, now + timedelta(seconds=settings.gc_interval_seconds))
    assert "--delete" in job["spec"]["template"]["spec"]["containers"][0]["args"]
    [(reason, message)] = events
    assert reason == "ArtifactsCollected"
    assert "deleted 1 expired artifacts" in message
    assert not (store.path / gone).exists()
    manifest, _digest = artifact.verify(store.path / kept)  # the kept artifact is whole and verifies
    assert manifest.cache_key == kept
    pod = get(cluster, namespace, "pods", "-l", f"job-name={job['metadata']['name']}")["items"][0]
    result = json.loads(pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert result["dryRun"] is False
    assert [e["cacheKey"] for e in result["expired"]] == [gone]
    assert result["deletedBytes"] > 0

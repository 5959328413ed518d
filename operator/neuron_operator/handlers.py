"""kopf glue: watch events become work-queue triggers; indices answer cross-object questions.

No decisions live here. Handlers use ``on.event`` (not create/update), so kopf stores no state on our
objects and adds no finalizers: uninstalling the operator never blocks deleting a NeuronModel. The
level-triggered loop is the work queue's (resync + backoff); kopf indices map a cache key to the Ready
artifacts that carry it, and a NeuronModel to the NeuronDeployments that reference it.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from lightkube import AsyncClient, KubeConfig

from neuron_operator import gc, metrics
from neuron_operator.kube import Kube
from neuron_operator.reconcile import SHARED_STORAGE, Context, reconcile_deployment, reconcile_model
from neuron_operator.resources import names
from neuron_operator.settings import OperatorSettings
from neuron_operator.workqueue import WorkQueue

GROUP, VERSION = "neuron.dev", "v1alpha1"
log = logging.getLogger(__name__)


class Runtime:
    """Process-wide state, created at startup and kept in kopf's memo."""

    def __init__(self, settings: OperatorSettings, kube: Kube) -> None:
        self.settings = settings
        self.kube = kube
        self.artifact_index: kopf.Index[Any, Any] | None = None
        self.ctx = Context(kube=kube, settings=settings, artifacts=self.lookup_artifacts)
        self.gc = gc.ArtifactGC(kube, settings)
        self.queue = WorkQueue(
            reconcilers={
                "NeuronModel": lambda ns, name: reconcile_model(self.ctx, ns, name),
                "NeuronDeployment": lambda ns, name: reconcile_deployment(self.ctx, ns, name),
                # The artifact GC: one object, run on the leader only (like every reconcile), every resync.
                **({gc.KIND: self.gc.run_pass} if settings.gc_enabled else {}),
            },
            resync=settings.resync_seconds,
            backoff_base=settings.backoff_base_seconds,
            backoff_cap=settings.backoff_max_seconds,
        )

    def lookup_artifacts(self, namespace: str, key: str) -> list[dict[str, Any]]:
        if self.artifact_index is None:
            return []
        return list(self.artifact_index.get((namespace, key), []))


def runtime(memo: kopf.Memo) -> Runtime:
    rt: Runtime = memo["runtime"]
    return rt


async def make_runtime(settings: OperatorSettings) -> Runtime:
    config = KubeConfig.from_env()
    return Runtime(settings, Kube(AsyncClient(config, field_manager="neuron-operator")))


# ------------------------------------------------------------------------------------------- indices


@kopf.index(GROUP, VERSION, "neuronmodels")
def artifacts_by_key(namespace: str, status: kopf.Status, **_: Any) -> dict[tuple[str, str], dict[str, Any]] | None:
    """(namespace, cacheKey) -> the artifact of every NeuronModel whose artifact is ready; an artifact on S3 is also
    under (SHARED_STORAGE, cacheKey): models of every namespace can use it."""
    key, artifact = status.get("cacheKey"), status.get("artifact")
    ready = any(c.get("type") == "ArtifactReady" and c.get("status") == "True" for c in status.get("conditions", []))
    if not (key and artifact and ready):
        return None
    found = {(namespace, key): dict(artifact)}
    if str(artifact.get("uri", "")).startswith("s3://"):
        found[(SHARED_STORAGE, key)] = dict(artifact)
    return found


@kopf.index(GROUP, VERSION, "neuronmodels")
def models_by_cache_key(namespace: str, name: str, status: kopf.Status, **_: Any) -> dict[tuple[str, str], str] | None:
    key = status.get("cacheKey")
    return {(namespace, key[: names.KEY_PREFIX_LEN]): name} if key else None


@kopf.index(GROUP, VERSION, "neurondeployments")
def deployments_by_model(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str, str], str]:
    return {(namespace, spec.get("modelRef", {}).get("name", "")): name}


# -------------------------------------------------------------------------------------------- events


@kopf.on.event(GROUP, VERSION, "neuronmodels")
async def model_event(
    event: dict[str, Any],
    namespace: str,
    name: str,
    memo: kopf.Memo,
    artifacts_by_key: kopf.Index[Any, Any],
    deployments_by_model: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    rt = runtime(memo)
    rt.artifact_index = artifacts_by_key
    if event.get("type") == "DELETED":
        rt.queue.forget("NeuronModel", namespace, name)
    else:
        rt.queue.trigger("NeuronModel", namespace, name)
    for dep in deployments_by_model.get((namespace, name), []):
        rt.queue.trigger("NeuronDeployment", namespace, dep)


@kopf.on.event(GROUP, VERSION, "neurondeployments")
async def deployment_event(event: dict[str, Any], namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    rt = runtime(memo)
    if event.get("type") == "DELETED":
        rt.queue.forget("NeuronDeployment", namespace, name)
        rt.ctx.load.forget((namespace, name))
        metrics.forget(namespace, name)
    else:
        rt.queue.trigger("NeuronDeployment", namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={names.MANAGED_BY: names.OPERATOR})
async def compile_job_event(
    namespace: str, labels: kopf.Labels, memo: kopf.Memo, models_by_cache_key: kopf.Index[Any, Any], **_: Any
) -> None:
    key = labels.get(names.LABEL_CACHE_KEY, "")
    for model in models_by_cache_key.get((namespace, key), []):
        runtime(memo).queue.trigger("NeuronModel", namespace, model)


@kopf.on.event("", "v1", "pods", labels={names.MANAGED_BY: names.OPERATOR, names.LABEL_CACHE_KEY: kopf.PRESENT})
async def compile_pod_event(
    namespace: str, labels: kopf.Labels, memo: kopf.Memo, models_by_cache_key: kopf.Index[Any, Any], **_: Any
) -> None:
    """A compile pod changed (scheduled, image pulled, OOM-killed): its Job's status may not change at all while
    the pod cannot start, so the pod itself triggers the NeuronModels of its cache key."""
    key = labels.get(names.LABEL_CACHE_KEY, "")
    for model in models_by_cache_key.get((namespace, key), []):
        runtime(memo).queue.trigger("NeuronModel", namespace, model)


@kopf.on.event("apps", "v1", "deployments", labels={names.LABEL_DEPLOYMENT: kopf.PRESENT})
async def runtime_deployment_event(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    runtime(memo).queue.trigger("NeuronDeployment", namespace, labels[names.LABEL_DEPLOYMENT])


@kopf.on.event("", "v1", "pods", labels={names.LABEL_DEPLOYMENT: kopf.PRESENT})
async def runtime_pod_event(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    """A serving pod changed (e.g. its runtime refused the artifact and restarted): its Deployment's status may
    not change at all, so the pod itself triggers the NeuronDeployment (the queue coalesces bursts)."""
    runtime(memo).queue.trigger("NeuronDeployment", namespace, labels[names.LABEL_DEPLOYMENT])


@kopf.on.startup()
async def start_artifact_gc(memo: kopf.Memo, **_: Any) -> None:
    """kopf runs on the leader only: the artifact GC (when enabled) starts with it, as a work-queue object."""
    rt = runtime(memo)
    if rt.settings.gc_enabled:
        rt.queue.trigger(gc.KIND, *gc.OBJECT)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    if "runtime" in memo:
        await runtime(memo).queue.stop()

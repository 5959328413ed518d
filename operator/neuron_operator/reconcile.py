"""Reconcilers: observe (through ``kube``), decide (pure ``resources``), act (through ``kube``).

Level-triggered and idempotent: each pass reads the custom resource and its children afresh, computes the
desired children and status, and writes only what differs. A pass over an unchanged world performs no
write at all. Callers (the kopf handlers) decide *when* to run a pass; this module decides *what* to do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from neuron_operator.api import NeuronDeployment, NeuronModel
from neuron_operator.catalogue import NeuronCoreVersion
from neuron_operator.conditions import is_true, utc_now
from neuron_operator.kube import Kube
from neuron_operator.resources import names
from neuron_operator.resources.compile import (
    StorageUnsupportedError,
    artifact_location,
    build_compile_job,
    compile_request,
    job_outcome,
)
from neuron_operator.resources.fit import Fit, Infeasible, architecture_fit, plan_placement
from neuron_operator.resources.pods import (
    PARITY_LOG_PREFIX,
    TEMPLATE_HASH_LABEL,
    parity_status,
    ready_current_pods,
    serving_failure,
)
from neuron_operator.resources.serving import (
    RUNTIME_CONTAINER,
    ServedArtifact,
    build_deployment,
    build_pdb,
    build_service,
    endpoint,
    selector_labels,
)
from neuron_operator.resources.status import (
    DeploymentObservation,
    Event,
    ModelObservation,
    deployment_status,
    model_status,
    previous_conditions,
    status_changed,
)
from neuron_operator.settings import OperatorSettings

log = logging.getLogger(__name__)


#: (namespace, cache key) -> artifacts recorded by Ready NeuronModels with that key.
ArtifactLookup = Callable[[str, str], list[dict[str, Any]]]


@dataclass
class Context:
    kube: Kube
    settings: OperatorSettings
    clock: Callable[[], datetime] = utc_now
    artifacts: ArtifactLookup = field(default=lambda ns, key: [])


def _fmt_errors(exc: ValidationError) -> str:
    return "; ".join(f"spec.{'.'.join(str(p) for p in e['loc'] if p != 'spec')}: {e['msg']}" for e in exc.errors()[:5])


async def _write_status(ctx: Context, body: dict[str, Any], patch: dict[str, Any], events: list[Event]) -> None:
    meta = body["metadata"]
    if status_changed(body, patch):
        await ctx.kube.patch_status(body["kind"], meta["name"], meta["namespace"], patch)
    for e in events:
        await ctx.kube.event(body, e.type, e.reason, e.message, ctx.clock())


# ------------------------------------------------------------------------------------------ NeuronModel


def _artifact_status(model: NeuronModel, result: dict[str, Any], uri: str, finished: datetime | None) -> dict[str, Any]:
    spec = model.spec
    art: dict[str, Any] = {
        "uri": uri,
        "sha256": result["sha256"],
        "shortDigest": result["sha256"][:12],
        "neuronCoreVersion": result.get("neuronCoreVersion"),
        "compilerVersion": result.get("compilerVersion"),
        "torchVersion": result.get("torchVersion"),
        "inputs": [t.model_dump(mode="json", by_alias=True) for t in spec.inputs],
        "batchSize": spec.batch_size,
        "buckets": spec.buckets.model_dump(mode="json", by_alias=True, exclude_none=True) if spec.buckets else None,
        "sizeBytes": result.get("sizeBytes"),
        "compiledAt": finished.strftime("%Y-%m-%dT%H:%M:%SZ") if finished else None,
        "compileSeconds": round(float(result["compileSeconds"]), 3)
        if result.get("compileSeconds") is not None
        else None,
    }
    return {k: v for k, v in art.items() if v is not None}


async def reconcile_model(ctx: Context, namespace: str, name: str) -> None:
    body = await ctx.kube.get("NeuronModel", name, namespace)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    obs = await _observe_model(ctx, body)
    patch, events = model_status(body, obs, ctx.clock)
    await _write_status(ctx, body, patch, events)


async def _observe_model(ctx: Context, body: dict[str, Any]) -> ModelObservation:
    try:
        model = NeuronModel.model_validate(body)
    except ValidationError as exc:
        return ModelObservation(fit=Fit(True, "Fits", ""), invalid=("InvalidSpec", _fmt_errors(exc)))
    fit = architecture_fit(model.spec.target, model.spec.model_family)
    if not fit.ok:
        return ModelObservation(fit=fit)
    try:
        location = artifact_location(model, ctx.settings)
        key = compile_request(model, ctx.settings).cache_key()
    except StorageUnsupportedError as exc:
        return ModelObservation(fit=fit, invalid=("StorageUnsupported", str(exc)))
    except ValidationError as exc:
        return ModelObservation(fit=fit, invalid=("InvalidSpec", _fmt_errors(exc)))
    namespace = body["metadata"]["namespace"]
    uri = f"pvc://{location.claim}/{location.subdir + '/' if location.subdir else ''}{key}"
    status = body.get("status") or {}
    # 1. Already done (the common no-op pass).
    if status.get("cacheKey") == key and status.get("artifact") and is_true(previous_conditions(body), "ArtifactReady"):
        prev_reason = next(
            (c["reason"] for c in status.get("conditions", []) if c["type"] == "ArtifactReady"), "Compiled"
        )
        return ModelObservation(fit=fit, cache_key=key, artifact=status["artifact"], artifact_reason=prev_reason)
    # 2. Another Ready model in this namespace has the same inputs and storage.
    for other in ctx.artifacts(namespace, key):
        if other.get("uri") == uri:
            return ModelObservation(fit=fit, cache_key=key, artifact=other, artifact_reason="CacheHit")
    # 3. The compile Job for this key (created now, running, or finished earlier: a Git revert lands here).
    job_name = names.compile_job_name(key)
    job = await ctx.kube.get("Job", job_name, namespace)
    if job is None:
        failed_here = (
            status.get("cacheKey") == key
            and status.get("lastFailure")
            and status.get("observedGeneration") == body["metadata"].get("generation")
        )
        if failed_here:  # a failed attempt is retried by a spec edit, not in a loop
            return ModelObservation(fit=fit, cache_key=key, failure=status["lastFailure"])
        job, created = await ctx.kube.create(build_compile_job(body, ctx.settings))
        if created:
            await ctx.kube.event(body, "Normal", "Compiling", f"created compile Job {job_name}", ctx.clock())
    pods = await ctx.kube.list("Pod", namespace, labels={"job-name": job_name})
    outcome = job_outcome(job, pods)
    if outcome.state == "Running":
        return ModelObservation(fit=fit, cache_key=key, compiling=job_name)
    if outcome.state == "Succeeded":
        assert outcome.result is not None
        reason = "CacheHit" if outcome.result.get("cached") else "Compiled"
        artifact = _artifact_status(model, outcome.result, uri, outcome.finished_at)
        return ModelObservation(fit=fit, cache_key=key, artifact=artifact, artifact_reason=reason)
    failure = {
        "reason": outcome.reason or "CompileFailed",
        "message": outcome.message or "",
        "exitCode": outcome.exit_code,
        "time": (outcome.finished_at or ctx.clock()).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return ModelObservation(fit=fit, cache_key=key, failure={k: v for k, v in failure.items() if v is not None})


# ------------------------------------------------------------------------------------- NeuronDeployment


async def reconcile_deployment(ctx: Context, namespace: str, name: str) -> None:
    body = await ctx.kube.get("NeuronDeployment", name, namespace)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    obs = await _converge_deployment(ctx, body)
    patch, events = deployment_status(body, obs, ctx.clock)
    await _write_status(ctx, body, patch, events)


async def _observe_parity(
    ctx: Context, namespace: str, ready: list[dict[str, Any]], body: dict[str, Any]
) -> dict[str, Any] | None:
    """`status.parity` for the current pod template: kept while it describes it, else read from a ready pod's log
    (once per template: a no-op pass reads nothing)."""
    previous = (body.get("status") or {}).get("parity")
    if not ready:
        return previous if isinstance(previous, dict) else None
    pod = ready[0]
    template = (pod["metadata"].get("labels") or {}).get(TEMPLATE_HASH_LABEL)
    if isinstance(previous, dict) and previous.get("podTemplateHash") == template:
        return previous
    line = await ctx.kube.log_line(pod["metadata"]["name"], namespace, RUNTIME_CONTAINER, PARITY_LOG_PREFIX)
    found = parity_status(line, pod) if line else None
    return found if found is not None else (previous if isinstance(previous, dict) else None)


async def _converge_deployment(ctx: Context, body: dict[str, Any]) -> DeploymentObservation:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    selector = ",".join(f"{k}={v}" for k, v in selector_labels(name).items())
    try:
        dep = NeuronDeployment.model_validate(body)
    except ValidationError as exc:
        return DeploymentObservation(blocked=("InvalidSpec", _fmt_errors(exc), True), selector=selector)
    existing = await ctx.kube.get("Deployment", name, namespace)
    base = DeploymentObservation(
        selector=selector, deployment=existing, desired_replicas=0 if dep.spec.suspend else dep.spec.replicas
    )
    model_name = dep.spec.model_ref.name
    model_body = await ctx.kube.get("NeuronModel", model_name, namespace)
    if model_body is None:
        return DeploymentObservation(
            blocked=("ModelNotFound", f"NeuronModel {model_name} does not exist in {namespace}", False)
        )
    model = NeuronModel.model_validate(model_body)
    mstatus = model_body.get("status") or {}
    current = mstatus.get("observedGeneration") == model_body["metadata"].get("generation")
    art = mstatus.get("artifact")
    if not (current and art and is_true(previous_conditions(model_body), "ArtifactReady")):
        why = f"NeuronModel {model_name} has no ready artifact for its current spec"
        if existing is not None:
            why += "; the previous artifact keeps serving until the new one is ready"
        return DeploymentObservation(blocked=("ModelNotReady", why, False))
    max_batch = dep.spec.batching.max_batch_size
    if max_batch > art.get("batchSize", max_batch) and not model.spec.dynamic_batch:
        message = (
            f"spec.batching.maxBatchSize {max_batch} exceeds the batch size {art['batchSize']} NeuronModel "
            f"{model_name} was traced with, and the model has no dynamicBatch: lower maxBatchSize or set "
            "dynamicBatch: true on the model"
        )
        return replace(base, blocked=("InvalidSpec", message, True))
    version = NeuronCoreVersion(art["neuronCoreVersion"]) if art.get("neuronCoreVersion") else None
    cores = dep.spec.placement.cores_per_replica
    plan = plan_placement(version, cores, dep.spec.instance_types, dep.spec.scheduler_name, ctx.settings)
    if isinstance(plan, Infeasible):
        return replace(base, blocked=(plan.reason, plan.message, True), cores=cores)
    location = artifact_location(model, ctx.settings)
    served = ServedArtifact(
        model_name=model_name,
        cache_key=mstatus["cacheKey"],
        sha256=art["sha256"],
        target=model.spec.target.value,
        claim=location.claim,
        directory=location.artifact_dir(ctx.settings.artifact_mount_path, mstatus["cacheKey"]),
    )
    desired = build_deployment(body, served, plan, ctx.settings)
    rolling = (
        existing is not None
        and (existing["metadata"].get("annotations") or {}).get(names.ANNOTATION_CACHE_KEY) != served.cache_key
    )
    applied = await ctx.kube.apply(desired, existing)
    for manifest in (build_service(body), build_pdb(body)):
        observed = await ctx.kube.get(manifest["kind"], name, namespace)
        await ctx.kube.apply(manifest, observed)
    pods = await ctx.kube.list("Pod", namespace, labels=selector_labels(name))
    container = desired["spec"]["template"]["spec"]["containers"][0]
    failure = serving_failure(pods, container)
    parity = None
    if dep.spec.validation.parity and failure is None:
        parity = await _observe_parity(ctx, namespace, ready_current_pods(pods, container), body)
    return DeploymentObservation(
        serving_failure=failure,
        parity=parity,
        model={"name": model_name, "sha256": served.sha256, "cacheKey": served.cache_key},
        cores=plan.cores,
        deployment=applied,
        desired_replicas=base.desired_replicas,
        suspended=dep.spec.suspend,
        endpoint=endpoint(body, model_name),
        selector=selector,
        rolling_to_new_artifact=rolling,
    )

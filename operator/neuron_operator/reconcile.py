"""Reconcilers: observe (through ``kube``), decide (pure ``resources``), act (through ``kube``).

Level-triggered and idempotent: each pass reads the custom resource and its children afresh, computes the
desired children and status, and writes only what differs. A pass over an unchanged world performs no
write at all. Callers (the kopf handlers) decide *when* to run a pass; this module decides *what* to do.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final

from pydantic import ValidationError

from neuron_operator import loadaware, logs, metrics
from neuron_operator.api import NeuronDeployment, NeuronModel, Reason
from neuron_operator.api.deployment import RolloutStrategy
from neuron_operator.catalogue import NeuronCoreVersion
from neuron_operator.conditions import get_condition, is_true, utc_now
from neuron_operator.kube import Forbidden, Kube, Rejected
from neuron_operator.resources import canary, loadmetrics, names
from neuron_operator.resources.capacity import CUSTOM, IN_PLACE, RolloutPlan, explicit_plan, plan_rollout
from neuron_operator.resources.compile import (
    ArtifactLocation,
    CompileOutcome,
    artifact_location,
    build_compile_job,
    compile_pod_problem,
    compile_request,
    job_outcome,
    needs_events,
    running_pod,
    s3_access,
    source_claim_names,
    storage_id,
)
from neuron_operator.resources.fit import Fit, Infeasible, PlacementPlan, architecture_fit, plan_placement
from neuron_operator.resources.pods import (
    TEMPLATE_HASH_LABEL,
    ServingFailure,
    parity_status,
    pods_waiting_for_mount,
    ready_current_pods,
    serving_failure,
    serving_pod_problem,
)
from neuron_operator.resources.podstate import PodProblem, clip
from neuron_operator.resources.serving import (
    RUNTIME_CONTAINER,
    ServedArtifact,
    build_deployment,
    build_pdb,
    build_service,
    endpoint,
    selector_labels,
    served_artifact,
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
from neuron_operator.subset import is_subset
from neuron_runtime.contract import PARITY_LOG_PREFIX, CompileResult

log = logging.getLogger(__name__)


#: (namespace, cache key) -> artifacts recorded by Ready NeuronModels with that key; the namespace SHARED_STORAGE
#: holds the artifacts on S3 of every namespace.
SHARED_STORAGE: Final = "*"
ArtifactLookup = Callable[[str, str], list[dict[str, Any]]]


@dataclass
class Context:
    kube: Kube
    settings: OperatorSettings
    clock: Callable[[], datetime] = utc_now
    artifacts: ArtifactLookup = field(default=lambda ns, key: [])
    #: Pods whose log had no parity line (a runtime without the gate, or no log at all): not read again.
    parity_misses: collections.OrderedDict[tuple[str, str], None] = field(default_factory=collections.OrderedDict)
    #: The autoscaler's and canary gates' memory between passes.
    load: loadaware.LoadState = field(default_factory=loadaware.LoadState)


#: Pods remembered in ``Context.parity_misses`` (oldest forgotten first).
PARITY_MISS_MEMORY: Final = 4096


def _fmt_errors(exc: ValidationError) -> str:
    return "; ".join(f"spec.{'.'.join(str(p) for p in e['loc'] if p != 'spec')}: {e['msg']}" for e in exc.errors()[:5])


async def _finish_pass(
    ctx: Context, body: dict[str, Any], patch: dict[str, Any], events: list[Event], state: str
) -> None:
    """The tail of every pass: log the decision, write the status when it changed, then the Events."""
    _log_decision(body, patch, events, state)
    meta = body["metadata"]
    if status_changed(body, patch):
        await ctx.kube.patch_status(body["kind"], meta["name"], meta["namespace"], patch)
    for e in events:
        await ctx.kube.event(body, e.type, e.reason, e.message, ctx.clock())


# ------------------------------------------------------------------------------------------ NeuronModel


def _artifact_status(
    model: NeuronModel, result: CompileResult, uri: str, finished: datetime | None, endpoint: str | None
) -> dict[str, Any]:
    spec = model.spec
    art: dict[str, Any] = {
        "uri": uri,
        "endpoint": endpoint,
        "sha256": result.sha256,
        "shortDigest": result.sha256[:12],
        "neuronCoreVersion": result.neuron_core_version,
        "compilerVersion": result.compiler_version,
        "torchVersion": result.torch_version,
        "inputs": [t.model_dump(mode="json", by_alias=True) for t in spec.inputs],
        "batchSize": spec.batch_size,
        "batchSizes": list(spec.batch_sizes) if spec.batch_sizes else None,
        "buckets": spec.buckets.model_dump(mode="json", by_alias=True, exclude_none=True) if spec.buckets else None,
        "sizeBytes": result.size_bytes,
        "totalBytes": result.total_bytes,
        "compiledAt": finished.strftime("%Y-%m-%dT%H:%M:%SZ") if finished else None,
        "compileSeconds": round(float(result.compile_seconds), 3) if result.compile_seconds is not None else None,
    }
    return {k: v for k, v in art.items() if v is not None}


def _condition_of(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


def _log_decision(body: dict[str, Any], patch: dict[str, Any], events: list[Event], state: str) -> None:
    """One structured line per pass that changes something (status or Events); a no-op pass logs at DEBUG."""
    meta = body["metadata"]
    changed = status_changed(body, patch)
    new = {**(body.get("status") or {}), **{k: v for k, v in patch.items() if v is not None}}
    stalled = _condition_of(new, "Stalled")
    reason = stalled.get("reason") if stalled.get("status") == "True" else _condition_of(new, "Ready").get("reason")
    what = sorted(k for k, v in patch.items() if (body.get("status") or {}).get(k) != v)
    if not changed and not events:
        log.debug("no-op pass over %s %s/%s", body["kind"], meta["namespace"], meta["name"])
        return
    logs.decision(
        log,
        kind=body["kind"],
        namespace=meta["namespace"],
        name=meta["name"],
        decision=state,
        changed=changed,
        reason=str(reason or ""),
        fields=",".join(what),
        events=",".join(e.reason for e in events),
        generation=meta.get("generation"),
    )


def _deployment_state(status: dict[str, Any]) -> str:
    """The rollout state exported as neuron_operator_rollout_state."""
    if _condition_of(status, "Stalled").get("status") == "True":
        return "Stalled"
    ready = _condition_of(status, "Ready")
    if ready.get("status") == "True":
        return "Ready"
    if ready.get("reason") == Reason.SUSPENDED:
        return "Suspended"
    reconciling = _condition_of(status, "Reconciling")
    if reconciling.get("reason") in (Reason.ROLLING_OUT, Reason.CANARY_PROGRESSING, Reason.SCALING):
        return str(reconciling["reason"])
    return "Pending"


async def reconcile_model(ctx: Context, namespace: str, name: str) -> None:
    body = await ctx.kube.get("NeuronModel", name, namespace)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    obs = await _observe_model(ctx, body)
    patch, events = model_status(body, obs, ctx.clock)
    prev = body.get("status") or {}
    if obs.artifact is not None and (prev.get("cacheKey") != obs.cache_key or not prev.get("artifact")):
        seconds = obs.artifact.get("compileSeconds") if obs.artifact_reason is Reason.COMPILED else None
        metrics.observe_compile(obs.artifact_reason.value, seconds)  # a cache hit ran no compile
    elif obs.failure is not None and prev.get("lastFailure") != obs.failure:
        metrics.observe_compile(str(obs.failure["reason"]), None)
    state = (
        "Ready"
        if obs.artifact is not None
        else ("Failed" if obs.failure or obs.invalid or obs.blocked else "Compiling")
    )
    await _finish_pass(ctx, body, patch, events, state)


async def _missing_claims(
    ctx: Context, model: NeuronModel, namespace: str, artifact_claim: str | None
) -> tuple[Reason, str] | None:
    """A compile Job whose claim does not exist would wait forever in Pending: say so before creating it."""
    if artifact_claim is not None and await ctx.kube.get("PersistentVolumeClaim", artifact_claim, namespace) is None:
        storage = "spec.storage.pvc.claimName" if model.spec.storage else "the operator's artifact claim"
        return (
            Reason.ARTIFACT_CLAIM_MISSING,
            f"PersistentVolumeClaim {artifact_claim} ({storage}) does not exist in namespace {namespace}: create it "
            "(ReadWriteMany, shared by compile Jobs and serving pods; see README, Artifact storage) or set "
            "spec.storage.pvc.claimName to an existing claim",
        )
    for claim in source_claim_names(model):
        if await ctx.kube.get("PersistentVolumeClaim", claim, namespace) is None:
            return (
                Reason.SOURCE_CLAIM_MISSING,
                f"PersistentVolumeClaim {claim} named by the source URI (pvc://{claim}/...) does not exist in "
                f"namespace {namespace}",
            )
    return None


async def _compiling_elsewhere(ctx: Context, namespace: str, job_name: str, key: str) -> str | None:
    """``namespace/name`` of an unfinished compile Job of this key and S3 storage in another namespace (the Job name
    encodes both), or None."""
    labels = {names.LABEL_CACHE_KEY: names.cache_key_label(key)}
    scopes: list[str | None] = (
        [n for n in ctx.settings.namespaces if n != namespace] if ctx.settings.namespaces else [None]
    )
    for scope in scopes:
        for job in await ctx.kube.list("Job", scope, labels=labels):
            meta = job["metadata"]
            finished = any(
                c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                for c in (job.get("status") or {}).get("conditions") or []
            )
            if meta["name"] == job_name and meta["namespace"] != namespace and not finished:
                return f"{meta['namespace']}/{meta['name']}"
    return None


@dataclass(frozen=True)
class _Target:
    """What one pass over a valid NeuronModel aims at: its artifact's cache key and where it is stored."""

    model: NeuronModel
    fit: Fit
    key: str
    location: ArtifactLocation
    uri: str
    endpoint: str | None


def _target(ctx: Context, body: dict[str, Any]) -> _Target | ModelObservation:
    """Parse the model once and compute its cache key and storage, or the observation that stops the pass there
    (an invalid spec, an architecture the target cannot take)."""
    try:
        model = NeuronModel.model_validate(body)
    except ValidationError as exc:
        return ModelObservation(fit=Fit(True, Reason.FITS, ""), invalid=(Reason.INVALID_SPEC, _fmt_errors(exc)))
    fit = architecture_fit(model.spec.target, model.spec.model_family)
    if not fit.ok:
        return ModelObservation(fit=fit)
    try:
        location = artifact_location(model, ctx.settings)
        key = compile_request(model, ctx.settings).cache_key()
    except ValueError as exc:  # pydantic's ValidationError included: the runtime's request refuses the spec
        message = _fmt_errors(exc) if isinstance(exc, ValidationError) else str(exc)
        return ModelObservation(fit=fit, invalid=(Reason.INVALID_SPEC, message))
    endpoint = s3_access(model, ctx.settings).connection.endpoint_url if location.is_s3 else None
    return _Target(model, fit, key, location, location.uri(key), endpoint)


def _known_artifact(ctx: Context, body: dict[str, Any], t: _Target) -> ModelObservation | None:
    """The artifact, when it is already known: recorded in this model's status, or by another Ready model."""
    key, uri, endpoint, location, fit = t.key, t.uri, t.endpoint, t.location, t.fit
    namespace = body["metadata"]["namespace"]
    status = body.get("status") or {}
    # 1. Already done (the common no-op pass): same inputs, and stored where the spec and settings say now (a new
    #    storage location, e.g. the operator's artifactUri set on an upgrade, is found or compiled there).
    previous = status.get("artifact") or {}
    if (
        status.get("cacheKey") == key
        and previous
        and (previous.get("uri"), previous.get("endpoint")) == (uri, endpoint)
        and is_true(previous_conditions(body), "ArtifactReady")
    ):
        prev = get_condition(previous_conditions(body), "ArtifactReady")
        prev_reason = Reason(prev.reason) if prev is not None else Reason.COMPILED
        return ModelObservation(fit=fit, cache_key=key, artifact=status["artifact"], artifact_reason=prev_reason)
    # 2. Another Ready model has the same inputs and storage: in this namespace, or in any namespace for S3 storage
    #    (a bucket is not namespaced: same uri and endpoint is the same artifact).
    for other in ctx.artifacts(SHARED_STORAGE if location.is_s3 else namespace, key):
        if other.get("uri") == uri and other.get("endpoint") == endpoint:
            return ModelObservation(fit=fit, cache_key=key, artifact=other, artifact_reason=Reason.CACHE_HIT)
    return None


async def _start_compile(
    ctx: Context, body: dict[str, Any], t: _Target, job_name: str
) -> dict[str, Any] | ModelObservation:
    """Create the compile Job, unless this key failed here before, a claim is missing, or the same S3 artifact is
    compiling in another namespace: the Job, or the observation that says why there is none."""
    key, fit, location, model = t.key, t.fit, t.location, t.model
    namespace = body["metadata"]["namespace"]
    status = body.get("status") or {}
    failed_here = (
        status.get("cacheKey") == key
        and status.get("lastFailure")
        and status.get("observedGeneration") == body["metadata"].get("generation")
    )
    if failed_here:  # a failed attempt is retried by a spec edit, not in a loop
        return ModelObservation(fit=fit, cache_key=key, failure=status["lastFailure"])
    if (missing := await _missing_claims(ctx, model, namespace, location.claim)) is not None:
        return ModelObservation(fit=fit, cache_key=key, blocked=missing)
    if location.is_s3 and (elsewhere := await _compiling_elsewhere(ctx, namespace, job_name, key)) is not None:
        # The same inputs for the same bucket, prefix and endpoint are compiling in another namespace: wait for
        # that artifact (step 2 finds it once that model is Ready) instead of publishing the same key twice.
        return ModelObservation(fit=fit, cache_key=key, compiling=elsewhere)
    job, created = await ctx.kube.create(build_compile_job(model, ctx.settings))
    if created:
        await ctx.kube.event(body, "Normal", Reason.COMPILING, f"created compile Job {job_name}", ctx.clock())
    return job


async def _running(ctx: Context, t: _Target, job_name: str, pods: list[dict[str, Any]]) -> ModelObservation:
    """A compile Job still running: Compiling, with why its pod cannot start when it cannot."""
    key, fit = t.key, t.fit
    pod = running_pod(pods)
    if pod is not None:
        pod_name, namespace = pod["metadata"]["name"], t.model.metadata.namespace or ""
        events = (await _pod_events(ctx, namespace, [pod_name])).get(pod_name) if needs_events(pod) else None
        if (problem := compile_pod_problem(pod, events, ctx.clock())) is not None:
            return ModelObservation(
                fit=fit, cache_key=key, compiling=job_name, blocked=(problem.reason, problem.message)
            )
    return ModelObservation(fit=fit, cache_key=key, compiling=job_name)


def _finished(ctx: Context, t: _Target, outcome: CompileOutcome) -> ModelObservation:
    """A finished compile Job: the artifact it produced, or the failure it reported."""
    key, fit = t.key, t.fit
    if outcome.state == "Succeeded":
        assert outcome.result is not None
        reason = Reason.CACHE_HIT if outcome.result.cached else Reason.COMPILED
        artifact = _artifact_status(t.model, outcome.result, t.uri, outcome.finished_at, t.endpoint)
        return ModelObservation(fit=fit, cache_key=key, artifact=artifact, artifact_reason=reason)
    failure = {
        "reason": (outcome.reason or Reason.COMPILE_FAILED).value,
        "message": outcome.message or "",
        "exitCode": outcome.exit_code,
        "time": (outcome.finished_at or ctx.clock()).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return ModelObservation(fit=fit, cache_key=key, failure={k: v for k, v in failure.items() if v is not None})


async def _observe_model(ctx: Context, body: dict[str, Any]) -> ModelObservation:
    t = _target(ctx, body)
    if isinstance(t, ModelObservation):
        return t
    if (known := _known_artifact(ctx, body, t)) is not None:
        return known
    # 3. The compile Job for this key (created now, running, or finished earlier: a Git revert lands here).
    namespace = body["metadata"]["namespace"]
    job_name = names.compile_job_name(t.key, storage_id(t.model, ctx.settings))
    job = await ctx.kube.get("Job", job_name, namespace)
    if job is None:
        started = await _start_compile(ctx, body, t, job_name)
        if isinstance(started, ModelObservation):
            return started
        job = started
    pods = await ctx.kube.list("Pod", namespace, labels={"job-name": job_name})
    outcome = job_outcome(job, pods)
    if outcome.state == "Running":
        return await _running(ctx, t, job_name, pods)
    return _finished(ctx, t, outcome)


# ------------------------------------------------------------------------------------- NeuronDeployment


async def reconcile_deployment(ctx: Context, namespace: str, name: str) -> float | None:
    """One pass; returns how soon the next one is due (the autoscaler's interval, a canary's step), else None."""
    body = await ctx.kube.get("NeuronDeployment", name, namespace)
    if body is None or body["metadata"].get("deletionTimestamp"):
        ctx.load.forget((namespace, name))
        return None
    obs = await _converge_deployment(ctx, body)
    patch, events = deployment_status(body, obs, ctx.clock)
    new = {**(body.get("status") or {}), **{k: v for k, v in patch.items() if v is not None}}
    state = _deployment_state(new)
    metrics.set_rollout_state(namespace, name, state)
    await _finish_pass(ctx, body, patch, events, state)
    return obs.requeue


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
    miss = (namespace, pod["metadata"]["name"])
    if miss in ctx.parity_misses:  # its log was read once and had no parity line: a no-op pass reads nothing
        return previous if isinstance(previous, dict) else None
    line = await ctx.kube.log_line(pod["metadata"]["name"], namespace, RUNTIME_CONTAINER, PARITY_LOG_PREFIX)
    found = parity_status(line, pod) if line else None
    if found is None:
        ctx.parity_misses[miss] = None
        while len(ctx.parity_misses) > PARITY_MISS_MEMORY:
            ctx.parity_misses.popitem(last=False)
    return found if found is not None else (previous if isinstance(previous, dict) else None)


def _model_blocker(name: str, namespace: str, model_body: dict[str, Any] | None) -> tuple[Reason, str, bool] | None:
    """Why the referenced NeuronModel cannot be served now: missing or failed (Stalled), compiling (not)."""
    if model_body is None:
        return Reason.MODEL_NOT_FOUND, f"NeuronModel {name} does not exist in {namespace}", True
    mstatus = model_body.get("status") or {}
    conditions = previous_conditions(model_body)
    current = mstatus.get("observedGeneration") == model_body["metadata"].get("generation")
    if current and mstatus.get("artifact") and is_true(conditions, "ArtifactReady"):
        return None
    stalled = get_condition(conditions, "Stalled")
    if current and stalled is not None and stalled.status == "True":
        return Reason.MODEL_FAILED, f"NeuronModel {name} is Stalled ({stalled.reason}): {stalled.message}", True
    return Reason.MODEL_NOT_READY, f"NeuronModel {name} has no ready artifact for its current spec yet", False


async def _rollout_plan(
    ctx: Context,
    dep: NeuronDeployment,
    body: dict[str, Any],
    desired: dict[str, Any],
    template_changed: bool,
    cores: int,
) -> RolloutPlan | None:
    """The update budget: explicit, kept from the running Deployment, or chosen from free capacity.

    Capacity is read (nodes and pods, cluster-wide) only when the pod template changes, i.e. when a rollout
    is about to start: a no-op pass reads nothing. None = keep the running Deployment's budget.
    """
    if (explicit := explicit_plan(dep.spec.rollout)) is not None:
        return explicit
    prev = (body.get("status") or {}).get("rollout") or {}
    if not template_changed and prev.get("strategy") not in (None, CUSTOM):
        return None
    pod_spec = desired["spec"]["template"]["spec"]
    if cores == 0:
        return plan_rollout(0, pod_spec, None, None)
    try:
        nodes = await ctx.kube.list("Node")
        pods = await ctx.kube.list("Pod")
    except Forbidden as exc:
        return plan_rollout(cores, pod_spec, None, None, f"no read access to nodes or pods: {exc}")
    return plan_rollout(cores, pod_spec, nodes, pods)


async def _pod_events(ctx: Context, namespace: str, pods: list[str]) -> dict[str, list[dict[str, Any]]]:
    """kubelet's Events about ``pods`` (empty without the optional `events list` permission)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for pod in pods:
        try:
            found[pod] = await ctx.kube.list("Event", namespace, fields={"involvedObject.name": pod})
        except Forbidden as exc:
            log.warning(
                "cannot read the Events of pod %s/%s (%s): a start failure is reported without them",
                namespace,
                pod,
                exc,
            )
            return {}
    return found


@dataclass(frozen=True)
class _Serving:
    """What a NeuronDeployment serves, once its model is ready and its placement fits."""

    model: NeuronModel
    served: ServedArtifact
    plan: PlacementPlan
    artifact_reason: Reason


def _serving(
    ctx: Context, dep: NeuronDeployment, model_body: dict[str, Any] | None, base: DeploymentObservation
) -> _Serving | DeploymentObservation:
    """The artifact and placement to serve, or the blocked observation saying why there are none."""
    model_name, namespace = dep.spec.model_ref.name, dep.metadata.namespace or ""
    if (blocker := _model_blocker(model_name, namespace, model_body)) is not None:
        return replace(base, blocked=blocker)
    assert model_body is not None
    model = NeuronModel.model_validate(model_body)
    mstatus = model_body.get("status") or {}
    art = mstatus["artifact"]
    art_condition = get_condition(previous_conditions(model_body), "ArtifactReady")
    artifact_reason = (
        Reason.CACHE_HIT if art_condition and art_condition.reason == Reason.CACHE_HIT else Reason.COMPILED
    )
    base = replace(base, artifact_reason=artifact_reason)
    max_batch = dep.spec.batching.max_batch_size
    if max_batch > art.get("batchSize", max_batch) and not model.spec.dynamic_batch:
        message = (
            f"spec.batching.maxBatchSize {max_batch} exceeds the batch size {art['batchSize']} NeuronModel "
            f"{model_name} was traced with, and the model has no dynamicBatch: lower maxBatchSize or set "
            "dynamicBatch: true on the model"
        )
        return replace(base, blocked=(Reason.INVALID_SPEC, message, True))
    version = NeuronCoreVersion(art["neuronCoreVersion"]) if art.get("neuronCoreVersion") else None
    cores = dep.spec.placement.cores_per_replica
    plan = plan_placement(version, cores, dep.spec.instance_types, dep.spec.scheduler_name, ctx.settings)
    if isinstance(plan, Infeasible):
        return replace(base, blocked=(plan.reason, plan.message, True), cores=cores)
    served = served_artifact(model, mstatus["cacheKey"], art, ctx.settings)
    return _Serving(model, served, plan, artifact_reason)


@dataclass(frozen=True)
class _Desired:
    """The runtime Deployment to apply and the update budget chosen for it."""

    deployment: dict[str, Any]
    template_changed: bool
    rollout: RolloutPlan | None


async def _desired(
    ctx: Context, dep: NeuronDeployment, body: dict[str, Any], existing: dict[str, Any] | None, s: _Serving
) -> _Desired:
    """The desired Deployment: built with the running budget, then with the one chosen for a rollout."""
    current_budget = ((existing or {}).get("spec", {}).get("strategy") or {}).get("rollingUpdate") or {}
    keep = (current_budget.get("maxSurge", 1), current_budget.get("maxUnavailable", 0))
    desired = build_deployment(dep, s.served, s.plan, ctx.settings, rollout=keep)
    # The budget is not part of the pod template: whether a rollout starts is known before choosing it.
    template_changed = existing is None or not is_subset(
        desired["spec"]["template"], existing["spec"].get("template") or {}
    )
    rollout = await _rollout_plan(ctx, dep, body, desired, template_changed, s.plan.cores)
    if rollout is not None:
        desired = build_deployment(
            dep, s.served, s.plan, ctx.settings, rollout=(rollout.max_surge, rollout.max_unavailable)
        )
    return _Desired(desired, template_changed, rollout)


async def _apply_children(
    ctx: Context, dep: NeuronDeployment, desired: dict[str, Any], existing: dict[str, Any] | None, load: _Load
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Apply the runtime Deployment (or a canary's two), delete a canary no longer asked for, apply the Service and
    the PodDisruptionBudget: (the stable Deployment, the canary Deployment). Raises ``Rejected``."""
    name, namespace = dep.metadata.name or "", dep.metadata.namespace or ""
    cplan = load.canary_plan
    canary_deployment: dict[str, Any] | None = None
    if cplan is not None:
        applied = await ctx.kube.apply(cplan.stable, existing)
        if cplan.canary is not None:
            canary_deployment = await ctx.kube.apply(cplan.canary, load.existing_canary)
    else:
        applied = await ctx.kube.apply(desired, existing)
    if load.existing_canary is not None and (cplan is None or cplan.canary is None):
        try:
            await ctx.kube.delete("Deployment", canary.canary_name(name), namespace)
        except Forbidden as exc:  # the scaling RBAC set is missing: it stays, and says why in the log
            log.warning("cannot delete canary Deployment %s/%s (%s)", namespace, canary.canary_name(name), exc)
    for manifest in (build_service(dep), build_pdb(dep)):
        observed = await ctx.kube.get(manifest["kind"], name, namespace)
        await ctx.kube.apply(manifest, observed)
    return applied, canary_deployment


def _rollout_events(
    existing: dict[str, Any] | None, applied: dict[str, Any], d: _Desired, s: _Serving, cplan: canary.Plan | None
) -> list[Event]:
    """ArtifactChanged when a new artifact rolls out; the rollout strategy's Event when the new template is applied
    to the stable Deployment (once: a canary steps without touching it)."""
    events: list[Event] = []
    served, model_name = s.served, s.served.model_name
    old_key = ((existing or {}).get("metadata", {}).get("annotations") or {}).get(names.ANNOTATION_CACHE_KEY)
    rolling = existing is not None and old_key != served.cache_key
    if cplan is None and rolling and applied is not existing:
        old_sha = (
            (existing or {}).get("spec", {}).get("template", {}).get("metadata", {}).get("annotations") or {}
        ).get(names.ANNOTATION_ARTIFACT_SHA, "")
        events.append(
            Event(
                "Normal",
                Reason.ARTIFACT_CHANGED,
                f"rolling out artifact {served.sha256[:12]} of NeuronModel {model_name} "
                f"(cache key {served.cache_key}), replacing {old_sha[:12] or old_key}",
            )
        )
    promoting = cplan is not None and (cplan.status or {}).get("phase") == "Promoting"
    rollout = d.rollout
    if (
        existing is not None
        and d.template_changed
        and rollout is not None
        and (cplan is None or promoting)
        and (applied is not existing)
    ):
        kind = "Warning" if rollout.strategy == IN_PLACE else "Normal"
        events.append(
            Event(kind, Reason(rollout.strategy) if rollout.strategy != CUSTOM else Reason.ROLLING_OUT, rollout.message)
        )
    return events


@dataclass(frozen=True)
class _PodHealth:
    failure: ServingFailure | None = None
    problem: PodProblem | None = None
    parity: dict[str, Any] | None = None


async def _pod_health(
    ctx: Context,
    dep: NeuronDeployment,
    body: dict[str, Any],
    desired: dict[str, Any],
    pods: list[dict[str, Any]],
    canary_running: bool,
) -> _PodHealth:
    """What the current pods say: a runtime that refused to serve, a pod that cannot start, the parity report."""
    namespace = dep.metadata.namespace or ""
    stable_pods = [p for p in pods if not canary.is_canary_pod(p)]
    container = desired["spec"]["template"]["spec"]["containers"][0]
    failure = serving_failure(stable_pods, container) if not canary_running else None
    problem = None
    if failure is None and not canary_running:
        events_by_pod = await _pod_events(ctx, namespace, pods_waiting_for_mount(stable_pods, container))
        problem = serving_pod_problem(stable_pods, container, events_by_pod, ctx.clock())
    parity = None
    if dep.spec.validation.parity and failure is None:
        parity = await _observe_parity(ctx, namespace, ready_current_pods(pods, container), body)
    return _PodHealth(failure, problem, parity)


async def _converge_deployment(ctx: Context, body: dict[str, Any]) -> DeploymentObservation:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    selector = ",".join(f"{k}={v}" for k, v in selector_labels(name).items())
    prev_status = body.get("status") or {}
    try:
        dep = NeuronDeployment.model_validate(body)
    except ValidationError as exc:
        existing = await ctx.kube.get("Deployment", name, namespace)
        return DeploymentObservation(
            blocked=(Reason.INVALID_SPEC, _fmt_errors(exc), True),
            selector=selector,
            deployment=existing,
            model=prev_status.get("model") if existing else None,
        )
    existing = await ctx.kube.get("Deployment", name, namespace)
    model_name = dep.spec.model_ref.name
    # What serves now, reported while the spec cannot be realised (recompiling, model failed): the running
    # Deployment's numbers, selector, endpoint and artifact, so `kubectl get`, the scale subresource and an HPA
    # keep working.
    base = DeploymentObservation(
        selector=selector,
        deployment=existing,
        desired_replicas=0 if dep.spec.suspend else dep.spec.replicas,
        suspended=dep.spec.suspend,
        model=prev_status.get("model") if existing else None,
        endpoint=endpoint(dep, model_name) if existing else None,
        cores=prev_status.get("coresPerReplica") if existing else None,
    )
    s = _serving(ctx, dep, await ctx.kube.get("NeuronModel", model_name, namespace), base)
    if isinstance(s, DeploymentObservation):
        return s
    d = await _desired(ctx, dep, body, existing, s)
    pods = await ctx.kube.list("Pod", namespace, labels=selector_labels(name))
    load = await _load_aware(ctx, dep, body, d.deployment, existing, pods, s.plan, d.template_changed)
    try:
        applied, canary_deployment = await _apply_children(ctx, dep, d.deployment, existing, load)
    except Rejected as exc:
        return replace(
            base,
            artifact_reason=s.artifact_reason,
            blocked=(Reason.APPLY_REJECTED, clip(str(exc)), True),
            cores=s.plan.cores,
        )
    cplan = load.canary_plan
    health = await _pod_health(ctx, dep, body, d.deployment, pods, cplan is not None)
    old_key = ((existing or {}).get("metadata", {}).get("annotations") or {}).get(names.ANNOTATION_CACHE_KEY)
    return DeploymentObservation(
        serving_failure=health.failure,
        pod_problem=health.problem,
        parity=health.parity,
        model={"name": model_name, "sha256": s.served.sha256, "cacheKey": s.served.cache_key},
        cores=s.plan.cores,
        deployment=applied,
        desired_replicas=base.desired_replicas if dep.spec.suspend else dep.spec.replicas,  # the autoscaled count
        suspended=dep.spec.suspend,
        endpoint=endpoint(dep, model_name),
        selector=selector,
        rolling_to_new_artifact=existing is not None and old_key != s.served.cache_key,
        artifact_reason=s.artifact_reason,
        rollout=d.rollout,
        events=(*load.events, *_rollout_events(existing, applied, d, s, cplan)),
        autoscaling=load.autoscaling,
        scaling_limited=load.scaling_limited,
        canary=load.canary_status,
        canary_aborted=cplan.aborted if cplan else None,
        canary_progressing=cplan.progressing if cplan else None,
        canary_deployment=canary_deployment,
        requeue=load.requeue,
    )


@dataclass(frozen=True)
class _Load:
    """What the load-aware steps decided in one pass."""

    events: tuple[Event, ...] = ()
    autoscaling: dict[str, Any] | None = None
    scaling_limited: tuple[bool, Reason, str] | None = None
    canary_plan: canary.Plan | None = None
    canary_status: dict[str, Any] | None = None
    existing_canary: dict[str, Any] | None = None
    requeue: float | None = None


@dataclass(frozen=True)
class _Scaled:
    """What the autoscaler decided in one pass."""

    events: tuple[Event, ...] = ()
    status: dict[str, Any] | None = None
    limited: tuple[bool, Reason, str] | None = None
    requeue: float | None = None


async def _autoscale(
    ctx: Context,
    dep: NeuronDeployment,
    body: dict[str, Any],
    desired: dict[str, Any],
    pods: list[dict[str, Any]],
    plan: PlacementPlan,
    now: datetime,
    read: Callable[[], Awaitable[tuple[dict[str, loadmetrics.PodSample], list[str]]]],
) -> _Scaled:
    """One autoscaler pass; a scale writes spec.replicas (and updates ``body``, ``dep`` and ``desired`` to it)."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    if dep.spec.autoscaling is None or dep.spec.suspend:
        ctx.load.scalers.pop((namespace, name), None)
        return _Scaled()
    scaled = await loadaware.autoscale_pass(
        ctx.kube,
        ctx.load,
        dep,
        body,
        pods,
        desired["spec"]["template"]["spec"],
        plan.cores,
        list(plan.instance_types),
        now,
        read,
    )
    autoscaling = scaled.status
    if scaled.scale is None:
        return _Scaled((), autoscaling, scaled.limited, scaled.requeue)
    try:
        patched = await ctx.kube.patch("NeuronDeployment", name, namespace, {"spec": {"replicas": scaled.replicas}})
    except Forbidden as exc:  # the optional scaling RBAC set is missing: nothing scaled, nothing recorded
        log.warning("cannot scale NeuronDeployment %s/%s (%s): replicas kept", namespace, name, exc)
        return _Scaled((), {**autoscaling, "desiredReplicas": dep.spec.replicas}, scaled.limited, scaled.requeue)
    body["metadata"]["generation"] = patched["metadata"].get("generation")
    body["spec"]["replicas"] = dep.spec.replicas = scaled.replicas
    if "replicas" in desired["spec"]:
        desired["spec"]["replicas"] = scaled.replicas
    metrics.observe_scale(namespace, name, scaled.scale.reason)
    return _Scaled((scaled.scale,), {**autoscaling, "lastScale": scaled.last_scale}, scaled.limited, scaled.requeue)


async def _load_aware(
    ctx: Context,
    dep: NeuronDeployment,
    body: dict[str, Any],
    desired: dict[str, Any],
    existing: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    plan: PlacementPlan,
    template_changed: bool,
) -> _Load:
    """Autoscaling (may write spec.replicas, and updates ``body`` and ``desired`` to it) and the canary's step."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    key = (namespace, name)
    now = ctx.clock()
    read_once: dict[str, tuple[dict[str, loadmetrics.PodSample], list[str]]] = {}

    async def read() -> tuple[dict[str, loadmetrics.PodSample], list[str]]:
        if "samples" not in read_once:
            read_once["samples"] = await loadaware.scrape(
                ctx.kube, namespace, pods, dep.spec.server.port, now.timestamp()
            )
        return read_once["samples"]

    scaled = await _autoscale(ctx, dep, body, desired, pods, plan, now, read)
    events: list[Event] = list(scaled.events)
    autoscaling, limited, requeue = scaled.status, scaled.limited, scaled.requeue
    previous = (body.get("status") or {}).get("canary")
    is_canary = dep.spec.rollout.strategy is RolloutStrategy.CANARY
    canary_pods = [p for p in pods if canary.is_canary_pod(p)]
    existing_canary = (
        await ctx.kube.get("Deployment", canary.canary_name(name), namespace)
        if is_canary or previous or canary_pods
        else None
    )
    thash = canary.template_hash(desired["spec"]["template"])
    phase = (previous or {}).get("phase")
    if phase == "Progressing" and not template_changed and (previous or {}).get("templateHash") == thash:
        # The stable Deployment already runs the canary's template: the promotion was applied and its status write
        # lost (an apiserver error, an operator restart). Finish it; it is not a revert.
        previous, phase = {**(previous or {}), "phase": "Promoting"}, "Promoting"
    if not (is_canary and existing is not None and (template_changed or phase == "Promoting")):
        ctx.load.baselines.pop(key, None)
        status = previous if (previous or {}).get("phase") == "Promoted" and is_canary else None
        if previous and previous.get("phase") in ("Progressing", "Aborted") and existing_canary is not None:
            events.append(
                Event(
                    "Normal",
                    Reason.CANARY_REVERTED,
                    f"the spec no longer asks for template {previous.get('templateHash')}: canary removed, the "
                    "stable pods serve",
                )
            )
        return _Load(tuple(events), autoscaling, limited, None, status, existing_canary, requeue)
    verdict = None
    if loadaware.canary_reading_due(ctx.load, key, previous, thash, now.timestamp()):
        assert previous is not None  # a step runs
        samples, _ = await read()
        verdict = loadaware.canary_verdict(ctx.load, key, dep, previous, thash, samples, pods, now.timestamp())
    elif (previous or {}).get("templateHash") == thash:
        verdict = loadaware.last_verdict(ctx.load, key)
    container = desired["spec"]["template"]["spec"]["containers"][0]
    replicas = int(desired["spec"].get("replicas", (existing or {}).get("spec", {}).get("replicas", 1)))
    cplan = canary.plan(
        dep.spec.rollout,
        canary.Observed(
            replicas=replicas,
            stable=existing,
            canary=existing_canary,
            desired=desired,
            previous=previous,
            verdict=verdict,
            refused=loadaware.canary_refusal(canary_pods, container, now),
            now=now,
        ),
    )
    events += [Event(t, r, m) for t, r, m in cplan.events]
    if cplan.progressing is not None:
        requeue = min(requeue or loadaware.CANARY_RESYNC, loadaware.CANARY_RESYNC)
    return _Load(tuple(events), autoscaling, limited, cplan, cplan.status, existing_canary, requeue)

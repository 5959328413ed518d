"""The serving side of a NeuronDeployment: the runtime Deployment, its Service and PodDisruptionBudget.

Inputs are the parsed NeuronDeployment, the ready artifact of its NeuronModel, the placement plan
(``fit.plan_placement``) and the operator settings; outputs are complete manifests, owner references
included, applied as they are with server-side apply.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, Final

from neuron_operator.api import NeuronDeployment, NeuronModel
from neuron_operator.catalogue import INSTANCE_TYPE_LABEL, NEURON_TAINT_KEY, NEURONCORE_RESOURCE
from neuron_operator.resources import names, podparts, runtime_settings
from neuron_operator.resources.compile import S3Access, artifact_location, s3_access
from neuron_operator.resources.fit import PlacementPlan
from neuron_operator.settings import OperatorSettings
from neuron_runtime.config import S3Connection
from neuron_runtime.contract import LIVE_PATH, READY_PATH, S3_ENV_PREFIX

RUNTIME_CONTAINER: Final = "runtime"
PORT_NAME: Final = "http"
GRPC_PORT_NAME: Final = "grpc"
#: Annotation on a NeuronDeployment: an autoscaler scales the child Deployment directly, so the operator
#: leaves its replicas alone. (Prefer pointing the HPA at the NeuronDeployment's scale subresource.)
EXTERNAL_REPLICAS_ANNOTATION: Final = "neuron.dev/replicas-managed-externally"
PRESTOP_SLEEP_SECONDS: Final = 5
#: After SIGTERM the runtime keeps serving this long, answering with `Connection: close`, so clients holding a
#: kept-alive connection to this pod (endpoint removal only redirects new connections) reconnect through the
#: Service to a ready pod instead of getting 503s: measured 4-7 lost requests per surge rollout without it, 0 with.
SHUTDOWN_DELAY_SECONDS: Final = 2.0
#: The runtime's longest wait for in-flight requests after the shutdown delay (one deadline: a client holding its
#: body open cannot stretch it).
DRAIN_SECONDS: Final = 20.0
#: Seconds between the start of termination and SIGKILL (the preStop pause counts against it): the pause, the
#: shutdown delay, the drain, the runtime's 2 s connection cleanup, and 5 s to spare. A test keeps them consistent.
TERMINATION_GRACE_SECONDS: Final = int(PRESTOP_SLEEP_SECONDS + SHUTDOWN_DELAY_SECONDS + DRAIN_SECONDS + 2 + 5)


@dataclass(frozen=True)
class ServedArtifact:
    """The artifact a NeuronDeployment serves, as recorded in its NeuronModel's status."""

    model_name: str
    cache_key: str
    sha256: str
    target: str
    claim: str | None  # the artifact PVC; None: downloaded from s3_uri into an emptyDir
    directory: str  # absolute path inside the pod
    s3_uri: str | None = None  # s3://bucket/prefix/<cache key>
    s3: S3Access | None = None
    size_bytes: int | None = None  # every file, from the NeuronModel status (sizes the download volume)


#: The download volume holds a verified copy and, while a copy that no longer verifies is replaced, a second one.
DOWNLOAD_VOLUME_MIN_BYTES: Final = 256 << 20


def served_artifact(
    model: NeuronModel, cache_key: str, artifact: dict[str, Any], settings: OperatorSettings
) -> ServedArtifact:
    """What serving pods load for a Ready model: where its status says the artifact is (``status.artifact.uri``:
    the claim's directory the compile Job wrote, or the S3 prefix it published, downloaded into an emptyDir at the
    same mount path) — not where the spec would put a new one, so a storage change never points pods at an
    artifact that is not there yet."""
    mount = settings.artifact_mount_path
    uri = str(artifact.get("uri") or artifact_location(model, settings).uri(cache_key))
    size = artifact.get("totalBytes") or artifact.get("sizeBytes")
    name, sha256 = model.metadata.name or "", str(artifact["sha256"])
    if uri.startswith("s3://"):
        access = s3_access(model, settings)
        connection = access.connection.model_copy(update={"endpoint_url": artifact.get("endpoint")})
        return ServedArtifact(
            model_name=name,
            cache_key=cache_key,
            sha256=sha256,
            target=model.spec.target.value,
            claim=None,
            directory=posixpath.join(mount, cache_key),
            s3_uri=uri,
            s3=S3Access(connection, access.secret),
            size_bytes=int(size) if size is not None else None,
        )
    claim, _, path = uri.removeprefix("pvc://").partition("/")
    if ".." in path.split("/") or not path.endswith(cache_key):  # status is the operator's own; never trust it blindly
        location = artifact_location(model, settings)
        claim, path = (
            location.claim or settings.artifact_pvc,
            posixpath.relpath(location.artifact_dir(mount, cache_key), mount),
        )
    return ServedArtifact(
        model_name=name,
        cache_key=cache_key,
        sha256=sha256,
        target=model.spec.target.value,
        claim=claim,
        directory=posixpath.join(mount, path),
        size_bytes=int(size) if size is not None else None,
    )


def download_volume_limit(size_bytes: int | None) -> str | None:
    """emptyDir sizeLimit of an S3 artifact's download volume: twice the artifact (``status.artifact.totalBytes``:
    graphs, reference data, manifest; older statuses: the graphs) plus 256 MiB, in MiB; None when unknown."""
    if size_bytes is None:
        return None
    return f"{(2 * size_bytes + DOWNLOAD_VOLUME_MIN_BYTES + (1 << 20) - 1) >> 20}Mi"


def selector_labels(name: str) -> dict[str, str]:
    return {names.LABEL_DEPLOYMENT: name}


def _runtime_env(dep: NeuronDeployment, artifact: ServedArtifact) -> list[dict[str, Any]]:
    """The runtime's ServeSettings as env vars (``runtime_settings.serve_settings``), the pod's identity for
    neuron-monitor, the scratch HOME/TMPDIR, and S3 credentials from a Secret."""
    serve = runtime_settings.serve_settings(
        dep.spec,
        model_name=artifact.model_name,
        artifact_dir=artifact.directory,
        artifact_uri=artifact.s3_uri,
        s3=artifact.s3.connection if artifact.s3 is not None else S3Connection(),
        expected_sha256=artifact.sha256,
        shutdown_delay_s=SHUTDOWN_DELAY_SECONDS,
        drain_timeout_s=DRAIN_SECONDS,
    )
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(serve.to_env().items())]
    env += [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        # neuron-monitor reports this as runtime_tag, so per-pod Neuron metrics can be joined to pods.
        {"name": "NEURON_PROCESS_TAG", "value": f"$(POD_NAMESPACE)/$(POD_NAME)/{artifact.model_name}"},
        *podparts.scratch_env(),
    ]
    if artifact.s3 is not None:
        env += [e for e in artifact.s3.env() if not e["name"].startswith(S3_ENV_PREFIX)]  # those: above
    return env


def _resources(dep: NeuronDeployment, plan: PlacementPlan) -> dict[str, Any]:
    res = dep.spec.resources.model_dump(by_alias=True, exclude_none=True) if dep.spec.resources else {}
    if plan.cores:
        # Extended resources are integers requested through limits (requests default to them).
        res.setdefault("limits", {})[NEURONCORE_RESOURCE] = str(plan.cores)
    return res


def _affinity(dep: NeuronDeployment, plan: PlacementPlan) -> dict[str, Any] | None:
    pod = dep.spec.pod
    affinity = pod.affinity.model_dump(by_alias=True, exclude_none=True) if pod and pod.affinity else {}
    if plan.instance_types:
        term = {"key": INSTANCE_TYPE_LABEL, "operator": "In", "values": list(plan.instance_types)}
        node = affinity.setdefault("nodeAffinity", {})
        required = node.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {"nodeSelectorTerms": []})
        terms = required.setdefault("nodeSelectorTerms", [])
        # Every term is ORed: add the instance-type requirement to each (or make it the only term).
        if terms:
            for t in terms:
                t.setdefault("matchExpressions", []).append(term)
        else:
            terms.append({"matchExpressions": [term]})
    return affinity or None


def _runtime_container(
    dep: NeuronDeployment, artifact: ServedArtifact, plan: PlacementPlan, settings: OperatorSettings
) -> dict[str, Any]:
    """The runtime container: ``neuron-runtime serve`` with its settings in env, probes on the OIP health paths,
    the preStop pause, the NeuronCores of the placement plan, the artifact and scratch volumes."""
    spec = dep.spec
    return {
        "name": RUNTIME_CONTAINER,
        "image": spec.image or settings.image_for_target(artifact.target),
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["neuron-runtime", "serve"],
        "env": _runtime_env(dep, artifact),
        "ports": [
            {"name": PORT_NAME, "containerPort": spec.server.port, "protocol": "TCP"},
            {"name": GRPC_PORT_NAME, "containerPort": spec.server.grpc_port, "protocol": "TCP"},
        ],
        # Loading (and on Neuron, placing) a large model can take minutes: the startup probe allows
        # 10 minutes before liveness takes over.
        "startupProbe": podparts.http_probe(READY_PATH, PORT_NAME, 2, 300),
        "readinessProbe": podparts.http_probe(READY_PATH, PORT_NAME, 5, 2),
        "livenessProbe": podparts.http_probe(LIVE_PATH, PORT_NAME, 10, 3),
        # The pause lets endpoints drop the pod before SIGTERM; the runtime then drains in-flight work.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
        "resources": _resources(dep, plan),
        "volumeMounts": [
            {
                "name": podparts.ARTIFACT_VOLUME,
                # The claim's root, where the compile Job mounts it too: artifact.directory is
                # <mount>/<storage.pvc.path>/<cacheKey>, so mounting the claim any deeper would look for
                # the artifact in the wrong directory of the volume.
                "mountPath": settings.artifact_mount_path,
                # An S3 artifact is downloaded into this (emptyDir) volume; a claim is only read.
                "readOnly": artifact.claim is not None,
            },
            podparts.scratch_mount(),
        ],
        "securityContext": podparts.container_security(run_as_non_root=not settings.runtime_run_as_root),
    }


def _pod_spec(
    dep: NeuronDeployment, artifact: ServedArtifact, plan: PlacementPlan, settings: OperatorSettings
) -> dict[str, Any]:
    """The serving pod: the runtime container, the restricted security context, the Neuron scheduling (taint
    toleration, instance-type affinity, scheduler extension) and the user's pod overrides."""
    pod_over = dep.spec.pod
    tolerations = podparts.tolerations(pod_over.tolerations if pod_over else None)
    if plan.cores:
        tolerations.append({"key": NEURON_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"})
    pod_spec: dict[str, Any] = {
        "containers": [_runtime_container(dep, artifact, plan, settings)],
        "securityContext": podparts.pod_security(settings.runtime_identity()),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "volumes": [_artifact_volume(artifact), podparts.scratch_volume()],
    }
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if pod_over and pod_over.node_selector:
        pod_spec["nodeSelector"] = dict(pod_over.node_selector)
    if affinity := _affinity(dep, plan):
        pod_spec["affinity"] = affinity
    if plan.scheduler_name:
        pod_spec["schedulerName"] = plan.scheduler_name
    if service_account := (pod_over.service_account_name if pod_over else None) or settings.runtime_service_account:
        pod_spec["serviceAccountName"] = service_account
    return pod_spec


def build_deployment(
    dep: NeuronDeployment,
    artifact: ServedArtifact,
    plan: PlacementPlan,
    settings: OperatorSettings,
    rollout: tuple[int | str, int | str] = (1, 0),
) -> dict[str, Any]:
    """The runtime Deployment of ``dep``; ``rollout`` is (maxSurge, maxUnavailable), chosen by the reconciler
    (``resources.capacity``)."""
    spec, name = dep.spec, dep.metadata.name or ""
    pod_over = spec.pod
    labels = {
        **names.common_labels("runtime"),
        **selector_labels(name),
        names.LABEL_MODEL: artifact.model_name,
    }
    pod_labels = {**(pod_over.labels if pod_over and pod_over.labels else {}), **labels}
    annotations = {
        **(pod_over.annotations if pod_over and pod_over.annotations else {}),
        names.ANNOTATION_ARTIFACT_SHA: artifact.sha256,
    }
    dep_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(name)},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {
                "maxSurge": rollout[0],
                "maxUnavailable": rollout[1],
            },
        },
        "revisionHistoryLimit": 5,
        "progressDeadlineSeconds": 900,
        "template": {
            "metadata": {"labels": pod_labels, "annotations": annotations},
            "spec": _pod_spec(dep, artifact, plan, settings),
        },
    }
    if (dep.metadata.annotations or {}).get(EXTERNAL_REPLICAS_ANNOTATION) != "true":
        dep_spec["replicas"] = 0 if spec.suspend else spec.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": dep.metadata.namespace,
            "labels": labels,
            "annotations": {names.ANNOTATION_CACHE_KEY: artifact.cache_key},
            "ownerReferences": [names.owner_reference(dep)],
        },
        "spec": dep_spec,
    }


def _artifact_volume(artifact: ServedArtifact) -> dict[str, Any]:
    if artifact.claim is not None:
        return {
            "name": podparts.ARTIFACT_VOLUME,
            "persistentVolumeClaim": {"claimName": artifact.claim, "readOnly": True},
        }
    limit = download_volume_limit(artifact.size_bytes)
    return {"name": podparts.ARTIFACT_VOLUME, "emptyDir": {"sizeLimit": limit} if limit else {}}


def _child_metadata(dep: NeuronDeployment) -> dict[str, Any]:
    """Metadata of a serving child: same name and namespace as the NeuronDeployment, owned by it."""
    name = dep.metadata.name or ""
    return {
        "name": name,
        "namespace": dep.metadata.namespace,
        "labels": {**names.common_labels("runtime"), **selector_labels(name)},
        "ownerReferences": [names.owner_reference(dep)],
    }


def build_service(dep: NeuronDeployment) -> dict[str, Any]:
    name = dep.metadata.name or ""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _child_metadata(dep),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(name),
            "ports": [
                {"name": PORT_NAME, "port": dep.spec.server.port, "targetPort": PORT_NAME, "protocol": "TCP"},
                {
                    "name": GRPC_PORT_NAME,
                    "port": dep.spec.server.grpc_port,
                    "targetPort": GRPC_PORT_NAME,
                    "protocol": "TCP",
                    # HTTP/2 without TLS: what meshes and Gateway API implementations need to route gRPC.
                    "appProtocol": "kubernetes.io/h2c",
                },
            ],
        },
    }


def build_pdb(dep: NeuronDeployment) -> dict[str, Any]:
    """At most one replica voluntarily disrupted at a time (node drains, cluster upgrades)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _child_metadata(dep),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(dep.metadata.name or "")}},
    }


def endpoint(dep: NeuronDeployment, model_name: str) -> str:
    meta = dep.metadata
    return f"http://{meta.name}.{meta.namespace}.svc:{dep.spec.server.port}/v2/models/{model_name}"

"""Every rule of ``neuron_operator.reconcile``, pass by pass, against an in-memory apiserver (no cluster).

``reconcile_model`` and ``reconcile_deployment`` run unchanged over the real ``kube.Kube`` and a real lightkube
``AsyncClient`` whose HTTP goes to ``memapi.MemApi`` (see there for what it enforces). The controllers the
operator relies on are played by the test, between passes, the way they behave on a cluster: the Job
controller (conditions ``Complete``/``Failed`` and a pod whose ``compile`` container terminated with the JSON
termination message ``neuron-runtime compile`` writes, built here by the runtime's own
``write_termination_message``), the Deployment controller (status, pods with a ``pod-template-hash``), kubelet
(container states, logs) and the TTL controller (finished Jobs disappear).

Each rule is asserted on what reached the apiserver (``MemApi.journal``: a no-op pass writes nothing, a Job is
created once) and on the status the next pass reads. ``.ci/mutations.py`` disables the rules one at a time and
requires this file to notice.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dict_builders import build_compile_job
from lightkube import ApiError
from memapi import MemApi, Obj
from runtime_lines import termination_line

from neuron_operator.api import NeuronDeployment, NeuronModel
from neuron_operator.handlers import artifacts_by_key
from neuron_operator.kube import Kube
from neuron_operator.loadaware import LoadState
from neuron_operator.reconcile import Context, reconcile_deployment, reconcile_model
from neuron_operator.resources import names
from neuron_operator.resources.compile import compile_request
from neuron_operator.resources.pods import TEMPLATE_HASH_LABEL
from neuron_operator.resources.serving import RUNTIME_CONTAINER, selector_labels
from neuron_operator.settings import OperatorSettings
from neuron_runtime.contract import COMPILE_REQUEST_ENV, PARITY_LOG_PREFIX

NS = "ml"
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
SHA_A, SHA_B = "a1" * 32, "b2" * 32
SETTINGS = OperatorSettings(
    runtime_image="local/neuron-runtime:test",
    neuronx_runtime_image="local/neuron-runtime-neuronx:test",
    neuron_runtime_image="local/neuron-runtime-inf1:test",
    artifact_pvc="neuron-artifacts",
)


def stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


# ------------------------------------------------------------------------------------------ manifests


def model_manifest(name: str = "cnn", **spec: Any) -> Obj:
    body: Obj = {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronModel",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "source": {"python": {"factory": "neuron_runtime.zoo:small_cnn", "args": {"classes": 10}}},
            "inputs": [{"name": "x", "shape": [8, 3, 64, 64], "dtype": "float32"}],
            "batchSize": 8,
            "target": "inf2",
            "modelFamily": "cnn",
            "compiler": {"autoCast": "matmult", "autoCastType": "bf16", "timeoutSeconds": 1800},
        },
    }
    body["spec"].update(spec)
    return body


def deployment_manifest(name: str = "cnn", model: str = "cnn", **spec: Any) -> Obj:
    body: Obj = {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronDeployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "modelRef": {"name": model},
            "replicas": 2,
            "placement": {"workers": 1, "coresPerWorker": 2, "mode": "pinned"},
            "instanceTypes": ["inf2.xlarge", "inf2.8xlarge"],
            "batching": {"maxBatchSize": 8, "maxDelayMs": 4},
            "resources": {"requests": {"cpu": 1, "memory": "2048Mi"}, "limits": {"memory": "4Gi"}},
        },
    }
    body["spec"].update(spec)
    return body


def compile_result(key: str, sha: str = SHA_A, *, cached: bool = False) -> dict[str, Any]:
    """What `neuron-runtime compile` writes as its termination message on success (``cli.run_compile``)."""
    return {
        "status": "Succeeded",
        "cacheKey": key,
        "uri": f"/var/lib/neuron/artifacts/{key}",
        "sha256": sha,
        "sizeBytes": 123456,
        "compileSeconds": 42.123456,
        "neuronCoreVersion": "v2",
        "compilerVersion": "2.21.0",
        "torchVersion": "2.8.0",
        "cached": cached,
        "maxAbsError": 0.001,
    }


PARITY_REPORT = {  # neuron_runtime.parity.ParityReport.as_dict() of a passing check
    "passed": True,
    "atol": 0.05,
    "rtol": 0.05,
    "precision": "bf16",
    "graphs": 1,
    "cases": 3,
    "workers": 1,
    "max_abs_error": 0.0123,
    "max_rel_error": 0.02,
    "elements_outside": 0,
    "worst": "graph model.pt case 1 worker 0 lane 0 output 0: max abs error 0.0123",
}


# ------------------------------------------------------------------------------------------ the world


@dataclass
class World:
    api: MemApi
    clock: Clock
    settings: OperatorSettings = SETTINGS
    kube: Kube = field(init=False)

    def __post_init__(self) -> None:
        self.kube = Kube(self.api.client())

    def ctx(self) -> Context:
        """The operator keeps one Context per process (``handlers.Runtime``): its memory outlives a pass."""
        if not hasattr(self, "_parity_misses"):
            self._parity_misses: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
            self.load = LoadState()
        return Context(
            kube=self.kube,
            settings=self.settings,
            clock=self.clock,
            artifacts=self.lookup,
            parity_misses=self._parity_misses,
            load=self.load,
        )

    def lookup(self, namespace: str, key: str) -> list[dict[str, Any]]:
        """The operator's kopf index (``handlers.artifacts_by_key``, called as kopf calls it) over every model."""
        found = []
        for m in self.api.all("NeuronModel"):
            entries = artifacts_by_key(m["metadata"]["namespace"], m.get("status") or {}) or {}
            found += [dict(artifact) for (ns, k), artifact in entries.items() if (ns, k) == (namespace, key)]
        return found

    async def model_pass(self, name: str = "cnn", namespace: str = NS) -> list[str]:
        """One reconcile pass; -> the write requests it sent."""
        mark = self.api.mark()
        await reconcile_model(self.ctx(), namespace, name)
        return self.api.writes_since(mark)

    async def deployment_pass(self, name: str = "cnn") -> list[str]:
        mark = self.api.mark()
        self.requeue = await reconcile_deployment(self.ctx(), NS, name)
        return self.api.writes_since(mark)

    def status(self, kind: str, name: str = "cnn") -> Obj:
        status: Obj = self.api.must(kind, name, NS).get("status") or {}
        return status

    def cond(self, kind: str, type_: str, name: str = "cnn") -> tuple[str, str]:
        c = next(c for c in self.status(kind, name)["conditions"] if c["type"] == type_)
        return c["status"], c["reason"]

    def message(self, kind: str, type_: str, name: str = "cnn") -> str:
        return str(next(c for c in self.status(kind, name)["conditions"] if c["type"] == type_)["message"])

    def events(self, name: str = "cnn") -> list[tuple[str, str, str]]:
        return [
            (e["type"], e["reason"], e["message"])
            for e in self.api.all("Event", NS)
            if e["involvedObject"]["name"] == name
        ]

    def jobs(self) -> list[str]:
        return [j["metadata"]["name"] for j in self.api.all("Job", NS)]

    # ------------------------------------------------------------------ the Job controller, kubelet, TTL

    def _job_pod(self, job: Obj, suffix: str, terminated: Obj, phase: str) -> Obj:
        name = job["metadata"]["name"]
        template = job["spec"]["template"]
        return self.api.seed(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{name}-{suffix}",
                    "namespace": NS,
                    "labels": {
                        **template["metadata"]["labels"],
                        "job-name": name,
                        "batch.kubernetes.io/job-name": name,
                        "controller-uid": job["metadata"]["uid"],
                        "batch.kubernetes.io/controller-uid": job["metadata"]["uid"],
                    },
                    "ownerReferences": [
                        {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job["metadata"]["uid"]}
                    ],
                },
                "spec": template["spec"],
                "status": {
                    "phase": phase,
                    "containerStatuses": [
                        {
                            "name": "compile",
                            "ready": False,
                            "restartCount": 0,
                            "image": template["spec"]["containers"][0]["image"],
                            "imageID": "",
                            "state": {"terminated": terminated},
                        }
                    ],
                },
            }
        )

    def complete_job(self, job_name: str, result: dict[str, Any], *, seconds: float = 300) -> datetime:
        job = self.api.must("Job", job_name, NS)
        at = self.clock.advance(seconds)
        line = termination_line(result)
        terminated = {"exitCode": 0, "reason": "Completed", "message": line + "\n", "finishedAt": stamp(at)}
        self._job_pod(job, "a1b2c", terminated, "Succeeded")
        conditions = [
            {"type": t, "status": "True", "lastProbeTime": stamp(at), "lastTransitionTime": stamp(at)}
            for t in ("SuccessCriteriaMet", "Complete")
        ]
        self.api.set_status(
            "Job", job_name, NS, {"conditions": conditions, "succeeded": 1, "completionTime": stamp(at)}
        )
        return at

    def fail_job(
        self, job_name: str, *, exit_code: int, message: str, reason: str = "PodFailurePolicy", seconds: float = 120
    ) -> datetime:
        job = self.api.must("Job", job_name, NS)
        at = self.clock.advance(seconds)
        terminated = {"exitCode": exit_code, "reason": "Error", "message": message, "finishedAt": stamp(at)}
        self._job_pod(job, "d3e4f", terminated, "Failed")
        why = f"Container compile for pod {NS}/{job_name}-d3e4f failed with exit code {exit_code}"
        conditions = [
            {"type": t, "status": "True", "reason": reason, "message": why, "lastTransitionTime": stamp(at)}
            for t in ("FailureTarget", "Failed")
        ]
        self.api.set_status("Job", job_name, NS, {"conditions": conditions, "failed": 1})
        return at

    def ttl_delete(self, job_name: str) -> None:
        """The TTL-after-finished controller deletes the Job, and the garbage collector its pods."""
        self.api.delete("Job", job_name, NS)
        for pod in self.api.all("Pod", NS):
            if (pod["metadata"].get("labels") or {}).get("job-name") == job_name:
                self.api.delete("Pod", pod["metadata"]["name"], NS)

    # ------------------------------------------------------------------ the Deployment controller, kubelet

    def roll_out(self, name: str = "cnn", *, template_hash: str = "h1", ready: int | None = None) -> list[str]:
        """The Deployment controller and kubelet: pods of the current template replace the others; -> pod names."""
        d = self.api.must("Deployment", name, NS)
        want = int(d["spec"]["replicas"])
        ready = want if ready is None else ready
        for pod in self.api.all("Pod", NS):
            labels = pod["metadata"].get("labels") or {}
            if labels.get(names.LABEL_DEPLOYMENT) == name and labels.get(TEMPLATE_HASH_LABEL) != template_hash:
                self.api.delete("Pod", pod["metadata"]["name"], NS)
        template = d["spec"]["template"]
        created = []
        for i in range(want):
            pod_name = f"{name}-{template_hash}-{i}"
            created.append(pod_name)
            if self.api.read("Pod", pod_name, NS) is not None:
                continue
            is_ready = "True" if i < ready else "False"
            self.api.seed(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": pod_name,
                        "namespace": NS,
                        "labels": {**template["metadata"]["labels"], TEMPLATE_HASH_LABEL: template_hash},
                        "annotations": template["metadata"].get("annotations", {}),
                    },
                    "spec": template["spec"],
                    "status": {
                        "phase": "Running",
                        "conditions": [{"type": "Ready", "status": is_ready}],
                        "containerStatuses": [
                            {"name": RUNTIME_CONTAINER, "ready": is_ready == "True", "state": {"running": {}}}
                        ],
                    },
                }
            )
        self.api.set_status(
            "Deployment",
            name,
            NS,
            {
                "observedGeneration": d["metadata"]["generation"],
                "replicas": want,
                "updatedReplicas": want,
                "readyReplicas": ready,
                "availableReplicas": ready,
            },
        )
        return created

    # ------------------------------------------------------------------ scenarios

    async def compiled_model(self, name: str = "cnn", sha: str = SHA_A, **spec: Any) -> str:
        """A NeuronModel taken through its compile to Ready; -> its cache key."""
        if self.api.read("NeuronModel", name, NS) is None:
            self.api.seed(model_manifest(name, **spec))
        await self.model_pass(name)
        key = str(self.status("NeuronModel", name)["cacheKey"])
        job = job_name_of(self, name)
        if self.api.read("Job", job, NS) is not None and not self.api.must("Job", job, NS).get("status"):
            self.complete_job(job, compile_result(key, sha))
        await self.model_pass(name)
        assert self.cond("NeuronModel", "Ready", name)[0] == "True"
        return key


def claim(name: str) -> Obj:
    return claim_in(name, NS)


def claim_in(name: str, namespace: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "10Gi"}}},
        "status": {"phase": "Bound"},
    }


@pytest.fixture
def world() -> World:
    return new_world()


def new_world() -> World:
    """An apiserver with the artifact claims, at T0 (also the fixture of test_load_reconcile)."""
    clock = Clock()
    api = MemApi(clock=clock, default_namespace=NS)
    for name in (SETTINGS.artifact_pvc, "models", "other"):
        api.seed(claim(name))
    return World(api, clock)


def job_name_of(world: World, name: str = "cnn") -> str:
    """The compile Job of the NeuronModel ``name`` as it is now, named by the operator's own builder."""
    return str(build_compile_job(world.api.must("NeuronModel", name, NS), world.settings)["metadata"]["name"])


# ======================================================================================= NeuronModel


async def test_a_missing_or_deleting_model_is_left_alone(world: World) -> None:
    assert await world.model_pass("absent") == []
    body = model_manifest()
    body["metadata"]["deletionTimestamp"] = stamp(T0)
    body["metadata"]["finalizers"] = ["example.com/hold"]
    world.api.seed(body)
    assert await world.model_pass() == []
    assert world.jobs() == []


async def test_an_invalid_spec_is_stalled_and_compiles_nothing(world: World) -> None:
    # The batch dimension differs from batchSize: the CRD's CEL rule refuses it; an object stored before that
    # rule existed (or by an apiserver that does not evaluate CEL, like memapi) reaches the operator anyway.
    world.api.seed(model_manifest(inputs=[{"name": "x", "shape": [4, 3, 64, 64]}]), validate=False)
    writes = await world.model_pass()
    assert world.cond("NeuronModel", "Stalled") == ("True", "InvalidSpec")
    assert world.cond("NeuronModel", "Ready") == ("False", "InvalidSpec")
    assert "spec." in world.message("NeuronModel", "Stalled")
    assert "batchSize" in world.message("NeuronModel", "Stalled")
    assert world.jobs() == []
    assert "create Job" not in " ".join(writes)
    assert ("Warning", "InvalidSpec") in [e[:2] for e in world.events()]
    assert await world.model_pass() == []


async def test_an_architecture_that_cannot_fit_the_target_is_stalled_without_a_job(world: World) -> None:
    world.api.seed(
        model_manifest(target="inf1", modelFamily="decoder", compiler={"autoCast": "none", "autoCastType": "bf16"})
    )
    await world.model_pass()
    assert world.cond("NeuronModel", "ArchitectureFit") == ("False", "UnsupportedArchitecture")
    assert world.cond("NeuronModel", "Stalled") == ("True", "UnsupportedArchitecture")
    assert world.jobs() == []
    assert "cacheKey" not in world.status("NeuronModel")
    assert await world.model_pass() == []


async def test_a_poor_fit_warns_once_and_still_compiles(world: World) -> None:
    world.api.seed(model_manifest(target="inf1", modelFamily="rcnn", compiler={"autoCast": "none"}))
    await world.model_pass()
    assert world.cond("NeuronModel", "ArchitectureFit") == ("True", "PoorFit")
    assert next(e for e in world.events() if e[1] == "PoorFit")[0] == "Warning"
    assert len(world.jobs()) == 1
    assert await world.model_pass() == []


S3_STORAGE = {"storage": {"uri": "s3://team-models/neuron"}, "s3": {"endpoint": "http://s3.test:8333"}}


async def test_s3_storage_needs_no_claim_and_records_the_s3_uri_and_endpoint(world: World) -> None:
    world.api.seed(model_manifest(**S3_STORAGE))  # no PersistentVolumeClaim exists at all
    await world.model_pass()
    key = world.status("NeuronModel")["cacheKey"]
    assert world.cond("NeuronModel", "Reconciling") == ("True", "Compiling")
    world.complete_job(job_name_of(world), compile_result(key))
    await world.model_pass()
    artifact = world.status("NeuronModel")["artifact"]
    assert (artifact["uri"], artifact["endpoint"]) == (f"s3://team-models/neuron/{key}", "http://s3.test:8333")
    assert world.cond("NeuronModel", "Ready") == ("True", "Compiled")


async def test_an_identical_s3_model_in_another_namespace_is_a_cache_hit_without_a_job(world: World) -> None:
    await world.compiled_model("first", **S3_STORAGE)
    world.ttl_delete(job_name_of(world, "first"))
    other = model_manifest("second", **S3_STORAGE)
    other["metadata"]["namespace"] = "team-b"
    world.api.seed(other)
    writes = await world.model_pass("second", "team-b")
    assert not [w for w in writes if w.startswith("create Job")]
    assert world.api.all("Job") == []
    second = world.api.must("NeuronModel", "second", "team-b")
    assert second["status"]["artifact"] == world.status("NeuronModel", "first")["artifact"]
    assert [c["reason"] for c in second["status"]["conditions"] if c["type"] == "Ready"] == ["CacheHit"]


async def test_the_same_bucket_on_another_endpoint_or_a_pvc_model_elsewhere_is_not_shared(world: World) -> None:
    await world.compiled_model("first", **S3_STORAGE)
    await world.compiled_model("pvc-first")
    world.ttl_delete(job_name_of(world, "first"))
    world.ttl_delete(job_name_of(world, "pvc-first"))
    other_endpoint = model_manifest("second", storage=S3_STORAGE["storage"], s3={"endpoint": "http://other:9000"})
    other_endpoint["metadata"]["namespace"] = "team-b"
    pvc_elsewhere = model_manifest("third")
    pvc_elsewhere["metadata"]["namespace"] = "team-b"
    world.api.seed(other_endpoint)
    world.api.seed(pvc_elsewhere)
    world.api.seed(claim_in(SETTINGS.artifact_pvc, "team-b"))
    await world.model_pass("second", "team-b")
    await world.model_pass("third", "team-b")
    assert len(world.api.all("Job", "team-b")) == 2  # both compile: neither storage holds the artifact


async def test_the_compile_job_is_created_once_with_a_compiling_event(world: World) -> None:
    world.api.seed(model_manifest())
    writes = await world.model_pass()
    key = world.status("NeuronModel")["cacheKey"]
    job_name = job_name_of(world)
    assert key[: names.KEY_PREFIX_LEN] in job_name
    assert writes[0] == f"create Job/{job_name} -> 201"
    assert "patch NeuronModel/cnn/status -> 200" in writes
    assert ("Normal", "Compiling", f"created compile Job {job_name}") in world.events()
    # The Job compiles exactly the request whose cache key the status records.
    job = world.api.must("Job", job_name, NS)
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    model = NeuronModel.model_validate(world.api.must("NeuronModel", "cnn", NS))
    assert json.loads(env[COMPILE_REQUEST_ENV]) == json.loads(
        compile_request(model, SETTINGS).model_dump_json(exclude_none=True)
    )
    assert compile_request(model, SETTINGS).cache_key() == key
    assert job["metadata"]["ownerReferences"][0]["controller"] is False  # shared by models with the same key
    assert world.cond("NeuronModel", "Reconciling") == ("True", "Compiling")
    assert world.cond("NeuronModel", "Ready") == ("False", "Compiling")
    assert job_name in world.message("NeuronModel", "Reconciling")
    # While it runs: no second Job, no second Event, no write at all.
    world.clock.advance(30)
    assert await world.model_pass() == []
    assert world.jobs() == [job_name]


async def test_a_job_still_running_after_a_pod_failure_is_compiling(world: World) -> None:
    """backoffLimit 1: the first pod failed, the Job has not (no Failed condition): still compiling."""
    world.api.seed(model_manifest())
    await world.model_pass()
    job_name = job_name_of(world)
    job = world.api.must("Job", job_name, NS)
    terminated = {"exitCode": 1, "reason": "Error", "message": "boom", "finishedAt": stamp(world.clock.advance(5))}
    world._job_pod(job, "x1x1x", terminated, "Failed")
    world.api.set_status("Job", job_name, NS, {"failed": 1, "active": 1})
    assert await world.model_pass() == []
    assert world.cond("NeuronModel", "Reconciling") == ("True", "Compiling")


async def test_a_succeeded_job_becomes_the_artifact_and_the_pass_after_writes_nothing(world: World) -> None:
    world.api.seed(model_manifest())
    await world.model_pass()
    key = world.status("NeuronModel")["cacheKey"]
    job_name = job_name_of(world)
    finished = world.complete_job(job_name, compile_result(key))
    world.clock.advance(7)
    await world.model_pass()
    status = world.status("NeuronModel")
    assert status["artifact"] == {
        "uri": f"pvc://neuron-artifacts/{key}",
        "sha256": SHA_A,
        "shortDigest": SHA_A[:12],
        "neuronCoreVersion": "v2",
        "compilerVersion": "2.21.0",
        "torchVersion": "2.8.0",
        "inputs": [{"name": "x", "shape": [8, 3, 64, 64], "dtype": "float32"}],
        "batchSize": 8,
        "sizeBytes": 123456,
        "compiledAt": stamp(finished),
        "compileSeconds": 42.123,
    }
    assert world.cond("NeuronModel", "Ready") == ("True", "Compiled")
    assert world.cond("NeuronModel", "ArtifactReady") == ("True", "Compiled")
    assert ("Normal", "Compiled", f"artifact {SHA_A[:12]} at pvc://neuron-artifacts/{key}") in world.events()
    assert "lastFailure" not in status
    world.clock.advance(60)
    assert await world.model_pass() == []
    # The TTL controller removes the finished Job: the model is done, nothing is compiled again.
    world.ttl_delete(job_name)
    assert await world.model_pass() == []
    assert world.jobs() == []


async def test_the_artifact_status_lists_the_compiled_batch_sizes(world: World) -> None:
    await world.compiled_model(batchSizes=[1, 2, 8])
    artifact = world.status("NeuronModel", "cnn")["artifact"]
    assert (artifact["batchSize"], artifact["batchSizes"]) == (8, [1, 2, 8])


async def test_an_artifact_found_by_the_job_in_the_cache_is_a_cache_hit(world: World) -> None:
    world.api.seed(model_manifest())
    await world.model_pass()
    key = world.status("NeuronModel")["cacheKey"]
    world.complete_job(job_name_of(world), compile_result(key, cached=True))
    await world.model_pass()
    assert world.cond("NeuronModel", "Ready") == ("True", "CacheHit")
    world.ttl_delete(job_name_of(world))
    assert await world.model_pass() == []  # the reason it became ready with is kept
    assert world.cond("NeuronModel", "Ready") == ("True", "CacheHit")


async def test_the_artifact_path_includes_the_pvc_subdirectory(world: World) -> None:
    world.api.seed(model_manifest(storage={"pvc": {"claimName": "models", "path": "team-a/neuron"}}))
    await world.model_pass()
    key = world.status("NeuronModel")["cacheKey"]
    world.complete_job(job_name_of(world), compile_result(key))
    await world.model_pass()
    assert world.status("NeuronModel")["artifact"]["uri"] == f"pvc://models/team-a/neuron/{key}"


async def test_another_ready_model_with_the_same_inputs_and_storage_is_a_cache_hit(world: World) -> None:
    await world.compiled_model("first")
    world.ttl_delete(job_name_of(world, "first"))
    world.api.seed(model_manifest("second"))
    writes = await world.model_pass("second")
    assert not [w for w in writes if w.startswith("create Job")]
    assert world.jobs() == []
    assert world.cond("NeuronModel", "Ready", "second") == ("True", "CacheHit")
    assert world.status("NeuronModel", "second")["artifact"] == world.status("NeuronModel", "first")["artifact"]
    assert await world.model_pass("second") == []


async def test_the_same_inputs_in_other_storage_are_compiled_there(world: World) -> None:
    key = await world.compiled_model("first")
    world.ttl_delete(job_name_of(world, "first"))
    world.api.seed(model_manifest("second", storage={"pvc": {"claimName": "other"}}))
    await world.model_pass("second")
    assert world.status("NeuronModel", "second")["cacheKey"] == key  # storage is not part of the key
    assert world.cond("NeuronModel", "Ready", "second") == ("False", "Compiling")
    job = world.api.must("Job", job_name_of(world, "second"), NS)
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["artifacts"]["persistentVolumeClaim"]["claimName"] == "other"


async def test_a_job_that_wrote_to_other_storage_is_not_taken_as_this_models_artifact(world: World) -> None:
    """The cache key excludes storage: a model with other storage must not read the first model's Job."""
    world.api.seed(model_manifest("first"))
    await world.model_pass("first")
    key = world.status("NeuronModel", "first")["cacheKey"]
    world.complete_job(job_name_of(world, "first"), compile_result(key))
    world.api.seed(model_manifest("second", storage={"pvc": {"claimName": "other"}}))
    await world.model_pass("second")
    assert world.cond("NeuronModel", "Ready", "second") == ("False", "Compiling")
    assert job_name_of(world, "second") != job_name_of(world, "first")
    assert sorted(world.jobs()) == sorted([job_name_of(world, "first"), job_name_of(world, "second")])


async def test_a_failed_compile_is_reported_and_not_retried_until_the_spec_changes(world: World) -> None:
    world.api.seed(model_manifest())
    await world.model_pass()
    job_name = job_name_of(world)
    message = termination_line(
        {"status": "Failed", "reason": "TraceFailed", "message": "neuronx-cc: unsupported op aten::foo"}
    )
    failed_at = world.fail_job(job_name, exit_code=4, message=message + "\n")
    world.clock.advance(10)
    await world.model_pass()
    assert world.status("NeuronModel")["lastFailure"] == {
        "reason": "TraceFailed",
        "message": "neuronx-cc: unsupported op aten::foo",
        "exitCode": 4,
        "time": stamp(failed_at),
    }
    assert world.cond("NeuronModel", "Stalled") == ("True", "TraceFailed")
    assert ("Warning", "TraceFailed", "neuronx-cc: unsupported op aten::foo") in world.events()
    assert await world.model_pass() == []  # the failed Job is still there: same verdict, no write
    # The finished Job is removed: the failure stays, and no new attempt starts (no retry loop).
    world.ttl_delete(job_name)
    world.clock.advance(3600)
    assert await world.model_pass() == []
    assert world.jobs() == []
    # A spec edit (even one outside the cache key, like the timeout) is the retry.
    world.api.edit("NeuronModel", "cnn", NS, lambda m: m["spec"]["compiler"].update(timeoutSeconds=3600))
    writes = await world.model_pass()
    assert f"create Job/{job_name} -> 201" in writes
    assert world.jobs() == [job_name]
    assert world.cond("NeuronModel", "Reconciling") == ("True", "Compiling")
    assert world.status("NeuronModel")["lastFailure"]["reason"] == "TraceFailed"  # explains the last attempt
    assert world.status("NeuronModel")["observedGeneration"] == 2


async def test_a_new_cache_key_from_the_operator_retries_a_failed_compile(world: World) -> None:
    """An operator upgrade changes the runtime image, hence the cache key, without a spec edit."""
    world.api.seed(model_manifest())
    await world.model_pass()
    old_job = job_name_of(world)
    world.fail_job(old_job, exit_code=1, message="Traceback ...\nMemoryError\n", reason="BackoffLimitExceeded")
    await world.model_pass()
    assert world.cond("NeuronModel", "Stalled") == ("True", "CompileFailed")
    world.ttl_delete(old_job)
    world.settings = OperatorSettings(**{**SETTINGS.model_dump(), "neuronx_runtime_image": "local/neuronx:2"})
    await world.model_pass()
    new_job = job_name_of(world)
    assert new_job != old_job
    assert world.jobs() == [new_job]
    assert world.cond("NeuronModel", "Reconciling") == ("True", "Compiling")


async def test_a_git_revert_lands_on_the_finished_job_without_compiling_again(world: World) -> None:
    key_a = await world.compiled_model()
    job_a = job_name_of(world)
    original = world.api.must("NeuronModel", "cnn", NS)["spec"]["compiler"]["autoCast"]
    world.api.edit("NeuronModel", "cnn", NS, lambda m: m["spec"]["compiler"].update(autoCast="all"))
    await world.model_pass()
    job_b = job_name_of(world)
    assert job_b != job_a
    assert world.cond("NeuronModel", "Ready") == ("False", "Compiling")
    assert "artifact" not in world.status("NeuronModel")
    # Reverted before the TTL removed Job A: its result is the artifact again, at once.
    world.api.edit("NeuronModel", "cnn", NS, lambda m: m["spec"]["compiler"].update(autoCast=original))
    writes = await world.model_pass()
    assert not [w for w in writes if w.startswith("create Job")]
    assert world.status("NeuronModel")["cacheKey"] == key_a
    assert world.status("NeuronModel")["artifact"]["sha256"] == SHA_A
    assert world.cond("NeuronModel", "Ready") == ("True", "Compiled")
    assert sorted(world.jobs()) == sorted([job_a, job_b])


async def test_a_status_write_the_apiserver_refuses_is_raised_for_the_work_queue(world: World) -> None:
    world.api.seed(model_manifest())
    world.api.inject("patch", "NeuronModel", subresource="status", code=500, reason="InternalError", message="etcd")
    with pytest.raises(ApiError) as raised:
        await world.model_pass()
    assert raised.value.status.code == 500
    await world.model_pass()  # the retry: the Job exists (AlreadyExists is not an error), the status lands
    assert world.cond("NeuronModel", "Reconciling") == ("True", "Compiling")
    assert len(world.jobs()) == 1


# ================================================================================== NeuronDeployment


async def test_a_missing_or_deleting_neurondeployment_is_left_alone(world: World) -> None:
    assert await world.deployment_pass("absent") == []
    body = deployment_manifest()
    body["metadata"]["deletionTimestamp"] = stamp(T0)
    body["metadata"]["finalizers"] = ["example.com/hold"]
    world.api.seed(body)
    assert await world.deployment_pass() == []


async def test_an_invalid_neurondeployment_is_stalled(world: World) -> None:
    await world.compiled_model()
    world.api.seed(deployment_manifest(replicas=-1), validate=False)
    await world.deployment_pass()
    assert world.cond("NeuronDeployment", "Stalled") == ("True", "InvalidSpec")
    assert "spec.replicas" in world.message("NeuronDeployment", "Stalled")
    assert world.status("NeuronDeployment")["selector"] == ",".join(
        f"{k}={v}" for k, v in selector_labels("cnn").items()
    )
    assert world.api.read("Deployment", "cnn", NS) is None
    assert await world.deployment_pass() == []


async def test_a_missing_model_is_stalled_with_model_not_found(world: World) -> None:
    world.api.seed(deployment_manifest(modelRef={"name": "nope"}))
    await world.deployment_pass()
    assert world.cond("NeuronDeployment", "Stalled") == ("True", "ModelNotFound")
    assert world.cond("NeuronDeployment", "Reconciling")[0] == "False"
    assert "NeuronModel nope does not exist in ml" in world.message("NeuronDeployment", "Ready")
    assert world.api.read("Deployment", "cnn", NS) is None
    assert await world.deployment_pass() == []


async def test_a_model_still_compiling_blocks_without_stalling(world: World) -> None:
    world.api.seed(model_manifest())
    await world.model_pass()
    world.api.seed(deployment_manifest())
    await world.deployment_pass()
    assert world.cond("NeuronDeployment", "Reconciling") == ("True", "ModelNotReady")
    assert world.cond("NeuronDeployment", "Stalled")[0] == "False"
    assert "keeps serving" not in world.message("NeuronDeployment", "Ready")
    assert world.api.read("Deployment", "cnn", NS) is None


async def test_a_model_edited_but_not_yet_reconciled_is_not_ready_and_the_old_pods_keep_serving(
    world: World,
) -> None:
    await world.compiled_model()
    world.api.seed(deployment_manifest())
    await world.deployment_pass()
    world.roll_out()
    deployment = world.api.must("Deployment", "cnn", NS)
    # The model's spec changed; its status still describes the previous generation (and its artifact).
    world.api.edit("NeuronModel", "cnn", NS, lambda m: m["spec"]["compiler"].update(autoCast="all"))
    writes = await world.deployment_pass()
    assert not [w for w in writes if w.startswith("apply")]
    assert world.api.must("Deployment", "cnn", NS) == deployment
    assert world.cond("NeuronDeployment", "Reconciling") == ("True", "ModelNotReady")
    assert "2 replica(s) of the previous spec keep serving" in world.message("NeuronDeployment", "Ready")


async def test_max_batch_size_beyond_a_static_artifact_is_refused(world: World) -> None:
    await world.compiled_model()  # batchSize 8, no dynamicBatch
    world.api.seed(deployment_manifest(batching={"maxBatchSize": 16}))
    await world.deployment_pass()
    assert world.cond("NeuronDeployment", "Stalled") == ("True", "InvalidSpec")
    message = world.message("NeuronDeployment", "Stalled")
    assert "maxBatchSize 16 exceeds the batch size 8" in message
    assert "dynamicBatch" in message
    assert world.api.read("Deployment", "cnn", NS) is None
    # Up to the traced batch size is fine.
    world.api.edit("NeuronDeployment", "cnn", NS, lambda d: d["spec"]["batching"].update(maxBatchSize=8))
    await world.deployment_pass()
    assert world.api.read("Deployment", "cnn", NS) is not None
    assert world.cond("NeuronDeployment", "Stalled")[0] == "False"


async def test_max_batch_size_beyond_the_traced_batch_is_allowed_with_dynamic_batch(world: World) -> None:
    await world.compiled_model(dynamicBatch=True)
    world.api.seed(deployment_manifest(batching={"maxBatchSize": 64}))
    await world.deployment_pass()
    assert world.api.read("Deployment", "cnn", NS) is not None
    assert world.cond("NeuronDeployment", "Stalled")[0] == "False"


async def test_an_impossible_placement_is_stalled_with_its_reason(world: World) -> None:
    await world.compiled_model()
    world.api.seed(deployment_manifest(placement={"workers": 2, "coresPerWorker": 16}))
    await world.deployment_pass()
    assert world.cond("NeuronDeployment", "Stalled") == ("True", "InsufficientNeuronCores")
    assert world.status("NeuronDeployment")["coresPerReplica"] == 32
    assert world.api.read("Deployment", "cnn", NS) is None


async def test_the_serving_children_are_applied_once_and_a_no_op_pass_writes_nothing(world: World) -> None:
    key = await world.compiled_model()
    world.api.seed(deployment_manifest())
    writes = await world.deployment_pass()
    applied = sorted(w for w in writes if w.startswith("apply"))
    assert applied == [
        "apply Deployment/cnn -> 201",
        "apply PodDisruptionBudget/cnn -> 201",
        "apply Service/cnn -> 201",
    ]
    nd = world.api.must("NeuronDeployment", "cnn", NS)
    for kind in ("Deployment", "Service", "PodDisruptionBudget"):
        owner = world.api.must(kind, "cnn", NS)["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("NeuronDeployment", nd["metadata"]["uid"], True)
    deployment = world.api.must("Deployment", "cnn", NS)
    assert deployment["metadata"]["annotations"][names.ANNOTATION_CACHE_KEY] == key
    assert deployment["spec"]["template"]["metadata"]["annotations"][names.ANNOTATION_ARTIFACT_SHA] == SHA_A
    assert deployment["spec"]["replicas"] == 2
    status = world.status("NeuronDeployment")
    assert status["model"] == {"name": "cnn", "sha256": SHA_A, "cacheKey": key}
    assert status["endpoint"] == "http://cnn.ml.svc:8080/v2/models/cnn"
    assert status["coresPerReplica"] == 2
    assert world.cond("NeuronDeployment", "Reconciling")[0] == "True"
    # The apiserver stored defaults and canonical quantities: still nothing to write.
    world.clock.advance(30)
    assert await world.deployment_pass() == []
    for pod in world.roll_out():
        world.api.set_log(NS, pod, RUNTIME_CONTAINER, [f"{PARITY_LOG_PREFIX} {json.dumps(PARITY_REPORT)}"])
    await world.deployment_pass()
    assert world.cond("NeuronDeployment", "Ready") == ("True", "ReplicasReady")
    world.clock.advance(30)
    assert await world.deployment_pass() == []
    assert world.api.log_reads == [(NS, "cnn-h1-0", RUNTIME_CONTAINER)]  # parity: one read, then none


async def test_drift_in_a_child_is_repaired(world: World) -> None:
    await world.compiled_model()
    world.api.seed(deployment_manifest())
    await world.deployment_pass()
    world.api.edit("Service", "cnn", NS, lambda s: s["spec"]["ports"][0].update(port=9999))
    writes = await world.deployment_pass()
    assert writes == ["apply Service/cnn -> 200"]
    assert world.api.must("Service", "cnn", NS)["spec"]["ports"][0]["port"] == 8080


async def test_a_new_artifact_is_rolled_out(world: World) -> None:
    key_a = await world.compiled_model()
    world.api.seed(deployment_manifest())
    await world.deployment_pass()
    world.roll_out()
    await world.deployment_pass()
    assert world.cond("NeuronDeployment", "Ready") == ("True", "ReplicasReady")
    world.api.edit("NeuronModel", "cnn", NS, lambda m: m["spec"]["compiler"].update(autoCast="all"))
    key_b = await world.compiled_model(sha=SHA_B)
    assert key_b != key_a
    writes = await world.deployment_pass()
    assert "apply Deployment/cnn -> 200" in writes
    deployment = world.api.must("Deployment", "cnn", NS)
    assert deployment["metadata"]["annotations"][names.ANNOTATION_CACHE_KEY] == key_b
    # The Deployment controller has not caught up yet (its status still counts the old pods as updated).
    assert world.cond("NeuronDeployment", "Reconciling") == ("True", "RollingOut")
    assert world.cond("NeuronDeployment", "Ready")[0] == "False"
    assert world.status("NeuronDeployment")["model"]["sha256"] == SHA_B


async def test_a_runtime_that_refuses_the_artifact_is_surfaced_and_its_log_is_not_read(world: World) -> None:
    await world.compiled_model()
    world.api.seed(deployment_manifest())
    await world.deployment_pass()
    pods = world.roll_out(ready=0)
    line = termination_line(
        {"status": "Failed", "reason": "ParityFailed", "message": "parity FAILED: max abs error 0.731", "atol": 0.05},
    )
    pod = world.api.must("Pod", pods[0], NS)
    pod["status"]["containerStatuses"][0].update(
        state={"waiting": {"reason": "CrashLoopBackOff"}},
        lastState={"terminated": {"exitCode": 6, "reason": "Error", "message": line, "finishedAt": stamp(T0)}},
        restartCount=3,
    )
    world.api.set_status("Pod", pods[0], NS, pod["status"])
    world.api.set_log(NS, pods[0], RUNTIME_CONTAINER, [f"{PARITY_LOG_PREFIX} {json.dumps(PARITY_REPORT)}"])
    world.api.set_log(NS, pods[1], RUNTIME_CONTAINER, [f"{PARITY_LOG_PREFIX} {json.dumps(PARITY_REPORT)}"])
    await world.deployment_pass()
    assert world.cond("NeuronDeployment", "Stalled") == ("True", "ParityFailed")
    assert "max abs error 0.731" in world.message("NeuronDeployment", "Stalled")
    assert world.status("NeuronDeployment")["lastFailure"]["exitCode"] == 6
    assert world.api.log_reads == []
    assert await world.deployment_pass() == []


async def test_parity_is_read_once_per_pod_template_from_the_log(world: World) -> None:
    await world.compiled_model()
    world.api.seed(deployment_manifest())
    await world.deployment_pass()
    pods = world.roll_out(template_hash="h1")
    for p in pods:
        world.api.set_log(
            NS, p, RUNTIME_CONTAINER, ["INFO loading", f"{PARITY_LOG_PREFIX} {json.dumps(PARITY_REPORT)}", "INFO up"]
        )
    await world.deployment_pass()
    parity = world.status("NeuronDeployment")["parity"]
    assert parity == {
        "podTemplateHash": "h1",
        "pod": pods[0],
        "passed": True,
        "maxAbsError": 0.0123,
        "maxRelError": 0.02,
        "atol": 0.05,
        "rtol": 0.05,
        "precision": "bf16",
        "cases": 3,
        "modelCopies": 1,
    }
    assert world.api.log_reads == [(NS, pods[0], RUNTIME_CONTAINER)]
    assert await world.deployment_pass() == []
    assert len(world.api.log_reads) == 1  # a no-op pass reads no log
    # A new pod template (the same artifact, say a changed tolerance) is measured again.
    world.api.edit("NeuronDeployment", "cnn", NS, lambda d: d["spec"]["validation"].update(atol=0.1))
    await world.deployment_pass()
    new_pods = world.roll_out(template_hash="h2")
    for p in new_pods:
        world.api.set_log(
            NS, p, RUNTIME_CONTAINER, [f"{PARITY_LOG_PREFIX} {json.dumps({**PARITY_REPORT, 'atol': 0.1})}"]
        )
    await world.deployment_pass()
    assert world.status("NeuronDeployment")["parity"]["podTemplateHash"] == "h2"
    assert world.status("NeuronDeployment")["parity"]["atol"] == 0.1
    assert world.api.log_reads[1:] == [(NS, new_pods[0], RUNTIME_CONTAINER)]


async def test_a_log_without_a_parity_line_is_read_once(world: World) -> None:
    """Pods whose runtime printed no parity line (or have no log: kwok's simulated pods answer 404) are read once:
    at 1,000 objects re-reading them every resync was most of the operator's requests."""
    await world.compiled_model()
    world.api.seed(deployment_manifest())
    await world.deployment_pass()
    pods = world.roll_out(template_hash="h1")
    world.api.set_log(NS, pods[0], RUNTIME_CONTAINER, ["INFO loading", "INFO up"])
    await world.deployment_pass()
    assert world.api.log_reads == [(NS, pods[0], RUNTIME_CONTAINER)]
    assert "parity" not in world.status("NeuronDeployment")
    for _ in range(3):
        await world.deployment_pass()
    assert len(world.api.log_reads) == 1


async def test_without_the_parity_gate_no_log_is_read(world: World) -> None:
    await world.compiled_model()
    world.api.seed(deployment_manifest(validation={"parity": False}))
    await world.deployment_pass()
    for p in world.roll_out():
        world.api.set_log(NS, p, RUNTIME_CONTAINER, [f"{PARITY_LOG_PREFIX} {json.dumps(PARITY_REPORT)}"])
    await world.deployment_pass()
    assert world.api.log_reads == []
    assert "parity" not in world.status("NeuronDeployment")


async def test_suspend_scales_to_zero(world: World) -> None:
    await world.compiled_model()
    world.api.seed(deployment_manifest())
    await world.deployment_pass()
    world.roll_out()
    await world.deployment_pass()
    world.api.edit("NeuronDeployment", "cnn", NS, lambda d: d["spec"].update(suspend=True))
    await world.deployment_pass()
    assert world.api.must("Deployment", "cnn", NS)["spec"]["replicas"] == 0
    assert world.cond("NeuronDeployment", "Ready") == ("False", "Suspended")
    assert world.status("NeuronDeployment")["readySummary"] == "2/0"
    world.roll_out()
    await world.deployment_pass()
    assert world.status("NeuronDeployment")["readySummary"] == "0/0"
    assert world.cond("NeuronDeployment", "Reconciling")[0] == "False"
    assert await world.deployment_pass() == []


async def test_a_deployment_the_apiserver_refuses_is_stalled_with_its_message(world: World) -> None:
    await world.compiled_model()
    world.api.seed(deployment_manifest())
    world.api.inject(
        "apply",
        "Deployment",
        code=422,
        reason="Invalid",
        message='Deployment.apps "cnn" is invalid: spec.template.spec.containers[0].image: Required value',
    )
    writes = await world.deployment_pass()
    assert writes[0] == "apply Deployment/cnn -> 422"
    assert world.cond("NeuronDeployment", "Stalled") == ("True", "ApplyRejected")
    assert "image: Required value" in world.message("NeuronDeployment", "Stalled")


async def test_an_apiserver_error_is_raised_for_the_work_queue_to_retry(world: World) -> None:
    await world.compiled_model()
    world.api.seed(deployment_manifest())
    world.api.inject("apply", "Service", code=500, reason="InternalError", message="etcdserver: request timed out")
    mark = world.api.mark()
    with pytest.raises(ApiError) as raised:
        await world.deployment_pass()
    assert raised.value.status.code == 500
    assert world.api.writes_since(mark) == ["apply Deployment/cnn -> 201", "apply Service/cnn -> 500"]
    assert world.status("NeuronDeployment") == {}  # nothing half-written: the retry starts over
    await world.deployment_pass()
    assert world.api.read("Service", "cnn", NS) is not None


# ============================================= rules of the in-progress change (claims, pod problems, capacity)


async def test_a_missing_artifact_claim_blocks_the_compile_until_it_exists(world: World) -> None:
    world.api.delete("PersistentVolumeClaim", SETTINGS.artifact_pvc, NS)
    world.api.seed(model_manifest())
    await world.model_pass()
    assert world.cond("NeuronModel", "Stalled") == ("True", "ArtifactClaimMissing")
    assert world.jobs() == []
    assert await world.model_pass() == []
    world.api.seed(claim(SETTINGS.artifact_pvc))
    await world.model_pass()
    assert len(world.jobs()) == 1
    assert world.cond("NeuronModel", "Reconciling") == ("True", "Compiling")


async def test_a_missing_source_claim_blocks_the_compile(world: World) -> None:
    world.api.seed(model_manifest(source={"torchscript": {"uri": "pvc://sources/models/cnn.pt"}}))
    await world.model_pass()
    assert world.cond("NeuronModel", "Stalled") == ("True", "SourceClaimMissing")
    assert world.jobs() == []


async def test_a_compile_pod_that_cannot_mount_its_volume_is_reported(world: World) -> None:
    world.api.seed(model_manifest())
    await world.model_pass()
    job_name = job_name_of(world)
    job = world.api.must("Job", job_name, NS)
    pod = world._job_pod(job, "m0unt", {}, "Pending")
    pod_name = pod["metadata"]["name"]
    world.api.set_status(
        "Pod",
        pod_name,
        NS,
        {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "compile", "state": {"waiting": {"reason": "ContainerCreating"}}}],
        },
    )
    world.api.seed(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{pod_name}.1", "namespace": NS},
            "involvedObject": {"kind": "Pod", "name": pod_name, "namespace": NS},
            "type": "Warning",
            "reason": "FailedMount",
            "message": 'MountVolume.SetUp failed for volume "artifacts": mount failed: exit status 32',
            "lastTimestamp": stamp(T0),
        }
    )
    await world.model_pass()
    assert world.cond("NeuronModel", "Stalled") == ("True", "VolumeMountFailed")
    assert "mount failed" in world.message("NeuronModel", "Stalled")


async def test_a_failed_model_stalls_its_neurondeployment(world: World) -> None:
    world.api.seed(model_manifest())
    await world.model_pass()
    world.fail_job(job_name_of(world), exit_code=1, message="boom", reason="BackoffLimitExceeded")
    await world.model_pass()
    world.api.seed(deployment_manifest())
    await world.deployment_pass()
    assert world.cond("NeuronDeployment", "Stalled") == ("True", "ModelFailed")
    assert world.api.read("Deployment", "cnn", NS) is None


async def test_capacity_is_read_only_when_the_pod_template_changes(world: World) -> None:
    await world.compiled_model()
    world.api.seed(deployment_manifest())
    await world.deployment_pass()
    assert ("list", None, None) in world.api.reads_of("Node")  # the first rollout reads capacity
    world.roll_out()
    await world.deployment_pass()
    before = len(world.api.requests)
    assert await world.deployment_pass() == []
    assert [r for r in world.api.requests[before:] if r[1] == "Node"] == []


async def test_a_new_artifact_is_announced_by_an_event(world: World) -> None:
    await world.compiled_model()
    world.api.seed(deployment_manifest())
    await world.deployment_pass()
    world.roll_out()
    await world.deployment_pass()
    world.api.edit("NeuronModel", "cnn", NS, lambda m: m["spec"]["compiler"].update(autoCast="all"))
    await world.compiled_model(sha=SHA_B)
    await world.deployment_pass()
    changed = [e for e in world.events() if e[1] == "ArtifactChanged"]
    assert changed
    assert SHA_B[:12] in changed[-1][2]
    assert SHA_A[:12] in changed[-1][2]


async def test_a_new_default_storage_finds_or_compiles_the_artifact_there_before_pods_use_it(world: World) -> None:
    """An upgrade that sets the operator's artifactUri: a Ready model on the claim is not taken as stored on S3 (its
    pods would download an artifact that was never published); the model's Job publishes (or finds) it there."""
    key = await world.compiled_model()
    assert world.status("NeuronModel")["artifact"]["uri"] == f"pvc://{SETTINGS.artifact_pvc}/{key}"
    world.settings = OperatorSettings.model_validate(
        {**SETTINGS.model_dump(), "artifact_uri": "s3://shared-models/neuron", "s3_endpoint": "http://s3.test:8333"}
    )
    writes = await world.model_pass()
    jobs = [w for w in writes if w.startswith("create Job")]
    assert len(jobs) == 1
    job = world.api.must("Job", job_name_of(world), NS)
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["--output-root", "s3://shared-models/neuron"]
    assert world.cond("NeuronModel", "Ready") == ("False", "Compiling")
    world.complete_job(job_name_of(world), compile_result(key, cached=True))
    await world.model_pass()
    artifact = world.status("NeuronModel")["artifact"]
    assert (artifact["uri"], artifact["endpoint"]) == (f"s3://shared-models/neuron/{key}", "http://s3.test:8333")
    assert await world.model_pass() == []


async def test_identical_s3_models_created_at_once_in_two_namespaces_compile_once(world: World) -> None:
    """The second waits for the first namespace's running Job (same key, bucket, prefix and endpoint) instead of
    publishing the same key concurrently, then takes its artifact."""
    world.api.seed(model_manifest("first", **S3_STORAGE))
    await world.model_pass("first")
    first_job = job_name_of(world, "first")
    other = model_manifest("second", **S3_STORAGE)
    other["metadata"]["namespace"] = "team-b"
    world.api.seed(other)
    await world.model_pass("second", "team-b")
    assert world.api.all("Job", "team-b") == []
    second = world.api.must("NeuronModel", "second", "team-b")
    reconciling = next(c for c in second["status"]["conditions"] if c["type"] == "Reconciling")
    assert (reconciling["status"], reconciling["reason"]) == ("True", "Compiling")
    assert f"{NS}/{first_job}" in reconciling["message"]
    key = world.status("NeuronModel", "first")["cacheKey"]
    world.complete_job(first_job, compile_result(key))
    await world.model_pass("first")
    await world.model_pass("second", "team-b")
    second = world.api.must("NeuronModel", "second", "team-b")
    assert [c["reason"] for c in second["status"]["conditions"] if c["type"] == "Ready"] == ["CacheHit"]
    assert world.api.all("Job", "team-b") == []


async def test_a_pass_parses_each_object_once(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reconciler validates the NeuronModel / NeuronDeployment once per pass and hands the typed object on:
    the builders never parse the raw dict again."""
    parsed: collections.Counter[str] = collections.Counter()
    for kind in (NeuronModel, NeuronDeployment):
        validate = kind.model_validate

        def counting(obj: Any, *args: Any, _validate: Any = validate, _kind: str = kind.KIND, **kwargs: Any) -> Any:
            parsed[_kind] += 1
            return _validate(obj, *args, **kwargs)

        monkeypatch.setattr(kind, "model_validate", counting)
    await world.compiled_model()
    parsed.clear()
    await world.model_pass()  # the no-op pass over a Ready model
    assert parsed == {"NeuronModel": 1}
    world.api.seed(deployment_manifest())
    parsed.clear()
    await world.deployment_pass()  # creates the Deployment, Service and PDB
    assert parsed == {"NeuronDeployment": 1, "NeuronModel": 1}  # the served model is read once too
    assert world.api.read("Deployment", "cnn", NS) is not None

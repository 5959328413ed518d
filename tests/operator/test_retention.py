"""The artifact garbage collector on the operator side: the pure builder (``resources.retention``: which storages
are in use, what each keeps, the GC Job) and the periodic pass (``gc.ArtifactGC``) against the in-memory
apiserver (``memapi``), with an injected clock. The Job controller and kubelet are played by the test: a finished
GC Job's pod carries the termination message ``neuron-runtime gc`` writes (built by the runtime's own
``GcResult.message`` and ``write_termination_message``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dict_builders import build_compile_job
from memapi import MemApi, Obj
from runtime_lines import termination_line

from neuron_operator import gc
from neuron_operator.api import NeuronModel
from neuron_operator.kube import Kube
from neuron_operator.resources import names
from neuron_operator.resources.compile import compile_request
from neuron_operator.resources.retention import (
    ANNOTATION_LOCATION,
    ANNOTATION_REPORTED,
    GC_CONTAINER,
    GC_KEEP_ENV,
    build_gc_job,
    gc_job_name,
    gc_locations,
    gc_outcome,
    interval_slot,
    keep_env,
    referenced_keys,
)
from neuron_operator.settings import OperatorSettings
from neuron_runtime.retention import Expired, GcResult

SETTINGS = OperatorSettings(
    runtime_image="local/neuron-runtime:test",
    artifact_pvc="neuron-artifacts",
    compile_node_selector={"pool": "cpu"},
    gc_enabled=True,
)
T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
OLD_KEY = "0" * 63 + "1"
SERVED_KEY = "5" * 64
ENDPOINT = "http://minio.storage:9000"


def model(name: str, namespace: str, classes: int = 10, **spec: Any) -> Obj:
    body: Obj = {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"python": {"factory": "neuron_runtime.zoo:tiny_mlp", "args": {"out_features": classes}}},
            "inputs": [{"name": "x", "shape": [1, 16], "dtype": "float32"}],
            "batchSize": 1,
            "target": "cpu",
            "modelFamily": "other",
            **spec,
        },
    }
    return body


def key_of(body: Obj, settings: OperatorSettings = SETTINGS) -> str:
    return compile_request(NeuronModel.model_validate(body), settings).cache_key()


def s3_model(name: str, namespace: str, classes: int, root: str = "s3://artifacts/team") -> Obj:
    return model(
        name,
        namespace,
        classes,
        storage={"uri": root},
        s3={"endpoint": ENDPOINT, "forcePathStyle": True, "credentialsSecretRef": {"name": "s3-keys"}},
    )


def runtime_deployment(namespace: str, name: str, cache_key: str) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": names.common_labels("runtime"),
            "annotations": {names.ANNOTATION_CACHE_KEY: cache_key},
        },
    }


# ------------------------------------------------------------------------------------------------ builder


def test_locations_claims_per_namespace_s3_shared_and_what_each_keeps() -> None:
    a1, a2 = model("a1", "team-a"), model("a2", "team-a", 11, storage={"pvc": {"claimName": "fast", "path": "x/y"}})
    # A model recompiling: its status still names the previous artifact (on the default claim).
    a2["status"] = {
        "cacheKey": OLD_KEY,
        "artifact": {"uri": f"pvc://neuron-artifacts/{OLD_KEY}", "sha256": "a" * 64},
    }
    b1, c1 = s3_model("b1", "team-b", 12), s3_model("c1", "team-c", 13)
    c0 = s3_model("c0", "team-c", 14, root="s3://other-bucket")
    deployments = [runtime_deployment("team-a", "serve", SERVED_KEY)]
    locations = gc_locations([c1, b1, a2, a1, c0], deployments, SETTINGS)
    by_id = {loc.id: loc for loc in locations}
    assert sorted(by_id) == [
        "pvc:team-a/fast/x/y",
        "pvc:team-a/neuron-artifacts/",
        "pvc:team-b/neuron-artifacts/",  # the operator's default claim in every namespace with models
        "pvc:team-c/neuron-artifacts/",
        f"s3:s3://artifacts/team@{ENDPOINT}",
        f"s3:s3://other-bucket@{ENDPOINT}",
    ]
    team_a = {key_of(a1), key_of(a2), OLD_KEY, SERVED_KEY}  # spec keys, the status key, the serving Deployment's
    assert by_id["pvc:team-a/neuron-artifacts/"].keep == team_a
    assert by_id["pvc:team-a/fast/x/y"].keep == team_a
    assert by_id["pvc:team-a/fast/x/y"].root == "/var/lib/neuron/artifacts/x/y"
    assert by_id["pvc:team-b/neuron-artifacts/"].keep == {key_of(b1)}
    # S3 is shared across namespaces: it keeps every key referenced anywhere.
    shared = by_id[f"s3:s3://artifacts/team@{ENDPOINT}"]
    assert shared.keep == team_a | {key_of(b1), key_of(c1), key_of(c0)}
    # Its Job runs in the namespace of the first model using it (by namespace, then name), with its S3 access.
    assert (shared.namespace, shared.root, shared.claim) == ("team-b", "s3://artifacts/team", None)
    assert shared.access is not None
    assert shared.access.secret == "s3-keys"
    assert by_id[f"s3:s3://other-bucket@{ENDPOINT}"].namespace == "team-c"


def test_an_artifact_uri_default_has_no_claim_and_an_invalid_model_still_keeps_its_keys() -> None:
    settings = SETTINGS.model_copy(update={"artifact_uri": "s3://shared/artifacts", "s3_endpoint": ENDPOINT})
    good = model("good", "ml")
    broken = model("broken", "ml")
    broken["spec"]["batchSize"] = 0  # invalid now (the CRD would refuse it; an object from before a change)
    broken["status"] = {"cacheKey": OLD_KEY, "artifact": {"uri": f"s3://shared/artifacts/{OLD_KEY}"}}
    assert referenced_keys(broken, settings) == {OLD_KEY}
    [location] = gc_locations([good, broken], [], settings)
    assert location.id == f"s3:s3://shared/artifacts@{ENDPOINT}"
    assert location.keep == {key_of(good, settings), OLD_KEY}
    assert location.namespace == "ml"


def test_gc_job_shape_pvc() -> None:
    settings = SETTINGS.model_copy(update={"gc_delete": True, "compile_service_account": "compiler"})
    [location] = gc_locations([model("m", "ml")], [runtime_deployment("ml", "d", SERVED_KEY)], settings)
    job = build_gc_job(location, settings, slot=42)
    meta, spec = job["metadata"], job["spec"]
    assert meta["name"] == gc_job_name(location, 42)
    assert meta["name"].startswith("artifact-gc-")
    assert meta["name"].endswith("-42")
    assert len(meta["name"]) <= 63
    assert meta["namespace"] == "ml"
    assert meta["labels"][names.COMPONENT] == "artifact-gc"
    assert meta["labels"][names.MANAGED_BY] == names.OPERATOR
    assert meta["annotations"][ANNOTATION_LOCATION] == "pvc:ml/neuron-artifacts/"
    assert "ownerReferences" not in meta  # no model owns it: deleting one must not kill the run
    assert spec["backoffLimit"] == 0
    assert spec["ttlSecondsAfterFinished"] == 2 * settings.gc_interval_seconds
    assert spec["activeDeadlineSeconds"] == 3600
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "compiler"
    assert pod["nodeSelector"] == {"pool": "cpu"}
    [container] = pod["containers"]
    assert container["name"] == GC_CONTAINER
    assert container["image"] == "local/neuron-runtime:test"
    assert container["command"] == ["neuron-runtime", "gc"]
    assert container["args"] == ["--root", "/var/lib/neuron/artifacts", "--min-age-seconds", "604800", "--delete"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert json.loads(env[GC_KEEP_ENV]) == sorted({key_of(model("m", "ml")), SERVED_KEY})
    assert env["TMPDIR"] == "/scratch"
    assert {"name": "artifacts", "mountPath": "/var/lib/neuron/artifacts"} in container["volumeMounts"]
    assert {"name": "artifacts", "persistentVolumeClaim": {"claimName": "neuron-artifacts"}} in pod["volumes"]
    assert {"name": "scratch", "emptyDir": {}} in pod["volumes"]


def test_gc_job_shape_s3_dry_run() -> None:
    [location] = [loc for loc in gc_locations([s3_model("m", "ml", 3)], [], SETTINGS) if loc.storage == "s3"]
    job = build_gc_job(location, SETTINGS, slot=7)
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["--root", "s3://artifacts/team", "--min-age-seconds", "604800"]  # a dry run
    assert job["metadata"]["labels"]["neuron.dev/gc-mode"] == "dry_run"
    assert [v["name"] for v in pod["volumes"]] == ["scratch"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NEURON_RUNTIME_S3__ENDPOINT_URL"]["value"] == ENDPOINT
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {"secretKeyRef": {"name": "s3-keys", "key": "AWS_ACCESS_KEY_ID"}}


def test_gc_jobs_use_the_gc_service_account_when_set_else_the_compile_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deleting needs s3:DeleteObject, which the compile role should not need: the GC has an identity of its own."""
    with_compiler = s3_model("m", "ml", 3)
    with_compiler["spec"]["compiler"] = {"serviceAccountName": "model-compiler"}
    models = [model("p", "ml"), with_compiler]

    def accounts(settings: OperatorSettings) -> dict[str, str | None]:
        return {
            loc.storage: build_gc_job(loc, settings, slot=1)["spec"]["template"]["spec"].get("serviceAccountName")
            for loc in gc_locations(models, [], settings)
        }

    compile_only = SETTINGS.model_copy(update={"compile_service_account": "compiler"})
    assert accounts(compile_only) == {"pvc": "compiler", "s3": "model-compiler"}
    assert accounts(SETTINGS) == {"pvc": None, "s3": "model-compiler"}
    separate = SETTINGS.model_copy(update={"compile_service_account": "compiler", "gc_service_account": "gc"})
    assert accounts(separate) == {"pvc": "gc", "s3": "gc"}
    # The chart renders the unset value as "": that is unset.
    monkeypatch.setenv("NEURON_OPERATOR_GC_SERVICE_ACCOUNT", "")
    assert OperatorSettings().gc_service_account is None
    monkeypatch.setenv("NEURON_OPERATOR_GC_SERVICE_ACCOUNT", "artifact-gc")
    assert OperatorSettings().gc_service_account == "artifact-gc"


def test_locations_and_jobs_are_deterministic() -> None:
    models = [model("a", "x"), model("b", "x", 11), s3_model("c", "y", 12), s3_model("d", "z", 13)]
    deployments = [runtime_deployment("x", "d1", SERVED_KEY), runtime_deployment("y", "d2", OLD_KEY)]
    first = gc_locations(models, deployments, SETTINGS)
    again = gc_locations(list(reversed(models)), list(reversed(deployments)), SETTINGS)
    assert first == again
    slot = interval_slot(T0, SETTINGS.gc_interval_seconds)
    assert [build_gc_job(loc, SETTINGS, slot) for loc in first] == [build_gc_job(loc, SETTINGS, slot) for loc in again]
    # The same slot all interval long; the next interval is another Job; every location its own name.
    later = interval_slot(T0 + timedelta(seconds=SETTINGS.gc_interval_seconds - 1), SETTINGS.gc_interval_seconds)
    start = T0 - timedelta(seconds=T0.timestamp() % SETTINGS.gc_interval_seconds)  # the slot's first second
    assert interval_slot(start, SETTINGS.gc_interval_seconds) == slot
    assert interval_slot(start - timedelta(seconds=1), SETTINGS.gc_interval_seconds) == slot - 1
    assert later in (slot, slot + 1)
    assert gc_job_name(first[0], slot) != gc_job_name(first[0], slot + 1)
    assert len({gc_job_name(loc, slot) for loc in first}) == len(first)


def test_a_long_keep_list_is_split_over_env_vars_the_runtime_joins(monkeypatch: pytest.MonkeyPatch) -> None:
    from neuron_runtime import cli

    keys = frozenset(f"{n:064x}" for n in range(4000))
    env = keep_env(keys)
    assert [e["name"] for e in env] == [GC_KEEP_ENV, f"{GC_KEEP_ENV}_1", f"{GC_KEEP_ENV}_2"]
    assert all(len(e["value"].encode()) < 128 * 1024 for e in env)
    for e in env:
        monkeypatch.setenv(e["name"], e["value"])
    seen: list[frozenset[str]] = []
    monkeypatch.setattr(
        "neuron_runtime.retention.collect_volume", lambda root, keep, *a: seen.append(keep) or GcResult(True, "")
    )
    assert cli.main(["gc", "--root", "/nonexistent", "--min-age-seconds", "0", "--quiet"]) == 0
    assert seen == [keys]


def test_models_without_storage_and_compile_jobs_agree_on_the_root() -> None:
    """The GC runs over the root the compile Job writes to (``--output-root``)."""
    body = model("m", "ml", storage={"pvc": {"claimName": "fast", "path": "team"}})
    body["metadata"]["uid"] = "u1"
    compile_job = build_compile_job(body, SETTINGS)
    output_root = compile_job["spec"]["template"]["spec"]["containers"][0]["args"][1]
    [location] = [loc for loc in gc_locations([body], [], SETTINGS) if loc.claim == "fast"]
    assert location.root == output_root


# ------------------------------------------------------------------------------------------------ the pass


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    api: MemApi = field(default_factory=MemApi)
    clock: Clock = field(default_factory=Clock)
    settings: OperatorSettings = SETTINGS

    def __post_init__(self) -> None:
        self.kube = Kube(self.api.client())
        self.gc = gc.ArtifactGC(self.kube, self.settings, self.clock)

    def claim(self, namespace: str, name: str = "neuron-artifacts") -> None:
        self.api.seed(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
            }
        )

    async def run(self) -> list[str]:
        mark = self.api.mark()
        await self.gc.run_pass()
        return self.api.writes_since(mark)

    def gc_jobs(self) -> list[Obj]:
        return [j for j in self.api.all("Job") if j["metadata"]["labels"].get(names.COMPONENT) == "artifact-gc"]

    def finish(self, job: Obj, message: dict[str, Any] | None, exit_code: int = 0) -> None:
        """The Job controller and kubelet: the pod terminated with ``message``, the Job Complete or Failed."""
        meta = job["metadata"]
        at = self.clock.now.strftime("%Y-%m-%dT%H:%M:%SZ")
        line = termination_line(message) if message is not None else ""
        self.api.seed(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{meta['name']}-x1",
                    "namespace": meta["namespace"],
                    "labels": {**job["spec"]["template"]["metadata"]["labels"], "job-name": meta["name"]},
                },
                "spec": job["spec"]["template"]["spec"],
                "status": {
                    "phase": "Succeeded" if exit_code == 0 else "Failed",
                    "containerStatuses": [
                        {
                            "name": GC_CONTAINER,
                            "ready": False,
                            "restartCount": 0,
                            "image": "x",
                            "imageID": "",
                            "state": {"terminated": {"exitCode": exit_code, "message": line + "\n", "finishedAt": at}},
                        }
                    ],
                },
            }
        )
        condition = "Complete" if exit_code == 0 else "Failed"
        reason = {} if exit_code == 0 else {"reason": "BackoffLimitExceeded"}
        self.api.set_status(
            "Job",
            meta["name"],
            meta["namespace"],
            {"conditions": [{"type": condition, "status": "True", "lastTransitionTime": at, **reason}]},
        )

    def events(self, job: str) -> list[tuple[str, str, str]]:
        return [
            (e["type"], e["reason"], e["message"])
            for e in self.api.all("Event")
            if e["involvedObject"]["name"] == job and e["involvedObject"]["kind"] == "Job"
        ]


def gc_result(expired: int, *, dry_run: bool, root: str = "/var/lib/neuron/artifacts") -> dict[str, Any]:
    result = GcResult(dry_run=dry_run, root=root, kept=1, retained=2)
    result.expired = [Expired(f"{n:064x}", 1_000_000, T0 - timedelta(days=9)) for n in range(expired)]
    result.deleted_bytes = 0 if dry_run else result.reclaimable_bytes
    return result.message()


def metric(name: str, labels: dict[str, str]) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_one_job_per_location_and_slot_then_reported_once() -> None:
    world = World()
    world.claim("ml")  # team-b has models but no claim: no Job that would wait in Pending
    for body in (model("a", "ml"), model("b", "team-b"), s3_model("c", "team-b", 12)):
        world.api.seed(body)
    writes = await world.run()
    jobs = world.gc_jobs()
    assert sorted((j["metadata"]["namespace"], j["metadata"]["annotations"][ANNOTATION_LOCATION]) for j in jobs) == [
        ("ml", "pvc:ml/neuron-artifacts/"),
        ("team-b", f"s3:s3://artifacts/team@{ENDPOINT}"),
    ]
    assert sorted(writes) == ["create Job/" + j["metadata"]["name"] + " -> 201" for j in sorted_jobs(jobs)]
    # Later passes in the same slot write nothing; a restarted operator (new ArtifactGC) finds the slot's Jobs.
    world.clock.now += timedelta(minutes=5)
    assert await world.run() == []
    world.gc = gc.ArtifactGC(world.kube, world.settings, world.clock)
    restarted = await world.run()
    assert all(w.endswith("-> 409") for w in restarted)  # create-or-get: AlreadyExists is fine
    assert len(world.gc_jobs()) == 2

    pvc_job = next(j for j in world.gc_jobs() if j["metadata"]["namespace"] == "ml")
    world.finish(pvc_job, gc_result(3, dry_run=True))
    writes = await world.run()
    name = pvc_job["metadata"]["name"]
    assert [w.split(".")[0] for w in writes] == [f"apply Job/{name} -> 200", f"create Event/{name}"]
    [(type_, reason, message)] = world.events(name)
    assert (type_, reason) == ("Normal", "ArtifactsExpired")
    assert "3 artifacts expired (3.0 MB reclaimable)" in message
    assert "0" * 16 in message  # the first keys
    assert "set artifacts.gc.delete" in message
    assert world.api.must("Job", name, "ml")["metadata"]["annotations"][ANNOTATION_REPORTED]
    assert metric("neuron_operator_artifact_gc_expired", {"storage": "pvc", "mode": "dry_run"}) == 3
    # Reported once: later passes, and a restarted operator, leave it alone.
    assert await world.run() == []
    world.gc = gc.ArtifactGC(world.kube, world.settings, world.clock)
    await world.run()
    assert len(world.events(name)) == 1


def sorted_jobs(jobs: list[Obj]) -> list[Obj]:
    return sorted(jobs, key=lambda j: j["metadata"]["name"])


async def test_a_deleting_run_counts_bytes_and_a_failed_run_is_a_warning() -> None:
    world = World(settings=SETTINGS.model_copy(update={"gc_delete": True}))
    world.api.seed(s3_model("m", "ml", 5))
    await world.run()
    [job] = world.gc_jobs()
    assert "--delete" in job["spec"]["template"]["spec"]["containers"][0]["args"]
    before = metric("neuron_operator_artifact_gc_deleted_bytes_total", {"storage": "s3"})
    world.finish(job, gc_result(2, dry_run=False, root="s3://artifacts/team"))
    await world.run()
    [(type_, reason, message)] = world.events(job["metadata"]["name"])
    assert (type_, reason) == ("Normal", "ArtifactsCollected")
    assert message.startswith("deleted 2 expired artifacts from s3:s3://artifacts/team@")
    assert "2.0 MB freed" in message
    assert metric("neuron_operator_artifact_gc_deleted_bytes_total", {"storage": "s3"}) == before + 2_000_000
    assert metric("neuron_operator_artifact_gc_expired", {"storage": "s3", "mode": "delete"}) == 2

    # The next interval: its Job fails (a read-only identity).
    world.clock.now += timedelta(seconds=world.settings.gc_interval_seconds)
    await world.run()
    [failing] = [j for j in world.gc_jobs() if j["metadata"]["name"] != job["metadata"]["name"]]
    denied = {"status": "Failed", "reason": "StorageAccessDenied", "message": "cannot delete s3://artifacts/x: 403"}
    world.finish(failing, denied, exit_code=9)
    await world.run()
    [(type_, reason, message)] = world.events(failing["metadata"]["name"])
    assert (type_, reason) == ("Warning", "ArtifactGCFailed")
    assert "StorageAccessDenied" in message
    assert "cannot delete s3://artifacts/x" in message
    # A failed run leaves the gauge as the last successful run set it.
    assert metric("neuron_operator_artifact_gc_expired", {"storage": "s3", "mode": "delete"}) == 2


async def test_the_gauge_sums_the_newest_slot() -> None:
    world = World()
    for ns in ("a", "b"):
        world.claim(ns)
        world.api.seed(model("m", ns))
    await world.run()
    first = world.gc_jobs()
    assert len(first) == 2
    world.finish(first[0], gc_result(1, dry_run=True))
    world.finish(first[1], gc_result(4, dry_run=True))
    await world.run()
    assert metric("neuron_operator_artifact_gc_expired", {"storage": "pvc", "mode": "dry_run"}) == 5
    world.clock.now += timedelta(seconds=world.settings.gc_interval_seconds)
    await world.run()
    done = {f["metadata"]["name"] for f in first}
    second = [j for j in world.gc_jobs() if j["metadata"]["name"] not in done]
    assert len(second) == 2
    world.finish(second[0], gc_result(0, dry_run=True))
    await world.run()
    assert metric("neuron_operator_artifact_gc_expired", {"storage": "pvc", "mode": "dry_run"}) == 0


def test_outcome_of_a_job_without_a_result_or_past_its_deadline() -> None:
    job: Obj = {"metadata": {"labels": {"neuron.dev/gc-storage": "pvc", "neuron.dev/gc-mode": "dry_run"}}}
    assert gc_outcome(job, []) is None  # running
    job["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}
    outcome = gc_outcome(job, [])
    assert outcome is not None
    assert (outcome.succeeded, outcome.reason) == (False, "DeadlineExceeded")
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    outcome = gc_outcome(job, [])
    assert outcome is not None
    assert (outcome.succeeded, outcome.reason) == (False, "NoResult")


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_a_work_queue_kind_only_when_enabled(enabled: bool) -> None:
    from neuron_operator.handlers import Runtime

    settings = SETTINGS.model_copy(update={"gc_enabled": enabled})
    runtime = Runtime(settings, Kube(MemApi().client()))
    assert (gc.KIND in runtime.queue.reconcilers) is enabled

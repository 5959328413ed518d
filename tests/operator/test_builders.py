"""Pure builder tests: these custom resources give exactly these manifests (issue F4).

Every builder output is compared in full with a golden YAML file under ``tests/operator/golden/`` (sorted
keys, committed), KubeSpawner-style: each case reads "this NeuronModel/NeuronDeployment gives this Job /
Deployment / Service / PodDisruptionBudget". Regenerate them after an intended change with
``NEURON_UPDATE_GOLDEN=1 pytest tests/operator/test_builders.py`` and review the diff; without the variable
a missing golden file is a failure, never a silent pass.

The targeted tests below restate the spec's rules one by one (Job name from the cache key only, operator
and runtime agreeing on the cache key, restricted security contexts, NeuronCore limits, the Neuron taint
toleration, node affinity, the env round trip through ``ServeSettings``, owner references), so a golden
regeneration cannot quietly accept a broken rule.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import os
import posixpath
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from dict_builders import build_compile_job, build_deployment, build_pdb, build_service

from neuron_operator.api import NeuronModel
from neuron_operator.catalogue import INSTANCE_TYPE_LABEL, NEURON_TAINT_KEY, NEURONCORE_RESOURCE
from neuron_operator.catalogue import NeuronCoreVersion as V
from neuron_operator.resources import names
from neuron_operator.resources.compile import (
    COMPILE_CONTAINER,
    artifact_location,
    compile_request,
    s3_access,
    storage_id,
)
from neuron_operator.resources.fit import PlacementPlan, plan_placement
from neuron_operator.resources.serving import (
    EXTERNAL_REPLICAS_ANNOTATION,
    RUNTIME_CONTAINER,
    ServedArtifact,
    served_artifact,
)
from neuron_operator.settings import OperatorSettings
from neuron_runtime.config import Batching, CompileRequest, Placement, ServeSettings
from neuron_runtime.contract import COMPILE_REQUEST_ENV, CompileFailure

GOLDEN = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("NEURON_UPDATE_GOLDEN") == "1"
NAMESPACE = "ml"
SHA_SOURCE = "1" * 64
SHA_ARTIFACT = "abcdef0123456789" * 4

Manifest = dict[str, Any]


# ---------------------------------------------------------------------------------------------- helpers


class _GoldenDumper(yaml.SafeDumper):
    """Writes shared sub-objects out in full (no ``&id001`` anchors), so golden files read as manifests."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def assert_golden(name: str, manifest: Manifest) -> None:
    """``manifest`` equals ``golden/<name>.yaml``; ``NEURON_UPDATE_GOLDEN=1`` (re)writes the file instead."""
    path = GOLDEN / f"{name}.yaml"
    text = yaml.dump(manifest, Dumper=_GoldenDumper, sort_keys=True, default_flow_style=False, width=100)
    if UPDATE_GOLDEN:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
        return
    if not path.exists():
        pytest.fail(f"golden file {path} is missing; create it with NEURON_UPDATE_GOLDEN=1 and review it")
    expected_text = path.read_text()
    if yaml.safe_load(expected_text) != manifest:
        diff = "".join(
            difflib.unified_diff(
                expected_text.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=f"golden/{name}.yaml",
                tofile="built",
            )
        )
        pytest.fail(f"{name} differs from its golden file (NEURON_UPDATE_GOLDEN=1 to accept):\n{diff}")


def make_settings(**overrides: Any) -> OperatorSettings:
    """Settings independent of the developer's NEURON_OPERATOR_* environment, with pinned images."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NEURON_OPERATOR_")}
    values: dict[str, Any] = {
        "runtime_image": "registry.test/neuron-runtime:1.0.0",
        "neuronx_runtime_image": "registry.test/neuron-runtime-neuronx:1.0.0",
        "neuron_runtime_image": "registry.test/neuron-runtime-inf1:1.0.0",
        **overrides,
    }
    with mock.patch.dict(os.environ, clean, clear=True):
        return OperatorSettings(**values)


SETTINGS = make_settings()


def meta(name: str, **extra: Any) -> dict[str, Any]:
    """Metadata as the apiserver returns it."""
    return {
        "name": name,
        "namespace": NAMESPACE,
        "uid": f"00000000-0000-4000-8000-{hashlib.sha256(name.encode()).hexdigest()[:12]}",
        "generation": 3,
        "resourceVersion": "4711",
        "creationTimestamp": "2025-01-01T00:00:00Z",
        **extra,
    }


def model_body(name: str, spec: dict[str, Any]) -> Manifest:
    return {"apiVersion": "neuron.dev/v1alpha1", "kind": "NeuronModel", "metadata": meta(name), "spec": spec}


def deployment_body(name: str, spec: dict[str, Any], **meta_extra: Any) -> Manifest:
    return {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronDeployment",
        "metadata": meta(name, **meta_extra),
        "spec": spec,
    }


# A cpu CNN built by a zoo factory, default storage.
CPU_CNN = model_body(
    "cnn-cpu",
    {
        "source": {"python": {"factory": "neuron_runtime.zoo:small_cnn", "args": {"classes": 10}}},
        "inputs": [{"name": "image", "shape": [4, 3, 64, 64], "dtype": "float32"}],
        "batchSize": 4,
        "target": "cpu",
        "modelFamily": "cnn",
    },
)

# An inf2 BERT with sequence buckets, weights on a PVC and artifacts in a directory of another PVC.
INF2_BERT = model_body(
    "bert",
    {
        "source": {
            "python": {
                "factory": "neuron_runtime.zoo:bert_like",
                "args": {"vocab": 1000, "layers": 2},
                "weightsUri": "pvc://model-weights/bert/state_dict.pt",
                "weightsSha256": SHA_SOURCE,
            }
        },
        "inputs": [
            {"name": "input_ids", "shape": [2, 128], "dtype": "int64"},
            {"name": "attention_mask", "shape": [2, 128], "dtype": "int64"},
        ],
        "batchSize": 2,
        "buckets": {"axis": 1, "sizes": [32, 64, 128]},
        "target": "inf2",
        "modelFamily": "encoder",
        "dynamicBatch": True,
        "compiler": {"args": ["--model-type=transformer"], "autoCast": "matmult", "optLevel": 2},
        "storage": {"pvc": {"claimName": "team-artifacts", "path": "bert/v1"}},
    },
)

# A TorchScript file on a PVC, compiled for inf1 with every compile-pod setting overridden.
INF1_TORCHSCRIPT = model_body(
    "resnet-ts",
    {
        "source": {"torchscript": {"uri": "pvc://model-sources/resnet50/model.pt", "sha256": SHA_SOURCE}},
        "inputs": [{"name": "x", "shape": [1, 3, 224, 224]}],
        "target": "inf1",
        "modelFamily": "cnn",
        "compiler": {
            "image": "registry.example.com/custom-compile:1.2",
            "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "16Gi"}},
            "nodeSelector": {"pool": "compile"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "compile", "effect": "NoSchedule"}],
            "timeoutSeconds": 7200,
        },
    },
)

MODELS = {"cpu-cnn": CPU_CNN, "inf2-bert": INF2_BERT, "inf1-torchscript": INF1_TORCHSCRIPT}


def served(model: Manifest, settings: OperatorSettings = SETTINGS, size: int | None = None) -> ServedArtifact:
    """The ServedArtifact the reconciler derives from a Ready model (``reconcile._converge_deployment``)."""
    parsed = NeuronModel.model_validate(model)
    key = compile_request(parsed, settings).cache_key()
    location = artifact_location(parsed, settings)
    endpoint = s3_access(parsed, settings).connection.endpoint_url if location.is_s3 else None
    status = {"uri": location.uri(key), "endpoint": endpoint, "sha256": SHA_ARTIFACT, "totalBytes": size}
    return served_artifact(parsed, key, {k: v for k, v in status.items() if v is not None}, settings)


def plan_for(model: Manifest, dep: Manifest, settings: OperatorSettings = SETTINGS) -> PlacementPlan:
    target = model["spec"]["target"]
    version = {"inf1": V.V1, "inf2": V.V2, "trn1": V.V2, "trn2": V.V3}.get(target)
    placement = dep["spec"].get("placement", {})
    cores = placement.get("workers", 1) * placement.get("coresPerWorker", 1)
    plan = plan_placement(version, cores, dep["spec"].get("instanceTypes"), dep["spec"].get("schedulerName"), settings)
    assert isinstance(plan, PlacementPlan), plan
    return plan


# A BERT replica of 12 NeuronCores in multicore mode; the scheduler is the operator's default decision.
MULTICORE_INF2 = deployment_body(
    "bert-multicore",
    {
        "modelRef": {"name": "bert"},
        "replicas": 2,
        "placement": {"workers": 6, "coresPerWorker": 2, "mode": "multicore"},
        "batching": {"maxBatchSize": 16, "maxDelayMs": 10, "maxQueue": 512, "preferredBatchSizes": [4, 8, 16]},
        "server": {"port": 9000},
        "resources": {"requests": {"cpu": "8", "memory": "32Gi"}, "limits": {"memory": "32Gi"}},
    },
)

# Four pinned single-core workers on inf1 with every pod override.
PINNED_OVERRIDES = deployment_body(
    "resnet-pinned",
    {
        "modelRef": {"name": "resnet-ts"},
        "replicas": 3,
        "placement": {"workers": 4, "coresPerWorker": 1},
        "instanceTypes": ["inf1.6xlarge", "inf1.24xlarge"],
        "rollout": {"maxSurge": 1, "maxUnavailable": 0},
        "pod": {
            "labels": {"team": "vision"},
            "annotations": {"prometheus.io/scrape": "true"},
            "nodeSelector": {"topology.kubernetes.io/zone": "us-east-1a"},
            "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]}
                                ]
                            },
                            {"matchExpressions": [{"key": "reserved", "operator": "Exists"}]},
                        ]
                    }
                },
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 100,
                            "podAffinityTerm": {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": {"team": "vision"}},
                            },
                        }
                    ]
                },
            },
            "serviceAccountName": "vision-runtime",
        },
    },
)

# A cpu model, suspended.
SUSPENDED_CPU = deployment_body(
    "cnn-suspended",
    {"modelRef": {"name": "cnn-cpu"}, "replicas": 4, "placement": {"workers": 2}, "suspend": True},
)

# One core on inf2, replicas owned by an external autoscaler.
EXTERNAL_REPLICAS = deployment_body(
    "bert-hpa",
    {"modelRef": {"name": "bert"}, "replicas": 5, "image": "registry.example.com/runtime:dev"},
    annotations={EXTERNAL_REPLICAS_ANNOTATION: "true"},
)

#: case name -> (NeuronDeployment, its NeuronModel)
DEPLOYMENTS = {
    "inf2-multicore": (MULTICORE_INF2, INF2_BERT),
    "inf1-pinned-overrides": (PINNED_OVERRIDES, INF1_TORCHSCRIPT),
    "cpu-suspended": (SUSPENDED_CPU, CPU_CNN),
    "inf2-external-replicas": (EXTERNAL_REPLICAS, INF2_BERT),
}


def deployment_for(case: str) -> Manifest:
    dep, model = DEPLOYMENTS[case]
    return build_deployment(dep, served(model), plan_for(model, dep), SETTINGS)


def container(manifest: Manifest) -> dict[str, Any]:
    containers = pod_spec(manifest)["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def pod_spec(manifest: Manifest) -> dict[str, Any]:
    result: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return result


def env_values(manifest: Manifest) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(manifest)["env"] if "value" in e}


# ------------------------------------------------------------------------------------------ golden files


@pytest.mark.parametrize("case", sorted(MODELS))
def test_compile_job_golden(case: str) -> None:
    assert_golden(f"compile-job-{case}", build_compile_job(MODELS[case], SETTINGS))


@pytest.mark.parametrize("case", sorted(DEPLOYMENTS))
def test_deployment_golden(case: str) -> None:
    assert_golden(f"deployment-{case}", deployment_for(case))


def test_service_golden() -> None:
    assert_golden("service-inf2-multicore", build_service(MULTICORE_INF2))


def test_pdb_golden() -> None:
    assert_golden("pdb-inf2-multicore", build_pdb(MULTICORE_INF2))


def test_missing_golden_fails_without_update_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(f"{__name__}.GOLDEN", tmp_path)
    monkeypatch.setattr(f"{__name__}.UPDATE_GOLDEN", False)
    with pytest.raises(pytest.fail.Exception, match="missing"):
        assert_golden("absent", {"kind": "Job"})
    assert not (tmp_path / "absent.yaml").exists()


def test_builders_are_deterministic_and_leave_the_body_alone() -> None:
    for case, (dep, _) in DEPLOYMENTS.items():
        before = copy.deepcopy(dep)
        assert deployment_for(case) == deployment_for(case), case
        assert dep == before, f"{case}: build_deployment mutated the NeuronDeployment"
    for case, model in MODELS.items():
        before = copy.deepcopy(model)
        assert build_compile_job(model, SETTINGS) == build_compile_job(model, SETTINGS), case
        assert model == before, case


# -------------------------------------------------------------------------------------- the compile Job


def renamed(model: Manifest, name: str) -> Manifest:
    other = copy.deepcopy(model)
    other["metadata"] |= {"name": name, "uid": f"uid-{name}", "generation": 1}
    return other


def with_spec(model: Manifest, **changes: Any) -> Manifest:
    other = copy.deepcopy(model)
    other["spec"] |= changes
    return other


@pytest.mark.parametrize("case", sorted(MODELS))
def test_job_name_depends_only_on_the_cache_key(case: str) -> None:
    model = MODELS[case]
    job = build_compile_job(model, SETTINGS)
    twin = build_compile_job(renamed(model, "a-different-name"), SETTINGS)
    assert twin["metadata"]["name"] == job["metadata"]["name"]
    assert (
        twin["metadata"]["annotations"][names.ANNOTATION_CACHE_KEY]
        == (job["metadata"]["annotations"][names.ANNOTATION_CACHE_KEY])
    )
    # ... while each object remains an owner of the shared Job.
    assert twin["metadata"]["ownerReferences"][0]["name"] == "a-different-name"


@pytest.mark.parametrize(
    "change",
    [
        {"batchSize": 2, "inputs": [{"name": "image", "shape": [2, 3, 64, 64], "dtype": "float32"}]},
        {"inputs": [{"name": "image", "shape": [4, 3, 32, 32], "dtype": "float32"}]},
        {"inputs": [{"name": "image", "shape": [4, 3, 64, 64], "dtype": "float16"}]},
        {"target": "inf2"},
        {"dynamicBatch": True},
        {"compiler": {"optLevel": 3}},
        {"compiler": {"args": ["--enable-fast-loading-neuron-binaries"]}},
        {"compiler": {"image": "registry.example.com/other:2"}},
        {"source": {"python": {"factory": "neuron_runtime.zoo:small_cnn", "args": {"classes": 11}}}},
    ],
)
def test_changing_an_input_changes_the_job_name(change: dict[str, Any]) -> None:
    before = build_compile_job(CPU_CNN, SETTINGS)["metadata"]["name"]
    after = build_compile_job(with_spec(CPU_CNN, **change), SETTINGS)["metadata"]["name"]
    assert after != before


def test_spec_fields_outside_the_request_keep_the_job_name() -> None:
    before = build_compile_job(CPU_CNN, SETTINGS)
    after = build_compile_job(
        with_spec(CPU_CNN, modelFamily="other", compiler={"timeoutSeconds": 600, "nodeSelector": {"a": "b"}}),
        SETTINGS,
    )
    assert after["metadata"]["name"] == before["metadata"]["name"]
    assert after["spec"]["activeDeadlineSeconds"] == 600


@pytest.mark.parametrize("case", sorted(MODELS))
def test_operator_and_runtime_agree_on_the_cache_key(case: str) -> None:
    job = build_compile_job(MODELS[case], SETTINGS)
    env = {e["name"]: e["value"] for e in container(job)["env"]}
    request = CompileRequest.model_validate_json(env[COMPILE_REQUEST_ENV])
    key = job["metadata"]["annotations"][names.ANNOTATION_CACHE_KEY]
    assert request.cache_key() == key
    assert key == compile_request(NeuronModel.model_validate(MODELS[case]), SETTINGS).cache_key()
    model = NeuronModel.model_validate(MODELS[case])
    assert job["metadata"]["name"] == names.compile_job_name(key, storage_id(model, SETTINGS))
    # The default claim keeps the short name; other storage adds its digest (two storages never share a Job).
    assert (job["metadata"]["name"] == f"compile-{key[:20]}") == (model.spec.storage is None)
    assert job["metadata"]["labels"][names.LABEL_CACHE_KEY] == key[:20]
    assert len(job["metadata"]["labels"][names.LABEL_CACHE_KEY]) <= 63


def test_batch_sizes_reach_the_compile_request_and_only_then_change_the_key() -> None:
    def request_of(job: Manifest) -> tuple[str, str]:
        env = {e["name"]: e["value"] for e in container(job)["env"]}
        return env[COMPILE_REQUEST_ENV], job["metadata"]["annotations"][names.ANNOTATION_CACHE_KEY]

    plain_json, plain_key = request_of(build_compile_job(CPU_CNN, SETTINGS))
    sized_json, sized_key = request_of(build_compile_job(with_spec(CPU_CNN, batchSizes=[1, 2, 4]), SETTINGS))
    assert CompileRequest.model_validate_json(sized_json).batch_sizes == [1, 2, 4]
    assert CompileRequest.model_validate_json(sized_json).cache_key() == sized_key != plain_key
    assert "batch_sizes" not in plain_json  # requests without it are what an older runtime image accepts
    # batchSizes: [batchSize] (or []) compiles the one graph of batchSize alone: the same request and artifact
    for same in ([4], []):
        assert request_of(build_compile_job(with_spec(CPU_CNN, batchSizes=same), SETTINGS)) == (plain_json, plain_key)


def test_pvc_sources_are_mounted_read_only_and_passed_as_file_uris() -> None:
    job = build_compile_job(INF1_TORCHSCRIPT, SETTINGS)
    request = CompileRequest.model_validate_json(
        next(e["value"] for e in container(job)["env"] if e["name"] == COMPILE_REQUEST_ENV)
    )
    assert request.source.kind == "torchscript"
    assert request.source.uri == "file:///var/lib/neuron/sources/model-sources/resnet50/model.pt"
    volumes = {v["name"]: v for v in pod_spec(job)["volumes"]}
    mounts = {m["name"]: m for m in container(job)["volumeMounts"]}
    assert volumes["source-0"]["persistentVolumeClaim"] == {"claimName": "model-sources", "readOnly": True}
    assert mounts["source-0"] == {
        "name": "source-0",
        "mountPath": "/var/lib/neuron/sources/model-sources",
        "readOnly": True,
    }
    # The file the runtime opens is the file the URI names inside the claim.
    local = request.source.uri.removeprefix("file://")
    assert posixpath.relpath(local, mounts["source-0"]["mountPath"]) == "resnet50/model.pt"


def test_pod_failure_policy_fails_the_job_on_permanent_exit_codes() -> None:
    rules = build_compile_job(CPU_CNN, SETTINGS)["spec"]["podFailurePolicy"]["rules"]
    fail = [r for r in rules if r["action"] == "FailJob"]
    assert fail == [
        {
            "action": "FailJob",
            "onExitCodes": {"containerName": COMPILE_CONTAINER, "operator": "In", "values": [2, 3, 5, 8, 9]},
        }
    ]
    # BadRequest, SourceFailed, NeuronMissing, UnsupportedArchitecture, StorageAccessDenied/StorageNotFound: the
    # runtime's own exit codes for them (the contract), not a list kept here by hand.
    permanent = {f for f in CompileFailure if f.permanent}
    assert {f.exit_code for f in permanent} == {2, 3, 5, 8, 9}
    assert not {f.exit_code for f in CompileFailure if not f.permanent} & {2, 3, 5, 8, 9}
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules
    # podFailurePolicy requires restartPolicy Never.
    assert pod_spec(build_compile_job(CPU_CNN, SETTINGS))["restartPolicy"] == "Never"


def test_compile_job_defaults_come_from_settings() -> None:
    settings = make_settings(
        compile_cpu="3",
        compile_memory="12Gi",
        compile_timeout_seconds=900,
        compile_backoff_limit=2,
        compile_node_selector={"pool": "builders"},
        compile_tolerations=[{"key": "builders", "operator": "Exists", "effect": "NoSchedule"}],
    )
    job = build_compile_job(CPU_CNN, settings)
    assert job["spec"]["activeDeadlineSeconds"] == 900
    assert job["spec"]["backoffLimit"] == 2
    assert container(job)["resources"] == {
        "requests": {"cpu": "3", "memory": "12Gi"},
        "limits": {"memory": "12Gi"},
    }
    assert pod_spec(job)["nodeSelector"] == {"pool": "builders"}
    assert pod_spec(job)["tolerations"] == [{"key": "builders", "operator": "Exists", "effect": "NoSchedule"}]
    # The model's own settings win over the operator's.
    job = build_compile_job(INF1_TORCHSCRIPT, settings)
    assert job["spec"]["activeDeadlineSeconds"] == 7200
    assert pod_spec(job)["nodeSelector"] == {"pool": "compile"}


@pytest.mark.parametrize(
    ("model", "image"),
    [
        (CPU_CNN, "registry.test/neuron-runtime:1.0.0"),
        (INF2_BERT, "registry.test/neuron-runtime-neuronx:1.0.0"),
        (with_spec(INF2_BERT, target="trn1"), "registry.test/neuron-runtime-neuronx:1.0.0"),
        (INF1_TORCHSCRIPT, "registry.example.com/custom-compile:1.2"),
        (with_spec(INF1_TORCHSCRIPT, compiler={}), "registry.test/neuron-runtime-inf1:1.0.0"),
    ],
)
def test_compile_image_per_target(model: Manifest, image: str) -> None:
    assert container(build_compile_job(model, SETTINGS))["image"] == image


S3_SPEC = {
    "storage": {"uri": "s3://team-models/artifacts/"},
    "s3": {
        "endpoint": "http://s3.local:8333",
        "region": "eu-west-1",
        "forcePathStyle": True,
        "credentialsSecretRef": {"name": "s3-keys"},
    },
    "compiler": {"serviceAccountName": "compiler"},
}


def _secret_env(manifest: Manifest) -> dict[str, Any]:
    return {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container(manifest)["env"]
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    }


def test_s3_storage_compile_job_publishes_to_the_bucket_with_keys_from_the_secret() -> None:
    model = with_spec(CPU_CNN, **S3_SPEC)
    job = build_compile_job(model, SETTINGS)
    c = container(job)
    assert c["args"] == ["--output-root", "s3://team-models/artifacts"]
    assert [v["name"] for v in pod_spec(job)["volumes"]] == ["scratch"]  # no artifact claim at all
    assert pod_spec(job)["serviceAccountName"] == "compiler"
    env = env_values(job)
    assert env["NEURON_RUNTIME_S3__ENDPOINT_URL"] == "http://s3.local:8333"
    assert env["NEURON_RUNTIME_S3__REGION"] == "eu-west-1"
    assert env["NEURON_RUNTIME_S3__FORCE_PATH_STYLE"] == "true"
    assert _secret_env(job) == {
        "AWS_ACCESS_KEY_ID": {"name": "s3-keys", "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": "s3-keys", "key": "AWS_SECRET_ACCESS_KEY"},
        "AWS_SESSION_TOKEN": {"name": "s3-keys", "key": "AWS_SESSION_TOKEN", "optional": True},
    }
    # Other storage, other Job: a model on S3 never reads a PVC Job's result as its own.
    pvc_job = build_compile_job(CPU_CNN, SETTINGS)
    assert job["metadata"]["name"] != pvc_job["metadata"]["name"]
    other_endpoint = with_spec(CPU_CNN, **{**S3_SPEC, "s3": {"endpoint": "http://other:9000"}})
    assert build_compile_job(other_endpoint, SETTINGS)["metadata"]["name"] != job["metadata"]["name"]


def test_a_pvc_model_with_a_plain_source_gets_no_s3_environment() -> None:
    job = build_compile_job(CPU_CNN, SETTINGS)
    assert not [e for e in container(job)["env"] if "S3" in e["name"] or e["name"].startswith("AWS_")]
    dep = build_deployment(EXTERNAL_REPLICAS, served(CPU_CNN), PlacementPlan(0, (), None), SETTINGS)
    assert not [e for e in container(dep)["env"] if "S3" in e["name"] or e["name"].startswith("AWS_")]


def test_an_s3_source_gives_the_compile_job_the_s3_connection_but_keeps_pvc_storage() -> None:
    model = with_spec(
        CPU_CNN,
        source={"torchscript": {"uri": "s3://team-models/src/cnn.pt", "sha256": SHA_SOURCE}},
        s3={"credentialsSecretRef": {"name": "keys"}},
    )
    job = build_compile_job(model, SETTINGS)
    assert "artifacts" in [v["name"] for v in pod_spec(job)["volumes"]]
    assert set(_secret_env(job)) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    request = CompileRequest.model_validate_json(env_values(job)[COMPILE_REQUEST_ENV])
    assert request.source.uri == "s3://team-models/src/cnn.pt"  # type: ignore[union-attr]


def test_serving_pods_download_the_uri_the_compile_job_publishes() -> None:
    model = with_spec(CPU_CNN, **S3_SPEC)
    key = compile_request(NeuronModel.model_validate(model), SETTINGS).cache_key()
    job = build_compile_job(model, SETTINGS)
    published = f"{container(job)['args'][1]}/{key}"
    dep = build_deployment(EXTERNAL_REPLICAS, served(model, size=300 << 20), PlacementPlan(0, (), None), SETTINGS)
    runtime_env = {k: v for k, v in env_values(dep).items() if k.startswith("NEURON_RUNTIME_")}
    with mock.patch.dict(os.environ, runtime_env, clear=True):
        settings = ServeSettings()  # type: ignore[call-arg]  # everything comes from the environment
    assert settings.s3.endpoint_url == "http://s3.local:8333"
    assert settings.s3.force_path_style is True
    assert settings.artifact_uri == published
    assert str(settings.artifact_dir) == f"{SETTINGS.artifact_mount_path}/{key}"
    volume = next(v for v in pod_spec(dep)["volumes"] if v["name"] == "artifacts")
    assert volume == {"name": "artifacts", "emptyDir": {"sizeLimit": f"{600 + 256}Mi"}}
    mount = next(m for m in container(dep)["volumeMounts"] if m["name"] == "artifacts")
    assert mount["readOnly"] is False
    assert mount["mountPath"] == SETTINGS.artifact_mount_path
    assert set(_secret_env(dep)) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    assert env_values(dep)["NEURON_RUNTIME_S3__FORCE_PATH_STYLE"] == "true"
    # Credentials are referenced, never copied into the manifests.
    assert "s3-keys" in str(dep)
    assert [e for e in container(dep)["env"] if e["name"].startswith("AWS_") and "value" in e] == []
    assert [
        e for e in container(build_compile_job(model, SETTINGS))["env"] if e["name"].startswith("AWS_") and "value" in e
    ] == []


def test_the_operator_default_artifact_uri_replaces_the_claim() -> None:
    settings = make_settings(
        artifact_uri="s3://shared-artifacts/neuron", s3_region="us-west-2", runtime_service_account="serving"
    )
    job = build_compile_job(CPU_CNN, settings)
    assert container(job)["args"] == ["--output-root", "s3://shared-artifacts/neuron"]
    assert "artifacts" not in [v["name"] for v in pod_spec(job)["volumes"]]
    assert env_values(job)["NEURON_RUNTIME_S3__REGION"] == "us-west-2"
    assert not _secret_env(job)  # no Secret configured: the default chain (Pod Identity / IRSA)
    dep = build_deployment(EXTERNAL_REPLICAS, served(CPU_CNN, settings), PlacementPlan(0, (), None), settings)
    assert env_values(dep)["NEURON_RUNTIME_ARTIFACT_URI"].startswith("s3://shared-artifacts/neuron/")
    assert pod_spec(dep)["serviceAccountName"] == "serving"
    # spec.storage.pvc still wins over the operator's default.
    pvc = with_spec(CPU_CNN, storage={"pvc": {"claimName": "mine"}})
    assert "--output-root" in container(build_compile_job(pvc, settings))["args"]
    assert any(
        v.get("persistentVolumeClaim", {}).get("claimName") == "mine"
        for v in pod_spec(build_compile_job(pvc, settings))["volumes"]
    )


def test_server_reads_the_directory_the_compile_job_writes() -> None:
    """The artifact's path inside the claim is the same for the writer (Job) and the reader (runtime)."""
    for model in MODELS.values():
        key = compile_request(NeuronModel.model_validate(model), SETTINGS).cache_key()
        job = build_compile_job(model, SETTINGS)
        jc = container(job)
        job_mount = next(m for m in jc["volumeMounts"] if m["name"] == "artifacts")
        job_claim = next(v for v in pod_spec(job)["volumes"] if v["name"] == "artifacts")
        written = posixpath.join(jc["args"][jc["args"].index("--output-root") + 1], key)
        written_in_claim = posixpath.relpath(written, job_mount["mountPath"])

        dep = build_deployment(EXTERNAL_REPLICAS, served(model), PlacementPlan(0, (), None), SETTINGS)
        dc = container(dep)
        dep_mount = next(m for m in dc["volumeMounts"] if m["name"] == "artifacts")
        dep_claim = next(v for v in pod_spec(dep)["volumes"] if v["name"] == "artifacts")
        assert "subPath" not in dep_mount
        read = env_values(dep)["NEURON_RUNTIME_ARTIFACT_DIR"]
        read_in_claim = posixpath.relpath(read, dep_mount["mountPath"])

        assert dep_claim["persistentVolumeClaim"]["claimName"] == (job_claim["persistentVolumeClaim"]["claimName"])
        assert not read_in_claim.startswith(".."), read_in_claim
        assert read_in_claim == written_in_claim, model["metadata"]["name"]


# ---------------------------------------------------------------------------------- shared pod rules


def assert_plain_data(value: Any, path: str = "") -> None:
    """Only JSON types (exactly: no enums, no pydantic objects, no datetimes) anywhere in ``value``."""
    if type(value) is dict:
        for k, v in value.items():
            assert type(k) is str, f"{path}: key {k!r}"
            assert_plain_data(v, f"{path}.{k}")
    elif type(value) is list:
        for i, v in enumerate(value):
            assert_plain_data(v, f"{path}[{i}]")
    else:
        assert type(value) in (str, int, float, bool, type(None)), f"{path}: {type(value).__name__} {value!r}"


def all_manifests() -> list[tuple[str, Manifest]]:
    jobs = [(f"job/{c}", build_compile_job(m, SETTINGS)) for c, m in sorted(MODELS.items())]
    deps = [(f"deployment/{c}", deployment_for(c)) for c in sorted(DEPLOYMENTS)]
    return jobs + deps


@pytest.mark.parametrize(("case", "manifest"), all_manifests(), ids=[c for c, _ in all_manifests()])
def test_manifests_are_plain_json_data(case: str, manifest: Manifest) -> None:
    assert_plain_data(manifest, case)


@pytest.mark.parametrize(("case", "manifest"), all_manifests(), ids=[c for c, _ in all_manifests()])
def test_restricted_security_context(case: str, manifest: Manifest) -> None:
    spec = pod_spec(manifest)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["automountServiceAccountToken"] is False
    assert "hostNetwork" not in spec
    assert "hostPID" not in spec
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc.get("privileged", False) is False
        assert not sc.get("capabilities", {}).get("add")


def test_runtime_identity_is_uid_65532_unless_run_as_root() -> None:
    assert SETTINGS.runtime_run_as_root is False
    assert SETTINGS.runtime_identity() == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532}
    root = make_settings(runtime_run_as_root=True)
    assert root.runtime_identity() == {"runAsNonRoot": False, "runAsUser": 0, "runAsGroup": 0}


def test_runtime_run_as_root_reaches_the_serving_pods() -> None:
    dep, model = DEPLOYMENTS["inf2-multicore"]
    root = make_settings(runtime_run_as_root=True)
    manifest = build_deployment(dep, served(model, root), plan_for(model, dep, root), root)
    spec = pod_spec(manifest)
    assert {k: spec["securityContext"][k] for k in ("runAsNonRoot", "runAsUser", "runAsGroup")} == {
        "runAsNonRoot": False,
        "runAsUser": 0,
        "runAsGroup": 0,
    }
    sc = container(manifest)["securityContext"]
    assert sc["runAsNonRoot"] is False
    # Root, but otherwise as restricted as before.
    assert (sc["allowPrivilegeEscalation"], sc["readOnlyRootFilesystem"]) == (False, True)
    assert sc["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize(("case", "manifest"), all_manifests(), ids=[c for c, _ in all_manifests()])
def test_writable_scratch_under_a_read_only_root(case: str, manifest: Manifest) -> None:
    volumes = {v["name"]: v for v in pod_spec(manifest)["volumes"]}
    mounts = {m["name"]: m for m in container(manifest)["volumeMounts"]}
    assert volumes["scratch"] == {"name": "scratch", "emptyDir": {}}
    assert not mounts["scratch"].get("readOnly", False)
    env = {e["name"]: e.get("value") for e in container(manifest)["env"]}
    assert env["HOME"] == env["TMPDIR"] == mounts["scratch"]["mountPath"]


# --------------------------------------------------------------------------------- the runtime Deployment


@pytest.mark.parametrize("case", sorted(DEPLOYMENTS))
def test_artifact_volume_is_read_only(case: str) -> None:
    dep = deployment_for(case)
    volume = next(v for v in pod_spec(dep)["volumes"] if v["name"] == "artifacts")
    mount = next(m for m in container(dep)["volumeMounts"] if m["name"] == "artifacts")
    assert volume["persistentVolumeClaim"]["readOnly"] is True
    assert mount["readOnly"] is True


@pytest.mark.parametrize(
    ("case", "cores"),
    [("inf2-multicore", "12"), ("inf1-pinned-overrides", "4"), ("inf2-external-replicas", "1")],
)
def test_neuron_core_limit_is_workers_times_cores_per_worker(case: str, cores: str) -> None:
    resources = container(deployment_for(case))["resources"]
    assert resources["limits"][NEURONCORE_RESOURCE] == cores
    # Extended resources are requested through limits only (requests default to them).
    assert NEURONCORE_RESOURCE not in resources.get("requests", {})


def test_user_resources_are_kept_next_to_the_neuron_core_limit() -> None:
    resources = container(deployment_for("inf2-multicore"))["resources"]
    assert resources == {
        "requests": {"cpu": "8", "memory": "32Gi"},
        "limits": {"memory": "32Gi", NEURONCORE_RESOURCE: "12"},
    }


def test_cpu_targets_request_no_neuron_cores_and_tolerate_no_neuron_taint() -> None:
    dep = deployment_for("cpu-suspended")
    assert NEURONCORE_RESOURCE not in container(dep)["resources"].get("limits", {})
    assert "tolerations" not in pod_spec(dep)
    assert "affinity" not in pod_spec(dep)
    assert "schedulerName" not in pod_spec(dep)
    assert container(dep)["image"] == "registry.test/neuron-runtime:1.0.0"


NEURON_TOLERATION = {"key": NEURON_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}


@pytest.mark.parametrize("case", ["inf2-multicore", "inf1-pinned-overrides", "inf2-external-replicas"])
def test_neuron_targets_tolerate_the_neuron_taint_once(case: str) -> None:
    tolerations = pod_spec(deployment_for(case))["tolerations"]
    assert tolerations.count(NEURON_TOLERATION) == 1


def test_user_tolerations_come_first_and_are_kept() -> None:
    assert pod_spec(deployment_for("inf1-pinned-overrides"))["tolerations"] == [
        {"key": "spot", "operator": "Exists", "effect": "NoSchedule"},
        NEURON_TOLERATION,
    ]


def instance_type_terms(dep: Manifest) -> list[dict[str, Any]]:
    required = pod_spec(dep)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    terms: list[dict[str, Any]] = required["nodeSelectorTerms"]
    return terms


def test_node_affinity_lists_exactly_the_plan_instance_types() -> None:
    dep = deployment_for("inf2-multicore")
    plan = plan_for(INF2_BERT, MULTICORE_INF2)
    # 12 cores = 6 trn1 devices, a size the Neuron scheduler extension refuses on trn1.32xlarge/trn1n.32xlarge.
    assert plan.instance_types == ("inf2.24xlarge", "inf2.48xlarge")
    assert instance_type_terms(dep) == [
        {"matchExpressions": [{"key": INSTANCE_TYPE_LABEL, "operator": "In", "values": list(plan.instance_types)}]}
    ]


def test_node_affinity_is_anded_into_every_user_term() -> None:
    dep = deployment_for("inf1-pinned-overrides")
    ours = {"key": INSTANCE_TYPE_LABEL, "operator": "In", "values": ["inf1.6xlarge", "inf1.24xlarge"]}
    # Terms are ORed, expressions within a term ANDed: the requirement joins each user term.
    assert instance_type_terms(dep) == [
        {
            "matchExpressions": [
                {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]},
                ours,
            ]
        },
        {"matchExpressions": [{"key": "reserved", "operator": "Exists"}, ours]},
    ]
    # The rest of the user's affinity passes through unchanged.
    user = PINNED_OVERRIDES["spec"]["pod"]["affinity"]
    assert pod_spec(dep)["affinity"]["podAntiAffinity"] == user["podAntiAffinity"]


def test_pod_overrides_reach_the_pod_without_overriding_operator_labels() -> None:
    dep = deployment_for("inf1-pinned-overrides")
    template = dep["spec"]["template"]
    spec = pod_spec(dep)
    assert spec["nodeSelector"] == {"topology.kubernetes.io/zone": "us-east-1a"}
    assert spec["serviceAccountName"] == "vision-runtime"
    assert template["metadata"]["labels"]["team"] == "vision"
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert template["metadata"]["annotations"][names.ANNOTATION_ARTIFACT_SHA] == SHA_ARTIFACT
    # The selector labels are always on the pod, so the Deployment selects its pods.
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()


@pytest.mark.parametrize(
    ("case", "scheduler"),
    [
        ("inf2-multicore", "my-scheduler"),  # 12 of 24 or 32 cores: contiguity matters
        ("inf1-pinned-overrides", "my-scheduler"),  # 4 of 16 cores
        ("inf2-external-replicas", None),  # one core is always contiguous
        ("cpu-suspended", None),
    ],
)
def test_scheduler_name_follows_the_plan(case: str, scheduler: str | None) -> None:
    assert pod_spec(deployment_for(case)).get("schedulerName") == scheduler


def test_replicas_suspend_and_external_replicas() -> None:
    assert deployment_for("inf2-multicore")["spec"]["replicas"] == 2
    assert deployment_for("cpu-suspended")["spec"]["replicas"] == 0
    assert "replicas" not in deployment_for("inf2-external-replicas")["spec"]


def intended_serve_settings(case: str) -> ServeSettings:
    """The settings the runtime should see, written out from the NeuronDeployment's spec by hand."""
    dep, model = DEPLOYMENTS[case]
    spec = dep["spec"]
    artifact = served(model)
    placement = spec.get("placement", {})
    batching = spec.get("batching", {})
    return ServeSettings(
        model_name=model["metadata"]["name"],
        artifact_dir=Path(artifact.directory),
        expected_sha256=SHA_ARTIFACT,
        port=spec.get("server", {}).get("port", 8080),
        placement=Placement(
            workers=placement.get("workers", 1),
            cores_per_worker=placement.get("coresPerWorker", 1),
            mode=placement.get("mode", "pinned"),
        ),
        batching=Batching(
            max_batch_size=batching.get("maxBatchSize", 8),
            max_delay_ms=batching.get("maxDelayMs", 5),
            max_queue=batching.get("maxQueue", 256),
            timeout_ms=batching.get("timeoutMs", 30000),
            preferred_batch_sizes=batching.get("preferredBatchSizes", []),
        ),
    )


@pytest.mark.parametrize("case", sorted(DEPLOYMENTS))
def test_runtime_env_round_trips_through_serve_settings(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in env_values(deployment_for(case)).items() if k.startswith("NEURON_RUNTIME_")}
    for key in list(os.environ):
        if key.startswith("NEURON_RUNTIME_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    parsed = ServeSettings()  # type: ignore[call-arg]  # everything comes from the environment
    assert parsed == intended_serve_settings(case)
    # And the env is exactly what ServeSettings.to_env() writes for those settings.
    assert env == intended_serve_settings(case).to_env()


def test_container_port_and_probes_use_the_server_port() -> None:
    dep = deployment_for("inf2-multicore")
    c = container(dep)
    assert c["ports"] == [
        {"name": "http", "containerPort": 9000, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 8001, "protocol": "TCP"},
    ]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == "http"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert (env["NEURON_RUNTIME_PORT"], env["NEURON_RUNTIME_GRPC_PORT"]) == ("9000", "8001")
    service = build_service(MULTICORE_INF2)
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 9000, "targetPort": "http", "protocol": "TCP"},
        {"name": "grpc", "port": 8001, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"},
    ]
    assert service["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert build_pdb(MULTICORE_INF2)["spec"]["selector"] == dep["spec"]["selector"]


@pytest.mark.parametrize(
    ("dep", "model", "image"),
    [
        (MULTICORE_INF2, INF2_BERT, "registry.test/neuron-runtime-neuronx:1.0.0"),
        (PINNED_OVERRIDES, INF1_TORCHSCRIPT, "registry.test/neuron-runtime-inf1:1.0.0"),
        (SUSPENDED_CPU, CPU_CNN, "registry.test/neuron-runtime:1.0.0"),
        (EXTERNAL_REPLICAS, INF2_BERT, "registry.example.com/runtime:dev"),
    ],
)
def test_runtime_image_per_target(dep: Manifest, model: Manifest, image: str) -> None:
    assert container(build_deployment(dep, served(model), plan_for(model, dep), SETTINGS))["image"] == image
    assert container(build_deployment(dep, served(model), plan_for(model, dep), SETTINGS))["name"] == (
        RUNTIME_CONTAINER
    )


# ------------------------------------------------------------------------------------- owner references


def owner_of(body: Manifest, *, controller: bool) -> dict[str, Any]:
    return {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": body["kind"],
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": controller,
        "blockOwnerDeletion": controller,
    }


@pytest.mark.parametrize("case", sorted(DEPLOYMENTS))
def test_serving_children_are_controlled_by_the_neuron_deployment(case: str) -> None:
    dep, _ = DEPLOYMENTS[case]
    for child in (deployment_for(case), build_service(dep), build_pdb(dep)):
        assert child["metadata"]["ownerReferences"] == [owner_of(dep, controller=True)], child["kind"]
        assert child["metadata"]["namespace"] == dep["metadata"]["namespace"]
        assert child["metadata"]["name"] == dep["metadata"]["name"]


@pytest.mark.parametrize("case", sorted(MODELS))
def test_shared_compile_job_is_owned_but_not_controlled(case: str) -> None:
    model = MODELS[case]
    job = build_compile_job(model, SETTINGS)
    assert job["metadata"]["ownerReferences"] == [owner_of(model, controller=False)]
    assert job["metadata"]["namespace"] == NAMESPACE


def test_the_grace_period_outlasts_the_runtime_s_whole_shutdown() -> None:
    """SIGKILL must not cut the drain short: preStop pause + shutdown delay + drain deadline + the runtime's
    connection cleanup fit in terminationGracePeriodSeconds, read back from the built Deployment itself."""
    from neuron_runtime.server import CLEANUP_TIMEOUT_S

    dep = deployment_for("inf2-multicore")
    c = container(dep)
    env = {e["name"]: e.get("value") for e in c["env"]}
    shutdown = (
        c["lifecycle"]["preStop"]["sleep"]["seconds"]
        + float(env["NEURON_RUNTIME_SHUTDOWN_DELAY_S"])
        + float(env["NEURON_RUNTIME_DRAIN_TIMEOUT_S"])
        + CLEANUP_TIMEOUT_S
    )
    assert shutdown < dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]

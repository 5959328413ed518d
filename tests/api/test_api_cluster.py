"""The generated CRDs on the real apiserver: admission agrees with pydantic; defaults, explain, scale and a
lossless round trip.

Needs the session ``cluster`` fixture (``tests/conftest.py``); the CRDs are applied here, once per module,
exactly as ``kubectl apply --server-side -f crds/`` would in a user's cluster.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Protocol

import pytest
import yaml
from api_cases import (
    EXAMPLES,
    INVALID,
    REPO,
    Invalid,
    base_deployment,
    base_model,
    deployment_specs,
    model_specs,
    wrap,
)
from hypothesis import HealthCheck, given, settings
from pydantic import BaseModel, ValidationError

from localcluster.wait import until
from neuron_operator import crdgen
from neuron_operator.api import (
    Affinity,
    ArtifactStatus,
    Batching,
    Buckets,
    CompilerSpec,
    Condition,
    ConditionStatus,
    DType,
    Failure,
    ModelFamily,
    ModelPhase,
    ModelReference,
    ModelSource,
    NeuronCoreVersion,
    NeuronDeployment,
    NeuronDeploymentSpec,
    NeuronDeploymentStatus,
    NeuronModel,
    NeuronModelSpec,
    NeuronModelStatus,
    ObjectMeta,
    Placement,
    PlacementMode,
    PodOverrides,
    PvcStorage,
    PythonSource,
    ResourceList,
    ResourceRequirements,
    Rollout,
    ServedModel,
    ServerSpec,
    StorageSpec,
    Target,
    TensorSpec,
    Toleration,
)

pytestmark = pytest.mark.cluster

KINDS: dict[str, type[BaseModel]] = {"NeuronModel": NeuronModel, "NeuronDeployment": NeuronDeployment}
HYPOTHESIS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Cluster(Protocol):
    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]: ...


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> Cluster:
    applied = cluster.kubectl(
        "apply", "--server-side", "--field-manager=neuron-tests", "-f", str(REPO / "crds"), check=False
    )
    assert applied.returncode == 0, f"the apiserver rejected the CRDs:\n{applied.stderr}"
    names = [f"crd/{kind.name}" for kind in crdgen.KINDS]
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    return cluster


@pytest.fixture(scope="module")
def ns(crds: Cluster) -> Iterator[str]:
    name = f"api-{uuid.uuid4().hex[:8]}"
    crds.kubectl("create", "namespace", name)
    # Discovery and the OpenAPI document lag the Established condition by a moment.
    until(lambda: crds.kubectl("get", "nm,nd", "-n", name, check=False).returncode == 0, what="nm,nd served")
    yield name
    crds.kubectl("delete", "namespace", name, "--wait=false", check=False)


def dry_run(cluster: Cluster, ns: str, manifest: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """Server-side dry-run create with strict field validation (what `kubectl create` does by default)."""
    return cluster.kubectl(
        "create", "--dry-run=server", "--validate=strict", "-n", ns, "-o", "json", "-f", "-",
        input=json.dumps(manifest), check=False,
    )  # fmt: skip


def pydantic_accepts(manifest: dict[str, Any]) -> bool:
    try:
        KINDS[manifest["kind"]].model_validate(manifest)
    except ValidationError:
        return False
    return True


def get(cluster: Cluster, ns: str, ref: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(cluster.kubectl("get", ref, "-n", ns, "-o", "json").stdout)
    return out


# --------------------------------------------------------------------------------------------------


def test_every_example_is_accepted(crds: Cluster, ns: str) -> None:
    crds.kubectl("apply", "--server-side", "--field-manager=neuron-tests", "-n", ns, "-f", str(EXAMPLES))
    listed = crds.kubectl("get", "nm,nd", "-n", ns).stdout
    header_nm, header_nd = (line for line in listed.splitlines() if line.startswith("NAME"))
    assert header_nm.split() == ["NAME", "TARGET", "READY", "PHASE", "ARTIFACT", "AGE"]
    assert header_nd.split() == ["NAME", "MODEL", "READY", "CORES/REPLICA", "MAXBATCH", "LOAD", "CANARY", "AGE"]
    for path in EXAMPLES.glob("*.yaml"):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        assert name in listed
    by_category = crds.kubectl("get", "neuron", "-n", ns, "-o", "name").stdout.split()
    assert len(by_category) == len(list(EXAMPLES.glob("*.yaml")))


@pytest.mark.parametrize("case", INVALID, ids=[c.id for c in INVALID])
def test_apiserver_rejects_invalid(crds: Cluster, ns: str, case: Invalid) -> None:
    result = dry_run(crds, ns, case.manifest)
    assert result.returncode != 0, f"accepted: {case.manifest}"
    assert case.field in result.stderr, result.stderr


def test_base_manifests_are_accepted(crds: Cluster, ns: str) -> None:
    for manifest in (base_model(), base_deployment()):
        result = dry_run(crds, ns, manifest)
        assert result.returncode == 0, result.stderr


def test_defaults_appear_after_create(crds: Cluster, ns: str) -> None:
    minimal_model = wrap(
        "NeuronModel",
        "defaults",
        {
            "source": {"torchscript": {"uri": "https://models.example.com/m.pt"}},
            "inputs": [{"name": "x", "shape": [1, 4]}],
            "target": "cpu",
        },
    )
    minimal_dep = wrap("NeuronDeployment", "defaults", {"modelRef": {"name": "defaults"}})
    crds.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(minimal_model))
    crds.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(minimal_dep))
    model = get(crds, ns, "nm/defaults")["spec"]
    assert model["batchSize"] == 1
    assert model["dynamicBatch"] is False
    assert model["modelFamily"] == "other"
    assert model["inputs"][0]["dtype"] == "float32"
    assert model["compiler"] == {
        "autoCast": "none",
        "autoCastType": "bf16",
        "optLevel": 2,
    }
    dep = get(crds, ns, "nd/defaults")["spec"]
    assert dep["replicas"] == 1
    assert dep["suspend"] is False
    assert dep["placement"] == {"workers": 1, "coresPerWorker": 1, "mode": "pinned"}
    assert dep["batching"] == {"maxBatchSize": 8, "maxDelayMs": 5, "maxQueue": 256, "timeoutMs": 30000}
    assert dep["server"] == {"port": 8080, "grpcPort": 8001}
    # unset: a rolling update whose budget the operator chooses from free capacity at each update
    assert dep["rollout"] == {"strategy": "RollingUpdate"}
    # The apiserver and pydantic fill in the same defaults.
    assert NeuronModel.model_validate({**minimal_model, "spec": model}) == NeuronModel.model_validate(minimal_model)
    assert NeuronDeployment.model_validate({**minimal_dep, "spec": dep}) == NeuronDeployment.model_validate(minimal_dep)


def test_explain_prints_descriptions(crds: Cluster) -> None:
    def explain() -> str | None:
        result = crds.kubectl("explain", "neuronmodel.spec.inputs", check=False)
        return result.stdout if result.returncode == 0 and "shape" in result.stdout else None

    text = until(explain, timeout=60, what="kubectl explain neuronmodel.spec.inputs")
    assert "Example inputs, in forward() argument order" in text
    assert "batch dimension" in text
    assert "dtype" in text
    text = crds.kubectl("explain", "neurondeployment.spec.placement.mode").stdout
    assert "multicore" in text


def test_kubectl_scale_changes_spec_replicas(crds: Cluster, ns: str) -> None:
    crds.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(base_deployment("scaled")))
    crds.kubectl("scale", "nd/scaled", "--replicas=3", "-n", ns)
    assert get(crds, ns, "nd/scaled")["spec"]["replicas"] == 3


def test_status_subresource_and_printer_columns(crds: Cluster, ns: str) -> None:
    crds.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(base_deployment("printed")))
    status = NeuronDeploymentStatus(replicas=3, ready_replicas=1, ready_summary="1/3", cores_per_replica=2)
    crds.kubectl(
        "patch", "nd/printed", "-n", ns, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status.to_manifest()}),
    )  # fmt: skip
    row = crds.kubectl("get", "nd/printed", "-n", ns, "--no-headers").stdout.split()
    assert row[:5] == ["printed", "m", "1/3", "2", "8"]
    # A status written through the main resource is ignored (status subresource).
    crds.kubectl("patch", "nd/printed", "-n", ns, "--type=merge", "-p", '{"status": {"replicas": 9}}')
    assert get(crds, ns, "nd/printed")["status"]["replicas"] == 3


# --------------------------------------------------------------------------------------------------
# round trip: pydantic -> YAML -> apiserver -> pydantic
# --------------------------------------------------------------------------------------------------

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def full_model(name: str) -> NeuronModel:
    return NeuronModel(
        metadata=ObjectMeta(name=name),
        spec=NeuronModelSpec(
            source=ModelSource(
                python=PythonSource(
                    factory="neuron_runtime.zoo:bert_like",
                    args={"vocab": 1000, "d_model": 64, "nested": {"list": [1, "two", True]}},
                    weights_uri="https://models.example.com/weights.pt",
                    weights_sha256="b" * 64,
                )
            ),
            inputs=[
                TensorSpec(name="input_ids", shape=[4, 128], dtype=DType.INT64),
                TensorSpec(name="attention_mask", shape=[4, 128], dtype=DType.INT64),
            ],
            batch_size=4,
            buckets=Buckets(input=None, axis=1, sizes=[32, 64, 128]),
            target=Target.INF2,
            model_family=ModelFamily.ENCODER,
            dynamic_batch=True,
            compiler=CompilerSpec(
                args=["--model-type=transformer"],
                image="public.ecr.aws/neuron/pytorch-inference-neuronx:2.9.0-neuronx-py312-sdk2.31.1-ubuntu24.04",
                resources=ResourceRequirements(
                    requests=ResourceList(cpu="1500m", memory="8Gi"), limits=ResourceList(memory=17179869184)
                ),
                node_selector={"node.kubernetes.io/instance-type": "c6i.4xlarge"},
                tolerations=[Toleration(key="dedicated", operator="Equal", value="compile", effect="NoSchedule")],
                timeout_seconds=1200,
            ),
            storage=StorageSpec(pvc=PvcStorage(claim_name="neuron-artifacts", path="models/bert")),
        ),
        status=NeuronModelStatus(
            observed_generation=1,
            conditions=[
                Condition(type="Ready", status=ConditionStatus.TRUE, reason="Compiled", last_transition_time=NOW),
                Condition(
                    type="ArchitectureFit",
                    status=ConditionStatus.TRUE,
                    reason="Fits",
                    message="encoder on inf2",
                    last_transition_time=NOW,
                    observed_generation=1,
                ),
            ],
            phase=ModelPhase.READY,
            cache_key="c" * 64,
            artifact=ArtifactStatus(
                uri="pvc://neuron-artifacts/models/bert/" + "c" * 64,
                sha256="d" * 64,
                short_digest="d" * 12,
                neuron_core_version=NeuronCoreVersion.V2,
                compiler_version="2.21.0",
                torch_version="2.9.0",
                inputs=[TensorSpec(name="input_ids", shape=[4, 128], dtype=DType.INT64)],
                batch_size=4,
                buckets=Buckets(axis=1, sizes=[32, 64, 128]),
                size_bytes=123456789,
                compiled_at=NOW,
                compile_seconds=431.25,
            ),
            last_failure=Failure(reason="CompileFailed", message="oom", exit_code=137, time=NOW),
        ),
    )


def full_deployment(name: str) -> NeuronDeployment:
    return NeuronDeployment(
        metadata=ObjectMeta(name=name),
        spec=NeuronDeploymentSpec(
            model_ref=ModelReference(name="bert"),
            replicas=2,
            placement=Placement(workers=2, cores_per_worker=2, mode=PlacementMode.MULTICORE),
            instance_types=["inf2.24xlarge", "inf2.48xlarge"],
            batching=Batching(
                max_batch_size=32,
                max_delay_ms=3,
                max_queue=1000,
                timeout_ms=5000,
                preferred_batch_sizes=[8, 16, 32],
            ),
            server=ServerSpec(port=9000),
            resources=ResourceRequirements(requests=ResourceList(cpu=2, memory="4Gi", ephemeral_storage="10Gi")),
            rollout=Rollout(max_surge="25%", max_unavailable=0),
            image="registry.example.com/neuron-runtime:0.1.0",
            scheduler_name="my-scheduler",
            suspend=True,
            pod=PodOverrides(
                labels={"team": "search"},
                annotations={"prometheus.io/scrape": "true"},
                node_selector={"topology.kubernetes.io/zone": "us-east-1a"},
                tolerations=[Toleration(operator="Exists")],
                affinity=Affinity(
                    pod_anti_affinity={
                        "requiredDuringSchedulingIgnoredDuringExecution": [
                            {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": {"a": "b"}},
                            }
                        ]
                    }
                ),
                service_account_name="bert-runtime",
            ),
        ),
        status=NeuronDeploymentStatus(
            observed_generation=2,
            conditions=[
                Condition(
                    type="Schedulable",
                    status=ConditionStatus.FALSE,
                    reason="InsufficientNeuronCores",
                    message="no inf2 node has 4 free cores",
                    last_transition_time=NOW,
                    observed_generation=2,
                )
            ],
            replicas=2,
            ready_replicas=1,
            updated_replicas=2,
            available_replicas=1,
            ready_summary="1/2",
            selector="neuron.dev/deployment=" + name,
            cores_per_replica=4,
            model=ServedModel(name="bert", sha256="d" * 64, cache_key="c" * 64),
            endpoint=f"http://{name}.default.svc:9000",
            last_failure=Failure(reason="CoreAllocationFailed", time=NOW),
        ),
    )


@pytest.mark.parametrize("build", [full_model, full_deployment], ids=["NeuronModel", "NeuronDeployment"])
def test_round_trip_is_lossless(crds: Cluster, ns: str, build: Any) -> None:
    obj = build("round-trip")
    manifest = obj.to_manifest()
    status = manifest.pop("status")
    crds.kubectl("create", "-n", ns, "-f", "-", input=yaml.safe_dump(manifest))
    plural = type(obj).PLURAL
    crds.kubectl(
        "patch", f"{plural}/round-trip", "-n", ns, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip
    back = type(obj).model_validate(get(crds, ns, f"{plural}/round-trip"))
    assert back.spec == obj.spec
    assert back.status == obj.status


# --------------------------------------------------------------------------------------------------
# property-based: pydantic and the apiserver agree
# --------------------------------------------------------------------------------------------------


@HYPOTHESIS
@given(spec=model_specs(valid_only=True))
def test_valid_model_specs_are_accepted(crds: Cluster, ns: str, spec: dict[str, Any]) -> None:
    manifest = wrap("NeuronModel", "gen", spec)
    assert pydantic_accepts(manifest)
    result = dry_run(crds, ns, manifest)
    assert result.returncode == 0, result.stderr


@HYPOTHESIS
@given(spec=deployment_specs(valid_only=True))
def test_valid_deployment_specs_are_accepted(crds: Cluster, ns: str, spec: dict[str, Any]) -> None:
    manifest = wrap("NeuronDeployment", "gen", spec)
    assert pydantic_accepts(manifest)
    result = dry_run(crds, ns, manifest)
    assert result.returncode == 0, result.stderr


@HYPOTHESIS
@given(spec=model_specs())
def test_model_verdicts_agree(crds: Cluster, ns: str, spec: dict[str, Any]) -> None:
    manifest = wrap("NeuronModel", "gen", spec)
    result = dry_run(crds, ns, manifest)
    assert pydantic_accepts(manifest) == (result.returncode == 0), (manifest, result.stderr)


@HYPOTHESIS
@given(spec=deployment_specs())
def test_deployment_verdicts_agree(crds: Cluster, ns: str, spec: dict[str, Any]) -> None:
    manifest = wrap("NeuronDeployment", "gen", spec)
    result = dry_run(crds, ns, manifest)
    assert pydantic_accepts(manifest) == (result.returncode == 0), (manifest, result.stderr)

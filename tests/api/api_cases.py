"""Shared test data for the API: valid base manifests, a table of invalid ones, hypothesis strategies.

The same table runs against pydantic (``test_api_types.py``, no cluster) and against the real apiserver
(``test_api_cluster.py``), so the two validators are held to the same verdicts and to error messages that
name the offending field.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

Manifest = dict[str, Any]


def base_model(name: str = "m") -> Manifest:
    return {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronModel",
        "metadata": {"name": name},
        "spec": {
            "source": {"python": {"factory": "neuron_runtime.zoo:bert_like", "args": {"vocab": 1000}}},
            "inputs": [
                {"name": "input_ids", "shape": [2, 128], "dtype": "int64"},
                {"name": "attention_mask", "shape": [2, 128], "dtype": "int64"},
            ],
            "batchSize": 2,
            "buckets": {"axis": 1, "sizes": [32, 64, 128]},
            "target": "inf2",
        },
    }


def base_deployment(name: str = "d") -> Manifest:
    return {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronDeployment",
        "metadata": {"name": name},
        "spec": {
            "modelRef": {"name": "m"},
            "placement": {"workers": 2, "coresPerWorker": 1},
            "batching": {"maxBatchSize": 8, "preferredBatchSizes": [2, 4, 8]},
        },
    }


def set_path(obj: Manifest, path: str, value: Any) -> Manifest:
    """A copy of ``obj`` with the dotted ``path`` set (``[i]`` indexes lists; value ``DELETE`` removes)."""
    out = copy.deepcopy(obj)
    parts = path.replace("]", "").replace("[", ".").split(".")
    node: Any = out
    for part in parts[:-1]:
        key: Any = int(part) if part.isdigit() else part
        if isinstance(node, dict) and key not in node:
            node[key] = {}
        node = node[key]
    last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return out


DELETE = object()


@dataclass(frozen=True)
class Invalid:
    """An object both validators must reject; ``field`` must appear in the apiserver's error."""

    id: str
    manifest: Manifest
    field: str


def _m(id: str, field: str, *edits: tuple[str, Any]) -> Invalid:
    obj = base_model()
    for path, value in edits:
        obj = set_path(obj, path, value)
    return Invalid(id, obj, field)


def _d(id: str, field: str, *edits: tuple[str, Any]) -> Invalid:
    obj = base_deployment()
    for path, value in edits:
        obj = set_path(obj, path, value)
    return Invalid(id, obj, field)


_TS = {"uri": "https://models.example.com/model.pt"}

INVALID: tuple[Invalid, ...] = (
    # NeuronModel.spec.source
    _m("source-both", "spec.source", ("spec.source.torchscript", _TS)),
    _m("source-none", "spec.source", ("spec.source", {})),
    _m(
        "torchscript-uri-scheme",
        "spec.source.torchscript.uri",
        ("spec.source", {"torchscript": {"uri": "ftp://host/model.pt"}}),
    ),
    _m(
        "torchscript-sha256",
        "spec.source.torchscript.sha256",
        ("spec.source", {"torchscript": {**_TS, "sha256": "abc"}}),
    ),
    _m("python-factory-form", "spec.source.python.factory", ("spec.source.python.factory", "pkg.module")),
    _m(
        "weights-digest-without-uri",
        "spec.source.python.weightsSha256",
        ("spec.source.python.weightsSha256", "a" * 64),
    ),
    # inputs, batchSize
    _m("inputs-empty", "spec.inputs", ("spec.inputs", [])),
    _m("inputs-duplicate-name", "spec.inputs", ("spec.inputs[1].name", "input_ids")),
    _m("input-name-not-identifier", "spec.inputs[0].name", ("spec.inputs[0].name", "input-ids")),
    _m("batch-dim-mismatch", "spec.inputs", ("spec.inputs[0].shape", [4, 128])),
    _m("shape-zero-dim", "spec.inputs[1].shape[1]", ("spec.inputs[1].shape", [2, 0])),
    _m("dtype-unknown", "spec.inputs[0].dtype", ("spec.inputs[0].dtype", "float64")),
    _m("batch-size-zero", "spec.batchSize", ("spec.batchSize", 0)),
    _m("batch-size-string", "spec.batchSize", ("spec.batchSize", "2")),
    _m("batch-sizes-unsorted", "spec.batchSizes", ("spec.batchSizes", [4, 1, 2])),
    _m("batch-sizes-duplicate", "spec.batchSizes", ("spec.batchSizes", [1, 1, 2])),
    _m("batch-sizes-largest-not-batch-size", "spec.batchSizes", ("spec.batchSizes", [1, 4])),
    _m("batch-sizes-smaller-than-batch-size", "spec.batchSizes", ("spec.batchSizes", [1])),
    _m("batch-sizes-zero", "spec.batchSizes[0]", ("spec.batchSizes", [0, 2])),
    _m(
        "batch-sizes-too-many",
        "spec.batchSizes",
        ("spec.batchSize", 9),
        ("spec.inputs[0].shape", [9, 128]),
        ("spec.inputs[1].shape", [9, 128]),
        ("spec.batchSizes", list(range(1, 10))),
    ),
    _m("target-unknown", "spec.target", ("spec.target", "inf3")),
    _m("target-missing", "spec.target", ("spec.target", DELETE)),
    _m("model-family-unknown", "spec.modelFamily", ("spec.modelFamily", "rnn")),
    _m("dynamic-batch-string", "spec.dynamicBatch", ("spec.dynamicBatch", "true")),
    # buckets
    _m("buckets-axis-zero", "spec.buckets.axis", ("spec.buckets.axis", 0)),
    _m(
        "buckets-axis-beyond-rank",
        "spec.buckets.axis",
        ("spec.buckets.axis", 2),
        ("spec.buckets.sizes", [128]),
    ),
    _m("buckets-unknown-input", "spec.buckets.input", ("spec.buckets.input", "token_type_ids")),
    _m("buckets-unsorted", "spec.buckets.sizes", ("spec.buckets.sizes", [64, 32, 128])),
    _m("buckets-duplicate", "spec.buckets.sizes", ("spec.buckets.sizes", [32, 32, 128])),
    _m("buckets-largest-not-shape", "spec.buckets.sizes", ("spec.buckets.sizes", [32, 64])),
    # compiler
    _m("compiler-reserved-flag", "spec.compiler.args", ("spec.compiler.args", ["--target=trn1"])),
    _m("compiler-reserved-optlevel", "spec.compiler.args", ("spec.compiler.args", ["-O3"])),
    _m("compiler-reserved-fast-math", "spec.compiler.args", ("spec.compiler.args", ["--fast-math", "none"])),
    _m("compiler-reserved-fp32-cast", "spec.compiler.args", ("spec.compiler.args", ["--fp32-cast=all"])),
    _m(
        "inf1-reserved-fast-math",
        "spec.compiler.args",
        ("spec.target", "inf1"),
        ("spec.compiler.args", ["--fast-math=fp32-cast-all"]),
    ),
    _m(
        "inf1-autocast-type-tf32",
        "spec.compiler.autoCastType",
        ("spec.target", "inf1"),
        ("spec.compiler", {"autoCast": "matmult", "autoCastType": "tf32"}),
    ),
    _m(
        "inf1-autocast-type-fp8",
        "spec.compiler.autoCastType",
        ("spec.target", "inf1"),
        ("spec.compiler.autoCastType", "fp8_e4m3"),
    ),
    _m("inf1-optlevel", "spec.compiler.optLevel", ("spec.target", "inf1"), ("spec.compiler.optLevel", 3)),
    _m("compiler-autocast-unknown", "spec.compiler.autoCast", ("spec.compiler.autoCast", "bf16")),
    _m("compiler-optlevel", "spec.compiler.optLevel", ("spec.compiler.optLevel", 4)),
    _m("compiler-timeout-short", "spec.compiler.timeoutSeconds", ("spec.compiler.timeoutSeconds", 10)),
    _m(
        "compiler-cpu-quantity",
        "spec.compiler.resources.requests.cpu",
        ("spec.compiler.resources", {"requests": {"cpu": "two"}}),
    ),
    _m(
        "compiler-neuroncore-resource",
        "spec.compiler.resources.requests",
        ("spec.compiler.resources", {"requests": {"aws.amazon.com/neuroncore": 1}}),
    ),
    _m(
        "compiler-toleration-exists-value",
        "spec.compiler.tolerations[0]",
        ("spec.compiler.tolerations", [{"key": "k", "operator": "Exists", "value": "v"}]),
    ),
    # storage, metadata, unknown fields
    _m("storage-both", "spec.storage", ("spec.storage", {"uri": "s3://b/p", "pvc": {"claimName": "c"}})),
    # Not implemented: refused at admission, naming the field and the supported schemes.
    _m("storage-uri-gs-unsupported", "spec.storage.uri", ("spec.storage", {"uri": "gs://bucket/artifacts"})),
    _m("storage-uri-bad-bucket", "spec.storage.uri", ("spec.storage", {"uri": "s3://Bad_Bucket/artifacts"})),
    _m("storage-uri-short-bucket", "spec.storage.uri", ("spec.storage", {"uri": "s3://ab/artifacts"})),
    _m(
        "torchscript-uri-gs-unsupported",
        "spec.source.torchscript.uri",
        ("spec.source", {"torchscript": {"uri": "gs://bucket/model.pt"}}),
    ),
    _m(
        "torchscript-uri-s3-bad-bucket",
        "spec.source.torchscript.uri",
        ("spec.source", {"torchscript": {"uri": "s3://-bucket/model.pt"}}),
    ),
    _m(
        "weights-uri-s3-bad-bucket",
        "spec.source.python.weightsUri",
        ("spec.source", {"python": {"factory": "neuron_runtime.zoo:tiny_mlp", "weightsUri": "s3://a_b/w.pt"}}),
    ),
    _m("s3-endpoint-not-url", "spec.s3.endpoint", ("spec.s3", {"endpoint": "weed:8333"})),
    _m("s3-endpoint-with-credentials", "spec.s3.endpoint", ("spec.s3", {"endpoint": "http://key:secret@s3.local"})),
    _m("storage-uri-dotdot", "spec.storage.uri", ("spec.storage", {"uri": "s3://bucket/a/../b"})),
    _m("storage-uri-empty-segment", "spec.storage.uri", ("spec.storage", {"uri": "s3://bucket/a//b"})),
    _m(
        "torchscript-uri-s3-no-key",
        "spec.source.torchscript.uri",
        ("spec.source", {"torchscript": {"uri": "s3://bucket/"}}),
    ),
    _m(
        "torchscript-uri-s3-dot-segment",
        "spec.source.torchscript.uri",
        ("spec.source", {"torchscript": {"uri": "s3://bucket/./m.pt"}}),
    ),
    _m("s3-secret-bad-name", "spec.s3.credentialsSecretRef.name", ("spec.s3", {"credentialsSecretRef": {"name": "A"}})),
    _m("compiler-sa-bad-name", "spec.compiler.serviceAccountName", ("spec.compiler", {"serviceAccountName": "x y"})),
    _m(
        "weights-uri-hf-unsupported",
        "spec.source.python.weightsUri",
        ("spec.source", {"python": {"factory": "neuron_runtime.zoo:tiny_mlp", "weightsUri": "hf://org/model"}}),
    ),
    _m(
        "storage-path-escape",
        "spec.storage.pvc.path",
        ("spec.storage", {"pvc": {"claimName": "c", "path": "../etc"}}),
    ),
    _m("unknown-spec-field", "spec.batchsize", ("spec.batchsize", 2)),
    _m("name-too-long", "metadata.name", ("metadata.name", "m" * 64)),
    # NeuronDeployment
    _d("model-ref-missing", "spec.modelRef", ("spec.modelRef", DELETE)),
    _d("model-ref-bad-name", "spec.modelRef.name", ("spec.modelRef.name", "Bert_Model")),
    _d("replicas-negative", "spec.replicas", ("spec.replicas", -1)),
    _d("workers-zero", "spec.placement.workers", ("spec.placement.workers", 0)),
    _d(
        "cores-per-replica-too-many",
        "spec.placement",
        ("spec.placement", {"workers": 8, "coresPerWorker": 16}),
    ),
    _d("placement-mode-unknown", "spec.placement.mode", ("spec.placement.mode", "spread")),
    _d(
        "preferred-above-max",
        "spec.batching.preferredBatchSizes",
        ("spec.batching.preferredBatchSizes", [4, 16]),
    ),
    _d(
        "preferred-unsorted",
        "spec.batching.preferredBatchSizes",
        ("spec.batching.preferredBatchSizes", [8, 2]),
    ),
    _d(
        "preferred-duplicate",
        "spec.batching.preferredBatchSizes",
        ("spec.batching.preferredBatchSizes", [2, 2]),
    ),
    _d("max-queue-below-batch", "spec.batching.maxQueue", ("spec.batching.maxQueue", 4)),
    _d(
        "timeout-below-delay",
        "spec.batching.timeoutMs",
        ("spec.batching.timeoutMs", 10),
        ("spec.batching.maxDelayMs", 10),
    ),
    _d("max-batch-zero", "spec.batching.maxBatchSize", ("spec.batching.maxBatchSize", 0)),
    _d("instance-type-unknown", "spec.instanceTypes", ("spec.instanceTypes", ["p4d.24xlarge"])),
    _d(
        "instance-type-duplicate",
        "spec.instanceTypes",
        ("spec.instanceTypes", ["inf2.xlarge", "inf2.xlarge"]),
    ),
    _d("rollout-stuck", "spec.rollout", ("spec.rollout", {"maxSurge": 0, "maxUnavailable": "0%"})),
    _d("rollout-percent", "spec.rollout.maxSurge", ("spec.rollout", {"maxSurge": "150%"})),
    _d("server-port-zero", "spec.server.port", ("spec.server.port", 0)),
    _d("pod-reserved-label", "spec.pod.labels", ("spec.pod", {"labels": {"neuron.dev/model": "x"}})),
    _d("pod-affinity-typo", "nodeAfinity", ("spec.pod", {"affinity": {"nodeAfinity": {}}})),
    _d(
        "pod-toleration-seconds",
        "spec.pod.tolerations[0]",
        ("spec.pod", {"tolerations": [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}]}),
    ),
    _d(
        "resources-negative",
        "spec.resources.requests.memory",
        ("spec.resources", {"requests": {"memory": "-1Gi"}}),
    ),
    _d("suspend-string", "spec.suspend", ("spec.suspend", "yes")),
    _d("name-not-dns1035", "metadata.name", ("metadata.name", "1-bert")),
    # spec.autoscaling
    _d(
        "autoscaling-min-above-max",
        "spec.autoscaling.maxReplicas",
        ("spec.autoscaling", {"minReplicas": 5, "maxReplicas": 2}),
    ),
    _d("autoscaling-max-zero", "spec.autoscaling.maxReplicas", ("spec.autoscaling", {"maxReplicas": 0})),
    _d("autoscaling-max-missing", "spec.autoscaling.maxReplicas", ("spec.autoscaling", {"minReplicas": 1})),
    _d(
        "autoscaling-min-zero",
        "spec.autoscaling.minReplicas",
        ("spec.autoscaling", {"minReplicas": 0, "maxReplicas": 4}),
    ),
    _d("autoscaling-target-zero", "spec.autoscaling.target", ("spec.autoscaling", {"maxReplicas": 4, "target": 0})),
    _d("autoscaling-target-string", "spec.autoscaling.target", ("spec.autoscaling", {"maxReplicas": 4, "target": "8"})),
    _d(
        "canary-error-ratio-bool",
        "spec.rollout.gates.maxErrorRatio",
        ("spec.rollout", {"strategy": "Canary", "steps": [{"weight": 50}], "gates": {"maxErrorRatio": True}}),
    ),
    _d(
        "autoscaling-target-negative",
        "spec.autoscaling.target",
        ("spec.autoscaling", {"maxReplicas": 4, "target": -2.5}),
    ),
    _d(
        "autoscaling-metric-unknown",
        "spec.autoscaling.metric",
        ("spec.autoscaling", {"maxReplicas": 4, "metric": "RequestsPerSecond"}),
    ),
    _d("autoscaling-per-unknown", "spec.autoscaling.per", ("spec.autoscaling", {"maxReplicas": 4, "per": "Pod"})),
    _d(
        "autoscaling-beyond-capacity-unknown",
        "spec.autoscaling.beyondCapacity",
        ("spec.autoscaling", {"maxReplicas": 4, "beyondCapacity": "Ignore"}),
    ),
    _d(
        "autoscaling-panic-threshold-below-one",
        "spec.autoscaling.panicThreshold",
        ("spec.autoscaling", {"maxReplicas": 4, "panicThreshold": 0.5}),
    ),
    _d(
        "autoscaling-interval-zero",
        "spec.autoscaling.intervalSeconds",
        ("spec.autoscaling", {"maxReplicas": 4, "intervalSeconds": 0}),
    ),
    # spec.rollout: canary
    _d("canary-without-steps", "spec.rollout.steps", ("spec.rollout", {"strategy": "Canary"})),
    _d("canary-empty-steps", "spec.rollout.steps", ("spec.rollout", {"strategy": "Canary", "steps": []})),
    _d("steps-without-canary", "spec.rollout.steps", ("spec.rollout", {"steps": [{"weight": 50}]})),
    _d(
        "steps-with-rolling-update",
        "spec.rollout.steps",
        ("spec.rollout", {"strategy": "RollingUpdate", "steps": [{"weight": 50}]}),
    ),
    _d("gates-without-canary", "spec.rollout.gates", ("spec.rollout", {"gates": {"minRequests": 10}})),
    _d("rollout-strategy-unknown", "spec.rollout.strategy", ("spec.rollout", {"strategy": "BlueGreen"})),
    _d(
        "canary-weights-equal",
        "spec.rollout.steps",
        ("spec.rollout", {"strategy": "Canary", "steps": [{"weight": 50}, {"weight": 50}]}),
    ),
    _d(
        "canary-weights-decreasing",
        "spec.rollout.steps",
        ("spec.rollout", {"strategy": "Canary", "steps": [{"weight": 10}, {"weight": 50}, {"weight": 25}]}),
    ),
    _d(
        "canary-weight-zero",
        "spec.rollout.steps[0].weight",
        ("spec.rollout", {"strategy": "Canary", "steps": [{"weight": 0}]}),
    ),
    _d(
        "canary-weight-100",
        "spec.rollout.steps[1].weight",
        ("spec.rollout", {"strategy": "Canary", "steps": [{"weight": 50}, {"weight": 100}]}),
    ),
    _d(
        "canary-weight-missing",
        "spec.rollout.steps[0].weight",
        ("spec.rollout", {"strategy": "Canary", "steps": [{"pauseSeconds": 30}]}),
    ),
    _d(
        "canary-pause-negative",
        "spec.rollout.steps[0].pauseSeconds",
        ("spec.rollout", {"strategy": "Canary", "steps": [{"weight": 20, "pauseSeconds": -1}]}),
    ),
    _d(
        "canary-too-many-steps",
        "spec.rollout.steps",
        ("spec.rollout", {"strategy": "Canary", "steps": [{"weight": w} for w in range(5, 60, 5)]}),
    ),
    _d(
        "canary-max-error-ratio-above-one",
        "spec.rollout.gates.maxErrorRatio",
        ("spec.rollout", {"strategy": "Canary", "steps": [{"weight": 20}], "gates": {"maxErrorRatio": 1.5}}),
    ),
    _d(
        "canary-max-latency-ratio-below-one",
        "spec.rollout.gates.maxLatencyRatio",
        ("spec.rollout", {"strategy": "Canary", "steps": [{"weight": 20}], "gates": {"maxLatencyRatio": 0.9}}),
    ),
    _d(
        "canary-latency-floor-negative",
        "spec.rollout.gates.latencyFloorMs",
        ("spec.rollout", {"strategy": "Canary", "steps": [{"weight": 20}], "gates": {"latencyFloorMs": -1}}),
    ),
    _d(
        "canary-min-requests-zero",
        "spec.rollout.gates.minRequests",
        ("spec.rollout", {"strategy": "Canary", "steps": [{"weight": 20}], "gates": {"minRequests": 0}}),
    ),
)


def examples() -> list[tuple[str, Manifest]]:
    """Every document in examples/, as (file name, manifest)."""
    docs: list[tuple[str, Manifest]] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


# --------------------------------------------------------------------------------------------------
# hypothesis strategies: specs near the validity boundary (small numbers, optional fields on and off)
# --------------------------------------------------------------------------------------------------

_NAMES = st.sampled_from(["x", "input_ids", "attention_mask", "pixel_values", "mask"])


@st.composite
def model_specs(draw: st.DrawFn, *, valid_only: bool = False) -> Manifest:
    """NeuronModel specs; with ``valid_only`` the generator keeps every cross-field rule by construction."""
    batch = draw(st.integers(1, 8))
    rank = draw(st.integers(1, 4))
    names = draw(st.lists(_NAMES, min_size=1, max_size=3, unique=True))
    inputs = []
    for name in names:
        shape = [batch, *draw(st.lists(st.integers(1, 64), min_size=rank - 1, max_size=rank - 1))]
        if not valid_only and draw(st.booleans()) and draw(st.booleans()):
            shape[0] = draw(st.integers(1, 8))
        inputs.append({"name": name, "shape": shape, "dtype": draw(st.sampled_from(["float32", "int64", "bool"]))})
    spec: Manifest = {
        "inputs": inputs,
        "batchSize": batch,
        "target": draw(st.sampled_from(["inf2", "cpu", "trn1", "inf1"])),
    }
    if draw(st.booleans()):
        spec["source"] = {"torchscript": {"uri": "https://models.example.com/m.pt"}}
    else:
        spec["source"] = {"python": {"factory": "neuron_runtime.zoo:tiny_mlp", "args": {"hidden": 8}}}
    if not valid_only and draw(st.integers(0, 9)) == 0:
        spec["source"] = {}
    if rank > 1 and draw(st.booleans()):
        axis = draw(st.integers(1, rank - 1)) if valid_only else draw(st.integers(1, rank))
        named = draw(st.sampled_from([None, *names])) if valid_only else draw(st.sampled_from([None, *names, "y"]))
        targets = [i for i in inputs if named is None or i["name"] == named]
        if valid_only:
            largest = targets[0]["shape"][axis]
            for i in targets:
                i["shape"][axis] = largest
            smaller = draw(st.lists(st.integers(1, max(1, largest - 1)), max_size=3, unique=True))
            sizes = [*sorted(s for s in smaller if s < largest), largest]
        else:
            sizes = draw(st.lists(st.integers(1, 64), min_size=1, max_size=4))
        buckets: Manifest = {"axis": axis, "sizes": sizes}
        if named is not None:
            buckets["input"] = named
        spec["buckets"] = buckets
    if draw(st.booleans()):
        inf1 = valid_only and spec["target"] == "inf1"  # neuron-cc: bf16/fp16 casts only, no optimisation level
        spec["compiler"] = {
            "optLevel": draw(st.just(2) if inf1 else st.integers(1, 3) if valid_only else st.integers(0, 4)),
            "autoCast": draw(st.sampled_from(["none", "matmult", "all"])),
            "autoCastType": draw(st.sampled_from(["bf16", "fp16"] if inf1 else ["bf16", "fp16", "tf32", "fp8_e4m3"])),
            "args": draw(
                st.lists(
                    st.sampled_from(
                        ["--model-type=transformer", "--verbose"]
                        if valid_only
                        else ["--model-type=transformer", "--target=inf2", "-O1", "--fast-math=none"]
                    ),
                    max_size=2,
                )
            ),
        }
    if draw(st.booleans()):
        spec["dynamicBatch"] = draw(st.booleans())
    if draw(st.booleans()):
        if valid_only:
            smaller = draw(st.lists(st.integers(1, max(1, batch - 1)), max_size=3, unique=True))
            spec["batchSizes"] = [*sorted(s for s in smaller if s < batch), batch]
        else:
            spec["batchSizes"] = draw(st.lists(st.integers(0, 9), max_size=4))
    return spec


@st.composite
def deployment_specs(draw: st.DrawFn, *, valid_only: bool = False) -> Manifest:
    """NeuronDeployment specs around the batching/placement/rollout rules."""
    low = 1 if valid_only else 0
    workers = draw(st.integers(low, 8))
    cores = draw(st.integers(low, 16))
    if valid_only:
        cores = min(cores, 64 // workers)
    max_batch = draw(st.integers(low, 64))
    spec: Manifest = {
        "modelRef": {"name": "m"},
        "replicas": draw(st.integers(0 if valid_only else -1, 5)),
        "placement": {
            "workers": workers,
            "coresPerWorker": cores,
            "mode": draw(st.sampled_from(["pinned", "multicore"])),
        },
        "batching": {"maxBatchSize": max_batch},
    }
    if draw(st.booleans()):
        preferred = draw(st.lists(st.integers(1, 64), max_size=4, unique=valid_only))
        if valid_only:
            preferred = sorted(p for p in preferred if p <= max_batch)
        spec["batching"]["preferredBatchSizes"] = preferred
    if draw(st.booleans()):
        delay = draw(st.integers(0, 50))
        spec["batching"]["maxDelayMs"] = delay
        spec["batching"]["timeoutMs"] = draw(st.integers(delay + 1, 100) if valid_only else st.integers(1, 100))
    if draw(st.booleans()):
        queue = draw(st.integers(max(1, max_batch), 128) if valid_only else st.integers(1, 128))
        spec["batching"]["maxQueue"] = queue
    if draw(st.booleans()):
        surge = draw(st.sampled_from([0, 1, 2, "0%", "25%", "100%"]))
        unavailable = draw(st.sampled_from([0, 1, "0%", "50%"]))
        if valid_only and surge in (0, "0%") and unavailable in (0, "0%"):
            unavailable = 1
        spec["rollout"] = {"maxSurge": surge, "maxUnavailable": unavailable}
    if draw(st.booleans()):
        spec["instanceTypes"] = draw(
            st.lists(st.sampled_from(["inf2.xlarge", "inf2.48xlarge", "trn1.32xlarge"]), max_size=3, unique=True)
        )
    if draw(st.booleans()):
        fewest = draw(st.integers(low, 4))
        autoscaling: Manifest = {
            "minReplicas": fewest,
            "maxReplicas": draw(st.integers(max(1, fewest), 6) if valid_only else st.integers(0, 6)),
        }
        if draw(st.booleans()):
            autoscaling["target"] = draw(st.sampled_from([0.5, 1, 8, 24.5] if valid_only else [-1, 0, 0.5, 8]))
        if draw(st.booleans()):
            autoscaling["metric"] = draw(st.sampled_from(["Concurrency", "QueuedRows"]))
            autoscaling["per"] = draw(st.sampled_from(["Replica", "NeuronCore"]))
        spec["autoscaling"] = autoscaling
    if draw(st.booleans()):
        # canary: increasing weights in [1, 99] under strategy Canary; otherwise also 0/100, repeats, no strategy
        weights = draw(
            st.lists(
                st.integers(1, 99) if valid_only else st.integers(0, 100),
                min_size=1 if valid_only else 0,
                max_size=4,
                unique=valid_only,
            )
        )
        rollout = spec.setdefault("rollout", {})
        strategy = "Canary" if valid_only else draw(st.sampled_from(["Canary", "RollingUpdate", None]))
        if strategy is not None:
            rollout["strategy"] = strategy
        rollout["steps"] = [
            {"weight": w, "pauseSeconds": draw(st.integers(0, 30) if valid_only else st.integers(-1, 30))}
            for w in (sorted(weights) if valid_only else weights)
        ]
        if draw(st.booleans()):
            rollout["gates"] = {
                "maxErrorRatio": draw(st.sampled_from([0, 0.05, 1] if valid_only else [0, 0.05, 1.5])),
                "maxLatencyRatio": draw(st.sampled_from([1, 1.5, 3] if valid_only else [0.5, 1, 1.5])),
                "minRequests": draw(st.integers(1, 100) if valid_only else st.integers(0, 100)),
            }
    return spec


def wrap(kind: str, name: str, spec: Manifest) -> Manifest:
    return {"apiVersion": "neuron.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}

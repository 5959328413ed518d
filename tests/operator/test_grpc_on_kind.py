"""OIP v2 gRPC through the NeuronDeployment's Service on the real local cluster (issue #12).

The Service gets a port named ``grpc`` (``appProtocol: kubernetes.io/h2c``); a Pod of the runtime image calls it by
the Service's DNS name, the way an in-cluster client does, with the KServe v2 ``GRPCInferenceService`` stubs the
runtime ships: ServerReady, ModelMetadata, a ModelInfer with raw contents, and a malformed one
(INVALID_ARGUMENT). ``tests/runtime/test_runtime_grpc.py`` holds ``tritonclient.grpc`` to the same server in
process; this one proves the operator wires the port end to end.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from operator_support import EXEC_NODE_SELECTOR, EXEC_NODE_TOLERATIONS, IMAGES, Operator, Store, mlp_model
from test_rollout_zero_loss import MODEL, apply, current, get, is_true, serving_deployment

from localcluster.kind import KindCluster
from localcluster.wait import until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NAME = "grpc-mlp"  # the NeuronDeployment; it serves the NeuronModel MODEL

CLIENT = """
import json, sys
import grpc
import numpy as np
from neuron_runtime._proto import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as pb_grpc

target, model = sys.argv[1], sys.argv[2]
stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(target))
out = {"ready": stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready}
meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=30)
out["inputs"] = [[i.name, i.datatype, list(i.shape)] for i in meta.inputs]
x = np.arange(16, dtype="<f4").reshape(1, 16) / 16
request = pb.ModelInferRequest(model_name=model, id="kind-1")
request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
request.raw_input_contents.append(x.tobytes())
reply = stub.ModelInfer(request, timeout=30)
out["id"] = reply.id
out["outputs"] = [[o.name, o.datatype, list(o.shape)] for o in reply.outputs]
out["values"] = np.frombuffer(reply.raw_output_contents[0], dtype="<f4").tolist()
bad = pb.ModelInferRequest(model_name=model)
bad.inputs.add(name="x", datatype="FP32", shape=[1, 15])
bad.raw_input_contents.append(x[:, :15].tobytes())
try:
    stub.ModelInfer(bad, timeout=30)
    out["bad"] = "accepted"
except grpc.RpcError as exc:
    out["bad"] = [exc.code().name, exc.details()]
print(json.dumps(out), flush=True)
"""


def client_pod(name: str, target: str, model: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": EXEC_NODE_SELECTOR,
            "tolerations": EXEC_NODE_TOLERATIONS,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "client",
                    "image": IMAGES["runtime"],
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-c", CLIENT, target, model],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


@pytest.mark.timeout(900)
def test_grpc_through_the_service(cluster: KindCluster, operator: Operator, store: Store, namespace: str) -> None:
    apply(cluster, namespace, mlp_model(MODEL))
    until(lambda: is_true(get(cluster, namespace, "nm", MODEL), "Ready"), timeout=300, what="the NeuronModel Ready")
    deployment = serving_deployment(NAME, None)
    apply(cluster, namespace, deployment)
    until(
        lambda: (o := get(cluster, namespace, "nd", NAME)) and current(o) and is_true(o, "Ready"),
        timeout=300,
        what="the NeuronDeployment Ready",
    )
    ports = {p["name"]: p for p in get(cluster, namespace, "service", NAME)["spec"]["ports"]}
    assert ports["grpc"] == {
        "name": "grpc",
        "port": 8001,
        "targetPort": "grpc",
        "protocol": "TCP",
        "appProtocol": "kubernetes.io/h2c",
    }
    model = get(cluster, namespace, "nd", NAME)["spec"]["modelRef"]["name"]
    apply(cluster, namespace, client_pod("grpc-client", f"{NAME}.{namespace}.svc:8001", model))

    def finished() -> str | None:
        phase = get(cluster, namespace, "pod", "grpc-client")["status"].get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    phase = until(finished, timeout=300, what="the gRPC client pod to finish")
    logs = cluster.kubectl("logs", "-n", namespace, "grpc-client").stdout
    assert phase == "Succeeded", logs[-3000:]
    result = json.loads(logs.strip().splitlines()[-1])
    assert result["ready"] is True
    assert result["inputs"] == [["x", "FP32", [-1, 16]]]
    assert result["id"] == "kind-1"
    [(_name, datatype, shape)] = result["outputs"]
    assert datatype == "FP32"
    assert shape[0] == 1
    assert len(result["values"]) == shape[1]
    code, details = result["bad"]
    assert code == "INVALID_ARGUMENT"
    assert "'x'" in details, details

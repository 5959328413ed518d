"""Generated Open Inference Protocol v2 gRPC code (KServe v2 / Triton `inference.GRPCInferenceService`).

`grpc_predict_v2.proto` is KServe's OIP v2 proto, verbatim; `grpc_predict_v2_pb2.py` (+ `.pyi`) and
`grpc_predict_v2_pb2_grpc.py` are protoc's output for it: never edit them, regenerate them with

    python -m neuron_runtime._proto.generate

(grpcio-tools, pinned in the `test` dependency group; `--check` only compares). The messages live in a descriptor
pool of their own, not protobuf's default one: tritonclient.grpc and kserve register their own copies of the
`inference.*` messages there, and a second definition of one name in one pool fails to import.
"""

"""Regenerate this package's gRPC code from `grpc_predict_v2.proto` with grpcio-tools' protoc.

    python -m neuron_runtime._proto.generate          # rewrite the generated files next to this module
    python -m neuron_runtime._proto.generate --check  # exit 1 (naming them) if they differ from protoc's output

protoc runs with the runtime source root as its include path, so the proto is `neuron_runtime/_proto/...` to it and
`grpc_predict_v2_pb2_grpc.py` imports `from neuron_runtime._proto import grpc_predict_v2_pb2` (a package import that
cannot pick up tritonclient's or kserve's modules). One edit follows protoc, the same every time: the serialized
descriptor goes into a private `DescriptorPool()` instead of `descriptor_pool.Default()`, because tritonclient.grpc and
kserve define the same `inference.*` message names in the default pool (importing both fails with "duplicate symbol
'inference.ServerLiveRequest'"). gRPC only serializes the messages, so their pool is invisible on the wire.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib import resources
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE_ROOT = HERE.parent.parent  # runtime/: the directory holding the neuron_runtime package
PROTO = "neuron_runtime/_proto/grpc_predict_v2.proto"
GENERATED = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")
_DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = "_descriptor_pool.DescriptorPool().AddSerializedFile("


def generate(out: Path) -> dict[str, bytes]:
    """Run protoc into `out` (a scratch directory) and return each generated file's final bytes by name."""
    from grpc_tools import protoc  # the `test` dependency group; not needed to serve

    include = resources.files("grpc_tools") / "_proto"  # well-known types, as `python -m grpc_tools.protoc` adds
    args = [
        "protoc",
        f"-I{SOURCE_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(SOURCE_ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    files: dict[str, bytes] = {}
    for name in GENERATED:
        text = (out / "neuron_runtime" / "_proto" / name).read_text(encoding="utf-8")
        if name.endswith("_pb2.py"):
            if text.count(_DEFAULT_POOL) != 1:
                raise RuntimeError(f"{name}: expected one {_DEFAULT_POOL!r} to make private")
            text = text.replace(_DEFAULT_POOL, _PRIVATE_POOL)
        files[name] = text.encode("utf-8")
    return files


def stale() -> list[str]:
    """The generated files that differ from what protoc writes now (empty: up to date)."""
    with tempfile.TemporaryDirectory() as scratch:
        fresh = generate(Path(scratch))
    return [name for name, data in fresh.items() if not (HERE / name).is_file() or (HERE / name).read_bytes() != data]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1 if any)")
    options = parser.parse_args(argv)
    if options.check:
        outdated = stale()
        for name in outdated:
            print(f"{HERE / name} is stale: run python -m neuron_runtime._proto.generate", file=sys.stderr)
        return 1 if outdated else 0
    with tempfile.TemporaryDirectory() as scratch:
        for name, data in generate(Path(scratch)).items():
            (HERE / name).write_bytes(data)
            print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Find the runtime's generated OIP v2 gRPC stubs (`neuron_runtime._proto`), or say why they are not usable."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass
from types import ModuleType


class StubsMissing(RuntimeError):
    """No usable gRPC stubs or server module: the gRPC rows are skipped with this reason."""


@dataclass(frozen=True)
class Stubs:
    pb2: ModuleType


def load_stubs() -> Stubs:
    try:
        import grpc  # noqa: F401
    except ImportError as exc:
        raise StubsMissing(f"grpcio is not installed ({exc})") from exc
    try:
        package = importlib.import_module("neuron_runtime._proto")
    except ImportError as exc:
        raise StubsMissing(f"neuron_runtime._proto is not importable ({exc})") from exc
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.endswith("_pb2"):
            continue
        try:
            module = importlib.import_module(f"neuron_runtime._proto.{info.name}")
        except Exception as exc:
            raise StubsMissing(f"neuron_runtime._proto.{info.name} does not import ({exc})") from exc
        if hasattr(module, "ModelInferRequest"):
            return Stubs(pb2=module)
    raise StubsMissing("no generated *_pb2 module with ModelInferRequest in neuron_runtime._proto")


def grpc_unavailable_reason() -> str | None:
    """None when the gRPC rows can run; else why not (stubs or the server module are missing)."""
    try:
        load_stubs()
    except StubsMissing as exc:
        return str(exc)
    if importlib.util.find_spec("neuron_runtime.grpc_server") is None:
        return "neuron_runtime.grpc_server does not exist"
    return None

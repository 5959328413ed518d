"""The compiled artifact on disk: a directory `<root>/<cache_key>/` with one TorchScript file per (batch size,
bucket) and a `manifest.json` that pins every file's sha256.

The *artifact digest* is the sha256 of the manifest bytes, so pinning it (as the operator does through
`ServeSettings.expected_sha256`) pins every graph. Writers go through `write_atomically` (temp dir + rename, so a
reader never sees half an artifact); readers go through `verify`, which refuses any mismatch. No torch here:
a compile-cache hit and the operator-side checks stay cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from neuron_runtime.config import ARTIFACT_FORMAT_VERSION, MANIFEST_NAME, DType, TensorSpec

_CHUNK = 1 << 20

READABLE_FORMAT_VERSIONS = (2, ARTIFACT_FORMAT_VERSION)
"""Manifest formats this runtime reads. Format 2 (one batch size) lacks `batch_sizes` and the per-file
`batch_size`; they are filled in from its `batch_size`, so its artifacts keep serving under their cache key."""


class ArtifactError(RuntimeError):
    """The artifact is missing, malformed or does not match its pinned digests."""


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    dtype: DType
    shape: list[int] = Field(description="at the traced batch size; -1 on the bucket axis when it follows the bucket")
    bucket_axis: int | None = Field(None, description="output axis that has the bucket's length (cropped per request)")


class GraphFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str
    bucket: int | None
    batch_size: int = Field(description="the batch size this graph was traced at")
    sha256: str
    size_bytes: int


class ReferenceFile(BaseModel):
    """Reference cases of one graph (bucket and batch size): inputs and the eager model's outputs (`torch.save` of
    plain tensors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str
    bucket: int | None
    batch_size: int
    sha256: str
    cases: int


class Manifest(BaseModel):
    """Everything the server needs to load and check an artifact, and what the operator reports."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = ARTIFACT_FORMAT_VERSION
    cache_key: str
    request: dict[str, object]
    inputs: list[TensorSpec]
    outputs: list[OutputSpec]
    batch_size: int = Field(description="the largest traced batch size (dynamic-batch chunks use it)")
    batch_sizes: list[int] = Field(description="every traced batch size, ascending; the last is batch_size")
    buckets: dict[str, object] | None
    bucket_axis: int | None
    bucketed_inputs: list[str]
    target: str
    dynamic_batch: bool
    neuron_core_version: str | None
    graphs: list[GraphFile]
    references: list[ReferenceFile] = Field(
        description="per graph: reference inputs and eager outputs, for the serving pod's parity gate"
    )
    files: dict[str, str] = Field(description="file name -> sha256 of every file besides the manifest")
    torch_version: str
    neuron_package_version: str | None
    compiler_version: str | None
    max_abs_error: float | None = Field(
        description="traced vs eager on the reference inputs, measured in the compile Job (cpu only; a Neuron graph "
        "cannot run there, its parity is measured by the serving pod)"
    )
    compile_seconds: float
    created_at: str

    @model_validator(mode="before")
    @classmethod
    def _from_format_2(cls, data: Any) -> Any:
        """A format 2 manifest traced one batch size: it is every graph's and reference's `batch_size`."""
        if not isinstance(data, dict) or data.get("format_version") != 2 or "batch_size" not in data:
            return data
        size = data["batch_size"]
        data = {**data, "batch_sizes": [size]}
        for field in ("graphs", "references"):
            if isinstance(data.get(field), list):
                data[field] = [{"batch_size": size, **f} if isinstance(f, dict) else f for f in data[field]]
        return data

    def to_bytes(self) -> bytes:
        """Deterministic serialisation: sorted keys, fixed separators, trailing newline."""
        return (json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=1) + "\n").encode()

    @property
    def size_bytes(self) -> int:
        return sum(g.size_bytes for g in self.graphs)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def graph_file_name(batch_size: int, bucket: int | None) -> str:
    return f"model-b{batch_size}.pt" if bucket is None else f"model-b{batch_size}-s{bucket}.pt"


def reference_file_name(batch_size: int, bucket: int | None) -> str:
    return f"reference-b{batch_size}.pt" if bucket is None else f"reference-b{batch_size}-s{bucket}.pt"


def verify(directory: Path, expected_sha256: str | None = None) -> tuple[Manifest, str]:
    """Check the manifest (against `expected_sha256` when given) and every file it pins.

    Returns the manifest and the artifact digest; raises `ArtifactError` naming the first mismatch.
    """
    manifest_path = directory / MANIFEST_NAME
    try:
        raw = manifest_path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read {manifest_path}: {exc.strerror or exc}") from exc
    digest = sha256_bytes(raw)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ArtifactError(
            f"artifact digest mismatch: {manifest_path} has sha256 {digest}, expected {expected_sha256}"
        )
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ArtifactError(f"{manifest_path} is not a valid manifest: {exc}") from exc
    manifest = parse_manifest(data, str(manifest_path))
    for name, expected in sorted(manifest.files.items()):
        path = directory / name
        if Path(name).name != name:
            raise ArtifactError(f"manifest names a file outside the artifact: {name!r}")
        try:
            actual = sha256_file(path)
        except OSError as exc:
            raise ArtifactError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if actual != expected:
            raise ArtifactError(f"sha256 mismatch for {path}: got {actual}, manifest pins {expected}")
    return manifest, digest


def parse_manifest(data: object, where: str) -> Manifest:
    """A manifest from its parsed JSON; `ArtifactError` for an unreadable format version or an invalid schema."""
    # The version first: a newer format's fields would otherwise read as a schema error.
    version = data.get("format_version") if isinstance(data, dict) else None
    if version not in READABLE_FORMAT_VERSIONS:
        raise ArtifactError(
            f"{where} has format version {version}, this runtime reads "
            f"{' and '.join(map(str, READABLE_FORMAT_VERSIONS))} (compiled by a newer or older runtime: recompile "
            "with this runtime's image)"
        )
    try:
        return Manifest.model_validate(data)
    except ValueError as exc:
        raise ArtifactError(f"{where} is not a valid manifest: {exc}") from exc


def write_atomically(final: Path, fill: Callable[[Path], Manifest]) -> tuple[Manifest, str]:
    """Create the artifact at `final` via `fill(tmpdir)`, which writes the graph files and returns the manifest.

    The manifest is written last, everything is fsynced, then the directory is renamed into place. A stale or
    corrupt directory at `final` is replaced; a concurrent writer that won the race is kept.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name[:16]}-", dir=final.parent))
    try:
        manifest = fill(tmp)
        data = manifest.to_bytes()
        (tmp / MANIFEST_NAME).write_bytes(data)
        for path in tmp.iterdir():
            _fsync(path)
        _fsync(tmp)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, final)
        except OSError:
            try:
                verify(final)
            except ArtifactError:
                aside = final.parent / f".old-{final.name[:16]}-{uuid.uuid4().hex[:8]}"
                os.rename(final, aside)
                os.rename(tmp, final)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
                return verify(final)
        _fsync(final.parent)
        return manifest, sha256_bytes(data)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

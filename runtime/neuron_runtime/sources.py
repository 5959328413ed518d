"""Fetching and verifying model sources for `compile`: `file:///abs/path`, plain absolute paths, `http(s)://` and
`s3://bucket/key` (boto3's default credential chain, the endpoint from `NEURON_RUNTIME_S3__*`).

Every fetch streams into a local file while hashing, and a given sha256 is always enforced: a compile Job must
never trace a model other than the one its spec pins. Errors are `SourceError` (exit code 3 in the CLI).
"""

from __future__ import annotations

import hashlib
import urllib.parse
import urllib.request
from pathlib import Path

_CHUNK = 1 << 20
HTTP_TIMEOUT_S = 60.0


class SourceError(RuntimeError):
    """The model source cannot be fetched, does not verify, or cannot be loaded."""


def fetch(uri: str, dest_dir: Path, expected_sha256: str | None, what: str) -> Path:
    """Make `uri` available as a local file and check its sha256; returns the local path."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "s3":
        return _fetch_s3(uri, dest_dir, expected_sha256, what)
    if parsed.scheme in ("http", "https"):
        dest = dest_dir / (Path(parsed.path).name or "download")
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(uri, timeout=HTTP_TIMEOUT_S) as response, dest.open("wb") as out:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        except OSError as exc:
            raise SourceError(f"cannot download {what} from {uri}: {exc}") from exc
        _check(digest.hexdigest(), expected_sha256, what, uri)
        return dest
    if parsed.scheme == "file":
        path = Path(urllib.parse.unquote(parsed.path))
    elif parsed.scheme == "" and uri.startswith("/"):
        path = Path(uri)
    else:
        raise SourceError(
            f"{what} URI {uri!r} is not supported: use file:///abs/path, an absolute path, http(s):// or s3://"
        )
    if not path.is_file():
        raise SourceError(f"{what} {path} does not exist or is not a file")
    if expected_sha256 is not None:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        _check(digest.hexdigest(), expected_sha256, what, uri)
    return path


def _fetch_s3(uri: str, dest_dir: Path, expected_sha256: str | None, what: str) -> Path:
    from neuron_runtime import objectstore
    from neuron_runtime.artifact import ArtifactError

    try:
        loc = objectstore.S3Location.parse(uri)
    except ValueError as exc:
        raise SourceError(f"{what} URI {exc}") from exc
    dest = dest_dir / (Path(loc.key).name or "download")
    try:
        objectstore.download(objectstore.client_from_env(), loc, dest, expected_sha256)
    except (ArtifactError, objectstore.ObjectNotFound) as exc:
        # Access and connection errors propagate: they are the storage's reasons, not the source's.
        raise SourceError(f"{what}: {exc}") from exc
    return dest


def _check(actual: str, expected: str | None, what: str, uri: str) -> None:
    if expected is not None and actual != expected:
        raise SourceError(f"{what} {uri} has sha256 {actual}, expected {expected}")

"""`s3://` sources and artifact storage, through boto3 (the AWS SDK: its default credential chain is what EKS Pod
Identity, IRSA, env-var keys from a Secret and instance profiles plug into).

An artifact on S3 has the layout of one on a volume: `<prefix>/<cache key>/manifest.json` next to the graph and
reference files the manifest pins by sha256. Writers (`publish_artifact`) upload every file first and the manifest
last, each file carrying its sha256 as object metadata, and never replace an artifact that already verifies.
Readers trust only a manifest whose files verify: the compile cache check (`find_artifact`) reads the manifest
and compares every file's metadata digest and size with a HEAD request (no graph is downloaded); a serving pod
(`fetch_artifact`) downloads every file, hashes it while writing and refuses any mismatch against the digest the
operator pinned.

Errors are `StorageError` subclasses that say what failed in words a user can act on (`ObjectNotFound`,
`AccessDenied`, `StorageUnavailable`); messages carry bucket and key, never a credential.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuron_runtime import artifact
from neuron_runtime.config import MANIFEST_NAME, S3Connection

Progress = Callable[[str], None]
SCHEME = "s3://"
#: Object metadata key (``x-amz-meta-sha256``) holding a file's sha256, written by `publish_artifact`.
SHA256_METADATA = "sha256"
_CHUNK = 1 << 20
#: A progress line at most this often while a large object streams.
PROGRESS_EVERY_S = 5.0
_BUCKET_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789.-")

_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NotFound", "404"}
_DENIED = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
    "AccountProblem",
}


#: Refusals that retrying cannot fix: the bucket is in another region, or the endpoint is not what it should be.
_MISCONFIGURED = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}


class StorageError(RuntimeError):
    """An object store operation failed."""


class ObjectNotFound(StorageError):
    """The bucket or key does not exist (S3 NoSuchKey / NoSuchBucket / 404)."""


class AccessDenied(StorageError):
    """The credentials are missing, wrong, or not allowed this operation (AccessDenied, InvalidAccessKeyId, ...)."""


class StorageUnavailable(StorageError):
    """The endpoint could not be reached or kept failing (connection errors, timeouts, 5xx after retries)."""


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key (or key prefix, without leading or trailing slash)."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        """``s3://bucket/key``; raises ValueError naming what is wrong."""
        if not uri.startswith(SCHEME):
            raise ValueError(f"{uri!r} is not an s3:// URI")
        bucket, _, key = uri[len(SCHEME) :].partition("/")
        problem = bucket_problem(bucket)
        if problem:
            raise ValueError(f"{uri!r}: {problem}")
        key = key.strip("/")
        if any(part in ("", ".", "..") for part in key.split("/")) and key:
            raise ValueError(f"{uri!r}: the key has an empty, '.' or '..' path segment")
        return cls(bucket, key)

    def child(self, name: str) -> S3Location:
        return S3Location(self.bucket, f"{self.key}/{name}" if self.key else name)

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}" if self.key else f"{SCHEME}{self.bucket}"


def bucket_problem(bucket: str) -> str | None:
    """Why `bucket` is not a valid S3 bucket name (AWS general purpose bucket rules), or None."""
    if not 3 <= len(bucket) <= 63:
        return f"bucket name {bucket!r} must be 3 to 63 characters long"
    if set(bucket) - _BUCKET_CHARS:
        return f"bucket name {bucket!r} may contain only lowercase letters, digits, '.' and '-'"
    if not (bucket[0].isalnum() and bucket[-1].isalnum()):
        return f"bucket name {bucket!r} must begin and end with a letter or digit"
    if ".." in bucket:
        return f"bucket name {bucket!r} must not contain '..'"
    return None


def is_s3(uri: str | os.PathLike[str]) -> bool:
    return isinstance(uri, str) and uri.startswith(SCHEME)


# ------------------------------------------------------------------------------------------------ client


def client(connection: S3Connection) -> Any:
    """A boto3 S3 client for `connection`, credentials from the default chain."""
    import boto3
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": "path" if connection.force_path_style else "auto"},
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        user_agent_extra="neuron-operator",
        # Whole-object checksums only when the operation needs one (S3-compatible stores differ in support).
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=connection.endpoint_url, region_name=connection.region, config=config
    )


def client_from_env(environ: Mapping[str, str] | None = None) -> Any:
    return client(S3Connection.from_env(os.environ if environ is None else environ))


def _error(exc: BaseException, doing: str, loc: S3Location) -> StorageError:
    """`exc` from botocore as one of our errors, with a message naming the operation, bucket and key."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    where = loc.uri
    if isinstance(exc, ClientError):
        err = exc.response.get("Error") or {}
        code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")
        detail = str(err.get("Message") or "").strip()
        said = f"{code}: {detail}" if detail else code
        if code in _NOT_FOUND:
            what = "bucket" if code == "NoSuchBucket" else "object"
            return ObjectNotFound(f"cannot {doing} {where}: {said} (the {what} does not exist)")
        if code in _DENIED:
            return AccessDenied(
                f"cannot {doing} {where}: {said} (the credentials are wrong, or their identity is not allowed to "
                f"{doing} here: check the ServiceAccount's IAM role or the credentials Secret, and the bucket policy)"
            )
        if code in _MISCONFIGURED:
            return AccessDenied(
                f"cannot {doing} {where}: {said} (S3 refused the request as sent: check the region and the endpoint of "
                "spec.s3 or the operator's S3 settings)"
            )
        return StorageUnavailable(f"cannot {doing} {where}: {said}")
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return AccessDenied(
            f"cannot {doing} {where}: no AWS credentials found ({exc}); give the pod an identity (EKS Pod Identity or "
            "IRSA through its ServiceAccount) or a credentials Secret (spec.s3.credentialsSecretRef)"
        )
    if isinstance(exc, (ConnectionError, HTTPClientError)):
        return StorageUnavailable(f"cannot {doing} {where}: the S3 endpoint did not answer ({exc})")
    return StorageError(f"cannot {doing} {where}: {type(exc).__name__}: {exc}")


def _call(doing: str, loc: S3Location, fn: Callable[[], Any]) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn()
    except (ClientError, BotoCoreError) as exc:
        raise _error(exc, doing, loc) from exc


# -------------------------------------------------------------------------------------------- single objects


def download(
    s3: Any,
    loc: S3Location,
    dest: Path,
    expected_sha256: str | None = None,
    progress: Progress | None = None,
) -> tuple[str, int]:
    """Stream `loc` into `dest` while hashing; returns (sha256, bytes). A pinned digest is enforced: on a mismatch
    `dest` is removed and `artifact.ArtifactError` raised."""
    from botocore.exceptions import BotoCoreError, ClientError

    digest = hashlib.sha256()
    size = 0
    started = last = time.monotonic()
    response = _call("read", loc, lambda: s3.get_object(Bucket=loc.bucket, Key=loc.key))
    total = int(response.get("ContentLength") or 0)
    try:
        with dest.open("wb") as out:
            for chunk in response["Body"].iter_chunks(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
                now = time.monotonic()
                if progress is not None and now - last >= PROGRESS_EVERY_S:
                    last = now
                    rate = size / max(now - started, 1e-9) / 1e6
                    progress(f"{loc.uri}: {size / 1e6:.0f} of {total / 1e6:.0f} MB ({rate:.0f} MB/s)")
    except (ClientError, BotoCoreError) as exc:
        dest.unlink(missing_ok=True)
        raise _error(exc, "read", loc) from exc
    except OSError:
        dest.unlink(missing_ok=True)
        raise
    actual = digest.hexdigest()
    if expected_sha256 is not None and actual != expected_sha256:
        dest.unlink(missing_ok=True)
        raise artifact.ArtifactError(f"sha256 mismatch for {loc.uri}: got {actual}, expected {expected_sha256}")
    return actual, size


def read_bytes(s3: Any, loc: S3Location, limit: int = 16 << 20) -> bytes:
    """A small object's bytes (manifests); larger than `limit` is refused."""
    response = _call("read", loc, lambda: s3.get_object(Bucket=loc.bucket, Key=loc.key))
    if int(response.get("ContentLength") or 0) > limit:
        raise StorageError(f"{loc.uri} is larger than {limit} bytes")
    data: bytes = _call("read", loc, lambda: response["Body"].read(limit + 1))
    return data


def _head(s3: Any, loc: S3Location) -> dict[str, Any]:
    head: dict[str, Any] = _call("read", loc, lambda: s3.head_object(Bucket=loc.bucket, Key=loc.key))
    return head


def upload(s3: Any, path: Path, loc: S3Location, sha256: str) -> None:
    """Upload `path` (multipart when large) with its sha256 as object metadata."""
    from boto3.exceptions import S3UploadFailedError

    try:
        _call(
            "write",
            loc,
            lambda: s3.upload_file(str(path), loc.bucket, loc.key, ExtraArgs={"Metadata": {SHA256_METADATA: sha256}}),
        )
    except S3UploadFailedError as exc:  # boto3's transfer manager wraps the ClientError it got
        cause = exc.__context__
        raise (_error(cause, "write", loc) if cause is not None else StorageError(str(exc))) from exc


# ------------------------------------------------------------------------------------------------ artifacts


def _parse_manifest(raw: bytes, where: str) -> artifact.Manifest:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise artifact.ArtifactError(f"{where} is not a valid manifest: {exc}") from exc
    return artifact.parse_manifest(data, where)


def find_artifact(
    s3: Any, root: S3Location, cache_key: str, progress: Progress
) -> tuple[artifact.Manifest, str] | None:
    """The published artifact of `cache_key` under `root`, checked without downloading a graph, or None.

    It counts only when its manifest parses, names `cache_key`, and every file it pins exists with that sha256 in
    its metadata (and, for graphs, that size). Anything else is reported through `progress` and read as a miss,
    so the caller recompiles and republishes. Access and connection errors are raised, not read as a miss.
    """
    prefix = root.child(cache_key)
    try:
        raw = read_bytes(s3, prefix.child(MANIFEST_NAME))
    except ObjectNotFound as exc:
        if "NoSuchBucket" in str(exc):  # not a miss: compiling for an hour could not publish anyway
            raise
        return None
    try:
        manifest = _parse_manifest(raw, prefix.child(MANIFEST_NAME).uri)
    except artifact.ArtifactError as exc:
        progress(f"published artifact does not verify ({exc}); recompiling")
        return None
    if manifest.cache_key != cache_key:
        progress(f"{prefix.uri} holds cache key {manifest.cache_key}; recompiling")
        return None
    sizes = {g.file: g.size_bytes for g in manifest.graphs}
    for name, expected in sorted(manifest.files.items()):
        loc = prefix.child(name)
        try:
            head = _head(s3, loc)
        except ObjectNotFound:
            progress(f"{loc.uri} is missing; recompiling")
            return None
        pinned = (head.get("Metadata") or {}).get(SHA256_METADATA)
        if pinned != expected or (name in sizes and int(head.get("ContentLength", -1)) != sizes[name]):
            progress(f"{loc.uri} does not match the manifest (sha256 {pinned}, expected {expected}); recompiling")
            return None
    return manifest, artifact.sha256_bytes(raw)


def publish_artifact(
    s3: Any, directory: Path, root: S3Location, progress: Progress
) -> tuple[artifact.Manifest, str, S3Location]:
    """Upload the verified local artifact `directory` to `root/<cache key>/`: every file, then the manifest.

    Published artifacts are immutable: one that already verifies there is kept and returned. The manifest is written
    with a conditional create (`If-None-Match: *`), so of two compiles of the same inputs publishing at once the
    first manifest wins and the second adopts it (their files are the same bytes: a compile is deterministic apart
    from the manifest's `created_at` and `compile_seconds`); files already there with this sha256 are not uploaded
    again. Only a manifest that does not verify (a damaged or partial publication) is replaced.
    """
    manifest, digest = artifact.verify(directory)
    prefix = root.child(manifest.cache_key)
    if (existing := find_artifact(s3, root, manifest.cache_key, progress)) is not None:
        progress(f"{prefix.uri} was published meanwhile; keeping it")
        return existing[0], existing[1], prefix
    manifest_loc = prefix.child(MANIFEST_NAME)
    try:
        _head(s3, manifest_loc)
        damaged = True  # a manifest is there, and find_artifact refused it
    except ObjectNotFound:
        damaged = False
    started = time.monotonic()
    total = 0
    for name, sha in sorted(manifest.files.items()):
        path = directory / name
        loc = prefix.child(name)
        try:
            same = (_head(s3, loc).get("Metadata") or {}).get(SHA256_METADATA) == sha
        except ObjectNotFound:
            same = False
        if not same:
            upload(s3, path, loc, sha)
            total += path.stat().st_size
    raw = (directory / MANIFEST_NAME).read_bytes()
    conditional = {} if damaged else {"IfNoneMatch": "*"}
    try:
        _call(
            "write",
            manifest_loc,
            lambda: s3.put_object(
                Bucket=manifest_loc.bucket,
                Key=manifest_loc.key,
                Body=raw,
                Metadata={SHA256_METADATA: digest},
                ContentType="application/json",
                **conditional,
            ),
        )
    except StorageError as exc:
        if "PreconditionFailed" not in str(exc):
            raise
        if (won := find_artifact(s3, root, manifest.cache_key, progress)) is not None:
            progress(f"{prefix.uri} was published by a concurrent compile meanwhile; keeping it")
            return won[0], won[1], prefix
        raise StorageUnavailable(
            f"cannot publish {prefix.uri}: a concurrent compile published a manifest that does not verify against "
            "the files; retrying"
        ) from exc
    total += len(raw)
    seconds = time.monotonic() - started
    progress(
        f"uploaded {prefix.uri}: {total / 1e6:.1f} MB ({len(manifest.files) + 1} objects) in {seconds:.1f}s "
        f"({total / 1e6 / max(seconds, 1e-9):.0f} MB/s)"
    )
    return manifest, digest, prefix


def stored_bytes(s3: Any, prefix: S3Location, manifest: artifact.Manifest) -> int:
    """Bytes of every object of a published artifact, the manifest included (HEAD requests)."""
    names = [*sorted(manifest.files), MANIFEST_NAME]
    return sum(int(_head(s3, prefix.child(name)).get("ContentLength") or 0) for name in names)


def fetch_artifact(
    s3: Any, prefix: S3Location, directory: Path, expected_sha256: str | None, progress: Progress
) -> tuple[artifact.Manifest, str]:
    """Make `directory` a verified copy of the artifact at `prefix` (a cache key's prefix).

    A directory that already verifies against `expected_sha256` (a restarted container on the same emptyDir) is
    used as is. Otherwise every file is downloaded into a sibling temporary directory, hashed while written and
    checked against the manifest, which itself must have the pinned digest; the directory is then renamed into
    place. Raises `ObjectNotFound`, `AccessDenied`, `StorageUnavailable` or `artifact.ArtifactError`.
    """
    if (directory / MANIFEST_NAME).exists():
        try:
            found = artifact.verify(directory, expected_sha256)
        except artifact.ArtifactError as exc:
            progress(f"local copy in {directory} does not verify ({exc}); downloading again")
        else:
            progress(f"local copy in {directory} verifies; not downloading")
            return found
    started = time.monotonic()
    manifest_loc = prefix.child(MANIFEST_NAME)
    raw = read_bytes(s3, manifest_loc)
    digest = artifact.sha256_bytes(raw)
    if expected_sha256 is not None and digest != expected_sha256:
        raise artifact.ArtifactError(
            f"artifact digest mismatch: {manifest_loc.uri} has sha256 {digest}, expected {expected_sha256} (the "
            "object was replaced after the NeuronModel recorded it)"
        )
    manifest = _parse_manifest(raw, manifest_loc.uri)
    total = sum(g.size_bytes for g in manifest.graphs)
    progress(f"downloading {prefix.uri}: {len(manifest.files)} files, graphs {total / 1e6:.1f} MB")
    directory.parent.mkdir(parents=True, exist_ok=True)
    for stale in directory.parent.glob(f".download-{directory.name[:16]}-*"):  # a container killed mid-download
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".download-{directory.name[:16]}-", dir=directory.parent))
    try:
        size = 0
        for name, expected in sorted(manifest.files.items()):
            if Path(name).name != name:
                raise artifact.ArtifactError(f"manifest names a file outside the artifact: {name!r}")
            size += download(s3, prefix.child(name), tmp / name, expected, progress)[1]
        (tmp / MANIFEST_NAME).write_bytes(raw)
        result = artifact.verify(tmp, expected_sha256)
        if directory.exists():
            shutil.rmtree(directory)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.monotonic() - started
    progress(
        f"downloaded and verified {prefix.uri} into {directory}: {size / 1e6:.1f} MB in {seconds:.1f}s "
        f"({size / 1e6 / max(seconds, 1e-9):.0f} MB/s)"
    )
    return result

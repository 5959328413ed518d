"""Garbage collection of compiled artifacts no NeuronModel references any more (`neuron-runtime gc`).

An artifact root (a mounted volume's directory, or an `s3://bucket/prefix`) holds one child per cache key:
`<root>/<64-hex cache key>/manifest.json` next to the files it pins. Nothing else under the root is touched,
except the leftovers of interrupted atomic writes on a volume (`.tmp-*`, `.old-*`, `.download-*`).

When an artifact was last referenced is recorded *outside* the artifacts (they are immutable and verified by
their manifest): `<root>/.neuron-gc/<cache key>` holds an ISO-8601 timestamp. Every run first writes the marker of
every referenced ("kept") key present under the root, so an artifact referenced until yesterday carries
yesterday's time: a Git revert within the minimum age is still a cache hit. An unreferenced artifact expires when
`now - (its marker's time, else its own: the newest file's mtime / object's LastModified) >= min_age`.

A dry run (the default) deletes nothing and writes only markers. A deleting run removes each expired artifact's
manifest first, so no reader ever trusts a half-deleted artifact (`artifact.verify` and
`objectstore.find_artifact` refuse an artifact without one: the next compile of that key recompiles), then its
other files, then its marker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from neuron_runtime.config import MANIFEST_NAME
from neuron_runtime.objectstore import S3Location, _call, _error

Progress = Callable[[str], None]
CACHE_KEY = re.compile(r"^[0-9a-f]{64}$")
#: The directory (volume) or key prefix (S3) under the root holding one "last referenced" marker per cache key.
MARKER_DIR = ".neuron-gc"
#: Names of the leftovers of interrupted atomic writes on a volume (`artifact.write_atomically`,
#: `objectstore.fetch_artifact`).
LEFTOVER_PREFIXES = (".tmp-", ".old-", ".download-")
#: A leftover is removed only once this old too, whatever the minimum age: a `.tmp-*` directory may be a compile
#: still running (tracing a large model writes nothing into it for a long time).
LEFTOVER_MIN_AGE_SECONDS = 86400
#: Expired artifacts listed in the termination message (the count is always complete).
EXPIRED_LISTED = 50
#: S3 DeleteObjects takes at most this many keys.
DELETE_BATCH = 1000


class GcRequestError(ValueError):
    """The keep list or an argument is invalid."""


@dataclass(frozen=True)
class Expired:
    cache_key: str
    size_bytes: int
    last_referenced: datetime  # the marker's time, else the artifact's own

    def to_json(self) -> dict[str, Any]:
        return {"cacheKey": self.cache_key, "bytes": self.size_bytes, "lastReferenced": iso(self.last_referenced)}


@dataclass
class GcResult:
    dry_run: bool
    root: str
    kept: int = 0  # referenced artifacts present under the root (their markers refreshed)
    retained: int = 0  # unreferenced artifacts younger than the minimum age
    expired: list[Expired] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)  # names of expired leftovers (volume only)
    deleted_bytes: int = 0

    @property
    def reclaimable_bytes(self) -> int:
        return sum(e.size_bytes for e in self.expired)

    def message(self, listed: int = EXPIRED_LISTED) -> dict[str, Any]:
        """The termination message: every count, the first `listed` expired artifacts (oldest first)."""
        return {
            "status": "Succeeded",
            "dryRun": self.dry_run,
            "root": self.root,
            "kept": self.kept,
            "retained": self.retained,
            "expired": [e.to_json() for e in self.expired[:listed]],
            "expiredCount": len(self.expired),
            "leftovers": len(self.leftovers),
            "deletedBytes": self.deleted_bytes,
            "freedOrReclaimableBytes": self.deleted_bytes if not self.dry_run else self.reclaimable_bytes,
        }


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """An ISO-8601 timestamp (a trailing Z allowed); naive means UTC. ValueError if it is not one."""
    parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def parse_keep(text: str) -> frozenset[str]:
    """The keep list: a JSON list of 64-hex cache keys."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise GcRequestError(f"the keep list is not JSON: {exc}") from exc
    if not isinstance(data, list) or not all(isinstance(k, str) and CACHE_KEY.match(k) for k in data):
        raise GcRequestError("the keep list must be a JSON list of cache keys (64 lowercase hex characters)")
    return frozenset(data)


def _age(now: datetime, then: datetime) -> float:
    return (now - then).total_seconds()


# ------------------------------------------------------------------------------------------------ volume


def _newest_mtime(path: Path) -> float:
    """The newest mtime of the files under `path` (the directory's own when it holds none): removing files does not
    make an artifact look younger."""
    newest: float | None = None
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                mtime = os.lstat(os.path.join(dirpath, name)).st_mtime
            except FileNotFoundError:
                continue
            newest = mtime if newest is None else max(newest, mtime)
    return newest if newest is not None else path.lstat().st_mtime


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue
    return total


def _read_marker_file(path: Path) -> datetime | None:
    try:
        return parse_time(path.read_text())
    except (OSError, ValueError):
        return None


def _write_marker_file(markers: Path, key: str, now: datetime) -> None:
    markers.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{key[:16]}-", dir=markers)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(iso(now) + "\n")
        os.replace(tmp, markers / key)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def collect_volume(
    root: Path, keep: frozenset[str], min_age_seconds: float, now: datetime, delete: bool, progress: Progress
) -> GcResult:
    """One GC run over the artifact directory `root` (see the module docstring)."""
    result = GcResult(dry_run=not delete, root=str(root))
    if not root.is_dir():
        progress(f"{root} does not exist (yet): nothing to collect")
        return result
    markers = root / MARKER_DIR
    artifacts: list[Path] = []
    leftovers: list[Path] = []
    for entry in sorted(root.iterdir()):
        if CACHE_KEY.match(entry.name) and entry.is_dir() and not entry.is_symlink():
            artifacts.append(entry)
        elif entry.name.startswith(LEFTOVER_PREFIXES):
            leftovers.append(entry)
    for path in artifacts:
        if path.name in keep:
            _write_marker_file(markers, path.name, now)
            result.kept += 1
    expired: list[tuple[Expired, Path]] = []
    for path in artifacts:
        if path.name in keep:
            continue
        last = _read_marker_file(markers / path.name) or datetime.fromtimestamp(_newest_mtime(path), timezone.utc)
        if _age(now, last) >= min_age_seconds:
            expired.append((Expired(path.name, _tree_bytes(path), last), path))
        else:
            result.retained += 1
    expired.sort(key=lambda e: (e[0].last_referenced, e[0].cache_key))
    result.expired = [e for e, _ in expired]
    leftover_age = max(min_age_seconds, LEFTOVER_MIN_AGE_SECONDS)
    for path in leftovers:
        try:
            mtime = _newest_mtime(path) if path.is_dir() and not path.is_symlink() else path.lstat().st_mtime
        except FileNotFoundError:
            continue
        if _age(now, datetime.fromtimestamp(mtime, timezone.utc)) >= leftover_age:
            result.leftovers.append(path.name)
    for item, path in expired:
        what = "deleting" if delete else "would delete"
        progress(
            f"{what} {path}: {item.size_bytes} bytes, last referenced {iso(item.last_referenced)} "
            f"({_age(now, item.last_referenced) / 86400:.1f} days ago)"
        )
        if delete:
            (path / MANIFEST_NAME).unlink(missing_ok=True)  # first: what remains is no artifact any more
            shutil.rmtree(path, ignore_errors=True)
            (markers / path.name).unlink(missing_ok=True)
            result.deleted_bytes += item.size_bytes
    for name in result.leftovers:
        path = root / name
        progress(f"{'deleting' if delete else 'would delete'} leftover {path}")
        if delete:
            size = _tree_bytes(path) if path.is_dir() else path.lstat().st_size
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            result.deleted_bytes += size
    if delete and markers.is_dir():  # markers of artifacts gone by other means
        present = {p.name for p in artifacts}
        for marker in markers.iterdir():
            if marker.name not in present and marker.name not in keep and CACHE_KEY.match(marker.name):
                marked = _read_marker_file(marker)
                if marked is None or _age(now, marked) >= min_age_seconds:
                    marker.unlink(missing_ok=True)
    return result


# ------------------------------------------------------------------------------------------------ S3


def _prefix(loc: S3Location) -> str:
    return f"{loc.key}/" if loc.key else ""


def _pages(s3: Any, root: S3Location, prefix: str, delimiter: str | None = None) -> Iterator[dict[str, Any]]:
    kwargs: dict[str, Any] = {"Bucket": root.bucket, "Prefix": prefix}
    if delimiter is not None:
        kwargs["Delimiter"] = delimiter
    where = S3Location(root.bucket, prefix.rstrip("/"))
    while True:
        page: dict[str, Any] = _call("list", where, lambda: s3.list_objects_v2(**kwargs))
        yield page
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return
        kwargs["ContinuationToken"] = token


def _objects(s3: Any, root: S3Location, prefix: str) -> list[dict[str, Any]]:
    return [obj for page in _pages(s3, root, prefix) for obj in page.get("Contents") or []]


def _read_marker_object(s3: Any, loc: S3Location) -> datetime | None:
    from neuron_runtime.objectstore import ObjectNotFound, read_bytes

    try:
        return parse_time(read_bytes(s3, loc, limit=1024).decode())
    except ObjectNotFound:
        return None
    except (UnicodeDecodeError, ValueError):
        return None


def _put(s3: Any, loc: S3Location, body: bytes) -> None:
    _call("write", loc, lambda: s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=body))


def _delete(s3: Any, loc: S3Location) -> None:
    _call("delete", loc, lambda: s3.delete_object(Bucket=loc.bucket, Key=loc.key))


def _delete_keys(s3: Any, root: S3Location, keys: Iterable[str]) -> None:
    from botocore.exceptions import ClientError

    batch: list[str] = []

    def flush() -> None:
        if not batch:
            return
        where = S3Location(root.bucket, batch[0])
        response = _call(
            "delete",
            where,
            lambda: s3.delete_objects(
                Bucket=root.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
            ),
        )
        errors = [e for e in response.get("Errors") or [] if e.get("Code") not in ("NoSuchKey",)]
        if errors:
            first = errors[0]
            error = {"Error": {"Code": first.get("Code"), "Message": first.get("Message")}}
            raise _error(ClientError(error, "DeleteObjects"), "delete", S3Location(root.bucket, str(first.get("Key"))))
        batch.clear()

    for key in keys:
        batch.append(key)
        if len(batch) == DELETE_BATCH:
            flush()
    flush()


def collect_s3(
    s3: Any,
    root: S3Location,
    keep: frozenset[str],
    min_age_seconds: float,
    now: datetime,
    delete: bool,
    progress: Progress,
) -> GcResult:
    """One GC run over the artifact prefix `root` (see the module docstring)."""
    result = GcResult(dry_run=not delete, root=root.uri)
    base = _prefix(root)
    markers = root.child(MARKER_DIR)
    keys: list[str] = []
    for page in _pages(s3, root, base, delimiter="/"):
        for common in page.get("CommonPrefixes") or []:
            name = str(common.get("Prefix", ""))[len(base) :].rstrip("/")
            if CACHE_KEY.match(name):
                keys.append(name)
    keys.sort()
    for key in keys:
        if key in keep:
            _put(s3, markers.child(key), (iso(now) + "\n").encode())
            result.kept += 1
    marker_times = {str(obj["Key"])[len(_prefix(markers)) :]: obj for obj in _objects(s3, root, _prefix(markers))}
    expired: list[tuple[Expired, list[str]]] = []
    for key in keys:
        if key in keep:
            continue
        objects = _objects(s3, root, _prefix(root.child(key)))
        if not objects:
            continue
        marked = _read_marker_object(s3, markers.child(key)) if key in marker_times else None
        last = marked or max(obj["LastModified"] for obj in objects).astimezone(timezone.utc)
        if _age(now, last) >= min_age_seconds:
            size = sum(int(obj.get("Size") or 0) for obj in objects)
            expired.append((Expired(key, size, last), [str(obj["Key"]) for obj in objects]))
        else:
            result.retained += 1
    expired.sort(key=lambda e: (e[0].last_referenced, e[0].cache_key))
    result.expired = [e for e, _ in expired]
    for item, object_keys in expired:
        prefix = root.child(item.cache_key)
        progress(
            f"{'deleting' if delete else 'would delete'} {prefix.uri}: {len(object_keys)} objects, "
            f"{item.size_bytes} bytes, last referenced {iso(item.last_referenced)} "
            f"({_age(now, item.last_referenced) / 86400:.1f} days ago)"
        )
        if not delete:
            continue
        manifest = prefix.child(MANIFEST_NAME)
        # First, on its own: from now on no reader takes what remains for an artifact.
        _delete(s3, manifest)
        # Listed again: objects written since the first listing go too.
        rest = [str(o["Key"]) for o in _objects(s3, root, _prefix(prefix)) if str(o["Key"]) != manifest.key]
        _delete_keys(s3, root, rest)
        _delete(s3, markers.child(item.cache_key))
        result.deleted_bytes += item.size_bytes
    if delete:  # markers of artifacts gone by other means
        present = set(keys)
        orphans = []
        for name, obj in marker_times.items():
            old = _age(now, obj["LastModified"].astimezone(timezone.utc)) >= min_age_seconds
            if CACHE_KEY.match(name) and name not in present and name not in keep and old:
                orphans.append(str(obj["Key"]))
        _delete_keys(s3, root, orphans)
    return result

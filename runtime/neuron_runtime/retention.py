"""Garbage collection of compiled artifacts no NeuronModel references any more (`neuron-runtime gc`).

An artifact root (a mounted volume's directory, or an `s3://bucket/prefix`) holds one child per cache key:
`<root>/<64-hex cache key>/manifest.json` next to the files it pins. Nothing else under the root is touched,
except the leftovers of interrupted atomic writes on a volume (`.tmp-*`, `.old-*`, `.download-*`).

When an artifact was last referenced is recorded *outside* the artifacts (they are immutable and verified by
their manifest): `<root>/.neuron-gc/<cache key>` holds an ISO-8601 timestamp. Every run first writes the marker of
every referenced ("kept") key present under the root, so an artifact referenced until yesterday carries
yesterday's time: a Git revert within the minimum age is still a cache hit. Compile Jobs write the marker of the
key they return too (`touch_marker`: on a cache hit and after writing or publishing), since the keep list is fixed
when the GC Job is created and a compile may pick up an unreferenced artifact before the GC gets to it. An
unreferenced artifact without a marker (the GC's first sight of it: a GC just enabled, an artifact from before the
markers) gets one with the run's time and is retained ("first seen"): it expires the minimum age after the GC
first saw it unreferenced, never on a first run. An unreferenced artifact expires when `now - its marker's time >=
min_age`.

A dry run (the default) deletes nothing and writes only markers. A deleting run, for each expired artifact: reads
its marker again and skips the artifact if it changed since the run's first read or is now within the minimum age
(a compile picked the artifact up meanwhile); then removes the manifest first, so no reader ever trusts a
half-deleted artifact (`artifact.verify` and `objectstore.find_artifact` refuse an artifact without one: the next
compile of that key recompiles), then the other files, then the marker. It removes only what its first listing of
that artifact held: a file or object written since (a compile publishing the key again) survives; on a volume, a
directory replaced since (inode) is not touched at all. A compile that picks up an artifact between the GC's last
marker read and its deletion can still lose it (there is no lock over a volume or an S3 prefix): that window is
one artifact's deletion, not the GC Job's lifetime.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
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
    retained: int = 0  # unreferenced artifacts younger than the minimum age (first_seen included)
    first_seen: int = 0  # unreferenced artifacts without a marker: one written with this run's time, retained
    skipped: int = 0  # expired artifacts not deleted: their marker was refreshed during the run (a compile)
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
            "firstSeen": self.first_seen,
            "skipped": self.skipped,
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


def _plus(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)


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
    """Write `markers/key` atomically (creating `markers`)."""
    markers.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{key[:16]}-", dir=markers)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(iso(now) + "\n")
        os.replace(tmp, markers / key)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def touch_marker(root: Path | S3Location, key: str, now: datetime | None = None, s3: Any = None) -> None:
    """Record that `key` under the artifact root `root` (a directory, or an S3 prefix with the client `s3`) was
    referenced at `now` (default: the current time): what a compile Job does for the key it returns, so a GC Job
    whose keep list predates that compile does not delete it. Raises on failure (OSError, StorageError): callers
    that must not fail on it catch."""
    if not CACHE_KEY.match(key):
        raise GcRequestError(f"{key!r} is not a cache key")
    when = now if now is not None else datetime.now(timezone.utc)
    if isinstance(root, S3Location):
        if s3 is None:
            raise ValueError("an S3 root needs a client")
        _put(s3, root.child(MARKER_DIR).child(key), (iso(when) + "\n").encode())
    else:
        _write_marker_file(root / MARKER_DIR, key, when)


def _stale(last: datetime, again: datetime | None, now: datetime, min_age_seconds: float) -> bool:
    """Whether an artifact whose marker read `last` at first may still go, its marker now reading `again`."""
    return again is None or (again <= last and _age(now, again) >= min_age_seconds)


@dataclass(frozen=True)
class _DirListing:
    """What a run's first listing of an artifact directory held: its identity and every file's, by relative
    path (the manifest included)."""

    ident: tuple[int, int]  # (st_dev, st_ino) of the directory
    files: dict[str, tuple[int, int]]
    size_bytes: int


def _list_dir(path: Path) -> _DirListing | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    files: dict[str, tuple[int, int]] = {}
    size = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            full = os.path.join(dirpath, name)
            try:
                fst = os.lstat(full)
            except FileNotFoundError:
                continue
            files[os.path.relpath(full, path)] = (fst.st_dev, fst.st_ino)
            size += fst.st_size
    return _DirListing((st.st_dev, st.st_ino), files, size)


def _delete_listed(path: Path, listing: _DirListing) -> bool:
    """Remove what `listing` held of the artifact directory `path`: the manifest first, then the other files, then
    the directories left empty. Files written since (another inode, or a new name) stay. False, and nothing
    removed, when `path` is not the directory listed any more (replaced by a new artifact)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != listing.ident:
            return False
        # Relative to the directory opened: even if it is renamed aside meanwhile, nothing else is touched.
        names = sorted(listing.files, key=lambda n: (n != MANIFEST_NAME, n))
        for name in names:
            try:
                fst = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if (fst.st_dev, fst.st_ino) == listing.files[name]:
                    os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                continue
        subdirs = {os.path.dirname(n) for n in names} - {""}
        for sub in sorted(subdirs, key=lambda d: d.count(os.sep), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(sub, dir_fd=fd)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):  # only when empty: what was written since stays
        now_st = path.lstat()
        if (now_st.st_dev, now_st.st_ino) == listing.ident:
            path.rmdir()
    return True


@dataclass(frozen=True)
class _Run:
    """One GC run's arguments, and the result its steps fill in."""

    keep: frozenset[str]
    min_age_seconds: float
    now: datetime
    delete: bool
    progress: Progress
    result: GcResult

    @property
    def verb(self) -> str:
        """How the run reports an expired artifact or leftover: deleting it, or only saying it would."""
        return "deleting" if self.delete else "would delete"


def _first_seen(run: _Run, where: str) -> None:
    """Count an unreferenced artifact seen for the first time (its marker just written) as retained."""
    run.progress(f"first seen unreferenced: {where} (retained until {iso(_plus(run.now, run.min_age_seconds))})")
    run.result.first_seen += 1
    run.result.retained += 1


def collect_volume(
    root: Path, keep: frozenset[str], min_age_seconds: float, now: datetime, delete: bool, progress: Progress
) -> GcResult:
    """One GC run over the artifact directory `root` (see the module docstring).

    Steps: list the artifacts and leftovers (`_scan_volume`), refresh the markers of the kept artifacts
    (`_mark_kept_dirs`), find the expired ones (`_expired_dirs`) and leftovers (`_expired_leftovers`), delete (or
    report) each expired artifact (`_collect_dir`), then the leftovers (`_remove_leftovers`), then the markers of
    artifacts gone by other means (`_remove_orphan_marker_files`)."""
    result = GcResult(dry_run=not delete, root=str(root))
    if not root.is_dir():
        progress(f"{root} does not exist (yet): nothing to collect")
        return result
    run = _Run(keep, min_age_seconds, now, delete, progress, result)
    markers = root / MARKER_DIR
    artifacts, leftovers = _scan_volume(root)
    _mark_kept_dirs(markers, artifacts, run)
    expired = _expired_dirs(markers, artifacts, run)
    result.leftovers.extend(_expired_leftovers(leftovers, run))
    for item, path, listing in expired:
        _collect_dir(markers, item, path, listing, run)
    _remove_leftovers(root, run)
    if delete and markers.is_dir():  # markers of artifacts gone by other means
        _remove_orphan_marker_files(markers, artifacts, run)
    return result


def _scan_volume(root: Path) -> tuple[list[Path], list[Path]]:
    """The artifact directories (cache-key names, no symlinks) and the leftovers directly under `root`, sorted."""
    artifacts: list[Path] = []
    leftovers: list[Path] = []
    for entry in sorted(root.iterdir()):
        if CACHE_KEY.match(entry.name) and entry.is_dir() and not entry.is_symlink():
            artifacts.append(entry)
        elif entry.name.startswith(LEFTOVER_PREFIXES):
            leftovers.append(entry)
    return artifacts, leftovers


def _mark_kept_dirs(markers: Path, artifacts: list[Path], run: _Run) -> None:
    """Write the marker of every referenced artifact present with the run's time."""
    for path in artifacts:
        if path.name in run.keep:
            _write_marker_file(markers, path.name, run.now)
            run.result.kept += 1


def _expired_dirs(markers: Path, artifacts: list[Path], run: _Run) -> list[tuple[Expired, Path, _DirListing]]:
    """The unreferenced artifacts past the minimum age, each with its first listing, oldest first. Counts the
    retained ones, and marks those seen for the first time."""
    expired: list[tuple[Expired, Path, _DirListing]] = []
    for path in artifacts:
        if path.name in run.keep:
            continue
        last = _read_marker_file(markers / path.name)
        if last is None:
            _write_marker_file(markers, path.name, run.now)
            _first_seen(run, str(path))
            continue
        if _age(run.now, last) < run.min_age_seconds:
            run.result.retained += 1
            continue
        listing = _list_dir(path)  # the first listing: only these files may go
        if listing is not None:  # else gone meanwhile
            expired.append((Expired(path.name, listing.size_bytes, last), path, listing))
    expired.sort(key=lambda e: (e[0].last_referenced, e[0].cache_key))
    return expired


def _expired_leftovers(leftovers: list[Path], run: _Run) -> list[str]:
    """Names of the leftovers whose newest file is older than the minimum age and `LEFTOVER_MIN_AGE_SECONDS`."""
    leftover_age = max(run.min_age_seconds, LEFTOVER_MIN_AGE_SECONDS)
    names: list[str] = []
    for path in leftovers:
        try:
            mtime = _newest_mtime(path) if path.is_dir() and not path.is_symlink() else path.lstat().st_mtime
        except FileNotFoundError:
            continue
        if _age(run.now, datetime.fromtimestamp(mtime, timezone.utc)) >= leftover_age:
            names.append(path.name)
    return names


def _collect_dir(markers: Path, item: Expired, path: Path, listing: _DirListing, run: _Run) -> None:
    """Report an expired artifact directory and, on a deleting run, delete what its first listing held unless its
    marker was refreshed meanwhile or the directory was replaced; its marker goes once the directory is gone."""
    run.progress(
        f"{run.verb} {path}: {item.size_bytes} bytes, last referenced {iso(item.last_referenced)} "
        f"({_age(run.now, item.last_referenced) / 86400:.1f} days ago)"
    )
    if not run.delete:
        run.result.expired.append(item)
        return
    again = _read_marker_file(markers / path.name)  # right before deleting: a compile may have taken it
    if not _stale(item.last_referenced, again, run.now, run.min_age_seconds):
        run.progress(f"not deleting {path}: referenced again at {iso(again or run.now)} (a compile picked it up)")
        run.result.skipped += 1
        return
    if not _delete_listed(path, listing):
        run.progress(f"not deleting {path}: replaced since it was listed")
        run.result.skipped += 1
        return
    run.result.expired.append(item)
    if not path.exists():
        (markers / path.name).unlink(missing_ok=True)
    run.result.deleted_bytes += item.size_bytes


def _remove_leftovers(root: Path, run: _Run) -> None:
    """Report the expired leftovers and, on a deleting run, remove them (counting their bytes)."""
    for name in run.result.leftovers:
        path = root / name
        run.progress(f"{run.verb} leftover {path}")
        if run.delete:
            run.result.deleted_bytes += _remove_leftover(path)


def _remove_leftover(path: Path) -> int:
    """Remove a leftover file or directory; returns its size in bytes."""
    size = _tree_bytes(path) if path.is_dir() else path.lstat().st_size
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return size


def _remove_orphan_marker_files(markers: Path, artifacts: list[Path], run: _Run) -> None:
    """Remove the markers, past the minimum age (or unreadable), of unreferenced artifacts no longer present."""
    present = {p.name for p in artifacts}
    for marker in markers.iterdir():
        if marker.name not in present and marker.name not in run.keep and CACHE_KEY.match(marker.name):
            marked = _read_marker_file(marker)
            if marked is None or _age(run.now, marked) >= run.min_age_seconds:
                marker.unlink(missing_ok=True)


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
    """One GC run over the artifact prefix `root` (see the module docstring).

    Steps: list the artifact prefixes (`_list_keys`), refresh the markers of the kept artifacts
    (`_mark_kept_keys`), list the markers, find the expired artifacts (`_expired_prefixes`), delete (or report)
    each (`_collect_prefix`), then the markers of artifacts gone by other means (`_remove_orphan_markers`)."""
    result = GcResult(dry_run=not delete, root=root.uri)
    run = _Run(keep, min_age_seconds, now, delete, progress, result)
    markers = root.child(MARKER_DIR)
    keys = _list_keys(s3, root)
    _mark_kept_keys(s3, markers, keys, run)
    marker_times = {str(obj["Key"])[len(_prefix(markers)) :]: obj for obj in _objects(s3, root, _prefix(markers))}
    expired = _expired_prefixes(s3, root, keys, marker_times, run)
    for item, object_keys in expired:
        _collect_prefix(s3, root, item, object_keys, run)
    if delete:  # markers of artifacts gone by other means
        _remove_orphan_markers(s3, root, keys, marker_times, run)
    return result


def _list_keys(s3: Any, root: S3Location) -> list[str]:
    """The cache keys with a prefix directly under `root`, sorted."""
    base = _prefix(root)
    keys: list[str] = []
    for page in _pages(s3, root, base, delimiter="/"):
        for common in page.get("CommonPrefixes") or []:
            name = str(common.get("Prefix", ""))[len(base) :].rstrip("/")
            if CACHE_KEY.match(name):
                keys.append(name)
    keys.sort()
    return keys


def _mark_kept_keys(s3: Any, markers: S3Location, keys: list[str], run: _Run) -> None:
    """Write the marker of every referenced artifact present with the run's time."""
    for key in keys:
        if key in run.keep:
            _put(s3, markers.child(key), (iso(run.now) + "\n").encode())
            run.result.kept += 1


def _expired_prefixes(
    s3: Any, root: S3Location, keys: list[str], marker_times: dict[str, Any], run: _Run
) -> list[tuple[Expired, list[str]]]:
    """The unreferenced artifacts past the minimum age, each with the keys of its first listing, oldest first.
    Counts the retained ones, and marks those seen for the first time."""
    markers = root.child(MARKER_DIR)
    expired: list[tuple[Expired, list[str]]] = []
    for key in keys:
        if key in run.keep:
            continue
        last = _read_marker_object(s3, markers.child(key)) if key in marker_times else None
        if last is None:
            _put(s3, markers.child(key), (iso(run.now) + "\n").encode())
            _first_seen(run, root.child(key).uri)
            continue
        if _age(run.now, last) < run.min_age_seconds:
            run.result.retained += 1
            continue
        objects = _objects(s3, root, _prefix(root.child(key)))  # the first listing: only these may go
        if not objects:
            continue
        size = sum(int(obj.get("Size") or 0) for obj in objects)
        expired.append((Expired(key, size, last), [str(obj["Key"]) for obj in objects]))
    expired.sort(key=lambda e: (e[0].last_referenced, e[0].cache_key))
    return expired


def _collect_prefix(s3: Any, root: S3Location, item: Expired, object_keys: list[str], run: _Run) -> None:
    """Report an expired artifact prefix and, on a deleting run, delete the objects its first listing held (the
    manifest first) unless its marker was refreshed meanwhile; its marker goes once the prefix is empty."""
    prefix = root.child(item.cache_key)
    marker = root.child(MARKER_DIR).child(item.cache_key)
    run.progress(
        f"{run.verb} {prefix.uri}: {len(object_keys)} objects, "
        f"{item.size_bytes} bytes, last referenced {iso(item.last_referenced)} "
        f"({_age(run.now, item.last_referenced) / 86400:.1f} days ago)"
    )
    if not run.delete:
        run.result.expired.append(item)
        return
    again = _read_marker_object(s3, marker)  # right before deleting
    if not _stale(item.last_referenced, again, run.now, run.min_age_seconds):
        run.progress(f"not deleting {prefix.uri}: referenced again at {iso(again or run.now)} (a compile picked it up)")
        run.result.skipped += 1
        return
    run.result.expired.append(item)
    manifest = prefix.child(MANIFEST_NAME)
    if manifest.key in object_keys:
        # First, on its own: from now on no reader takes what remains for an artifact.
        _delete(s3, manifest)
    # Only what the first listing held: an object written since (a compile publishing again) stays.
    _delete_keys(s3, root, [k for k in object_keys if k != manifest.key])
    if not _objects(s3, root, _prefix(prefix)):
        _delete(s3, marker)
    run.result.deleted_bytes += item.size_bytes


def _remove_orphan_markers(s3: Any, root: S3Location, keys: list[str], marker_times: dict[str, Any], run: _Run) -> None:
    """Remove the markers, past the minimum age, of unreferenced artifacts no longer present."""
    present = set(keys)
    orphans = []
    for name, obj in marker_times.items():
        old = _age(run.now, obj["LastModified"].astimezone(timezone.utc)) >= run.min_age_seconds
        if CACHE_KEY.match(name) and name not in present and name not in run.keep and old:
            orphans.append(str(obj["Key"]))
    _delete_keys(s3, root, orphans)

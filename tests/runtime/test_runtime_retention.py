"""`neuron-runtime gc` (`neuron_runtime.retention`) on a volume directory and on a real S3 server (the `s3_server`
fixture: SeaweedFS with an admin and a read-only identity), through the CLI as the operator's GC Job runs it: its
exit code and one-line JSON termination message. Time is injected (`--now`), never slept.

Pinned: a dry run deletes nothing and reports; a deleting run removes exactly the expired artifacts, the manifest
first; a referenced key gets a fresh "last referenced" marker, so an artifact unreferenced for less than the
minimum age survives, and one referenced again (a revert) before it expired survives a later run too; an artifact
the GC sees for the first time without a marker gets one and is retained a full minimum age; a marker refreshed
during the run (a compile's cache hit) stops the deletion, and a deletion removes only what the run first listed;
a compile's cache hit or write refreshes the marker; nothing under the root that is not an artifact is touched; a
read-only identity cannot delete (StorageAccessDenied).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from neuron_runtime import artifact, cli, contract, objectstore, retention
from neuron_runtime.compile import CompileResult, compile_artifact
from neuron_runtime.config import MANIFEST_NAME, S3Connection
from neuron_runtime.contract import CompileFailure

DAY = 86400
WEEK = 7 * DAY
T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def key(n: int) -> str:
    return hashlib.sha256(f"artifact-{n}".encode()).hexdigest()


def artifact_files(cache_key: str) -> dict[str, bytes]:
    """A small artifact: one graph and a manifest pinning it (enough for `artifact.verify`'s file checks)."""
    graph = f"graph of {cache_key}".encode() * 100
    files = {"model-b1.pt": graph}
    manifest = {
        "format_version": 3,
        "cache_key": cache_key,
        "files": {n: hashlib.sha256(b).hexdigest() for n, b in files.items()},
    }
    return {**files, MANIFEST_NAME: json.dumps(manifest).encode()}


def run_gc(tmp_path: Path, root: str, keep: list[str], now: datetime, *extra: str) -> tuple[int, dict[str, Any]]:
    log = tmp_path / f"termination-{uuid.uuid4().hex[:6]}"
    keep_file = tmp_path / f"keep-{uuid.uuid4().hex[:6]}.json"
    keep_file.write_text(json.dumps(keep))
    argv = ["gc", "--root", root, "--min-age-seconds", str(WEEK), "--keep-file", str(keep_file)]
    argv += ["--now", now.isoformat(), "--termination-log", str(log), "--quiet", *extra]
    code = cli.main(argv)
    line = log.read_text()
    assert line.count("\n") == 1
    assert len(line.encode()) < contract.TERMINATION_MESSAGE_LIMIT
    return code, json.loads(line)


def expired_keys(message: dict[str, Any]) -> list[str]:
    return [e["cacheKey"] for e in message["expired"]]


# ------------------------------------------------------------------------------------------------ volume


def make_dir_artifact(root: Path, cache_key: str, at: datetime) -> Path:
    path = root / cache_key
    path.mkdir(parents=True)
    for name, data in artifact_files(cache_key).items():
        (path / name).write_bytes(data)
        os.utime(path / name, (at.timestamp(), at.timestamp()))
    return path


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_a_volume_dry_run_deletes_nothing_and_reports_what_expired(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    old, young, kept = key(1), key(2), key(3)
    make_dir_artifact(root, old, T0)
    make_dir_artifact(root, young, T0 + timedelta(days=5))
    make_dir_artifact(root, kept, T0)
    retention.touch_marker(root, old, T0)  # last referenced then (an earlier run, or a compile)
    retention.touch_marker(root, young, T0 + timedelta(days=5))
    before = tree(root)
    now = T0 + timedelta(days=8)
    code, msg = run_gc(tmp_path, str(root), [kept], now)
    assert code == 0
    assert msg["status"] == "Succeeded"
    assert msg["dryRun"] is True
    assert msg["root"] == str(root)
    assert (msg["kept"], msg["retained"], msg["expiredCount"], msg["firstSeen"]) == (1, 1, 1, 0)
    size = sum(len(b) for b in artifact_files(old).values())
    assert msg["expired"] == [{"cacheKey": old, "bytes": size, "lastReferenced": "2025-06-01T12:00:00Z"}]
    assert msg["deletedBytes"] == 0
    assert msg["freedOrReclaimableBytes"] == size
    # Nothing deleted; only the kept key's marker was written.
    assert tree(root) == before | {f"{retention.MARKER_DIR}/{kept}"}
    assert retention.parse_time((root / retention.MARKER_DIR / kept).read_text()) == now


def test_a_volume_delete_removes_exactly_the_expired_manifest_first_and_leaves_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlp_artifact: CompileResult
) -> None:
    root = tmp_path / "artifacts"
    old, young, kept = key(1), key(2), mlp_artifact.manifest.cache_key
    make_dir_artifact(root, old, T0)
    make_dir_artifact(root, young, T0 + timedelta(days=5))
    retention.touch_marker(root, old, T0)
    retention.touch_marker(root, young, T0 + timedelta(days=5))
    shutil.copytree(mlp_artifact.directory, root / kept)  # a real artifact, compiled long ago
    for path in (root / kept).iterdir():
        os.utime(path, (T0.timestamp(), T0.timestamp()))
    # Foreign entries: a file, a directory that is no cache key, a 63-hex name, an uppercase key, a team subdir.
    (root / "README").write_text("mine")
    (root / "team-a" / key(9)).mkdir(parents=True)
    (root / key(4)[:63]).mkdir()
    (root / key(5).upper()).mkdir()
    for foreign in root.iterdir():
        os.utime(foreign, (T0.timestamp(), T0.timestamp()))
    # Leftovers of interrupted writes: an old one goes, a recent one (a compile running) stays.
    stale, running = root / f".tmp-{old[:16]}-abc", root / f".download-{young[:16]}-def"
    for path, at in ((stale, T0), (running, T0 + timedelta(days=8) - timedelta(hours=1))):
        path.mkdir()
        (path / "model-b1.pt").write_bytes(b"x" * 10)
        os.utime(path / "model-b1.pt", (at.timestamp(), at.timestamp()))
    ops: list[tuple[str, str]] = []  # every removal, in order ("@/name": relative to the artifact's directory fd)
    real_unlink, real_rmdir, real_rmtree = os.unlink, os.rmdir, shutil.rmtree

    def where(path: Any, dir_fd: int | None) -> str:
        return f"@/{path}" if dir_fd is not None else str(Path(path).relative_to(root))

    def recording_unlink(path: Any, *, dir_fd: int | None = None) -> None:
        ops.append(("unlink", where(path, dir_fd)))
        real_unlink(path, dir_fd=dir_fd)

    def recording_rmdir(path: Any, *, dir_fd: int | None = None) -> None:
        ops.append(("rmdir", where(path, dir_fd)))
        real_rmdir(path, dir_fd=dir_fd)

    def recording_rmtree(path: Any, ignore_errors: bool = False) -> None:
        ops.append(("rmtree", str(Path(path).relative_to(root))))
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(os, "unlink", recording_unlink)
    monkeypatch.setattr(os, "rmdir", recording_rmdir)
    monkeypatch.setattr(shutil, "rmtree", recording_rmtree)
    code, msg = run_gc(tmp_path, str(root), [kept], T0 + timedelta(days=8), "--delete")
    monkeypatch.undo()
    assert code == 0
    assert msg["dryRun"] is False
    assert expired_keys(msg) == [old]
    assert msg["leftovers"] == 1
    size = sum(len(b) for b in artifact_files(old).values())
    assert msg["deletedBytes"] == msg["freedOrReclaimableBytes"] == size + 10
    # The manifest went first, on its own; then the rest of the directory (what was listed), then its marker.
    assert ops[:4] == [
        ("unlink", f"@/{MANIFEST_NAME}"),  # the manifest first, on its own
        ("unlink", "@/model-b1.pt"),
        ("rmdir", old),
        ("unlink", f"{retention.MARKER_DIR}/{old}"),
    ]
    assert ("rmtree", stale.name) in ops
    assert not (root / old).exists()
    assert not stale.exists()
    for survivor in (young, kept, "README", f"team-a/{key(9)}", key(4)[:63], key(5).upper(), running.name):
        assert (root / survivor).exists(), survivor
    assert {p.name: p.read_bytes() for p in (root / young).iterdir()} == artifact_files(young)
    assert artifact.verify(root / kept)[1] == mlp_artifact.digest  # the kept artifact still verifies


def test_a_volume_artifact_referenced_until_recently_survives_and_a_revert_keeps_it(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    a = key(1)
    make_dir_artifact(root, a, T0)  # compiled long ago
    # Referenced for 30 days: each run refreshes its marker.
    for day in range(0, 31, 10):
        code, msg = run_gc(tmp_path, str(root), [a], T0 + timedelta(days=day), "--delete")
        assert code == 0
        assert msg["kept"] == 1
    last_referenced = T0 + timedelta(days=30)
    # Unreferenced since day 30 (the model moved on): 6 days later it is still within the age.
    code, msg = run_gc(tmp_path, str(root), [], last_referenced + timedelta(days=6), "--delete")
    assert (msg["retained"], msg["expiredCount"]) == (1, 0)
    assert (root / a / MANIFEST_NAME).exists()
    # A revert on day 36 references it again: kept, marker refreshed...
    revert = last_referenced + timedelta(days=6, hours=12)
    code, msg = run_gc(tmp_path, str(root), [a], revert, "--delete")
    assert msg["kept"] == 1
    # ...so unreferenced again, it lives a full age from the revert, not from day 30.
    code, msg = run_gc(tmp_path, str(root), [], revert + timedelta(days=6), "--delete")
    assert msg["expiredCount"] == 0
    assert (root / a).exists()
    code, msg = run_gc(tmp_path, str(root), [], revert + timedelta(days=7), "--delete")
    assert expired_keys(msg) == [a]
    assert msg["expired"][0]["lastReferenced"] == retention.iso(revert)
    assert not (root / a).exists()
    assert not (root / retention.MARKER_DIR / a).exists()  # the marker went with it


def test_a_missing_root_and_an_invalid_keep_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, msg = run_gc(tmp_path, str(tmp_path / "nothing-yet"), [], T0, "--delete")
    assert code == 0
    assert msg["expiredCount"] == 0
    monkeypatch.setenv(contract.GC_KEEP_ENV, json.dumps(["not-a-key"]))
    log = tmp_path / "bad"
    assert cli.main(["gc", "--root", str(tmp_path), "--min-age-seconds", "0", "--termination-log", str(log)]) == 2
    assert json.loads(log.read_text())["reason"] == "BadRequest"


def test_the_termination_message_fits_with_many_expired_artifacts(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    for n in range(80):
        make_dir_artifact(root, key(n), T0 + timedelta(minutes=n))
        retention.touch_marker(root, key(n), T0 + timedelta(minutes=n))
    code, msg = run_gc(tmp_path, str(root), [], T0 + timedelta(days=30))
    assert code == 0
    assert msg["expiredCount"] == 80
    assert 10 <= len(msg["expired"]) <= retention.EXPIRED_LISTED
    assert expired_keys(msg) == [key(n) for n in range(len(msg["expired"]))]  # oldest first


# ------------------------------------------------------------------------------------------------ S3


class Bucket:
    def __init__(self, server: Any, bucket: str) -> None:
        self.server, self.bucket = server, bucket
        self.connection = S3Connection(endpoint_url=server.endpoint_url, region="us-east-1", force_path_style=True)

    def keys(self, identity: str) -> dict[str, str]:
        creds = self.server.admin if identity == "admin" else self.server.reader
        return {"AWS_ACCESS_KEY_ID": creds.access_key, "AWS_SECRET_ACCESS_KEY": creds.secret_key}

    def client(self, identity: str = "admin") -> Any:
        import boto3

        keys = self.keys(identity)
        return boto3.session.Session(
            aws_access_key_id=keys["AWS_ACCESS_KEY_ID"], aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"]
        ).client("s3", endpoint_url=self.connection.endpoint_url, region_name="us-east-1")

    def objects(self, prefix: str) -> set[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return {o["Key"] for page in pages for o in page.get("Contents") or []}


@pytest.fixture(scope="module")
def bucket(s3_server: Any) -> Bucket:
    name = f"gc-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(name)
    return Bucket(s3_server, name)


@pytest.fixture
def s3_env(bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The GC Job's environment (S3 connection, credentials), `identity` switchable."""

    def use(identity: str) -> None:
        for k, v in {**bucket.connection.to_env(), **bucket.keys(identity)}.items():
            monkeypatch.setenv(k, v)

    for k in [k for k in os.environ if k.startswith(("AWS_", "NEURON_RUNTIME_S3__"))]:
        monkeypatch.delenv(k)
    use("admin")
    return use


def put_artifact(bucket: Bucket, prefix: str, cache_key: str) -> None:
    s3 = bucket.client()
    for name, data in sorted(artifact_files(cache_key).items(), key=lambda f: f[0] == MANIFEST_NAME):
        s3.put_object(Bucket=bucket.bucket, Key=f"{prefix}/{cache_key}/{name}", Body=data)


@pytest.mark.s3
def test_s3_dry_run_then_delete_removes_exactly_the_expired_manifest_first(
    tmp_path: Path, bucket: Bucket, s3_env: Any, monkeypatch: pytest.MonkeyPatch, mlp_artifact: CompileResult
) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    root = f"s3://{bucket.bucket}/{prefix}"
    old, kept = key(1), mlp_artifact.manifest.cache_key
    put_artifact(bucket, prefix, old)
    client = objectstore.client(bucket.connection)
    start = datetime.now(UTC)
    retention.touch_marker(objectstore.S3Location.parse(root), old, start, s3=client)  # last referenced now
    objectstore.publish_artifact(client, mlp_artifact.directory, objectstore.S3Location.parse(root), lambda _m: None)
    s3 = bucket.client()
    foreign = [
        f"{prefix}/README",
        f"{prefix}/team-a/{old}/{MANIFEST_NAME}",
        f"{prefix}/{old[:63]}/x",
        f"{prefix}x/{old}/y",
    ]
    for k in foreign:
        s3.put_object(Bucket=bucket.bucket, Key=k, Body=b"not ours")
    before = bucket.objects(prefix)

    code, msg = run_gc(tmp_path, root, [kept], start + timedelta(days=8))
    assert code == 0
    assert msg["dryRun"] is True
    assert msg["root"] == root
    assert expired_keys(msg) == [old]
    assert msg["kept"] == 1
    assert msg["deletedBytes"] == 0
    size = sum(len(b) for b in artifact_files(old).values())
    assert msg["freedOrReclaimableBytes"] == size
    assert bucket.objects(prefix) == before | {f"{prefix}/{retention.MARKER_DIR}/{kept}"}

    # The deleting run, its S3 requests recorded in the order they went out.
    calls: list[tuple[str, list[str]]] = []
    client.meta.events.register(
        "before-call.s3.DeleteObject",
        lambda params, **_: calls.append(("DeleteObject", [_key_of(params["url_path"], bucket.bucket)])),
    )
    client.meta.events.register(
        "before-call.s3.DeleteObjects",
        lambda params, **_: calls.append(("DeleteObjects", [o["Key"] for o in _delete_body(params["body"])])),
    )
    monkeypatch.setattr(objectstore, "client_from_env", lambda environ=None: client)
    code, msg = run_gc(tmp_path, root, [kept], start + timedelta(days=8), "--delete")
    assert code == 0
    assert expired_keys(msg) == [old]
    assert msg["deletedBytes"] == msg["freedOrReclaimableBytes"] == size
    assert calls[0] == ("DeleteObject", [f"{prefix}/{old}/{MANIFEST_NAME}"])
    assert calls[1] == ("DeleteObjects", [f"{prefix}/{old}/model-b1.pt"])
    assert calls[2:] == [("DeleteObject", [f"{prefix}/{retention.MARKER_DIR}/{old}"])]
    after = bucket.objects(prefix)
    assert not {k for k in after if k.startswith(f"{prefix}/{old}/")}
    assert set(foreign) <= after  # nothing that is not an artifact was touched
    # The kept artifact still passes the compile cache check.
    found = objectstore.find_artifact(client, objectstore.S3Location.parse(root), kept, lambda _m: None)
    assert found is not None
    assert found[1] == mlp_artifact.digest


def _key_of(url_path: str, bucket: str) -> str:
    """The object key of a request's path (path-style: the bucket may come first, depending on botocore)."""
    return url_path.lstrip("/").removeprefix(f"{bucket}/")


def _delete_body(body: bytes) -> list[dict[str, str]]:
    import xml.etree.ElementTree as ET

    tree = ET.fromstring(body)
    return [{"Key": el.text or ""} for el in tree.iter() if el.tag.endswith("Key")]


@pytest.mark.s3
def test_s3_markers_keep_a_recently_referenced_artifact_and_a_revert(
    tmp_path: Path, bucket: Bucket, s3_env: Any
) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    root = f"s3://{bucket.bucket}/{prefix}"
    a = key(7)
    put_artifact(bucket, prefix, a)
    start = datetime.now(UTC)
    # Referenced for 20 days (a run every 10 days): the marker follows.
    for day in (0, 10, 20):
        code, msg = run_gc(tmp_path, root, [a], start + timedelta(days=day), "--delete")
        assert code == 0
        assert msg["kept"] == 1
    marker = f"{prefix}/{retention.MARKER_DIR}/{a}"
    body = bucket.client().get_object(Bucket=bucket.bucket, Key=marker)["Body"].read().decode()
    assert retention.parse_time(body) == (start + timedelta(days=20)).replace(microsecond=0)
    # 26 days after it was written (its own time), but 6 after its last reference: it survives.
    code, msg = run_gc(tmp_path, root, [], start + timedelta(days=26), "--delete")
    assert msg["expiredCount"] == 0
    assert msg["retained"] == 1
    # A revert references it again on day 26.5; unreferenced again, it survives until day 33.5.
    revert = start + timedelta(days=26, hours=12)
    assert run_gc(tmp_path, root, [a], revert, "--delete")[1]["kept"] == 1
    assert run_gc(tmp_path, root, [], revert + timedelta(days=6), "--delete")[1]["expiredCount"] == 0
    assert f"{prefix}/{a}/{MANIFEST_NAME}" in bucket.objects(prefix)
    code, msg = run_gc(tmp_path, root, [], revert + timedelta(days=7), "--delete")
    assert expired_keys(msg) == [a]
    assert bucket.objects(prefix) == set()  # artifact and marker gone


@pytest.mark.s3
def test_s3_a_read_only_identity_cannot_delete(tmp_path: Path, bucket: Bucket, s3_env: Any) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    root = f"s3://{bucket.bucket}/{prefix}"
    a = key(8)
    put_artifact(bucket, prefix, a)
    retention.touch_marker(objectstore.S3Location.parse(root), a, T0, s3=bucket.client())  # long unreferenced
    before = bucket.objects(prefix)
    s3_env("reader")
    code, msg = run_gc(tmp_path, root, [], datetime.now(UTC) + timedelta(days=30), "--delete")
    assert code == CompileFailure.STORAGE_ACCESS_DENIED.exit_code
    assert msg["status"] == "Failed"
    assert msg["reason"] == "StorageAccessDenied"
    assert f"{prefix}/{a}/{MANIFEST_NAME}" in msg["message"]
    assert "AccessDenied" in msg["message"]
    assert bucket.objects(prefix) == before


@pytest.mark.s3
def test_s3_a_missing_bucket_is_storage_not_found(tmp_path: Path, s3_env: Any) -> None:
    code, msg = run_gc(tmp_path, f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/p", [], T0)
    assert (code, msg["reason"]) == (CompileFailure.STORAGE_ACCESS_DENIED.exit_code, "StorageNotFound")


# ------------------------------------------------------------------------------------------------ races, first run


def marker_time(root: Path, cache_key: str) -> datetime | None:
    return retention._read_marker_file(root / retention.MARKER_DIR / cache_key)


def test_a_first_run_marks_unmarked_artifacts_and_retains_them_a_full_minimum_age(tmp_path: Path) -> None:
    """Enabling the GC with delete deletes nothing on its first run: an artifact unreferenced only yesterday (but
    compiled long ago) gets a marker with the run's time and expires the minimum age after that."""
    root = tmp_path / "artifacts"
    a, b = key(1), key(2)
    make_dir_artifact(root, a, T0)  # compiled months before the GC was enabled
    make_dir_artifact(root, b, T0)
    first = T0 + timedelta(days=90)
    code, msg = run_gc(tmp_path, str(root), [], first)  # a dry run writes the markers too
    assert code == 0
    assert (msg["retained"], msg["firstSeen"], msg["expiredCount"]) == (2, 2, 0)
    assert marker_time(root, a) == marker_time(root, b) == first
    (root / retention.MARKER_DIR / b).unlink()  # b: first seen by a deleting run
    code, msg = run_gc(tmp_path, str(root), [], first + timedelta(days=1), "--delete")
    assert (msg["retained"], msg["firstSeen"], msg["expiredCount"], msg["deletedBytes"]) == (2, 1, 0, 0)
    assert (root / a / MANIFEST_NAME).exists()
    assert (root / b / MANIFEST_NAME).exists()
    code, msg = run_gc(tmp_path, str(root), [], first + timedelta(days=7), "--delete")
    assert expired_keys(msg) == [a]  # a full minimum age after the GC first saw it unreferenced
    assert (msg["retained"], msg["firstSeen"]) == (1, 0)
    assert not (root / a).exists()
    assert (root / b).exists()
    code, msg = run_gc(tmp_path, str(root), [], first + timedelta(days=8), "--delete")
    assert expired_keys(msg) == [b]
    assert not (root / b).exists()


def test_a_volume_marker_refreshed_during_the_run_stops_the_deletion(tmp_path: Path) -> None:
    """The keep list is as old as the GC Job: a compile that got a cache hit meanwhile refreshed the marker, and the
    GC reads it again right before deleting."""
    root = tmp_path / "artifacts"
    a, b = key(1), key(2)
    for k in (a, b):
        make_dir_artifact(root, k, T0)
        retention.touch_marker(root, k, T0)
    now = T0 + timedelta(days=30)

    def compile_meanwhile(message: str) -> None:
        if message.startswith(f"deleting {root / a}"):
            retention.touch_marker(root, a, now + timedelta(minutes=5))  # the compile's clock: after the run began
        if message.startswith(f"deleting {root / b}"):
            retention.touch_marker(root, b, T0 + timedelta(days=1))  # newer than the first read, though old

    result = retention.collect_volume(root, frozenset(), WEEK, now, True, compile_meanwhile)
    assert result.skipped == 2
    assert result.expired == []
    assert result.deleted_bytes == 0
    for k in (a, b):
        assert {p.name: p.read_bytes() for p in (root / k).iterdir()} == artifact_files(k)
    assert marker_time(root, a) == now + timedelta(minutes=5)
    # Unreferenced for the minimum age after that, it goes.
    later = retention.collect_volume(root, frozenset(), WEEK, now + timedelta(days=8), True, lambda _m: None)
    assert sorted(e.cache_key for e in later.expired) == sorted([a, b])
    assert not (root / a).exists()
    assert not (root / b).exists()


def test_a_volume_deletion_removes_only_what_it_listed(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    a, b = key(1), key(2)
    for k in (a, b):
        make_dir_artifact(root, k, T0)
        retention.touch_marker(root, k, T0)
    now = T0 + timedelta(days=30)
    replacement = artifact_files(b) | {"model-b1.pt": b"recompiled"}

    def meanwhile(message: str) -> None:
        if message.startswith(f"deleting {root / a}"):
            (root / a / "late.bin").write_bytes(b"written after the listing")
        if message.startswith(f"deleting {root / b}"):
            # A compile replaced the directory (artifact.write_atomically): a new inode, the same names.
            os.rename(root / b, root / f".old-{b[:16]}-x")
            (root / b).mkdir()
            for name, data in replacement.items():
                (root / b / name).write_bytes(data)

    result = retention.collect_volume(root, frozenset(), WEEK, now, True, meanwhile)
    assert [e.cache_key for e in result.expired] == [a]
    assert result.skipped == 1
    assert {p.name for p in (root / a).iterdir()} == {"late.bin"}  # the listed files went, the late one stayed
    assert marker_time(root, a) == T0  # a directory remains: so does its marker
    assert {p.name: p.read_bytes() for p in (root / b).iterdir()} == replacement


def test_a_compile_cache_hit_and_write_refresh_the_marker_on_a_volume(tmp_path: Path) -> None:
    from runtime_cases import mlp_request

    messages: list[str] = []
    written = compile_artifact(mlp_request(), tmp_path, messages.append)
    k = written.manifest.cache_key
    marked = marker_time(tmp_path, k)
    assert marked is not None
    assert abs((datetime.now(UTC) - marked).total_seconds()) < 120
    retention.touch_marker(tmp_path, k, T0)  # as if last referenced long ago
    hit = compile_artifact(mlp_request(), tmp_path, messages.append)
    assert hit.cached
    refreshed = marker_time(tmp_path, k)
    assert refreshed is not None
    assert refreshed > T0 + timedelta(days=30)
    # The GC that started before this compile (keep list without it) sees the refreshed marker: nothing expires.
    result = retention.collect_volume(tmp_path, frozenset(), WEEK, refreshed, True, lambda _m: None)
    assert result.expired == []
    assert (tmp_path / k / MANIFEST_NAME).exists()
    assert not any("could not refresh" in m for m in messages)


@pytest.mark.s3
def test_s3_first_run_a_refreshed_marker_and_objects_written_since(tmp_path: Path, bucket: Bucket, s3_env: Any) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    root = f"s3://{bucket.bucket}/{prefix}"
    loc = objectstore.S3Location.parse(root)
    a = key(11)
    put_artifact(bucket, prefix, a)
    start = datetime.now(UTC)
    # First sight, long after it was written: a marker with the run's time, retained.
    code, msg = run_gc(tmp_path, root, [], start + timedelta(days=30), "--delete")
    assert (code, msg["firstSeen"], msg["retained"], msg["expiredCount"]) == (0, 1, 1, 0)
    marker = f"{prefix}/{retention.MARKER_DIR}/{a}"
    assert bucket.objects(prefix) == {f"{prefix}/{a}/{n}" for n in artifact_files(a)} | {marker}
    s3 = objectstore.client(bucket.connection)
    now = start + timedelta(days=40)

    def compile_meanwhile(message: str) -> None:
        if message.startswith(f"deleting {loc.child(a).uri}"):
            retention.touch_marker(loc, a, now + timedelta(minutes=1), s3=s3)

    result = retention.collect_s3(s3, loc, frozenset(), WEEK, now, True, compile_meanwhile)
    assert (result.skipped, result.expired, result.deleted_bytes) == (1, [], 0)
    assert f"{prefix}/{a}/{MANIFEST_NAME}" in bucket.objects(prefix)
    late = f"{prefix}/{a}/late.bin"

    def publish_meanwhile(message: str) -> None:
        if message.startswith(f"deleting {loc.child(a).uri}"):
            bucket.client().put_object(Bucket=bucket.bucket, Key=late, Body=b"written after the listing")

    result = retention.collect_s3(s3, loc, frozenset(), WEEK, now + timedelta(days=8), True, publish_meanwhile)
    assert [e.cache_key for e in result.expired] == [a]
    assert bucket.objects(prefix) == {late, marker}  # the listed objects went; the late one and the marker stay


@pytest.mark.s3
def test_s3_a_compile_cache_hit_and_publish_refresh_the_marker(
    tmp_path: Path, bucket: Bucket, s3_env: Any, mlp_artifact: CompileResult
) -> None:
    from runtime_cases import mlp_request

    prefix = f"t-{uuid.uuid4().hex[:8]}"
    root = f"s3://{bucket.bucket}/{prefix}"
    loc = objectstore.S3Location.parse(root)
    s3 = objectstore.client(bucket.connection)

    def marked(k: str) -> datetime | None:
        return retention._read_marker_object(s3, loc.child(retention.MARKER_DIR).child(k))

    k = mlp_artifact.manifest.cache_key
    objectstore.publish_artifact(s3, mlp_artifact.directory, loc, lambda _m: None)
    retention.touch_marker(loc, k, T0, s3=s3)  # last referenced long ago
    messages: list[str] = []
    hit = compile_artifact(mlp_request(dynamic_batch=True), root, messages.append)
    assert hit.cached
    assert hit.location == loc.child(k).uri
    refreshed = marked(k)
    assert refreshed is not None
    assert abs((datetime.now(UTC) - refreshed).total_seconds()) < 120
    result = retention.collect_s3(s3, loc, frozenset(), WEEK, refreshed, True, lambda _m: None)
    assert result.expired == []
    # A compile that publishes marks its key too.
    published = compile_artifact(mlp_request(), root, messages.append)
    assert not published.cached
    assert marked(published.manifest.cache_key) is not None
    assert not any("could not refresh" in m for m in messages)
    # Best effort: an identity that cannot write the marker still gets its cache hit.
    s3_env("reader")
    messages.clear()
    again = compile_artifact(mlp_request(dynamic_batch=True), root, messages.append)
    assert again.cached
    assert any(m.startswith(f"could not refresh the GC marker of {k}") for m in messages)

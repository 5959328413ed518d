"""S3 sources and artifact storage (`neuron_runtime.objectstore`) against a real S3 server: SeaweedFS `weed`, built
from Go modules by `e2e/localcluster/build-tools.sh` and started on loopback by the `s3_server` fixture, with
authentication enforced (an admin and a read-only identity). No mock library stands in for S3.

What is pinned here: the publish order and immutability, the cache check that downloads no graph, the serving
download that verifies every sha256 against the digest the operator pinned, and the errors a user sees
(NoSuchKey, AccessDenied, an unreachable endpoint, a corrupted object), through the CLI's exit codes and
termination messages as the operator reads them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from runtime_cases import mlp_request, running_server

from neuron_runtime import artifact, objectstore
from neuron_runtime.compile import CompileResult
from neuron_runtime.config import MANIFEST_NAME, S3Connection, ServeSettings
from neuron_runtime.server import fetch_artifact
from neuron_runtime.sources import SourceError, fetch

pytestmark = pytest.mark.s3


@dataclass(frozen=True)
class Store:
    """One bucket on the test server, and the environments of its identities."""

    endpoint: str
    bucket: str
    admin: dict[str, str]  # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    reader: dict[str, str]

    def connection(self) -> S3Connection:
        return S3Connection(endpoint_url=self.endpoint, region="us-east-1", force_path_style=True)

    def env(self, keys: dict[str, str]) -> dict[str, str]:
        """Environment of a compile Job or serving pod using `keys` (as the operator's builders set it)."""
        return {**self.connection().to_env(), **keys}

    def client(self, keys: dict[str, str]) -> Any:
        with _environ(self.env(keys)):
            return objectstore.client_from_env()

    def root(self, prefix: str | None = None) -> objectstore.S3Location:
        return objectstore.S3Location(self.bucket, prefix or f"t-{uuid.uuid4().hex[:8]}")


class _environ:
    """Temporarily set AWS/NEURON variables (boto3 reads credentials when a client is created)."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        for key in [k for k in os.environ if k.startswith(("AWS_", "NEURON_RUNTIME_S3__"))]:
            self.saved[key] = os.environ.pop(key)
        for key, value in self.values.items():
            self.saved.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def __exit__(self, *_: object) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def store(s3_server: Any) -> Store:
    bucket = f"objectstore-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(bucket)
    return Store(
        endpoint=s3_server.endpoint_url,
        bucket=bucket,
        admin={"AWS_ACCESS_KEY_ID": s3_server.admin.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.admin.secret_key},
        reader={
            "AWS_ACCESS_KEY_ID": s3_server.reader.access_key,
            "AWS_SECRET_ACCESS_KEY": s3_server.reader.secret_key,
        },
    )


@pytest.fixture(scope="module")
def published(store: Store, mlp_artifact: CompileResult) -> objectstore.S3Location:
    root = store.root()
    manifest, digest, prefix = objectstore.publish_artifact(
        store.client(store.admin), mlp_artifact.directory, root, lambda _m: None
    )
    assert digest == mlp_artifact.digest
    assert prefix == root.child(manifest.cache_key)
    return root


def _recorded_gets(s3: Any) -> list[str]:
    """Keys of every GetObject `s3` sends from now on (botocore's event hooks: what went over the wire)."""
    keys: list[str] = []
    s3.meta.events.register("before-call.s3.GetObject", lambda params, **_: keys.append(params["url_path"]))
    return keys


def test_the_cache_check_finds_a_published_artifact_downloading_only_the_manifest(
    store: Store, published: objectstore.S3Location, mlp_artifact: CompileResult
) -> None:
    s3 = store.client(store.reader)
    gets = _recorded_gets(s3)
    found = objectstore.find_artifact(s3, published, mlp_artifact.manifest.cache_key, lambda _m: None)
    assert found is not None
    assert found[1] == mlp_artifact.digest
    assert [g.rsplit("/", 1)[-1] for g in gets] == [MANIFEST_NAME]


def test_objects_are_uploaded_files_first_with_their_sha256_and_the_manifest_last(
    store: Store, mlp_artifact: CompileResult
) -> None:
    s3 = store.client(store.admin)
    order: list[str] = []
    s3.meta.events.register(
        "before-call.s3.PutObject", lambda params, **_: order.append(params["url_path"].rsplit("/", 1)[-1])
    )
    s3.meta.events.register(
        "before-call.s3.CreateMultipartUpload", lambda params, **_: order.append(params["url_path"].rsplit("/", 1)[-1])
    )
    root = store.root()
    objectstore.publish_artifact(s3, mlp_artifact.directory, root, lambda _m: None)
    assert order[-1] == MANIFEST_NAME
    assert sorted(order[:-1]) == sorted(mlp_artifact.manifest.files)
    prefix = root.child(mlp_artifact.manifest.cache_key)
    for name, sha in mlp_artifact.manifest.files.items():
        head = s3.head_object(Bucket=store.bucket, Key=prefix.child(name).key)
        assert head["Metadata"] == {"sha256": sha}


def test_a_published_artifact_is_never_replaced(store: Store, mlp_artifact: CompileResult, tmp_path: Path) -> None:
    s3 = store.client(store.admin)
    root = store.root()
    objectstore.publish_artifact(s3, mlp_artifact.directory, root, lambda _m: None)
    puts: list[str] = []
    s3.meta.events.register("before-call.s3.PutObject", lambda params, **_: puts.append(params["url_path"]))
    messages: list[str] = []
    _, digest, _ = objectstore.publish_artifact(s3, mlp_artifact.directory, root, messages.append)
    assert puts == []
    assert digest == mlp_artifact.digest
    assert any("published meanwhile; keeping it" in m for m in messages)


@pytest.mark.parametrize(
    "damage", ["missing-graph", "wrong-metadata", "same-size-other-digest", "manifest-garbage", "other-key"]
)
def test_a_damaged_publication_is_a_miss_so_the_job_recompiles(
    store: Store, mlp_artifact: CompileResult, damage: str
) -> None:
    s3 = store.client(store.admin)
    root = store.root()
    key = mlp_artifact.manifest.cache_key
    objectstore.publish_artifact(s3, mlp_artifact.directory, root, lambda _m: None)
    prefix = root.child(key)
    graph = prefix.child(mlp_artifact.manifest.graphs[0].file)
    if damage == "missing-graph":
        s3.delete_object(Bucket=store.bucket, Key=graph.key)
    elif damage == "wrong-metadata":
        s3.put_object(Bucket=store.bucket, Key=graph.key, Body=b"tampered", Metadata={"sha256": "0" * 64})
    elif damage == "same-size-other-digest":  # only the sha256 metadata tells this one apart, not its size
        size = s3.head_object(Bucket=store.bucket, Key=graph.key)["ContentLength"]
        s3.put_object(Bucket=store.bucket, Key=graph.key, Body=b"\0" * size, Metadata={"sha256": "0" * 64})
    elif damage == "manifest-garbage":
        s3.put_object(Bucket=store.bucket, Key=prefix.child(MANIFEST_NAME).key, Body=b"{not json")
    else:  # a manifest of another cache key under this key's prefix
        other = json.loads((mlp_artifact.directory / MANIFEST_NAME).read_bytes())
        other["cache_key"] = "f" * 64
        s3.put_object(Bucket=store.bucket, Key=prefix.child(MANIFEST_NAME).key, Body=json.dumps(other).encode())
    messages: list[str] = []
    assert objectstore.find_artifact(s3, root, key, messages.append) is None
    assert messages
    assert "recompiling" in messages[-1]
    # Publishing again repairs it.
    objectstore.publish_artifact(s3, mlp_artifact.directory, root, lambda _m: None)
    assert objectstore.find_artifact(s3, root, key, lambda _m: None) is not None


def test_a_serving_download_verifies_every_file_and_reuses_a_verified_copy(
    store: Store, published: objectstore.S3Location, mlp_artifact: CompileResult, tmp_path: Path
) -> None:
    s3 = store.client(store.reader)
    prefix = published.child(mlp_artifact.manifest.cache_key)
    dest = tmp_path / "artifacts" / mlp_artifact.manifest.cache_key
    messages: list[str] = []
    _, digest = objectstore.fetch_artifact(s3, prefix, dest, mlp_artifact.digest, messages.append)
    assert digest == mlp_artifact.digest
    assert artifact.verify(dest, mlp_artifact.digest)[1] == digest
    assert any(m.startswith("downloaded and verified") and "MB/s" in m for m in messages)
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no temporary directory left behind
    gets = _recorded_gets(s3)
    objectstore.fetch_artifact(s3, prefix, dest, mlp_artifact.digest, messages.append)  # a restarted container
    assert gets == []
    assert "verifies; not downloading" in messages[-1]


def test_a_corrupted_object_is_refused_naming_it_and_nothing_is_left_to_load(
    store: Store, mlp_artifact: CompileResult, tmp_path: Path
) -> None:
    s3 = store.client(store.admin)
    root = store.root()
    objectstore.publish_artifact(s3, mlp_artifact.directory, root, lambda _m: None)
    prefix = root.child(mlp_artifact.manifest.cache_key)
    graph = prefix.child(mlp_artifact.manifest.graphs[0].file)
    original = s3.get_object(Bucket=store.bucket, Key=graph.key)
    head_meta = original["Metadata"]
    s3.put_object(Bucket=store.bucket, Key=graph.key, Body=b"\0" * 64, Metadata=head_meta)  # bit rot, same metadata
    dest = tmp_path / mlp_artifact.manifest.cache_key
    with pytest.raises(artifact.ArtifactError, match=rf"sha256 mismatch for {graph.uri}"):
        objectstore.fetch_artifact(s3, prefix, dest, mlp_artifact.digest, lambda _m: None)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_replaced_manifest_does_not_match_the_pinned_digest(
    store: Store, published: objectstore.S3Location, mlp_artifact: CompileResult, tmp_path: Path
) -> None:
    s3 = store.client(store.reader)
    prefix = published.child(mlp_artifact.manifest.cache_key)
    with pytest.raises(artifact.ArtifactError, match=r"artifact digest mismatch.*replaced after the NeuronModel"):
        objectstore.fetch_artifact(s3, prefix, tmp_path / "a", "0" * 64, lambda _m: None)


def test_missing_objects_wrong_keys_and_a_dead_endpoint_are_told_apart(
    store: Store, published: objectstore.S3Location, tmp_path: Path
) -> None:
    reader = store.client(store.reader)
    with pytest.raises(objectstore.ObjectNotFound, match=r"NoSuchKey.*the object does not exist"):
        objectstore.fetch_artifact(reader, published.child("0" * 64), tmp_path / "x", None, lambda _m: None)
    wrong = {**store.admin, "AWS_SECRET_ACCESS_KEY": "not-the-secret-" + uuid.uuid4().hex}
    with pytest.raises(objectstore.AccessDenied) as denied:
        objectstore.find_artifact(store.client(wrong), published, "0" * 64, lambda _m: None)
    assert wrong["AWS_SECRET_ACCESS_KEY"] not in str(denied.value)
    assert "credentials are wrong" in str(denied.value)
    with pytest.raises(objectstore.AccessDenied, match="write"):  # the read-only identity cannot publish
        objectstore.upload(reader, Path(__file__), published.child("intruder"), "0" * 64)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with _environ(store.admin):
        s3 = objectstore.client(S3Connection(endpoint_url=dead, region="us-east-1", force_path_style=True))
    with pytest.raises(objectstore.StorageUnavailable, match="did not answer"):
        objectstore.read_bytes(s3, published.child(MANIFEST_NAME))


def test_an_s3_torchscript_source_is_fetched_and_its_sha256_enforced(store: Store, tmp_path: Path) -> None:
    model = torch.jit.script(torch.nn.Linear(4, 2))
    local = tmp_path / "linear.pt"
    torch.jit.save(model, str(local))
    sha = hashlib.sha256(local.read_bytes()).hexdigest()
    key = f"sources/{uuid.uuid4().hex[:8]}/linear.pt"
    store.client(store.admin).upload_file(str(local), store.bucket, key)
    uri = f"s3://{store.bucket}/{key}"
    with _environ(store.env(store.reader)):
        (tmp_path / "dl-ok").mkdir()
        got = fetch(uri, tmp_path / "dl-ok", sha, "TorchScript model")
        assert got.read_bytes() == local.read_bytes()
        (tmp_path / "dl-bad").mkdir()
        with pytest.raises(SourceError, match=f"sha256 mismatch for {uri}"):
            fetch(uri, tmp_path / "dl-bad", "0" * 64, "TorchScript model")
        with pytest.raises(SourceError, match="NoSuchKey"):
            fetch(f"s3://{store.bucket}/nope.pt", tmp_path, None, "TorchScript model")
        with pytest.raises(SourceError, match="bucket name"):
            fetch("s3://Bad_Bucket/x.pt", tmp_path, None, "TorchScript model")


# ------------------------------------------------------------------------ the CLI, as the Job and the pod run it


def _cli(args: list[str], env: dict[str, str], tmp_path: Path) -> tuple[int, dict[str, Any]]:
    log = tmp_path / f"termination-{uuid.uuid4().hex[:6]}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "NEURON_RUNTIME_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "neuron_runtime.cli", *args],
        env={**clean, **env, "NEURON_RUNTIME_TERMINATION_LOG": str(log), "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert log.exists(), proc.stderr[-3000:]
    return proc.returncode, json.loads(log.read_text())


def test_compile_publishes_once_then_hits_the_cache_and_says_why_when_denied(store: Store, tmp_path: Path) -> None:
    root = store.root().uri
    request = mlp_request(dynamic_batch=True, batch_sizes=[1, 4]).model_dump_json()
    args = ["compile", "--request-json", request, "--output-root", root, "--quiet"]
    code, first = _cli(args, store.env(store.admin), tmp_path)
    assert (code, first["status"], first["cached"]) == (0, "Succeeded", False), first
    assert first["uri"] == f"{root}/{first['cacheKey']}"
    code, second = _cli(args, store.env(store.reader), tmp_path)  # a read-only identity suffices for a hit
    assert (code, second["cached"], second["sha256"]) == (0, True, first["sha256"])
    # Another key with the read-only identity: the upload is refused, permanently (exit 9).
    other = mlp_request(batch_size=2, inputs=[{"name": "x", "shape": [2, 8], "dtype": "float32"}]).model_dump_json()
    code, denied = _cli(
        ["compile", "--request-json", other, "--output-root", root, "--quiet"], store.env(store.reader), tmp_path
    )
    assert (code, denied["reason"]) == (9, "StorageAccessDenied"), denied
    assert store.reader["AWS_SECRET_ACCESS_KEY"] not in json.dumps(denied)
    code, missing = _cli(
        ["compile", "--request-json", other, "--output-root", f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/x"],
        store.env(store.admin),
        tmp_path,
    )
    assert (code, missing["reason"]) == (9, "StorageNotFound"), missing


@pytest.fixture
def serve_env(
    store: Store, published: objectstore.S3Location, mlp_artifact: CompileResult, tmp_path: Path
) -> dict[str, str]:
    key = mlp_artifact.manifest.cache_key
    return {
        **store.env(store.reader),
        "NEURON_RUNTIME_MODEL_NAME": "tiny",
        "NEURON_RUNTIME_ARTIFACT_DIR": str(tmp_path / "download" / key),
        "NEURON_RUNTIME_ARTIFACT_URI": published.child(key).uri,
        "NEURON_RUNTIME_EXPECTED_SHA256": mlp_artifact.digest,
        "NEURON_RUNTIME_PORT": "0",
        "NEURON_RUNTIME_GRPC_PORT": "0",
    }


def test_serve_refuses_with_the_storage_reason_before_loading(serve_env: dict[str, str], tmp_path: Path) -> None:
    wrong = {**serve_env, "AWS_SECRET_ACCESS_KEY": "wrong-" + uuid.uuid4().hex}
    code, message = _cli(["serve"], wrong, tmp_path)
    assert (code, message["reason"]) == (9, "StorageAccessDenied"), message
    assert wrong["AWS_SECRET_ACCESS_KEY"] not in json.dumps(message)
    gone = {**serve_env, "NEURON_RUNTIME_ARTIFACT_URI": serve_env["NEURON_RUNTIME_ARTIFACT_URI"][:-8] + "0" * 8}
    code, message = _cli(["serve"], gone, tmp_path)
    assert (code, message["reason"]) == (3, "StorageNotFound"), message
    pinned = {**serve_env, "NEURON_RUNTIME_EXPECTED_SHA256": "0" * 64}
    code, message = _cli(["serve"], pinned, tmp_path)
    assert (code, message["reason"]) == (3, "ArtifactInvalid"), message


def test_a_downloaded_artifact_serves(serve_env: dict[str, str], mlp_artifact: CompileResult) -> None:
    """The pod's path: download and verify (serve_main's first step), then load and answer."""
    with _environ(serve_env):
        settings = ServeSettings()  # type: ignore[call-arg]  # everything comes from the environment
        fetch_artifact(settings)
    assert artifact.verify(settings.artifact_dir, mlp_artifact.digest)[1] == mlp_artifact.digest
    with running_server(
        CompileResult(mlp_artifact.manifest, mlp_artifact.digest, str(settings.artifact_dir), False)
    ) as srv:
        body = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}]}
        with urllib.request.urlopen(
            urllib.request.Request(f"{srv.url}/v2/models/tiny/infer", json.dumps(body).encode(), method="POST"),
            timeout=30,
        ) as response:
            answer = json.loads(response.read())
    assert answer["outputs"][0]["shape"][0] == 1


def test_of_two_concurrent_publications_the_first_manifest_wins_and_the_second_adopts_it(
    store: Store, mlp_artifact: CompileResult, tmp_path: Path
) -> None:
    """Both compiles missed the cache; the other one's manifest lands while this one uploads its files. The
    conditional create (If-None-Match) refuses to replace it, and this publication returns the winner's digest."""
    root = store.root()
    rival = tmp_path / mlp_artifact.manifest.cache_key
    shutil.copytree(mlp_artifact.directory, rival)
    data = json.loads((rival / MANIFEST_NAME).read_bytes())
    data["created_at"] = "2000-01-01T00:00:00+00:00"  # the same files, another compile's manifest
    (rival / MANIFEST_NAME).write_bytes(artifact.Manifest.model_validate(data).to_bytes())
    rival_digest = artifact.verify(rival)[1]
    assert rival_digest != mlp_artifact.digest
    s3 = store.client(store.admin)
    other = store.client(store.admin)
    raced: list[str] = []

    def rival_publishes_first(params: dict[str, Any], **_: Any) -> None:
        if params["url_path"].endswith(MANIFEST_NAME) and not raced:
            raced.append("rival")
            objectstore.publish_artifact(other, rival, root, lambda _m: None)

    s3.meta.events.register("before-call.s3.PutObject", rival_publishes_first)
    messages: list[str] = []
    _, digest, prefix = objectstore.publish_artifact(s3, mlp_artifact.directory, root, messages.append)
    assert raced == ["rival"]
    assert digest == rival_digest
    assert "published by a concurrent compile meanwhile; keeping it" in messages[-1]
    stored = s3.get_object(Bucket=store.bucket, Key=prefix.child(MANIFEST_NAME).key)["Body"].read()
    assert artifact.sha256_bytes(stored) == rival_digest


def test_a_missing_bucket_fails_the_cache_check_instead_of_compiling_for_nothing(store: Store) -> None:
    s3 = store.client(store.admin)
    missing = objectstore.S3Location(f"no-such-bucket-{uuid.uuid4().hex[:6]}", "artifacts")
    with pytest.raises(objectstore.ObjectNotFound, match="NoSuchBucket"):
        objectstore.find_artifact(s3, missing, "0" * 64, lambda _m: None)

"""The local cluster's S3 server is a real S3 (SeaweedFS ``weed``) that enforces authentication: objects go round
trip through boto3, wrong keys and anonymous requests are refused, the read-only identity cannot write, data
survives a restart, and pods in the kind cluster reach the same endpoint as the tests."""

from __future__ import annotations

import json
import os
import stat
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from localcluster.kind import EXEC_LABEL, SIMULATED_NEURON_LABEL, KindCluster
from localcluster.s3 import IDENTITIES_FILE, S3Credentials, S3Endpoint, S3Server, S3ServerError
from localcluster.wait import until

pytestmark = pytest.mark.s3


def bucket_name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def anonymous_get(url: str) -> tuple[int, str]:
    """An unsigned GET: (HTTP status, body)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_objects_go_round_trip(s3_server: S3Server) -> None:
    bucket = bucket_name()
    s3_server.create_bucket(bucket)
    s3_server.create_bucket(bucket)  # idempotent
    s3 = s3_server.client()
    body = os.urandom(3 * 1024 * 1024 + 17)  # not a multiple of anything
    s3.put_object(Bucket=bucket, Key="models/a/weights.bin", Body=body)
    s3.put_object(Bucket=bucket, Key="models/a/manifest.json", Body=b"{}")
    s3.put_object(Bucket=bucket, Key="other", Body=b"x")

    assert s3.get_object(Bucket=bucket, Key="models/a/weights.bin")["Body"].read() == body
    head = s3.head_object(Bucket=bucket, Key="models/a/weights.bin")
    assert head["ContentLength"] == len(body)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="models/a/")
    assert sorted(o["Key"] for o in listed["Contents"]) == ["models/a/manifest.json", "models/a/weights.bin"]
    assert bucket in {b["Name"] for b in s3.list_buckets()["Buckets"]}

    s3.delete_object(Bucket=bucket, Key="models/a/weights.bin")
    with pytest.raises(ClientError) as missing:
        s3.get_object(Bucket=bucket, Key="models/a/weights.bin")
    assert error_code(missing) == "NoSuchKey"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["models/a/manifest.json", "other"]


def test_buckets_are_not_created_implicitly(s3_server: S3Server) -> None:
    with pytest.raises(ClientError) as exc:
        s3_server.client().put_object(Bucket=bucket_name(), Key="k", Body=b"v")
    assert error_code(exc) == "NoSuchBucket"  # as on AWS (weed's default would create it)


def test_wrong_keys_and_anonymous_requests_are_refused(s3_server: S3Server) -> None:
    bucket = bucket_name()
    s3_server.create_bucket(bucket)
    s3_server.client().put_object(Bucket=bucket, Key="secret", Body=b"v")

    wrong_secret = S3Credentials("admin", s3_server.admin.access_key, s3_server.admin.secret_key[:-1] + "x")
    with pytest.raises(ClientError) as exc:
        s3_server.client(wrong_secret, attempts=1).get_object(Bucket=bucket, Key="secret")
    assert error_code(exc) == "SignatureDoesNotMatch"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

    unknown = S3Credentials("nobody", "AKIAUNKNOWNUNKNOWN00", s3_server.admin.secret_key)
    with pytest.raises(ClientError) as exc:
        s3_server.client(unknown, attempts=1).list_buckets()
    assert error_code(exc) == "InvalidAccessKeyId"

    status, body = anonymous_get(f"{s3_server.endpoint_url}/{bucket}/secret")
    assert status == 403
    assert "<Code>AccessDenied</Code>" in body
    assert anonymous_get(f"{s3_server.endpoint_url}/")[0] == 403  # ListBuckets too


def test_the_reader_reads_and_lists_but_cannot_write(s3_server: S3Server) -> None:
    bucket = bucket_name()
    s3_server.create_bucket(bucket)
    s3_server.client().put_object(Bucket=bucket, Key="k", Body=b"v")
    reader = s3_server.client("reader", attempts=1)

    assert reader.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    assert [o["Key"] for o in reader.list_objects_v2(Bucket=bucket)["Contents"]] == ["k"]
    for write in (
        lambda: reader.put_object(Bucket=bucket, Key="new", Body=b"x"),
        lambda: reader.delete_object(Bucket=bucket, Key="k"),
        lambda: reader.create_bucket(Bucket=bucket_name()),
    ):
        with pytest.raises(ClientError) as exc:
            write()
        assert error_code(exc) == "AccessDenied"
    assert s3_server.client().get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"


def test_keys_are_random_and_kept_private(s3_server: S3Server) -> None:
    assert s3_server.reader is not None
    keys = {s3_server.admin.access_key, s3_server.admin.secret_key, s3_server.reader.access_key}
    assert len(keys) == 3
    assert s3_server.reader.secret_key not in keys
    for path in (s3_server.state_file, s3_server.state / IDENTITIES_FILE):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(s3_server.state_file.read_text())
    assert saved["endpoint"] == s3_server.endpoint_url
    assert saved["identities"]["reader"]["secret_key"] == s3_server.reader.secret_key
    assert S3Server(s3_server.state.parent / "new", s3_server.binary).admin != s3_server.admin  # new server: new keys


def test_a_second_server_on_the_same_ports_is_refused_with_a_clear_error(s3_server: S3Server, tmp_path: Path) -> None:
    other = S3Server(tmp_path, s3_server.binary, ports=s3_server.ports)
    with pytest.raises(S3ServerError, match="in use"):
        other.start()
    assert not other.alive()


@pytest.mark.slow
def test_data_and_keys_survive_a_restart(s3_server: S3Server, tmp_path: Path) -> None:
    """Its own server (the session's keeps running): stop (SIGTERM), start again on the same directory."""
    server = S3Server(tmp_path / "s3", s3_server.binary)
    try:
        t = time.monotonic()
        server.start()
        server.wait_ready()
        started = time.monotonic() - t
        server.create_bucket("kept")
        server.client().put_object(Bucket="kept", Key="model.pt", Body=b"weights")
        pid = server.pid()

        t = time.monotonic()
        server.stop()
        stopped = time.monotonic() - t
        assert not server.alive()
        assert server.pid() is None
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(server.endpoint_url, timeout=5)

        again = S3Server.load(server.state)  # as another process finds it: same ports, keys, data
        assert (again.endpoint_url, again.admin, again.reader) == (server.endpoint_url, server.admin, server.reader)
        t = time.monotonic()
        again.start()
        again.wait_ready()
        restarted = time.monotonic() - t
        assert again.pid() != pid
        assert again.client().get_object(Bucket="kept", Key="model.pt")["Body"].read() == b"weights"
        assert again.client("reader").list_objects_v2(Bucket="kept")["KeyCount"] == 1
        print(f"weed ready {started:.1f}s after start, stopped in {stopped:.2f}s, ready {restarted:.1f}s after restart")
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------- from pods
POD_SCRIPT = """
import sys, urllib.error, urllib.request
def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
print("ANONYMOUS", get(sys.argv[1])[0])
print("PRESIGNED", *get(sys.argv[2]))
"""


def fetch_pod(cluster: KindCluster, name: str, node: dict[str, str], endpoint: str, url: str) -> dict[str, Any]:
    """A pod of the runtime image (restricted like ours) that GETs the endpoint anonymously and ``url``."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": node,
            "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": cluster.images["runtime"],
                    "command": ["python", "-c", POD_SCRIPT, endpoint, url],
                    "securityContext": {
                        "runAsNonRoot": True,
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "resources": {"limits": {"cpu": "200m", "memory": "128Mi"}},
                }
            ],
        },
    }


def test_pods_on_every_kind_node_reach_the_server(cluster: KindCluster, cluster_s3: S3Endpoint, namespace: str) -> None:
    """The endpoint pods use (the kind network's gateway) is a real route from each node's pod network: an
    anonymous request is refused by S3 (403, not a connection error) and a presigned GET reads the object."""
    if not isinstance(cluster, KindCluster):
        pytest.skip("runs the project's runtime image, loaded into the local kind nodes")
    bucket = bucket_name()
    cluster_s3.create_bucket(bucket)
    cluster_s3.client().put_object(Bucket=bucket, Key="from-the-host.txt", Body=b"hello pods")
    signer = cluster_s3.client(endpoint_url=cluster_s3.cluster_endpoint_url)
    url = signer.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "from-the-host.txt"})
    pods = {"on-exec-node": {EXEC_LABEL: "true"}, "on-neuron-node": {SIMULATED_NEURON_LABEL: "true"}}
    manifests = [fetch_pod(cluster, n, node, cluster_s3.cluster_endpoint_url, url) for n, node in pods.items()]
    pod_list = {"apiVersion": "v1", "kind": "List", "items": manifests}
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod_list))

    for name in pods:

        def ended(name: str = name) -> str:
            pod = json.loads(cluster.kubectl("get", "-n", namespace, "pod", name, "-o", "json").stdout)
            return str(pod["status"].get("phase")) if pod["status"].get("phase") in ("Succeeded", "Failed") else ""

        phase = until(ended, timeout=120, what=f"pod {name} to finish")
        logs = cluster.kubectl("logs", "-n", namespace, name).stdout
        assert phase == "Succeeded", logs
        assert "ANONYMOUS 403" in logs.splitlines(), logs
        assert "PRESIGNED 200 hello pods" in logs.splitlines(), logs

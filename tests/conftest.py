"""Shared fixtures. ``cluster`` creates the local kind cluster once per test session.

The cluster is the one ``make cluster-up`` creates (``localcluster.kind``: kind nodes from images built on
this machine, the simulated Neuron device plugin, kwok's simulated fleet), under its own name and state
directory, so it never collides with a developer's ``.cluster`` or a running demo. Set
``NEURON_TEST_USE_EXISTING_CLUSTER=1`` and ``KUBECONFIG`` to run the cluster tests against another
cluster (EKS, another kind) instead, or ``NEURON_TEST_KIND_STATE=<state dir>`` to reuse a running local kind
cluster (e.g. ``.cluster`` after ``make cluster-up``) without creating or deleting one.

Creating the cluster takes minutes, mostly importing the 4.3 GB runtime image into a node (disk-bound), so
when the session selects cluster tests the creation starts in a background thread as soon as collection is
done, and the tests that need no cluster run first, meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Final

import pytest
from lightkube import Client

from localcluster.__main__ import cluster_for
from localcluster.kind import ExistingCluster, KindCluster, KindConfig
from localcluster.s3 import S3Endpoint, S3Server, S3Unavailable
from localcluster.tools import ensure_tools

REPO = Path(__file__).resolve().parent.parent
#: Seconds the first cluster test may wait for the session cluster (image import is disk-bound: 3.5-6 min).
CLUSTER_CREATION_TIMEOUT = 1500
#: The session's kind cluster while it is being created in the background (see ``pytest_collection_finish``).
_BACKGROUND: dict[str, tuple[KindCluster, Future[KindCluster]]] = {}


def _own_cluster_wanted() -> bool:
    return os.environ.get("NEURON_TEST_USE_EXISTING_CLUSTER") != "1" and not os.environ.get("NEURON_TEST_KIND_STATE")


@pytest.fixture(scope="session")
def cluster() -> Iterator[KindCluster | ExistingCluster]:
    if os.environ.get("NEURON_TEST_USE_EXISTING_CLUSTER") == "1":
        yield ExistingCluster(Path(os.environ["KUBECONFIG"]))
        return
    if state := os.environ.get("NEURON_TEST_KIND_STATE"):
        reused = cluster_for(Path(state), "")
        assert reused.exists(), f"no kind cluster state in {state}"
        assert reused.alive(), f"the kind cluster of {state} is not running"
        reused.ensure_images()
        yield reused
        return
    if "session" not in _BACKGROUND:  # e.g. a cluster fixture requested outside the collected items
        _start_background_cluster()
    local, creation = _BACKGROUND["session"]
    creation.result()  # re-raises a failed creation (which has already cleaned up after itself)
    yield local


def _start_background_cluster() -> None:
    root = Path(tempfile.mkdtemp(prefix="neuron-test-kind-"))
    local = KindCluster(KindConfig(name=f"neuron-t-{uuid.uuid4().hex[:6]}", state_dir=root / "state"))
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kind-up")  # not `with`: that would wait
    _BACKGROUND["session"] = (local, pool.submit(local.up))
    pool.shutdown(wait=False)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """After selection: tests that need no cluster first, and start creating the cluster if any need it."""
    session.items.sort(key=lambda item: item.get_closest_marker("cluster") is not None)
    wanted = any(item.get_closest_marker("cluster") for item in session.items)
    if wanted:
        # The first cluster test's setup waits for the creation (minutes): its own, longer timeout.
        first = next(item for item in session.items if item.get_closest_marker("cluster"))
        first.add_marker(pytest.mark.timeout(CLUSTER_CREATION_TIMEOUT))
    if wanted and _own_cluster_wanted() and not session.config.option.collectonly:
        _start_background_cluster()


def pytest_sessionfinish() -> None:
    if "session" in _BACKGROUND:
        local, creation = _BACKGROUND.pop("session")
        with contextlib.suppress(BaseException):
            creation.result()
        local.down()
        shutil.rmtree(local.state.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def kube(cluster: KindCluster | ExistingCluster) -> Client:
    """A lightkube client authenticated as cluster-admin."""
    return cluster.client


@pytest.fixture
def namespace(cluster: KindCluster | ExistingCluster) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting for finalization)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


#: The fast suite's limit per test (setup, call and teardown together): a broken guard or a hung wait fails in seconds
#: instead of holding the run for the global 300 s. The slowest fast tests take about 2 s alone on this 2-core
#: machine; the margin covers CI, where the session's kind cluster is created in the background meanwhile.
FAST_TEST_TIMEOUT: Final = 15
#: Fixtures that start a real server or build a tool on first use, and the limit of the tests that use them.
SLOW_FIXTURES: Final = {"s3_server": 240}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that use the cluster fixture carry the `cluster` marker, so `-m "not cluster"` is the fast suite.
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "cluster" in fixtures:
            item.add_marker(pytest.mark.cluster)
        # A test's own timeout marker (module or function) wins; cluster and image tests keep the global one.
        if any(item.get_closest_marker(m) for m in ("cluster", "images", "timeout")):
            continue
        limit = max([FAST_TEST_TIMEOUT, *(SLOW_FIXTURES[f] for f in fixtures & set(SLOW_FIXTURES))])
        item.add_marker(pytest.mark.timeout(limit))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server (SeaweedFS ``weed``) on loopback, free ports, in a temporary directory; no
    cluster needed (tests of S3 client code). Authentication is enforced: ``admin`` and read-only ``reader``
    keys (``.admin``/``.reader``: ``access_key``, ``secret_key``), ``endpoint_url``, ``client()`` (boto3),
    ``create_bucket(name)``. Stopped at the end of the session."""
    server = S3Server(tmp_path_factory.mktemp("s3-server"), ensure_tools(("weed",)).weed)
    try:
        server.start(die_with_parent=True)
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cluster_s3(cluster: KindCluster | ExistingCluster) -> S3Endpoint:
    """The cluster's S3 endpoint: the local cluster's server (started again if it died), reachable from the
    tests and from pods at ``endpoint_url``; on an existing cluster, the one given by ``NEURON_TEST_S3_*``
    (else the test is skipped)."""
    try:
        return cluster.ensure_s3() if isinstance(cluster, KindCluster) else cluster.s3
    except S3Unavailable as exc:
        pytest.skip(str(exc))

"""``neuron-operator run``: health endpoints from the start, leader election around kopf, exit codes.

The seam: ``run()`` is the real function with the real ``LeaderElector``, ``Kube`` and lightkube
``AsyncClient``, talking HTTP to ``FakeApiserver`` (aiohttp serving only the coordination.k8s.io/v1 Lease
endpoints, with the apiserver's resourceVersion conflicts and Status bodies) or to a port where nothing
listens. Only ``kopf.operator`` is replaced, by ``FakeKopf``: it records that reconciling started and returns
when its stop flag is set, as kopf does (or never, to play a leader stuck in shutdown). The last test runs the
real CLI as a subprocess against an unreachable apiserver and stops it with SIGTERM.

Real time (real sockets, so no looptime) with short lease timings; waits poll with a bound, never sleep to
synchronise.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from neuron_operator import cli
from neuron_operator.settings import OperatorSettings

NS, LEASE = "neuron-system", "neuron-operator"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
#: Short timings: leadership is lost 1.5 s after the apiserver goes away; a standby retries every 0.1 s.
TIMINGS = {"lease_duration_seconds": 3.0, "renew_deadline_seconds": 1.5, "retry_period_seconds": 0.1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeApiserver:
    """The Lease endpoints of coordination.k8s.io/v1 as the apiserver answers them (optimistic locking)."""

    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 0
        self.down = False  # every request answered 503 by the load balancer in front

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(LEASES + "/{name}", self.get)
        app.router.add_post(LEASES, self.create)
        app.router.add_put(LEASES + "/{name}", self.replace)
        return app

    def lease(self) -> dict[str, Any]:
        return dict(self.leases[(NS, LEASE)]["spec"])

    @staticmethod
    def json(obj: dict[str, Any], code: int = 200) -> web.Response:
        # Exactly "application/json", as the apiserver sends it: lightkube makes an ApiError only of that.
        return web.Response(body=json.dumps(obj).encode(), status=code, headers={"Content-Type": "application/json"})

    def status(self, code: int, reason: str, message: str) -> web.Response:
        body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message}
        return self.json({**body, "metadata": {}, "code": code}, code)

    @staticmethod
    def unavailable() -> web.Response:
        # What a load balancer in front of a dead apiserver answers: not a Status, so not an ApiError.
        return web.Response(status=503, text="no healthy upstream")

    def _store(self, key: tuple[str, str], obj: dict[str, Any]) -> web.Response:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        obj["metadata"]["namespace"] = key[0]
        self.leases[key] = obj
        return self.json(obj)

    async def get(self, request: web.Request) -> web.Response:
        if self.down:
            return self.unavailable()
        key = (request.match_info["namespace"], request.match_info["name"])
        if key not in self.leases:
            return self.status(404, "NotFound", f'leases.coordination.k8s.io "{key[1]}" not found')
        return self.json(self.leases[key])

    async def create(self, request: web.Request) -> web.Response:
        if self.down:
            return self.unavailable()
        obj = await request.json()
        key = (request.match_info["namespace"], obj["metadata"]["name"])
        if key in self.leases:
            return self.status(409, "AlreadyExists", f'leases.coordination.k8s.io "{key[1]}" already exists')
        return self._store(key, obj)

    async def replace(self, request: web.Request) -> web.Response:
        if self.down:
            return self.unavailable()
        obj = await request.json()
        key = (request.match_info["namespace"], request.match_info["name"])
        current = self.leases.get(key)
        if current is None:
            return self.status(404, "NotFound", f'leases.coordination.k8s.io "{key[1]}" not found')
        if obj["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            return self.status(409, "Conflict", "the object has been modified; please apply your changes")
        return self._store(key, obj)


class FakeKopf:
    """``kopf.operator``: records each start; returns when its stop flag is set (unless ``stuck``)."""

    def __init__(self) -> None:
        self.started: list[dict[str, Any]] = []  # the keyword arguments of each call
        self.stuck = False  # ignores the stop flag: a leader stuck in shutdown
        self.unstick = asyncio.Event()
        self.signalled = asyncio.Event()  # kopf's own SIGTERM handler fired: it returns without the stop flag

    async def operator(self, *, stop_flag: asyncio.Event, **kwargs: Any) -> None:
        self.started.append({"stop_flag": stop_flag, **kwargs})
        if self.stuck:
            await self.unstick.wait()
            return
        waiters = [asyncio.ensure_future(stop_flag.wait()), asyncio.ensure_future(self.signalled.wait())]
        _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()

    def started_with(self, stop: asyncio.Event) -> bool:
        return any(call["stop_flag"] is stop for call in self.started)


@pytest.fixture
def fake_kopf(monkeypatch: pytest.MonkeyPatch) -> FakeKopf:
    fake = FakeKopf()
    monkeypatch.setattr(kopf, "operator", fake.operator)
    return fake


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "fake", "user": {"token": "fake-token"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "current-context": "fake",
            }
        )
    )
    return path


@pytest.fixture
async def apiserver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeApiserver]:
    fake = FakeApiserver()
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}")))
    yield fake
    await runner.cleanup()


def settings(**overrides: Any) -> OperatorSettings:
    base: dict[str, Any] = {
        "namespaces": ["team-a"],
        "leader_election_namespace": NS,
        "leader_election_lease": LEASE,
        "health_port": free_port(),
        **TIMINGS,
    }
    return OperatorSettings(**(base | overrides))


async def probe(port: int, path: str) -> tuple[int, str]:
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as r:
            return r.status, await r.text()
    except aiohttp.ClientConnectionError:
        return 0, "not listening"


async def eventually(check: Callable[[], bool | Awaitable[bool]], what: str, within: float = 10.0) -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds."""

    async def holds() -> bool:
        result = check()
        return await result if inspect.isawaitable(result) else result

    try:
        async with asyncio.timeout(within):
            while not await holds():  # noqa: ASYNC110 - HTTP answers and a fake's calls: nothing to wait on
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out after {within}s waiting for {what}")


def leader_gauge(identity: str) -> float | None:
    return REGISTRY.get_sample_value("neuron_operator_leader", {"identity": identity})


async def start(
    monkeypatch: pytest.MonkeyPatch, identity: str, s: OperatorSettings
) -> tuple[asyncio.Task[int], asyncio.Event]:
    """``run()`` as ``identity``, once its health endpoint answers (so POD_NAME has been read)."""
    monkeypatch.setenv("POD_NAME", identity)
    stop = asyncio.Event()
    task = asyncio.create_task(cli.run(s, stop))

    async def answering() -> bool:
        assert not task.done(), task.result()
        return (await probe(s.health_port, "/healthz"))[0] == 200

    await eventually(answering, f"{identity}'s health endpoint")
    return task, stop


async def test_a_standby_answers_probes_and_never_reconciles_while_the_apiserver_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_kopf: FakeKopf, caplog: pytest.LogCaptureFixture
) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens: every request is refused
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", unreachable)))
    s = settings()
    task, stop = await start(monkeypatch, "standby-a", s)
    assert await probe(s.health_port, "/readyz") == (200, "ok: standby\n")

    async def refused_thrice() -> bool:
        return sum("ConnectError" in r.getMessage() for r in caplog.records) >= 3

    await eventually(refused_thrice, "three refused attempts")
    assert await probe(s.health_port, "/healthz") == (200, "ok\n")
    assert fake_kopf.started == []
    assert leader_gauge("standby-a") == 0
    stop.set()
    async with asyncio.timeout(10):
        assert await task == 0
    assert fake_kopf.started == []
    assert (await probe(s.health_port, "/healthz"))[0] == 0  # the endpoint is gone with the process


async def test_the_leader_releases_on_stop_and_the_standby_takes_over_at_once(
    apiserver: FakeApiserver, monkeypatch: pytest.MonkeyPatch, fake_kopf: FakeKopf
) -> None:
    # A long lease: without the release, b could take over only 15 s after a's last renewal.
    sa, sb = settings(lease_duration_seconds=15.0), settings(lease_duration_seconds=15.0)
    a, stop_a = await start(monkeypatch, "operator-a", sa)
    await eventually(lambda: fake_kopf.started_with(stop_a), "a to lead")
    b, stop_b = await start(monkeypatch, "operator-b", sb)
    assert await probe(sa.health_port, "/readyz") == (200, "ok: leader\n")
    assert await probe(sb.health_port, "/readyz") == (200, "ok: standby\n")
    assert apiserver.lease()["holderIdentity"] == "operator-a"
    assert leader_gauge("operator-a") == 1
    assert leader_gauge("operator-b") == 0
    assert not fake_kopf.started_with(stop_b)

    stop_a.set()  # SIGTERM
    stopped = time.monotonic()
    async with asyncio.timeout(10):
        assert await a == 0
    await eventually(lambda: fake_kopf.started_with(stop_b), "b to lead")
    assert time.monotonic() - stopped < 10, "handed over, not left to expire"
    assert apiserver.lease()["holderIdentity"] == "operator-b"
    assert apiserver.lease()["leaseTransitions"] == 1
    assert leader_gauge("operator-a") == 0
    assert leader_gauge("operator-b") == 1
    stop_b.set()
    async with asyncio.timeout(10):
        assert await b == 0
    assert apiserver.lease()["holderIdentity"] == ""  # b released too
    assert apiserver.lease()["leaseDurationSeconds"] == 1


async def test_losing_the_lease_stops_reconciling_at_once_fails_liveness_and_exits_1(
    apiserver: FakeApiserver, monkeypatch: pytest.MonkeyPatch, fake_kopf: FakeKopf
) -> None:
    fake_kopf.stuck = True  # kopf does not stop: the queue must stop anyway, and liveness must fail
    s = settings()
    task, stop = await start(monkeypatch, "operator-a", s)
    await eventually(lambda: bool(fake_kopf.started), "a to lead")
    runtime = fake_kopf.started[0]["memo"]["runtime"]
    reconciling, cancelled = asyncio.Event(), asyncio.Event()

    async def reconcile(namespace: str, name: str) -> None:
        reconciling.set()
        try:
            await asyncio.Event().wait()  # a long reconcile, in flight when the Lease is lost
        except asyncio.CancelledError:
            cancelled.set()
            raise

    runtime.queue.reconcilers["NeuronModel"] = reconcile
    runtime.queue.trigger("NeuronModel", "team-a", "bert")
    async with asyncio.timeout(5):
        await reconciling.wait()

    apiserver.down = True
    async with asyncio.timeout(TIMINGS["renew_deadline_seconds"] + 2):
        await cancelled.wait()  # the in-flight pass is cancelled though kopf has not stopped
    assert stop.is_set()  # kopf was asked to stop
    assert await probe(s.health_port, "/healthz") == (500, "leadership lost\n")
    assert (await probe(s.health_port, "/readyz"))[0] == 503
    assert leader_gauge("operator-a") == 0
    runtime.queue.trigger("NeuronModel", "team-a", "bert")
    assert runtime.queue._workers == {}, "a process that lost the Lease never reconciles again"

    apiserver.down = False
    fake_kopf.unstick.set()
    async with asyncio.timeout(10):
        assert await task == 1
    assert apiserver.lease()["holderIdentity"] == "operator-a"  # not released: it was not ours to give


async def test_kopf_returning_on_its_own_signal_is_a_graceful_stop(
    apiserver: FakeApiserver, monkeypatch: pytest.MonkeyPatch, fake_kopf: FakeKopf
) -> None:
    task, stop = await start(monkeypatch, "operator-a", settings())
    await eventually(lambda: bool(fake_kopf.started), "a to lead")
    fake_kopf.signalled.set()  # kopf's SIGTERM handler replaced ours while it ran; kopf returns by itself
    async with asyncio.timeout(10):
        assert await task == 0
    assert stop.is_set()
    assert apiserver.lease()["holderIdentity"] == ""


@pytest.mark.timeout(60)  # a `neuron-operator run` process (kopf import) through its SIGTERM exit
def test_the_cli_serves_probes_as_a_standby_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    """The real ``neuron-operator run`` process, its apiserver unreachable: probes and metrics answer, the
    leader gauge says standby, and SIGTERM (handled by main()) ends it with exit code 0."""
    health, metrics = free_port(), free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{free_port()}")),
        "NEURON_OPERATOR_HEALTH_PORT": str(health),
        "NEURON_OPERATOR_METRICS_PORT": str(metrics),
        "NEURON_OPERATOR_RETRY_PERIOD_SECONDS": "0.2",
        "POD_NAME": "cli-standby",
    }
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "neuron_operator.cli", "run"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:

        def get(port: int, path: str) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, ""
            except OSError:
                return 0, ""

        deadline = time.monotonic() + 120  # importing kopf takes seconds, more on a loaded machine
        while get(health, "/readyz") != (200, "ok: standby\n"):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert get(health, "/healthz") == (200, "ok\n")
        assert 'neuron_operator_leader{identity="cli-standby"} 0.0' in get(metrics, "/metrics")[1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

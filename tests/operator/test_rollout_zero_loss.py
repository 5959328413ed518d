"""Requests lost while a NeuronDeployment rolls (issue #11): measured on the real local cluster.

A closed-loop OIP v2 client (``loadclient.py``, shipped in a ConfigMap) runs in a Pod of the runtime image on the
node that runs pods for real and sends requests to the NeuronDeployment's Service (its ClusterIP, through
kube-proxy, the way an in-cluster client does) with kept-alive connections, while the scenario operator (this
working tree) rolls the 1-replica NeuronDeployment twice: (a) a ``spec.batching.maxDelayMs`` change (new pod
template, same artifact) and (b) a NeuronModel change (a new artifact is compiled, then the Deployment rolls to
it). Each rollout gets its own client run, and prints one quotable line::

    ROLLOUT_LOSS kind=<maxDelay|model> mode=<mode> total=… ok=… lost=… seconds=… resolved=<surge|in-place> …

``seconds`` is the rollout (from the change to the old pod being gone); then come how it resolved, the
NeuronDeployment's ``status.rollout.strategy``, ``loss_window_s`` (first to last error), the errors by kind, the
p50/p99 of the OK answers and the TCP connections the client opened; each run also prints a timeline
(new pod created/Ready, old pod deleted, the old runtime's SIGTERM and exit) and the first errors.
``NEURON_TEST_LOAD_CONNECTIONS=fresh`` makes the client open a new connection per request instead of keeping
them alive (which isolates what kept-alive connections add). The modes (``ROLLOUT_MODES``):

- ``explicit-surge``: ``spec.rollout: {maxSurge: 1, maxUnavailable: 0}``: must lose nothing;
- ``default``: no ``spec.rollout``; the default must resolve to a surge here (the node has spare capacity)
  and lose nothing;
- ``in-place``: ``{maxSurge: 0, maxUnavailable: 1}``, the fallback without spare capacity: with one replica
  there is a gap with no ready pod. Its loss is measured and printed, not asserted: before the runtime kept
  serving through its shutdown delay it lost 355-362 requests per rollout here; since, kube-proxy's fallback to
  terminating endpoints while none is ready bridges a gap this short (the small model is ready in seconds), and
  it lost 0 on the kind cluster. The clients' reconnections (one per answer with `Connection: close`) are asserted.

How the rollout resolved is read from the child Deployment's ``spec.strategy`` (what the Deployment controller
acts on), not from the NeuronDeployment's spec. ``test_load_client_counts_every_failure`` (no cluster) holds
the client to its word on a local server that answers 503, drops connections, hangs and goes away.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import math
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import loadclient
import pytest
from aiohttp import web
from operator_support import EXEC_NODE_SELECTOR, EXEC_NODE_TOLERATIONS, IMAGES, Operator, Store, mlp_model

from localcluster.kind import KindCluster
from localcluster.wait import until

#: spec.rollout per mode; None leaves it to the operator's default.
ROLLOUT_MODES: dict[str, dict[str, int] | None] = {
    "explicit-surge": {"maxSurge": 1, "maxUnavailable": 0},
    "default": None,
    "in-place": {"maxSurge": 0, "maxUnavailable": 1},
}
#: Modes that must resolve to a surge (and then lose nothing); the others must resolve in place.
SURGE_MODES = frozenset({"explicit-surge", "default"})

MODEL = "mlp"
DEPLOYMENT = "mlp"
LOAD_CONCURRENCY = 4
#: Each worker starts at most one request per interval: ≤ 80 requests/s in all, light enough for a 2-CPU host
#: that also runs the control plane, yet every connection carries a request at least every ~50 ms.
LOAD_INTERVAL_MS = 50
LOAD_TIMEOUT_S = 5.0
#: keepalive (default: what real clients do; a request that meets a closed connection is lost, then the client
#: reconnects) or fresh (a new TCP connection per request: isolates what kept-alive connections add).
LOAD_CONNECTIONS = os.environ.get("NEURON_TEST_LOAD_CONNECTIONS", "keepalive")
#: OK answers the client must have before a rollout starts, and again after it (traffic is back).
WARM_OK = 40
RECOVERED_OK = 40
ROLLOUT_TIMEOUT_S = 300
LOAD_CONFIGMAP = "loadclient"
STOP_FILE = "/work/stop"


# ------------------------------------------------------------------------------------------------ cluster helpers
def get(cluster: KindCluster, namespace: str, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", "-n", namespace, *args, "-o", "json").stdout)


def apply(cluster: KindCluster, namespace: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def patch(cluster: KindCluster, namespace: str, ref: str, body: dict[str, Any]) -> None:
    cluster.kubectl("patch", "-n", namespace, ref, "--type", "merge", "-p", json.dumps(body))


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), None)


def is_true(obj: dict[str, Any], type_: str) -> bool:
    c = condition(obj, type_)
    return bool(c and c["status"] == "True")


def current(obj: dict[str, Any]) -> bool:
    return bool((obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"])


def serving_deployment(name: str, rollout: dict[str, int] | None) -> dict[str, Any]:
    """One replica of the MLP on the node that runs pods for real (cpu target, no NeuronCores)."""
    spec: dict[str, Any] = {
        "modelRef": {"name": MODEL},
        "replicas": 1,
        "placement": {"workers": 1, "coresPerWorker": 1},
        "batching": {"maxBatchSize": 4, "maxDelayMs": 2},
        "pod": {"nodeSelector": EXEC_NODE_SELECTOR, "tolerations": EXEC_NODE_TOLERATIONS},
    }
    if rollout is not None:
        spec["rollout"] = rollout
    return {"apiVersion": "neuron.dev/v1alpha1", "kind": "NeuronDeployment", "metadata": {"name": name}, "spec": spec}


def _scaled(value: int | str, replicas: int, round_up: bool) -> int:
    """An int-or-percent rolling-update field as the Deployment controller resolves it."""
    if isinstance(value, int):
        return value
    fraction = int(value.rstrip("%")) * replicas / 100
    return math.ceil(fraction) if round_up else math.floor(fraction)


def resolved_rollout(cluster: KindCluster, namespace: str, name: str) -> str:
    """``surge`` when the child Deployment adds a pod before removing one and never goes below spec.replicas."""
    dep = get(cluster, namespace, "deployment", name)
    replicas = dep["spec"].get("replicas", 1)
    strategy = dep["spec"].get("strategy", {})
    if strategy.get("type") != "RollingUpdate":
        return "in-place"
    ru = strategy.get("rollingUpdate", {})
    surge = _scaled(ru.get("maxSurge", "25%"), replicas, round_up=True)
    unavailable = _scaled(ru.get("maxUnavailable", "25%"), replicas, round_up=False)
    return "surge" if surge >= 1 and unavailable == 0 else "in-place"


def serving_pods(cluster: KindCluster, namespace: str) -> list[dict[str, Any]]:
    return list(get(cluster, namespace, "pods", "-l", f"neuron.dev/deployment={DEPLOYMENT}")["items"])


def pod_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


# ------------------------------------------------------------------------------------------------ the load pod
@dataclass
class LoadPod:
    """One run of ``loadclient.py`` in a Pod of the runtime image, against ``url``."""

    cluster: KindCluster
    namespace: str
    name: str
    url: str
    connections: str = LOAD_CONNECTIONS
    #: More ``loadclient.py`` options, after the defaults (argparse keeps an option's last value).
    options: tuple[str, ...] = ()

    def start(self) -> None:
        script = Path(loadclient.__file__).read_text()
        configmap = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": LOAD_CONFIGMAP},
            "data": {"loadclient.py": script},
        }
        apply(self.cluster, self.namespace, configmap)
        argv = [
            "python",
            "/loadclient/loadclient.py",
            f"--url={self.url}",
            f"--concurrency={LOAD_CONCURRENCY}",
            f"--interval-ms={LOAD_INTERVAL_MS}",
            f"--timeout-s={LOAD_TIMEOUT_S}",
            f"--stop-file={STOP_FILE}",
            "--duration-s=900",
            f"--connections={self.connections}",
            "--input-name=x",
            "--shape=1,16",
            *self.options,
        ]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.name, "labels": {"app.kubernetes.io/name": "loadclient"}},
            "spec": {
                "restartPolicy": "Never",
                "nodeSelector": EXEC_NODE_SELECTOR,
                "tolerations": EXEC_NODE_TOLERATIONS,
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": 10,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 65532,
                    "runAsGroup": 65532,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "client",
                        "image": IMAGES["runtime"],
                        "imagePullPolicy": "IfNotPresent",
                        "command": argv,
                        "env": [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
                        "volumeMounts": [
                            {"name": "script", "mountPath": "/loadclient", "readOnly": True},
                            {"name": "work", "mountPath": "/work"},
                        ],
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }
                ],
                "volumes": [
                    {"name": "script", "configMap": {"name": LOAD_CONFIGMAP}},
                    {"name": "work", "emptyDir": {}},
                ],
            },
        }
        apply(self.cluster, self.namespace, pod)

    def _lines(self) -> list[dict[str, Any]]:
        out = self.cluster.kubectl("logs", "-n", self.namespace, self.name, check=False).stdout
        lines = []
        for line in out.splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict) and "event" in doc:
                    lines.append(doc)
        return lines

    def _phase(self) -> str:
        return str(get(self.cluster, self.namespace, "pod", self.name)["status"].get("phase"))

    def ok(self) -> int:
        """OK answers so far (from the latest progress line)."""
        if self._phase() == "Failed":
            logs = self.cluster.kubectl("logs", "-n", self.namespace, self.name, check=False).stdout
            raise AssertionError(f"the load client failed: {logs[-3000:]}")
        progress = [d for d in self._lines() if d["event"] == "progress"]
        return int(progress[-1]["ok"]) if progress else 0

    def wait_ok(self, at_least: int, timeout: float, what: str) -> int:
        return until(
            lambda: n if (n := self.ok()) >= at_least else None,
            timeout=timeout,
            interval=0.5,
            what=what,
            fatal=(AssertionError,),
        )

    def stop(self) -> dict[str, Any]:
        """Stop the client and return its result line."""
        self.cluster.kubectl(
            "exec", "-n", self.namespace, self.name, "-c", "client", "--",
            "python", "-c", f"open({STOP_FILE!r}, 'w').close()",
        )  # fmt: skip
        until(
            lambda: self._phase() == "Succeeded",
            timeout=LOAD_TIMEOUT_S + 30,
            what=f"the load client {self.name} to exit",
        )
        results = [d for d in self._lines() if d["event"] == "result"]
        assert results, self.cluster.kubectl("logs", "-n", self.namespace, self.name).stdout[-3000:]
        return results[-1]


# ------------------------------------------------------------------------------------------------ evidence
class LogTail:
    """``kubectl logs -f --timestamps`` of a pod, kept from before it is deleted (its logs go with it)."""

    def __init__(self, cluster: KindCluster, namespace: str, pod: str) -> None:
        self.proc = subprocess.Popen(
            ["kubectl", "logs", "-f", "--timestamps", "-n", namespace, pod],
            env=cluster.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def text(self) -> str:
        """The log up to now (the process ends when the pod's container has exited and the pod is gone)."""
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            out, _ = self.proc.communicate()
        return out or ""


def _epoch(rfc3339: str) -> float:
    """A Kubernetes timestamp (second or nanosecond precision) as Unix seconds."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z", rfc3339)
    assert m, rfc3339
    whole = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    return whole + float(m.group(2) or 0)


@dataclass
class Timeline:
    """When things happened during one rollout, in seconds after the change was applied."""

    t0: float
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, what: str, at: float) -> None:
        self.marks.setdefault(what, round(at - self.t0, 2))

    def watch_pods(self, pods: list[dict[str, Any]], old: set[str]) -> None:
        for p in pods:
            meta = p["metadata"]
            tag = "old" if meta["name"] in old else "new"
            if tag == "new":
                self.mark(f"new pod {meta['name']} created", _epoch(meta["creationTimestamp"]))
                for c in p["status"].get("conditions", []):
                    if c["type"] == "Ready" and c["status"] == "True":
                        self.mark(f"new pod {meta['name']} Ready", _epoch(c["lastTransitionTime"]))
            if meta.get("deletionTimestamp"):
                # deletionTimestamp = deletion time + grace period: the deletion itself is grace seconds earlier.
                grace = meta.get("deletionGracePeriodSeconds", 0)
                self.mark(f"{tag} pod {meta['name']} deleted", _epoch(meta["deletionTimestamp"]) - grace)

    def runtime_log(self, pod: str, text: str) -> None:
        for line in text.splitlines():
            stamp, _, msg = line.partition(" ")
            for needle in ("stopping: not ready", "drain timed out", "stopped"):
                if needle in msg and stamp.endswith("Z"):
                    self.mark(f"old pod {pod}: {needle}", _epoch(stamp))

    def render(self) -> str:
        return ", ".join(f"{v:+.2f}s {k}" for k, v in sorted(self.marks.items(), key=lambda kv: kv[1]))

    def first(self, suffix: str) -> float | None:
        """The earliest mark whose name ends with ``suffix``, in seconds after the change."""
        return min((v for k, v in self.marks.items() if k.endswith(suffix)), default=None)


# ------------------------------------------------------------------------------------------------ one rollout
@dataclass
class Measured:
    kind: str
    mode: str
    resolved: str
    result: dict[str, Any]
    seconds: float
    timeline: Timeline
    chosen: str  # the NeuronDeployment's status.rollout.strategy, where the operator reports one
    connections: str

    @property
    def lost(self) -> int:
        return int(self.result["total"]) - int(self.result["ok"])

    def line(self) -> str:
        r = self.result
        window = (r["last_error"] - r["first_error"]) if r["first_error"] is not None else 0.0
        return (
            f"ROLLOUT_LOSS kind={self.kind} mode={self.mode} total={r['total']} ok={r['ok']} lost={self.lost} "
            f"seconds={self.seconds:.1f} resolved={self.resolved} status.rollout={self.chosen} "
            f"loss_window_s={window:.2f} errors={json.dumps(r['errors'], separators=(',', ':'))} "
            f"p50_ms={r['p50_ms']} p99_ms={r['p99_ms']} client={self.connections} tcp_connections={r['connections']}"
        )

    def evidence(self) -> str:
        r = self.result
        first = r["first_error"]
        samples = [
            f"{s['t'] - self.timeline.t0:+.2f}s {s['kind']} after {s['after_ms']} ms: {s['detail'][:120]}"
            for s in r["error_samples"][:12]
        ]
        tl = self.timeline
        sigterm, stopped, new_ready = tl.first("stopping: not ready"), tl.first("stopped"), tl.first(" Ready")
        diagnosis = ""
        if (
            first is not None
            and sigterm is not None
            and stopped is not None
            and new_ready is not None
            and new_ready < sigterm <= first - tl.t0 + 0.5
            and r["last_error"] - tl.t0 <= stopped + 1.0
        ):
            diagnosis = (
                "every loss came between the old pod's SIGTERM and its exit, while a new pod was Ready and the old "
                "one no longer an endpoint: requests on connections kept alive to the old pod, refused (503) or cut "
                "(disconnect/reset) by its shutdown\n"
            )
        return (
            diagnosis + f"timeline: {self.timeline.render()}\n"
            f"first error at {'-' if first is None else f'{first - self.timeline.t0:+.2f}s'}; samples:\n  "
            + "\n  ".join(samples)
        )


def measure_rollout(
    cluster: KindCluster,
    namespace: str,
    *,
    kind: str,
    mode: str,
    url: str,
    change: Callable[[], None],
    rolled: Callable[[dict[str, Any]], bool],
) -> Measured:
    """Run a load client across one rollout: warm up, ``change()``, wait until ``rolled(nd)`` holds and the
    pods that served before are gone, wait for traffic through the new pod, stop the client."""
    load = LoadPod(cluster, namespace, f"load-{kind.lower()}", url)
    load.start()
    load.wait_ok(WARM_OK, timeout=120, what=f"{WARM_OK} OK answers before the {kind} rollout")
    old = {p["metadata"]["name"] for p in serving_pods(cluster, namespace)}
    assert len(old) == 1, old
    tails = {name: LogTail(cluster, namespace, name) for name in old}
    resolved = resolved_rollout(cluster, namespace, DEPLOYMENT)
    t0 = time.time()
    timeline = Timeline(t0)
    change()

    def done() -> bool:
        nd = get(cluster, namespace, "nd", DEPLOYMENT)
        pods = serving_pods(cluster, namespace)
        timeline.watch_pods(pods, old)
        return (
            current(nd)
            and is_true(nd, "Ready")
            and (nd.get("status") or {}).get("updatedReplicas") == 1
            and rolled(nd)
            and not {p["metadata"]["name"] for p in pods} & old
            and len(pods) == 1
            and pod_ready(pods[0])
        )

    until(done, timeout=ROLLOUT_TIMEOUT_S, interval=0.5, what=f"the {kind} rollout, with the old pod gone")
    seconds = time.time() - t0
    chosen = ((get(cluster, namespace, "nd", DEPLOYMENT).get("status") or {}).get("rollout") or {}).get("strategy", "-")
    # The rollout can resolve differently once the operator acts on the new spec (e.g. a default that depends on
    # spare capacity): what the Deployment controller used is what counts.
    resolved = resolved_rollout(cluster, namespace, DEPLOYMENT) if resolved != "surge" else resolved
    ok_after = load.ok()
    load.wait_ok(ok_after + RECOVERED_OK, timeout=120, what=f"{RECOVERED_OK} OK answers after the {kind} rollout")
    result = load.stop()
    for name, tail in tails.items():
        timeline.runtime_log(name, tail.text())
    return Measured(kind, mode, resolved, result, seconds, timeline, chosen, load.connections)


# ------------------------------------------------------------------------------------------------ the test
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("mode", list(ROLLOUT_MODES))
def test_rollout_loss(
    cluster: KindCluster,
    operator: Operator,
    store: Store,
    namespace: str,
    mode: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    apply(cluster, namespace, mlp_model(MODEL))
    until(lambda: is_true(get(cluster, namespace, "nm", MODEL), "Ready"), timeout=240, what="the NeuronModel Ready")
    apply(cluster, namespace, serving_deployment(DEPLOYMENT, ROLLOUT_MODES[mode]))
    nd = until(
        lambda: (o := get(cluster, namespace, "nd", DEPLOYMENT)) and current(o) and is_true(o, "Ready") and o,
        timeout=240,
        what="the NeuronDeployment Ready",
    )
    url = nd["status"]["endpoint"] + "/infer"
    assert url.startswith(f"http://{DEPLOYMENT}.{namespace}.svc:"), url
    key1 = nd["status"]["model"]["cacheKey"]

    # (a) a serving setting: a new pod template on the same artifact.
    max_delay = measure_rollout(
        cluster,
        namespace,
        kind="maxDelay",
        mode=mode,
        url=url,
        change=lambda: patch(cluster, namespace, f"nd/{DEPLOYMENT}", {"spec": {"batching": {"maxDelayMs": 5}}}),
        rolled=lambda nd: nd["status"]["model"]["cacheKey"] == key1,
    )
    # (b) the model: a new artifact is compiled, then the Deployment rolls to it.
    model = measure_rollout(
        cluster,
        namespace,
        kind="model",
        mode=mode,
        url=url,
        change=lambda: patch(
            cluster, namespace, f"nm/{MODEL}", {"spec": {"source": {"python": {"args": {"hidden": 48}}}}}
        ),
        rolled=lambda nd: nd["status"]["model"]["cacheKey"] != key1,
    )
    runs = [max_delay, model]
    with capsys.disabled():
        print()
        for m in runs:
            print(m.line())
            print(f"  {m.evidence()}".replace("\n", "\n  "))

    for m in runs:
        if mode in SURGE_MODES:
            assert m.resolved == "surge", (
                f"{m.kind}: mode {mode} resolved to an in-place rollout (child Deployment strategy "
                f"{get(cluster, namespace, 'deployment', DEPLOYMENT)['spec']['strategy']}) on a node with spare "
                f"capacity\n{m.line()}"
            )
            assert m.lost == 0, f"{m.line()}\n{m.evidence()}"
        else:
            assert m.resolved == "in-place", m.line()
            # The old pod, terminating while no other is ready, answered with `Connection: close`: each client
            # opened its first connection and at least one more after that answer (8 seen on kind with 4 clients).
            assert m.result["connections"] >= 2 * LOAD_CONCURRENCY, m.line()
        r = m.result
        assert r["total"] == r["ok"] + sum(r["errors"].values()), r


# ------------------------------------------------------------------------------------------------ the client itself
class FlakyServer:
    """A local OIP v2 look-alike whose behaviour the test switches: ok, 503, drop (close the connection
    without answering), hang (answer after the client's timeout)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.release = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def infer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self.mode == "503":
            return web.json_response({"error": "shutting down"}, status=503)
        if self.mode == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if self.mode == "hang":
            await self.release.wait()
        return web.json_response({"id": body["id"], "model_name": "m", "outputs": [{"name": "y", "data": [1]}]})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v2/models/m/infer", self.infer)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def switch(self, mode: str) -> None:
        if self.mode == "hang":
            self.release.set()
        self.mode = mode

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def _eventually(predicate: Callable[[], bool], what: str) -> None:
    """Poll the client's counts (they change in its tasks, in this event loop) with a deadline."""
    try:
        async with asyncio.timeout(20):
            while not predicate():  # noqa: ASYNC110 - the counts have no event to wait on; polling them is the point
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_load_client_counts_every_failure(tmp_path: Path) -> None:
    flaky = FlakyServer()
    await flaky.start()
    stop_file = tmp_path / "stop"
    args = loadclient.parse_args(
        [
            f"--url=http://127.0.0.1:{flaky.port}/v2/models/m/infer",
            "--concurrency=2",
            "--interval-ms=5",
            "--timeout-s=0.5",
            f"--stop-file={stop_file}",
            "--progress-s=60",
        ]
    )
    tally = loadclient.Tally()
    task = asyncio.ensure_future(loadclient.run(args, tally))
    await _eventually(lambda: tally.ok >= 10, "OK answers")
    flaky.switch("503")
    await _eventually(lambda: tally.errors["http_503"] >= 5, "503s counted")
    flaky.switch("drop")
    await _eventually(lambda: tally.errors["server_disconnected"] >= 3, "dropped connections counted")
    flaky.switch("hang")
    await _eventually(lambda: tally.errors["timeout"] >= 2, "timeouts counted")
    flaky.switch("ok")
    ok = tally.ok
    await _eventually(lambda: tally.ok >= ok + 10, "OK answers again after the errors")
    await flaky.stop()
    await _eventually(lambda: tally.errors["connection_refused"] >= 3, "refused connections counted")
    stop_file.touch()
    result = await asyncio.wait_for(task, 10)

    assert result["event"] == "result"
    assert result["total"] == result["ok"] + sum(result["errors"].values()) == tally.total
    assert result["lost"] == result["total"] - result["ok"] > 0
    # Stopping the server also breaks the kept-alive connections it had: a request in flight then sees a
    # disconnect or a reset, which is loss too.
    required = {"http_503", "server_disconnected", "timeout", "connection_refused"}
    assert required <= set(result["errors"]) <= required | {"connection_reset"}, result["errors"]
    assert result["first_error"] <= result["last_error"]
    assert result["p50_ms"] is not None
    assert result["p50_ms"] <= result["p99_ms"]
    # Kept-alive: far fewer connections than requests, but a new one after every dropped or timed-out one.
    dropped = result["errors"]["server_disconnected"] + result["errors"]["timeout"]
    assert dropped <= result["connections"] < result["ok"]
    assert [s["kind"] for s in result["error_samples"]][:1] == ["http_503"]


def test_load_client_classifies_transport_errors() -> None:
    assert loadclient.classify(TimeoutError()) == "timeout"
    assert loadclient.classify(ConnectionResetError()) == "connection_reset"
    assert loadclient.classify(BrokenPipeError()) == "broken_pipe"
    assert loadclient.classify(ValueError()) == "ValueError"

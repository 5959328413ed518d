"""``neuron-operator``: the operator's command line.

``neuron-operator run`` starts the controllers: settings from ``NEURON_OPERATOR_*`` env vars (what the
Helm chart sets) overridden by flags; leader election on a Lease (so ``replicas: 2`` has one active
reconciler and a standby); ``/healthz`` (liveness) and ``/readyz`` (readiness) on the health port from the
start, standby or leader; Prometheus metrics (API writes, reconcile passes, ``neuron_operator_leader``).
``neuron-operator crds`` prints the generated CRDs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily

from neuron_operator.settings import OperatorSettings

if TYPE_CHECKING:
    from neuron_operator.leader import LeaderElector

log = logging.getLogger(__name__)


class _OperatorCollector:
    """Exports API writes (neuron_operator_api_writes_total{verb,kind}) and reconcile passes
    (neuron_operator_reconcile_passes_total{kind})."""

    def __init__(self, runtime: Any) -> None:
        self.kube = runtime.kube
        self.queue = runtime.queue

    def collect(self) -> Any:
        family = CounterMetricFamily(
            "neuron_operator_api_writes",
            "Kubernetes API write requests by verb and kind",
            labels=["verb", "kind"],
        )
        for (verb, kind), n in sorted(self.kube.writes.items()):
            family.add_metric([verb, kind], n)
        yield family
        passes = CounterMetricFamily(
            "neuron_operator_reconcile_passes", "Completed reconcile passes by kind", labels=["kind"]
        )
        for kind, n in sorted(self.queue.total_passes.items()):
            passes.add_metric([kind], n)
        yield passes


def _settings_from_args(args: argparse.Namespace) -> OperatorSettings:
    overrides: dict[str, Any] = {}
    if args.namespace:
        overrides["namespaces"] = args.namespace
    if args.runtime_image:
        overrides["runtime_image"] = args.runtime_image
    if args.no_leader_election:
        overrides["leader_election"] = False
    if args.compile_node_selector:
        overrides["compile_node_selector"] = json.loads(args.compile_node_selector)
    return OperatorSettings(**overrides)


class _Health:
    """What ``/healthz`` and ``/readyz`` answer; served from start, whether or not we hold the Lease."""

    def __init__(self) -> None:
        self.lost = False  # leadership lost: liveness fails, so a leader stuck in shutdown is restarted
        self.stopping = False
        self.leading = False


async def _serve_health(port: int, health: _Health) -> Any:
    """``/healthz`` (liveness: the event loop answers; 500 once leadership is lost) and ``/readyz`` (ready as a
    standby and as the leader; 503 while shutting down) on ``port``. Returns the aiohttp runner to clean up."""
    from aiohttp import web

    async def healthz(_: web.Request) -> web.Response:
        if health.lost:
            return web.Response(status=500, text="leadership lost\n")
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if health.lost or health.stopping:
            return web.Response(status=503, text="stopping\n")
        return web.Response(text="ok: leader\n" if health.leading else "ok: standby\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()  # the kubelet probes the pod IP
    return runner


@dataclass
class _Leadership:
    """The Lease side of one ``run``: its elector (None without leader election), the task renewing the Lease
    while this process leads, and whether leadership was lost."""

    gauge: Gauge  # neuron_operator_leader (set here only without leader election: the elector sets it otherwise)
    identity: str
    elector: LeaderElector | None = None
    holder: asyncio.Task[None] | None = None
    lost: bool = False


async def _cancelled(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has ended."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _wind_down(
    settings: OperatorSettings, runtime: Any, health: _Health, stop: asyncio.Event, lease: _Leadership
) -> None:
    """Once stopping: stop reconciling, then hand the Lease over (unless it was lost)."""
    await stop.wait()
    health.stopping, health.leading = True, False
    await runtime.queue.stop()
    if not lease.lost and lease.holder is not None:
        # No renewal after the release (it would take the Lease back, or make it conflict).
        await _cancelled(lease.holder)
    if lease.elector is not None and not lease.lost:
        await lease.elector.release()  # logs, never raises; nothing to do unless we hold the Lease
    if not settings.leader_election:
        lease.gauge.labels(lease.identity).set(0)


async def _watch_lease(runtime: Any, health: _Health, stop: asyncio.Event, lease: _Leadership) -> None:
    """Hold the Lease; once it is lost, fail liveness and stop (the work queue at once, kopf through ``stop``)."""
    assert lease.elector is not None
    try:
        await lease.elector.hold()
    except Exception:  # hold() does not raise; if it ever did, that is a lost leadership too
        log.exception("leader election failed")
    lease.lost = health.lost = True
    health.leading = False
    stop.set()  # kopf stops...
    await runtime.queue.stop()  # ...but reconciling stops now, not after kopf's graceful shutdown


async def _lead(runtime: Any, health: _Health, stop: asyncio.Event, lease: _Leadership) -> bool:
    """Become the leader: with an elector, wait as a standby for the Lease, then hold it (``lease.holder``).
    False when ``stop`` came first."""
    if lease.elector is None:
        lease.gauge.labels(lease.identity).set(1)
        return True
    log.info("standby as %s: waiting for the leader lease", lease.identity)
    acquire = asyncio.ensure_future(lease.elector.acquire())
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({acquire, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not acquire.done():
        await _cancelled(acquire)
        return False  # (an attempt that won just before the cancel is released on the way out)
    acquire.result()
    lease.holder = asyncio.ensure_future(_watch_lease(runtime, health, stop, lease))
    return True


async def run(settings: OperatorSettings, stop: asyncio.Event | None = None) -> int:
    """Run the operator until ``stop`` is set (exit code 0) or leadership is lost (exit code 1).

    The health endpoints answer from the start. With leader election a standby waits for the Lease and
    never starts kopf; the leader renews it while kopf reconciles. Leadership lost: the work queue stops at
    once (no pass starts again), then kopf. ``stop`` (SIGTERM/SIGINT): the queue stops and the Lease is
    released at once, so a standby takes over without waiting for kopf's graceful shutdown or for the Lease to
    expire (once the queue is stopped this process writes nothing: kopf's handlers only trigger the queue).
    """
    import kopf  # imported late: `neuron-operator --help` stays fast

    from neuron_operator import handlers
    from neuron_operator.leader import LEADER, LeaderElector

    stop = stop or asyncio.Event()
    runtime = await handlers.make_runtime(settings)
    with contextlib.suppress(ValueError):  # already registered (tests run several operators in-process)
        REGISTRY.register(_OperatorCollector(runtime))
    identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    health = _Health()
    server = await _serve_health(settings.health_port, health)
    lease = _Leadership(LEADER, identity)
    # Created before kopf starts, so kopf's shutdown leaves it alone (it cancels the tasks it saw appear).
    winding = asyncio.ensure_future(_wind_down(settings, runtime, health, stop, lease))
    try:
        if settings.leader_election:
            lease.elector = LeaderElector(
                runtime.kube,
                settings.leader_election_namespace,
                settings.leader_election_lease,
                identity,
                lease_duration=settings.lease_duration_seconds,
                renew_deadline=settings.renew_deadline_seconds,
                retry_period=settings.retry_period_seconds,
            )
        if not await _lead(runtime, health, stop, lease):
            return 0
        health.leading = True

        @kopf.on.startup()
        def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
            settings.peering.standalone = True  # leader election is ours (a Lease), not kopf's peering
            # No cluster-wide scanning of namespaces and CRDs: resources are resolved once at start-up (the
            # chart installs the CRDs first), so the operator needs no read access to namespaces or CRDs.
            settings.scanning.disabled = True
            settings.posting.level = logging.WARNING
            settings.watching.server_timeout = 300
            settings.networking.request_timeout = 60

        # kopf replaces our SIGTERM/SIGINT handlers with its own while it runs; a signal then stops kopf, whose
        # cleanup (early in its shutdown) sets `stop`: the Lease is handed over before kopf has finished.
        @kopf.on.cleanup(id=f"neuron-operator-stopping-{id(stop)}")
        async def _stopping(**_: Any) -> None:
            stop.set()

        if not stop.is_set():
            await kopf.operator(
                clusterwide=not settings.namespaces,
                namespaces=settings.namespaces,
                memo=kopf.Memo(runtime=runtime),
                stop_flag=stop,
                standalone=True,
            )
        return 1 if lease.lost else 0
    finally:
        stop.set()
        await winding
        if lease.holder is not None:
            await _cancelled(lease.holder)
        await runtime.kube.client.close()
        await server.cleanup()


async def _run_until_signalled(settings: OperatorSettings) -> int:
    """``run`` with SIGTERM/SIGINT setting its stop event (graceful: stop reconciling, release the Lease)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await run(settings, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="neuron-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run the controllers (settings: NEURON_OPERATOR_* env, flags win)")
    run_p.add_argument("--namespace", action="append", help="watch only this namespace (repeatable)")
    run_p.add_argument("--runtime-image")
    run_p.add_argument("--compile-node-selector", help='JSON object, e.g. {"kubernetes.io/os":"linux"}')
    run_p.add_argument("--no-leader-election", action="store_true")
    run_p.add_argument("--verbose", action="store_true", help="log at DEBUG, HTTP clients included")
    run_p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default: INFO")
    run_p.add_argument("--log-format", choices=["text", "json"], help="default: text; json = one object a line")
    sub.add_parser("crds", help="print the CustomResourceDefinitions (YAML)")
    args = parser.parse_args(argv)
    if args.command == "crds":
        from neuron_operator import crdgen

        sys.stdout.write("---\n".join(crdgen.render().values()))
        return 0
    from neuron_operator import logs

    settings = _settings_from_args(args)
    log_flags = {"log_level": "DEBUG" if args.verbose else args.log_level, "log_format": args.log_format}
    settings = settings.model_copy(update={k: v for k, v in log_flags.items() if v is not None})
    logs.configure(settings.log_level, settings.log_format)
    start_http_server(settings.metrics_port)
    return asyncio.run(_run_until_signalled(settings))


if __name__ == "__main__":
    sys.exit(main())

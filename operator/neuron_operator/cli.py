"""``neuron-operator``: the operator's command line.

``neuron-operator run`` starts the controllers: settings from ``NEURON_OPERATOR_*`` env vars (what the
Helm chart sets) overridden by flags; leader election on a Lease (so ``replicas: 2`` has one active
reconciler); kopf's liveness endpoint on ``/healthz``; Prometheus metrics (API writes, reconcile passes).
``neuron-operator crds`` prints the generated CRDs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
from typing import Any

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import CounterMetricFamily

from neuron_operator.settings import OperatorSettings


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


async def run(settings: OperatorSettings, stop: asyncio.Event | None = None) -> int:
    """Run the operator until ``stop`` is set or leadership is lost (exit code 1)."""
    import kopf  # imported late: `neuron-operator --help` stays fast

    from neuron_operator import handlers
    from neuron_operator.leader import LeaderElector

    runtime = await handlers.make_runtime(settings)
    with contextlib.suppress(ValueError):  # already registered (tests run several operators in-process)
        REGISTRY.register(_OperatorCollector(runtime))
    stop = stop or asyncio.Event()
    lost = False
    holder: asyncio.Task[None] | None = None
    if settings.leader_election:
        identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        elector = LeaderElector(
            runtime.kube,
            settings.leader_election_namespace,
            settings.leader_election_lease,
            identity,
            lease_duration=settings.lease_duration_seconds,
            renew_deadline=settings.renew_deadline_seconds,
            retry_period=settings.retry_period_seconds,
        )
        acquire = asyncio.ensure_future(elector.acquire())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({acquire, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not acquire.done():
            acquire.cancel()
            return 0

        async def watch_lease() -> None:
            nonlocal lost
            await elector.hold()
            lost = True
            stop.set()

        holder = asyncio.ensure_future(watch_lease())

    @kopf.on.startup()
    def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.standalone = True  # leader election is ours (a Lease), not kopf's peering
        # No cluster-wide scanning of namespaces and CRDs: resources are resolved once at start-up (the
        # chart installs the CRDs first), so the operator needs no read access to namespaces or CRDs.
        settings.scanning.disabled = True
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 60

    try:
        await kopf.operator(
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            memo=kopf.Memo(runtime=runtime),
            stop_flag=stop,
            liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
            standalone=True,
        )
    finally:
        if holder is not None:
            holder.cancel()
        await runtime.queue.stop()
        await runtime.kube.client.close()
    return 1 if lost else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="neuron-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run the controllers (settings: NEURON_OPERATOR_* env, flags win)")
    run_p.add_argument("--namespace", action="append", help="watch only this namespace (repeatable)")
    run_p.add_argument("--runtime-image")
    run_p.add_argument("--compile-node-selector", help='JSON object, e.g. {"kubernetes.io/os":"linux"}')
    run_p.add_argument("--no-leader-election", action="store_true")
    run_p.add_argument("--verbose", action="store_true")
    sub.add_parser("crds", help="print the CustomResourceDefinitions (YAML)")
    args = parser.parse_args(argv)
    if args.command == "crds":
        from neuron_operator import crdgen

        sys.stdout.write("---\n".join(crdgen.render().values()))
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = _settings_from_args(args)
    start_http_server(settings.metrics_port)
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())

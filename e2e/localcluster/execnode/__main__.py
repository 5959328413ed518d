"""``python -m localcluster.execnode run|cleanup``: the command ``LocalCluster`` starts for the exec node."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localcluster.execnode", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="register the node and run its pods until SIGTERM")
    run.add_argument("--kubeconfig", type=Path, required=True)
    run.add_argument("--node-name", default="local-exec")
    run.add_argument("--state-dir", type=Path, required=True)
    run.add_argument("--cores", type=int, default=4, help="NeuronCores to advertise")
    run.add_argument("--pod-cidr", default="10.241.0.0/24")
    run.add_argument("--apiserver-port", type=int, required=True)
    run.add_argument("--backoff-base", type=float, default=10.0, help="first restart back-off in seconds")
    clean = sub.add_parser("cleanup", help="remove pod processes, namespaces, veths and the bridge")
    clean.add_argument("--state-dir", type=Path, required=True)
    clean.add_argument("--pod-cidr", default="10.241.0.0/24")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from localcluster.execnode.agent import Agent, Config, cleanup
    from localcluster.execnode.network import CidrInUse, names

    try:
        names(args.pod_cidr)
    except ValueError as exc:
        parser.error(f"--pod-cidr: {exc}")
    if args.command == "cleanup":
        for line in cleanup(args.state_dir, args.pod_cidr):
            print(f"execnode cleanup: removed {line}", file=sys.stderr)
        return 0
    if args.cores < 0:
        parser.error("--cores: must be >= 0")
    cfg = Config(
        kubeconfig=args.kubeconfig,
        node_name=args.node_name,
        state_dir=args.state_dir,
        cores=args.cores,
        pod_cidr=args.pod_cidr,
        apiserver_port=args.apiserver_port,
        backoff_base=args.backoff_base,
    )
    try:
        asyncio.run(Agent(cfg).run())
    except CidrInUse as exc:
        print(f"execnode: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

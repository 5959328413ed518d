"""``python -m localcluster up|down|status|env``: the command behind ``make cluster-up``/``cluster-down``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from localcluster.cluster import ClusterConfig, LocalCluster, free_pod_cidr
from localcluster.tools import ensure_tools


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localcluster", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "build"])
    parser.add_argument("--state-dir", type=Path, default=Path(".cluster"), help="default: .cluster")
    parser.add_argument("--no-exec-node", action="store_true", help="skip the local exec node")
    parser.add_argument("--exec-node-cores", type=int, default=4)
    parser.add_argument("--exec-pod-cidr", default=None, help="default: the first free 10.241.N.0/24")
    args = parser.parse_args(argv)

    if args.command == "build":
        ensure_tools()
        return 0
    cluster = LocalCluster(
        ClusterConfig(
            state_dir=args.state_dir,
            exec_node=not args.no_exec_node,
            exec_node_cores=args.exec_node_cores,
            exec_pod_cidr=args.exec_pod_cidr or free_pod_cidr(),
        )
    )
    if args.command == "up":
        cluster.up()
        print(f"export KUBECONFIG={cluster.kubeconfig.resolve()}")
    elif args.command == "down":
        cluster.down()
    else:
        if not (args.state_dir / "cluster.json").exists():
            print("no cluster", file=sys.stderr)
            return 1
        print(json.dumps(cluster.load().status(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

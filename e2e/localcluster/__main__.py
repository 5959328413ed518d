"""``python -m localcluster up|down|status|build``: the command behind ``make cluster-up``/``cluster-down``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from localcluster.kind import KindCluster, KindConfig, docker_env, ensure_assets
from localcluster.s3 import DEV_PORTS, REGION

DEFAULT_NAME = "neuron-dev"


def cluster_for(state_dir: Path, name: str) -> KindCluster:
    """The cluster whose state is in ``state_dir`` (a new one: the dev cluster's fixed S3 ports)."""
    meta = state_dir / "cluster.json"
    if meta.exists():
        name = json.loads(meta.read_text())["name"]
    return KindCluster(KindConfig(name=name, state_dir=state_dir, s3_ports=DEV_PORTS))


def print_exports(cluster: KindCluster) -> None:
    """What ``make cluster-up`` prints: shell lines (comments for the S3 endpoint, whose keys stay in a file)."""
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    s3 = cluster.s3
    print(f"# S3 (SeaweedFS) endpoint for this machine and pods: {s3.endpoint_url} (region {REGION})")
    print(f"# S3 keys (identities admin, reader): {s3.state_file}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localcluster", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "build"])
    parser.add_argument("--state-dir", type=Path, default=Path(".cluster"), help="default: .cluster")
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"kind cluster name (default: {DEFAULT_NAME})")
    args = parser.parse_args(argv)

    if args.command == "build":
        assets = ensure_assets(docker_env())
        print(json.dumps({k: str(v) for k, v in vars(assets).items() if k != "tools"}, indent=2))
        return 0
    cluster = cluster_for(args.state_dir, args.name)
    if args.command == "up":
        if cluster.exists():
            if cluster.alive():
                cluster.ensure_images()
                cluster.ensure_s3()
                print_exports(cluster)
                return 0
            cluster.down()
        cluster.up()
        print_exports(cluster)
    elif args.command == "down":
        cluster.down()
    else:
        if not cluster.exists():
            print("no cluster", file=sys.stderr)
            return 1
        print(json.dumps(cluster.status(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m neuron_sdk_sim install --sdk {2.24.0|2.31.1} --dest DIR``: install the SIMULATED Neuron SDK."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from neuron_sdk_sim import _install_info, _versions
from neuron_sdk_sim._install import install


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m neuron_sdk_sim",
        description="SIMULATED AWS Neuron PyTorch SDK (torch-neuronx, torch-neuron) for local testing only",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    inst = commands.add_parser("install", help="install the simulated SDK into a directory (e.g. site-packages)")
    inst.add_argument("--sdk", required=True, choices=_versions.SDKS, help="Neuron SDK release to simulate")
    inst.add_argument("--dest", required=True, type=Path, help="target directory (created if missing)")
    args = parser.parse_args(argv)
    install(args.dest, args.sdk)
    record = _install_info.read(args.dest.resolve())
    versions = ", ".join(f"{dist} {version}" for dist, version in record["versions"].items())
    print(f"installed the SIMULATED Neuron SDK {args.sdk} into {args.dest} ({versions})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Installer of the simulated Neuron SDK into a directory (a site-packages, or any dir put on PYTHONPATH).

Writes ``torch_neuronx`` (with ``torch_neuronx.experimental``), ``torch_neuron``, a copy of ``neuron_sdk_sim`` with
``_installed.json`` (the SDK release, hence the packages' shape), and minimal ``*.dist-info/METADATA`` for
torch-neuronx, neuronx-cc, torch-neuron and neuron-cc so ``importlib.metadata.version`` answers. Idempotent: a
previous install in the same directory (any SDK) is replaced. No torch import here.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from neuron_sdk_sim import _install_info, _versions

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES = PACKAGE_DIR / "_templates"
PACKAGES = ("torch_neuronx", "torch_neuron")
DISTRIBUTIONS = ("torch-neuronx", "neuronx-cc", "torch-neuron", "neuron-cc")
_SUMMARY = "SIMULATED Neuron SDK package (neuron_sdk_sim) - local testing only, never released; not AWS's {dist}"


def _dist_dir_name(dist: str, version: str) -> str:
    return f"{re.sub(r'[-_.]+', '_', dist)}-{version}.dist-info"


def install(dest: Path, sdk: str) -> None:
    """Install the simulated Neuron SDK release ``sdk`` (one of ``SDKS``) into ``dest``."""
    if sdk not in _versions.SDKS:
        raise ValueError(f"unknown simulated Neuron SDK {sdk!r}: one of {', '.join(_versions.SDKS)}")
    dest = Path(dest).resolve()
    if dest == PACKAGE_DIR.parent:
        raise ValueError(f"{dest} is the simulator's source tree: install somewhere else")
    dest.mkdir(parents=True, exist_ok=True)
    for name in (*PACKAGES, "neuron_sdk_sim"):
        shutil.rmtree(dest / name, ignore_errors=True)
    for dist in DISTRIBUTIONS:
        for old in dest.glob(_dist_dir_name(dist, "*")):
            shutil.rmtree(old, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "_templates", _install_info.INSTALLED_FILE)
    shutil.copytree(PACKAGE_DIR, dest / "neuron_sdk_sim", ignore=ignore)
    for name in PACKAGES:
        shutil.copytree(TEMPLATES / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    versions = _versions.simulated_versions(sdk)
    record = {
        "simulated": "neuron_sdk_sim: SIMULATED Neuron SDK - local testing only, never released",
        "sdk": sdk,
        "placement_ga": _versions.placement_ga(sdk),
        "auto_cast_default": _versions.default_auto_cast(sdk),
        "versions": versions,
        "upstream_versions": _versions.UPSTREAM[sdk],
    }
    (dest / "neuron_sdk_sim" / _install_info.INSTALLED_FILE).write_text(json.dumps(record, indent=2) + "\n")
    for dist in DISTRIBUTIONS:
        info = dest / _dist_dir_name(dist, versions[dist])
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: {versions[dist]}\nSummary: {_SUMMARY.format(dist=dist)}\n"
        )
        (info / "INSTALLER").write_text("neuron_sdk_sim\n")

"""Which simulated Neuron SDK release an installed ``torch_neuronx`` / ``torch_neuron`` belongs to (no torch).

The installer writes ``neuron_sdk_sim/_installed.json`` beside the packages it installs; the simulated packages
read it from the ``neuron_sdk_sim`` directory next to themselves, so the shape is that of the install they belong
to even when another copy of ``neuron_sdk_sim`` (e.g. its source tree) was imported first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

INSTALLED_FILE = "_installed.json"

#: "record" -> the install record of the simulated package imported in this process (at most one).
_active: dict[str, dict[str, Any]] = {}


def read(site: Path) -> dict[str, Any]:
    """The install record of the simulated SDK installed into ``site`` (a site-packages-like directory)."""
    path = site / "neuron_sdk_sim" / INSTALLED_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RuntimeError(
            f"{path} is missing: this simulated Neuron SDK package was not installed with "
            "`python -m neuron_sdk_sim install --sdk <version> --dest <dir>`"
        ) from None
    return data


def activate(package_file: str) -> dict[str, Any]:
    """Called by the simulated ``torch_neuronx`` / ``torch_neuron`` at import: their install record."""
    data = read(Path(package_file).resolve().parent.parent)
    current = _active.get("record")
    if current is not None and current["sdk"] != data["sdk"]:
        raise RuntimeError(
            f"simulated Neuron SDK {data['sdk']} imported after {current['sdk']} in the same process: "
            "use one install per process (e.g. a subprocess per SDK)"
        )
    _active["record"] = data
    return data


def active() -> dict[str, Any]:
    if "record" not in _active:
        raise RuntimeError(
            "the simulated Neuron SDK is not active: import torch_neuronx or torch_neuron from a directory "
            "written by `python -m neuron_sdk_sim install`"
        )
    return _active["record"]


def deactivate() -> None:
    _active.clear()

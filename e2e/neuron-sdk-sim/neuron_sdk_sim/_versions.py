"""Distribution versions the simulated Neuron SDK writes into its ``*.dist-info`` (no torch import here).

Every number is the real one of that AWS Neuron SDK release where a source was found; the simulator appends the
PEP 440 local label ``+neuronsim`` so that a manifest, cache key or ``pip list`` never mistakes a simulated
package for a real one. Sources (SDK = the aws-neuron/aws-neuron-sdk repository):

- SDK 2.24.0 (released 06/24/2025):
  - neuronx-cc 2.19.8089.0: SDK:release-notes/components/compiler.rst ("Neuron Compiler [2.19.8089.0]",
    dated 06/24/2025, the 2.24.0 release date).
  - torch-neuronx 2.7.0.2.8.6734: the SDK 2.24.0 package lists built from the release content (an "AWS Neuron
    SDK 2.24.0 Update Script", and optimum-neuron's setup.py pinning ``neuronx-cc==2.19.8089.0`` with
    ``torch-neuronx==2.7.0.2.8.6734+ac864f72``); consistent with SDK:release-notes/prev/2.25.0/nx-pytorch.rst
    (2.25.0 released ``2.7.0.2.9.*``, the next minor).
  - neuron-cc 1.24.0.0 and torch-neuron 1.13.1.2.11.13.0: NOT found in an official source. They come from a
    third-party table "manually extracted from the documentation" (Inf1 packages of SDK 2.24.0 and 2.25.0).
    SDK:release-notes/archive/torch-neuron.rst stops at ``1.*.*.2.11.6.0`` (SDK 2.20.0) and
    SDK:release-notes/archive/neuron-cc/neuron-cc.rst at 1.21.0.0; treat these two as plausible, not verified.
- SDK 2.31.1 (released 08/12/2026; SDK:release-notes/2.31.1.rst: only ``aws-neuron-tools`` changed since
  2.31.0, so the Python packages are those of 2.31.0):
  - neuronx-cc 2.26.6360.0 and torch-neuronx 2.9.0.2.15.32035:
    SDK:frameworks/torch/torch-neuronx/setup/pytorch-install-prev-u24.rst (tab "Neuron 2.31.0":
    ``pip install neuronx-cc==2.26.6360.0 torch-neuronx==2.9.0.2.15.32035``) and the rendered 2.31.0 release
    content page (release-notes/releasecontent.rst, "neuronx-cc-2.26.6360.0").
  - neuron-cc / torch-neuron: NOT found for 2.31.x (Inf1 packages were frozen long before; torch-neuron is
    archived, see SDK:archive/torch-neuron/api-compilation-python-api.rst). The simulator assumes the last
    known Inf1 versions above (1.24.0.0 / 1.13.1.2.11.13.0): a plausible choice, not a verified one.

torch-neuronx's real version is ``<torch version>.<neuron version>``. The simulated package runs on whatever torch
is installed, so its version uses the installed torch's ``major.minor.patch`` with the real neuron part (the real
full version is kept in ``_installed.json`` as ``upstream_versions``). torch-neuron keeps its real ``1.13.1``
prefix (it only ever existed for torch <= 1.13).
"""

from __future__ import annotations

import importlib.metadata
import re

#: SDK releases the simulator can install.
SDKS = ("2.24.0", "2.31.1")
#: PEP 440 local version label on every simulated distribution.
LOCAL_LABEL = "neuronsim"

#: sdk -> distribution -> real upstream version.
UPSTREAM: dict[str, dict[str, str]] = {
    "2.24.0": {
        "torch-neuronx": "2.7.0.2.8.6734",
        "neuronx-cc": "2.19.8089.0",
        "torch-neuron": "1.13.1.2.11.13.0",  # third-party source only, see the module docstring
        "neuron-cc": "1.24.0.0",  # third-party source only, see the module docstring
    },
    "2.31.1": {
        "torch-neuronx": "2.9.0.2.15.32035",
        "neuronx-cc": "2.26.6360.0",
        "torch-neuron": "1.13.1.2.11.13.0",  # not published for 2.31.x: assumed unchanged (plausible choice)
        "neuron-cc": "1.24.0.0",  # not published for 2.31.x: assumed unchanged (plausible choice)
    },
}


def sdk_tuple(sdk: str) -> tuple[int, ...]:
    return tuple(int(part) for part in sdk.split("."))


def placement_ga(sdk: str) -> bool:
    """Core placement APIs are top-level (GA) from SDK 2.25 (SDK:release-notes/prev/2.25.0/nx-pytorch.rst)."""
    return sdk_tuple(sdk) >= (2, 25)


def default_auto_cast(sdk: str) -> str:
    """neuronx-cc's ``--auto-cast`` default: ``matmult`` before SDK 2.27, ``none`` since
    (SDK:release-notes/components/compiler.rst, "Neuron Compiler [2.15.54.0] (Neuron 2.27.0 Release)")."""
    return "none" if sdk_tuple(sdk) >= (2, 27) else "matmult"


def installed_torch_release() -> str | None:
    """``major.minor.patch`` of the installed torch distribution, without importing torch."""
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    return ".".join(match.groups()) if match else None


def simulated_versions(sdk: str) -> dict[str, str]:
    """Versions written into the dist-info of each simulated distribution for ``sdk``."""
    upstream = UPSTREAM[sdk]
    versions = {dist: f"{version}+{LOCAL_LABEL}" for dist, version in upstream.items()}
    torch_release = installed_torch_release()
    if torch_release is not None:
        neuron_part = upstream["torch-neuronx"].split(".", 3)[3]  # drop the upstream torch major.minor.patch
        versions["torch-neuronx"] = f"{torch_release}.{neuron_part}+{LOCAL_LABEL}"
    return versions

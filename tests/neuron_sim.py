"""Test helpers for the SIMULATED Neuron SDK (``e2e/neuron-sdk-sim``, package ``neuron_sdk_sim``).

- ``install_sim(dest, sdk)``: install ``torch_neuronx`` / ``torch_neuron`` / ``neuron_sdk_sim`` and their dist-info
  into ``dest`` (runs ``python -m neuron_sdk_sim install`` in a subprocess: no torch there, it takes well under a
  second). ``shared_sim(sdk)``: one install per test process, for tests that only need some install.
- ``sim_env(site, ...)``: an environment for a subprocess that should import the simulated SDK.
- ``simulated_device(root, visible_cores)``: a simulated Neuron device for this process (a ``neuron0`` file in a
  temporary device directory, ``NEURON_SIM_DEV_DIR``, ``NEURON_RT_VISIBLE_CORES``,
  ``NEURON_SIMULATED_DEVICE_PLUGIN=1``), environment restored afterwards; ``device_env`` is the same for a
  subprocess. ``no_device(root)``: an empty device directory, so a test never sees a real ``/dev/neuronN``.
- ``sim_imported(site)``: import the simulated SDK from ``site`` in this process and purge it afterwards
  (``torch_neuronx*``, ``torch_neuron*``, ``neuron_sdk_sim*`` leave ``sys.modules``, the simulated TorchScript
  ops are unregistered and ``torch.jit.load`` is unwrapped), so tests don't leak into each other. Modules compiled
  or loaded inside must not be called after it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
SIM_SRC = REPO / "e2e" / "neuron-sdk-sim"
SIM_PACKAGES = ("torch_neuronx", "torch_neuron", "neuron_sdk_sim")
DEFAULT_SDK = "2.31.1"

DEV_DIR_ENV = "NEURON_SIM_DEV_DIR"
VISIBLE_CORES_ENV = "NEURON_RT_VISIBLE_CORES"
SIMULATED_PLUGIN_ENV = "NEURON_SIMULATED_DEVICE_PLUGIN"
TARGET_OVERRIDE_ENV = "NEURON_PLATFORM_TARGET_OVERRIDE"
CALLS_FILE_ENV = "NEURON_SIM_CALLS_FILE"


def install_sim(dest: Path, sdk: str = DEFAULT_SDK) -> Path:
    """Install the simulated Neuron SDK release ``sdk`` into ``dest``; returns ``dest``."""
    result = subprocess.run(
        [sys.executable, "-m", "neuron_sdk_sim", "install", "--sdk", sdk, "--dest", str(dest)],
        env={**os.environ, "PYTHONPATH": str(SIM_SRC)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return dest


@functools.cache
def shared_sim(sdk: str = DEFAULT_SDK) -> Path:
    """One install of ``sdk`` per test process (in a temporary directory)."""
    return install_sim(Path(tempfile.mkdtemp(prefix=f"neuron-sdk-sim-{sdk}-")), sdk)


def sim_env(site: Path, base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``base`` (default: this process's environment) with ``site`` first on PYTHONPATH, plus ``extra``."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def make_device_dir(root: Path, devices: int = 1) -> Path:
    """A device directory with ``neuron0 .. neuron<devices-1>`` (empty files stand for the device nodes)."""
    dev = root / "dev"
    dev.mkdir(parents=True, exist_ok=True)
    for i in range(devices):
        (dev / f"neuron{i}").touch()
    return dev


def device_env(dev_dir: Path, visible_cores: str) -> dict[str, str]:
    """What the simulated device plugin gives a container: its devices and NEURON_RT_VISIBLE_CORES."""
    return {DEV_DIR_ENV: str(dev_dir), VISIBLE_CORES_ENV: visible_cores, SIMULATED_PLUGIN_ENV: "1"}


@contextlib.contextmanager
def _environ(values: Mapping[str, str | None]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def simulated_device(root: Path, visible_cores: str = "0-1", devices: int = 1) -> Iterator[Path]:
    """A simulated Neuron device for this process; yields the device directory."""
    dev = make_device_dir(root, devices)
    with _environ(device_env(dev, visible_cores)):
        yield dev


@contextlib.contextmanager
def no_device(root: Path) -> Iterator[Path]:
    """No Neuron device for this process: an empty device directory and no visible cores."""
    dev = root / "no-dev"
    dev.mkdir(parents=True, exist_ok=True)
    with _environ({DEV_DIR_ENV: str(dev), VISIBLE_CORES_ENV: None, SIMULATED_PLUGIN_ENV: None}):
        yield dev


@dataclass
class Sim:
    """The simulated SDK imported in this process."""

    site: Path
    sim: ModuleType  # neuron_sdk_sim
    torch_neuronx: ModuleType
    torch_neuron: ModuleType


def purge_sim() -> None:
    """Forget every simulated-SDK module of this process (and undo what importing them did to torch)."""
    runtime = sys.modules.get("neuron_sdk_sim._runtime")
    if runtime is not None:
        runtime.unload()
    info = sys.modules.get("neuron_sdk_sim._install_info")
    if info is not None:
        info.deactivate()
    for name in list(sys.modules):
        if name.split(".")[0] in SIM_PACKAGES:
            del sys.modules[name]
    torch = sys.modules.get("torch")
    if torch is not None and getattr(torch, "neuron", None) is not None:
        with contextlib.suppress(AttributeError):
            delattr(torch, "neuron")
    importlib.invalidate_caches()


@contextlib.contextmanager
def sim_imported(site: Path) -> Iterator[Sim]:
    """Import the simulated SDK installed in ``site`` (with ``site`` first on sys.path); purge it afterwards."""
    purge_sim()
    sys.path.insert(0, str(site))
    try:
        sim = importlib.import_module("neuron_sdk_sim")
        yield Sim(site, sim, importlib.import_module("torch_neuronx"), importlib.import_module("torch_neuron"))
    finally:
        purge_sim()
        with contextlib.suppress(ValueError):
            sys.path.remove(str(site))

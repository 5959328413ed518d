"""The project's local Kubernetes for tests, the demo and CI: a kind cluster built entirely on this machine.

kind nodes come from an image assembled here from Debian packages and Go modules (``e2e/kind/``); the
project's operator and runtime images are built from the ``Dockerfile`` and loaded into the nodes; a worker
is labelled and tainted like an EKS ``inf2.xlarge`` node whose NeuronCores a **simulated** Neuron device
plugin advertises; kwok attaches the simulated EC2 fleet (``fleet``) for cheap scheduling scenarios.

Public entry points: ``KindCluster`` (``kind``), ``python -m localcluster up|down|status|build``.
"""

from localcluster.kind import KindCluster, KindConfig

__all__ = ["KindCluster", "KindConfig"]

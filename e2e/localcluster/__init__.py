"""A real, local Kubernetes control plane for tests, the demo and CI — no Docker needed.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler are built from Go modules
(``build-tools.sh``) and run as plain processes on loopback; kwok simulates the Neuron fleet
(``fleet``); the local exec node (``execnode``) runs the pods bound to it as real host processes.

Public entry points: ``LocalCluster`` (``cluster``), ``python -m localcluster up|down|status``.
"""

from localcluster.cluster import ClusterConfig, LocalCluster

__all__ = ["ClusterConfig", "LocalCluster"]

"""The e2e suite needs nothing from tests/conftest.py: it talks to the cluster in KUBECONFIG with kubectl."""

"""Pure builders: desired Kubernetes objects (plain dicts) and status computed from typed inputs.

Nothing in this package performs I/O or imports kopf or a Kubernetes client: every function maps typed
inputs (the parsed custom resource, operator settings, observed child objects) to data, so each can be
tested against literal expected manifests.
"""

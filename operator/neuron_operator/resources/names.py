"""Deterministic names, the label vocabulary and owner references shared by every builder."""

from __future__ import annotations

import hashlib
from typing import Any, Final

from neuron_operator.api import API_VERSION, NeuronDeployment, NeuronModel

MANAGED_BY: Final = "app.kubernetes.io/managed-by"
OPERATOR: Final = "neuron-operator"
COMPONENT: Final = "app.kubernetes.io/component"
LABEL_MODEL: Final = "neuron.dev/model"
LABEL_DEPLOYMENT: Final = "neuron.dev/deployment"
LABEL_CACHE_KEY: Final = "neuron.dev/cache-key"
ANNOTATION_CACHE_KEY: Final = "neuron.dev/cache-key"
ANNOTATION_ARTIFACT_SHA: Final = "neuron.dev/artifact-sha256"
ANNOTATION_MODEL: Final = "neuron.dev/model"

#: Characters of the cache key used in names and label values (label values are at most 63 chars).
KEY_PREFIX_LEN: Final = 20


def compile_job_name(cache_key: str, storage: str = "") -> str:
    """The compile Job's name depends on the cache key and where the artifact goes: identical inputs with the same
    storage share one Job, and a retry or an operator restart hits AlreadyExists instead of creating a duplicate.
    ``storage`` is "" for the operator's default claim, else "<claim>/<path>" of spec.storage.pvc (a model with
    other storage must not read another storage's Job as its own)."""
    if not storage:
        return f"compile-{cache_key[:KEY_PREFIX_LEN]}"
    return f"compile-{cache_key[: KEY_PREFIX_LEN - 6]}-{hashlib.sha256(storage.encode()).hexdigest()[:5]}"


def cache_key_label(cache_key: str) -> str:
    return cache_key[:KEY_PREFIX_LEN]


def owner_reference(owner: NeuronModel | NeuronDeployment, *, controller: bool = True) -> dict[str, Any]:
    """An ownerReference to a neuron.dev object, so children are garbage-collected with it."""
    meta = owner.metadata
    if not (meta.name and meta.uid):
        raise ValueError(f"{owner.KIND} has no name or uid: an ownerReference needs both (read it from the apiserver)")
    return {
        "apiVersion": API_VERSION,
        "kind": owner.KIND,
        "name": meta.name,
        "uid": meta.uid,
        "controller": controller,
        "blockOwnerDeletion": controller,
    }


def common_labels(component: str) -> dict[str, str]:
    return {MANAGED_BY: OPERATOR, COMPONENT: component}

"""``subset.is_subset``: the comparison that lets ``Kube.apply`` skip a request when nothing we manage changed.

Observed objects carry more than we send (server defaults, status, other managers' fields), so extra map
keys are fine; lists must match item by item, so a removed, added or reordered item is drift.
"""

from __future__ import annotations

from typing import Any

import pytest

from neuron_operator.subset import is_subset

DESIRED = {
    "metadata": {"name": "bert", "labels": {"app": "bert"}},
    "spec": {
        "replicas": 2,
        "template": {
            "spec": {
                "containers": [{"name": "runtime", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}],
                "tolerations": [{"key": "aws.amazon.com/neuron", "operator": "Exists"}],
            }
        },
    },
}


def observed(**changes: Any) -> dict[str, Any]:
    """DESIRED as the apiserver returns it: defaults and status added."""
    obj: dict[str, Any] = {
        "metadata": {
            "name": "bert",
            "labels": {"app": "bert", "extra": "someone-else"},
            "resourceVersion": "42",
            "managedFields": [{"manager": "neuron-operator"}],
        },
        "spec": {
            "replicas": 2,
            "progressDeadlineSeconds": 600,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "runtime",
                            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                            "terminationMessagePath": "/dev/termination-log",
                            "imagePullPolicy": "IfNotPresent",
                        }
                    ],
                    "tolerations": [{"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"}],
                    "dnsPolicy": "ClusterFirst",
                }
            },
        },
        "status": {"replicas": 2},
    }
    for path, value in changes.items():
        target = obj
        *parents, last = path.split("__")
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        target[last] = value
    return obj


def test_extra_server_side_keys_are_fine() -> None:
    assert is_subset(DESIRED, observed())


def test_identical_objects() -> None:
    assert is_subset(DESIRED, DESIRED)
    assert is_subset({}, {"anything": 1})


@pytest.mark.parametrize(
    "drift",
    [
        {"spec__replicas": 3},
        {"metadata__labels": {"extra": "someone-else"}},  # our label removed
        {"spec__template__spec__containers": []},
        {"spec__template__spec__tolerations": []},
    ],
    ids=["scalar", "missing-key", "list-emptied", "list-item-removed"],
)
def test_changed_or_missing_values_are_drift(drift: dict[str, Any]) -> None:
    assert not is_subset(DESIRED, observed(**drift))


def test_list_length_drift() -> None:
    env = [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}, {"name": "C", "value": "3"}]
    obs = observed()
    obs["spec"]["template"]["spec"]["containers"][0]["env"] = env
    assert not is_subset(DESIRED, obs)  # an extra item (someone added an env var) is drift
    obs["spec"]["template"]["spec"]["containers"][0]["env"] = env[:1]
    assert not is_subset(DESIRED, obs)


def test_list_order_drift() -> None:
    obs = observed()
    obs["spec"]["template"]["spec"]["containers"][0]["env"].reverse()
    assert not is_subset(DESIRED, obs)


def test_nested_value_drift_deep_in_a_list() -> None:
    obs = observed()
    obs["spec"]["template"]["spec"]["containers"][0]["env"][1]["value"] = "changed"
    assert not is_subset(DESIRED, obs)


def test_items_of_lists_are_compared_as_subsets_too() -> None:
    # Server-defaulted keys inside list items (effect on a toleration) are fine.
    assert is_subset([{"key": "k"}], [{"key": "k", "effect": "NoSchedule"}])
    assert not is_subset([{"key": "k", "effect": "NoSchedule"}], [{"key": "k"}])


@pytest.mark.parametrize(
    ("desired", "obs"),
    [
        ({"a": {"b": 1}}, {"a": [1]}),  # a list where we want a map
        ({"a": [1]}, {"a": {"0": 1}}),  # a map where we want a list
        ({"a": {}}, {"a": None}),
        ({"a": None}, {}),  # a key we want (even null) must be there
        ({"a": 1}, None),
    ],
)
def test_type_mismatches_are_drift(desired: Any, obs: Any) -> None:
    assert not is_subset(desired, obs)


def test_scalars() -> None:
    assert is_subset("x", "x")
    assert is_subset(2, 2)
    assert is_subset(True, True)
    assert not is_subset("x", "y")
    assert not is_subset(None, "x")
    assert is_subset(None, None)


@pytest.mark.parametrize(
    ("desired", "stored"),
    [(2, "2"), ("0.5", "500m"), ("1024Mi", "1Gi")],
    ids=["integer", "decimal", "binary-suffix"],
)
def test_equal_quantities_in_different_spellings(desired: Any, stored: str) -> None:
    assert is_subset({"limits": {"cpu": desired}}, {"limits": {"cpu": stored}})

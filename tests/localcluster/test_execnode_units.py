"""Pure parts of the local exec node: ``$(VAR)`` expansion, env assembly, quantities, NeuronCore allocation,
IPAM and name derivation, volume rendering, probe thresholds. No cluster, no root."""

from __future__ import annotations

import base64
from fractions import Fraction

import pytest

from localcluster.execnode.cores import (
    AllocationError,
    CoreAllocator,
    devices_for,
    format_range,
    requested_cores,
)
from localcluster.execnode.env import (
    EnvError,
    command_line,
    container_env,
    expand,
    field_ref,
    kubernetes_service_env,
    parse_quantity,
    referenced_objects,
    resource_field_ref,
)
from localcluster.execnode.network import Ipam, bridge_ip, names
from localcluster.execnode.probes import ProbeState, resolve_port
from localcluster.execnode.volumes import VolumeError, render_configmap, render_downward, render_secret

POD = {
    "metadata": {
        "name": "p",
        "namespace": "ns",
        "uid": "u-1",
        "labels": {"app": "x", "tier": "web"},
        "annotations": {"note": 'say "hi"'},
    },
    "spec": {"nodeName": "local-exec", "serviceAccountName": "sa"},
    "status": {"podIP": "10.242.0.2", "hostIP": "10.242.0.1", "podIPs": [{"ip": "10.242.0.2"}]},
}


# ------------------------------------------------------------------ $(VAR)
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "1"),
        ("x$(A)y$(B)z", "x1y2z"),
        ("$$(A)", "$(A)"),  # escaped
        ("$(MISSING)", "$(MISSING)"),  # unknown: verbatim
        ("$(A", "$(A"),  # unterminated: verbatim
        ("$A", "$A"),  # not a reference
        ("a$", "a$"),
        ("$$$$", "$$"),
        ("$()", "$()"),
    ],
)
def test_expand_follows_kubelet(text: str, expected: str) -> None:
    assert expand(text, {"A": "1", "B": "2"}) == expected


def test_env_order_valuefrom_and_expansion() -> None:
    container = {
        "name": "c",
        "envFrom": [
            {"configMapRef": {"name": "cm"}, "prefix": "CM_"},
            {"secretRef": {"name": "missing", "optional": True}},
        ],
        "env": [
            {"name": "A", "value": "a"},
            {"name": "B", "value": "$(A)-$(CM_k)-$(KUBERNETES_SERVICE_HOST)-$(NOPE)"},
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "LBL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "CMV", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
            {"name": "SEC", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nokey", "optional": True}}},
            {
                "name": "MEM",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
        ],
        "resources": {"limits": {"memory": "1Gi", "cpu": "500m"}},
    }
    env = container_env(
        POD,
        container,
        configmaps={"cm": {"data": {"k": "v"}}},
        secrets={"s": {"data": {"pw": base64.b64encode(b"hunter2").decode()}}},
        base={"PATH": "/bin", "A": "base"},
        service_env=kubernetes_service_env("10.242.0.1", 443),
    )
    assert env["A"] == "a"
    assert env["B"] == "a-v-10.242.0.1-$(NOPE)"
    assert env["CM_k"] == "v"
    assert (env["NAME"], env["LBL"], env["IP"]) == ("p", "web", "10.242.0.2")
    assert (env["CMV"], env["SEC"]) == ("v", "hunter2")
    assert "OPT" not in env
    assert env["MEM"] == "1024"
    assert env["KUBERNETES_PORT_443_TCP"] == "tcp://10.242.0.1:443"
    assert env["PATH"] == "/bin"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}],
            "configMap 'nope' not found",
        ),
        (
            [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nokey"}}}],
            "key 'nokey' in secret 's'",
        ),
        ([{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}], "spec.bogus"),
    ],
)
def test_env_errors_name_the_field(env: list[dict], message: str) -> None:
    with pytest.raises(EnvError, match=message):
        container_env(POD, {"name": "c", "env": env}, configmaps={}, secrets={"s": {"data": {}}})


def test_field_ref_maps_only_in_volumes() -> None:
    assert field_ref(POD, "metadata.annotations", allow_maps=True) == 'note="say \\"hi\\""'
    with pytest.raises(EnvError):
        field_ref(POD, "metadata.labels")
    assert field_ref(POD, "spec.serviceAccountName") == "sa"
    assert field_ref(POD, "status.podIPs") == "10.242.0.2"


@pytest.mark.parametrize(
    ("q", "value"),
    [
        ("500m", Fraction(1, 2)),
        ("1Gi", 2**30),
        ("2", 2),
        ("1.5", Fraction(3, 2)),
        ("1e3", 1000),
        ("128974848", 128974848),
        ("129M", 129 * 10**6),
        ("100Ki", 102400),
    ],
)
def test_parse_quantity(q: str, value: Fraction) -> None:
    assert parse_quantity(q) == value


def test_parse_quantity_rejects_garbage() -> None:
    with pytest.raises(EnvError, match="invalid quantity"):
        parse_quantity("12 apples")


def test_resource_field_ref_rounds_up_and_falls_back_to_node() -> None:
    c = {"name": "c", "resources": {"limits": {"cpu": "1500m"}, "requests": {"cpu": "250m"}}}
    assert resource_field_ref(c, {"resource": "limits.cpu"}, {}) == "2"
    assert resource_field_ref(c, {"resource": "requests.cpu", "divisor": "1m"}, {}) == "250"
    assert resource_field_ref(c, {"resource": "limits.memory"}, {"memory": "2Gi"}) == str(2 * 2**30)
    assert resource_field_ref({"name": "c"}, {"resource": "requests.memory"}, {"memory": "2Gi"}) == "0"


def test_command_line_expands_and_requires_command() -> None:
    c = {"name": "c", "command": ["echo", "$(A)"], "args": ["$$(A)", "$(A)"]}
    assert command_line(c, {"A": "1"}) == ["echo", "1", "$(A)", "1"]
    with pytest.raises(EnvError, match="command: required"):
        command_line({"name": "c", "args": ["x"]}, {})


def test_referenced_objects() -> None:
    pod = {
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "envFrom": [{"secretRef": {"name": "s1"}}],
                    "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "c1", "key": "k"}}}],
                }
            ],
            "initContainers": [{"name": "i", "envFrom": [{"configMapRef": {"name": "c2"}}]}],
        }
    }
    assert referenced_objects(pod) == ({"c1", "c2"}, {"s1"})


# ------------------------------------------------------------------ NeuronCores
def test_cores_contiguous_first_fit_and_release() -> None:
    a = CoreAllocator(8)
    assert a.allocate("p1/c", 2) == (0, 2)
    assert a.allocate("p2/c", 3) == (2, 3)
    assert a.allocate("p1/c", 2) == (0, 2)  # idempotent
    a.release("p1/c")
    assert a.allocate("p3/c", 3) == (5, 3)  # the 2-core hole does not fit 3
    assert a.allocate("p4/c", 2) == (0, 2)
    with pytest.raises(AllocationError, match="contiguous"):
        a.allocate("p5/c", 2)
    a.release_prefix("p2/")
    assert a.allocate("p5/c", 3) == (2, 3)


def test_cores_device_alignment_and_persistence() -> None:
    a = CoreAllocator(8)
    a.allocate("x", 1)
    assert a.allocate("dev", 2, align=2) == (2, 2)
    b = CoreAllocator.from_json(a.to_json(), 8)
    assert b.in_use() == {"x": "0", "dev": "2-3"}
    assert CoreAllocator.from_json(a.to_json(), 2).in_use() == {"x": "0"}  # entries beyond the new total are dropped


def test_requested_cores_and_formats() -> None:
    assert requested_cores({"resources": {"limits": {"aws.amazon.com/neuroncore": "2"}}}) == (2, 1)
    assert requested_cores({"resources": {"limits": {"aws.amazon.com/neuron": 1}}}) == (2, 2)
    assert requested_cores({}) == (0, 1)
    with pytest.raises(ValueError, match="either"):
        requested_cores(
            {
                "name": "c",
                "resources": {"limits": {"aws.amazon.com/neuron": 1, "aws.amazon.com/neuroncore": 2}},
            }
        )
    assert (format_range(2, 1), format_range(2, 2), format_range(0, 4)) == ("2", "2-3", "0-3")
    assert (devices_for(4), devices_for(3), devices_for(1)) == (2, 2, 1)


# ------------------------------------------------------------------ network
def test_ipam_lowest_free_and_persistence() -> None:
    ipam = Ipam("10.242.0.0/29")  # hosts .1-.6; .1 is the bridge
    assert ipam.gateway == "10.242.0.1"
    got = [ipam.allocate(f"p{i}") for i in range(5)]
    assert got == [f"10.242.0.{i}" for i in range(2, 7)]
    with pytest.raises(RuntimeError, match="exhausted"):
        ipam.allocate("p5")
    ipam.release("p1")
    assert ipam.allocate("p6") == "10.242.0.3"
    assert Ipam.from_json("10.242.0.0/29", ipam.to_json()).allocations() == ipam.allocations()
    assert Ipam("10.242.0.0/29", {"bad": "10.9.9.9", "dup": "10.242.0.2", "dup2": "10.242.0.2"}).allocations() == {
        "dup": "10.242.0.2"
    }


def test_names_are_per_cidr_and_fit_linux_limits() -> None:
    a, b = names("10.241.0.0/24"), names("10.242.0.0/24")
    assert a.bridge != b.bridge
    assert a.netns_prefix != b.netns_prefix
    for n in (a, b):
        assert len(n.bridge) <= 15
        assert len(n.veth("10.241.0.254" if n is a else "10.242.0.254")) <= 15
    assert len(names("10.0.0.0/16").veth("10.0.255.254")) <= 15
    assert bridge_ip("10.242.0.0/24") == "10.242.0.1"
    with pytest.raises(ValueError, match="pod-cidr"):
        names("fd00::/64")


# ------------------------------------------------------------------ volumes
def test_render_configmap_secret_downward() -> None:
    cm = {"data": {"a": "1", "b": "2"}, "binaryData": {"bin": base64.b64encode(b"\x00\x01").decode()}}
    assert render_configmap(cm, {"name": "cm"}, 0o644, "v") == {
        "a": (b"1", 0o644),
        "b": (b"2", 0o644),
        "bin": (b"\x00\x01", 0o644),
    }
    assert render_configmap(cm, {"items": [{"key": "a", "path": "dir/x", "mode": 0o600}]}, 0o644, "v") == {
        "dir/x": (b"1", 0o600)
    }
    with pytest.raises(VolumeError, match="key 'zz'"):
        render_configmap(cm, {"items": [{"key": "zz", "path": "x"}]}, 0o644, "v")
    assert render_configmap(None, {"name": "cm", "optional": True}, 0o644, "v") == {}
    with pytest.raises(VolumeError, match="secret 's' not found"):
        render_secret(None, {"secretName": "s"}, 0o644, "v")
    files = render_downward(
        POD,
        {
            "items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}},
            ]
        },
        0o644,
        {},
        "v",
    )
    assert files["labels"][0] == b'app="x"\ntier="web"'
    assert files["ns"][0] == b"ns"


# ------------------------------------------------------------------ probes
def test_probe_thresholds() -> None:
    s = ProbeState(success_threshold=2, failure_threshold=3)
    assert [s.observe(ok) for ok in (True, True)] == [False, True]
    assert s.result is True
    assert [s.observe(ok) for ok in (False, False, True, False, False, False)] == [False] * 5 + [True]
    assert s.result is False


def test_resolve_named_port() -> None:
    c = {"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}
    assert resolve_port("http", c) == 8080
    assert resolve_port(81, c) == 81
    assert resolve_port("82", c) == 82
    with pytest.raises(ValueError, match="no port named"):
        resolve_port("grpc", c)

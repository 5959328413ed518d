"""crdgen: the checked-in CRDs are the generator's output, and that output is a structural, documented
schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from api_cases import REPO

from neuron_operator import crdgen

RENDERED = crdgen.render()
DOCS = {name: yaml.safe_load(text) for name, text in RENDERED.items()}

#: Where free-form (x-kubernetes-preserve-unknown-fields) content is allowed, and why (see the models).
PRESERVE_ALLOWED = {
    "spec.source.python.args",  # keyword arguments of a user function
    "spec.pod.affinity.nodeAffinity",  # core/v1 types, validated when the Deployment is written
    "spec.pod.affinity.podAffinity",
    "spec.pod.affinity.podAntiAffinity",
}


def schemas() -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]) for name, doc in DOCS.items()]


def walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, prop in node.get("properties", {}).items():
        out += walk(prop, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        out += walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += walk(node["additionalProperties"], f"{path}{{}}")
    return out


@pytest.mark.parametrize("directory", crdgen.CRD_DIRS, ids=str)
def test_checked_in_crds_match_the_generator(directory: Path) -> None:
    for name, text in RENDERED.items():
        path = REPO / directory / name
        assert path.is_file(), f"{path} missing: run `make crds`"
        assert path.read_text() == text, f"{path} is stale: run `make crds`"
    on_disk = {p.name for p in (REPO / directory).glob("neuron.dev_*.yaml")}
    assert on_disk == set(RENDERED)


def test_check_mode_reports_a_diff_and_write_mode_fixes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 1
    assert "+kind: CustomResourceDefinition" in capsys.readouterr().out
    assert crdgen.main(["--root", str(tmp_path)]) == 0
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 0
    stale = tmp_path / "charts/neuron-operator/crds/neuron.dev_neuronmodels.yaml"
    stale.write_text(stale.read_text().replace("shortNames:\n    - nm", "shortNames:\n    - nmx"))
    (tmp_path / "crds/neuron.dev_oldkind.yaml").write_text("old: true\n")
    capsys.readouterr()
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "-    - nmx" in out
    assert "neuron.dev_oldkind.yaml" in out
    crdgen.main(["--root", str(tmp_path)])
    assert not (tmp_path / "crds/neuron.dev_oldkind.yaml").exists()
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 0


def test_output_is_deterministic() -> None:
    assert crdgen.render() == RENDERED


@pytest.mark.parametrize(("name", "schema"), schemas(), ids=[n for n, _ in schemas()])
def test_schema_is_structural_and_documented(name: str, schema: dict[str, Any]) -> None:
    text = yaml.safe_dump(schema)
    assert "$ref" not in text
    assert "$defs" not in text
    assert "title:" not in text
    for path, node in walk(schema):
        if path == "metadata":
            assert node == {"type": "object"}  # the apiserver allows nothing else
            continue
        if path.endswith("{}") or (path.endswith("[]") and node.get("type") != "object"):
            continue  # map values and scalar list items: documented by the map or list
        assert "description" in node, f"{name}: {path or '<root>'} has no description"
        assert node.get("type") or node.get("x-kubernetes-int-or-string"), f"{name}: {path} has no type"
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{name}: {path}: anyOf only for int-or-string"
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}]
        assert node.get("additionalProperties") is not False, f"{name}: {path}"
        # OpenAPI v3 (what the apiserver reads): exclusive bounds are booleans beside minimum/maximum.
        for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if exclusive in node:
                assert node[exclusive] is True, f"{name}: {path}: {exclusive} must be a boolean"
                assert bound in node, f"{name}: {path}: {exclusive} without {bound}"
        assert node.get("nullable") is None, f"{name}: {path}: optional fields are omitted, not null"
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert path in PRESERVE_ALLOWED, f"{name}: {path}: preserve-unknown-fields not justified"
        # Bounded lists, maps and strings keep CEL cost estimates under the apiserver's budget.
        if node.get("type") == "array":
            assert "maxItems" in node, f"{name}: {path}: array without maxItems"
        if node.get("type") == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{name}: {path}: map without maxProperties"
        if node.get("type") == "string" and not {"enum", "format"} & node.keys() and path not in ("apiVersion", "kind"):
            assert "maxLength" in node or "pattern" in node, f"{name}: {path}: unbounded string"


@pytest.mark.parametrize(("name", "schema"), schemas(), ids=[n for n, _ in schemas()])
def test_cel_rules_name_fields(name: str, schema: dict[str, Any]) -> None:
    rules = [(path, r) for path, node in walk(schema) for r in node.get("x-kubernetes-validations", [])]
    assert rules, f"{name}: no CEL rules"
    for path, rule in rules:
        assert rule["rule"], path
        assert rule["message"], path
        message = rule["message"]
        assert any(token in message for token in ("spec.", "metadata.", "tolerations[]", "buckets.")), (
            path,
            message,
        )


def test_crd_metadata() -> None:
    model = DOCS["neuron.dev_neuronmodels.yaml"]["spec"]
    dep = DOCS["neuron.dev_neurondeployments.yaml"]["spec"]
    assert model["names"]["shortNames"] == ["nm"]
    assert dep["names"]["shortNames"] == ["nd"]
    assert model["names"]["categories"] == ["neuron"] == dep["names"]["categories"]
    assert model["group"] == dep["group"] == "neuron.dev"
    assert model["versions"][0]["subresources"] == {"status": {}}
    assert dep["versions"][0]["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    columns = [c["name"] for c in model["versions"][0]["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Target", "Ready", "Phase", "Artifact", "Age"]
    columns = [c["name"] for c in dep["versions"][0]["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Model", "Ready", "Cores/replica", "MaxBatch", "Load", "Canary", "Age"]


def test_defaults_and_enums_are_carried() -> None:
    spec = DOCS["neuron.dev_neuronmodels.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"
    ]
    compiler = spec["properties"]["compiler"]
    assert compiler["default"] == {
        "autoCast": "none",
        "autoCastType": "bf16",
        "optLevel": 2,
    }
    assert compiler["properties"]["autoCast"]["default"] == "none"
    assert compiler["properties"]["autoCast"]["enum"] == ["none", "matmult", "all"]
    assert spec["properties"]["target"]["enum"] == ["inf1", "inf2", "trn1", "trn2", "cpu"]
    assert spec["required"] == ["source", "inputs", "target"]
    assert spec["properties"]["inputs"]["x-kubernetes-list-type"] == "map"

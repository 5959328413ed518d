"""The builders take typed objects (the reconciler parses each object once); the tests keep their fixtures as the
dicts the apiserver returns. These parse a fixture, then call the real builder: nothing else."""

from __future__ import annotations

from typing import Any

from neuron_operator.api import NeuronDeployment, NeuronModel
from neuron_operator.resources import compile as compile_builders
from neuron_operator.resources import serving
from neuron_operator.resources.fit import PlacementPlan
from neuron_operator.settings import OperatorSettings


def build_compile_job(body: dict[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    return compile_builders.build_compile_job(NeuronModel.model_validate(body), settings)


def build_deployment(
    body: dict[str, Any],
    artifact: serving.ServedArtifact,
    plan: PlacementPlan,
    settings: OperatorSettings,
    rollout: tuple[int | str, int | str] = (1, 0),
) -> dict[str, Any]:
    return serving.build_deployment(NeuronDeployment.model_validate(body), artifact, plan, settings, rollout)


def build_service(body: dict[str, Any]) -> dict[str, Any]:
    return serving.build_service(NeuronDeployment.model_validate(body))


def build_pdb(body: dict[str, Any]) -> dict[str, Any]:
    return serving.build_pdb(NeuronDeployment.model_validate(body))

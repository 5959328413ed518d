#!/usr/bin/env bash
# For users WITH a normal Docker and a registry: the same code path as `make demo` / the test fixture
# (e2e/localcluster/kind.py), with public base images instead of the ones this project assembles offline:
# kind's public node image (and kind's own CNI) and the official Python image as the Dockerfile's base.
# Then the e2e suite runs against the demo's namespace.
#
#   e2e/kind-up.sh            # create (or reuse) the cluster, install the chart, run the demo and the e2e suite
#   e2e/kind-up.sh --delete   # remove it
#
# Not executed in this project's CI (its machines reach no image registry); `make demo` is.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${1:-} == --delete ]]; then exec make demo-down; fi
export NEURON_KIND_NODE_IMAGE="${NEURON_KIND_NODE_IMAGE:-kindest/node:v1.34.0}"
export PYTHON_IMAGE="${PYTHON_IMAGE:-python:3.11-slim-bookworm}"
make demo
KUBECONFIG="$PWD/.cluster/kubeconfig" NEURON_E2E_NAMESPACE=neuron-demo \
  NEURON_E2E_POD_NODE_SELECTOR='{"neuron.dev/local-exec": "true"}' .venv/bin/python -m pytest e2e/suite -v

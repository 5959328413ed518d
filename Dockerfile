# syntax=docker/dockerfile:1
#
# neuron-operator images, built from this repository (BuildKit required: the runtime flavour is chosen
# with a build argument in a FROM line).
#
#   target    image (chart value)                          entrypoint        contents
#   operator  neuron-operator (image.*)                    neuron-operator   base dependencies, no torch
#   runtime   neuron-runtime (runtimeImages.cpu)           neuron-runtime    RUNTIME_FLAVOR=cpu: CPU torch from PyPI
#             neuron-runtime-neuronx (runtimeImages.neuronx)                 RUNTIME_FLAVOR=neuronx: torch-neuronx
#             neuron-runtime-inf1 (runtimeImages.inf1)                       RUNTIME_FLAVOR=inf1: torch-neuron
#
#   docker build --target operator -t ghcr.io/neuron-dev/neuron-operator:0.1.0 .
#   docker build --target runtime --build-arg RUNTIME_FLAVOR=cpu -t ghcr.io/neuron-dev/neuron-runtime:0.1.0 .
#   docker build --target runtime --build-arg RUNTIME_FLAVOR=neuronx \
#                -t ghcr.io/neuron-dev/neuron-runtime-neuronx:0.1.0 .
#
# Layout: `builder` turns the source into one wheel (uv build) plus pip constraint files exported from
# uv.lock; `*-venv` stages install that wheel into /opt/venv; the final stages copy only /opt/venv (or, on
# the Neuron DLC whose Python and torch we must reuse, only the wheel). Final images run as uid/gid 65532,
# carry OCI labels, have no HEALTHCHECK (Kubernetes probes do that) and, except the Neuron DLC flavour
# (see below), no compiler.
#
# Base image pinning. PYTHON_IMAGE, NEURONX_BASE_IMAGE and INF1_BASE_IMAGE are full image references.
# Their defaults are tags, NOT digests: no registry could be queried where this file was written, and a
# digest we cannot verify would only look pinned. Release builds must pass digests, e.g. what a
# `make images` target should do:
#   digest=$(docker buildx imagetools inspect python:3.11-slim-bookworm --format '{{json .Manifest.Digest}}')
#   docker build --build-arg PYTHON_IMAGE="python:3.11-slim-bookworm@${digest//\"/}" ...
# and likewise for NEURONX_BASE_IMAGE / INF1_BASE_IMAGE, plus VERSION, REVISION, CREATED, SOURCE_URL for
# the labels.
#
# Flavours:
# - cpu: torch from TORCH_INDEX_URL (default the PyTorch CPU wheel index, so no CUDA libraries), pinned to
#   the versions in uv.lock through a constraints file (`torch==X` also matches `X+cpu`).
# - neuronx (inf2/trn1/trn2): FROM the Neuron deep-learning container (DLC). The DLC ships its own Python
#   (3.12, conda under /opt/conda), torch and torch-neuronx, all of which we keep: only our wheel and its
#   missing dependencies are installed, without uv.lock constraints (the lock pins a newer torch than the
#   DLC's). `pytorch-inference-neuronx` is not published from SDK 2.32, so the default is the last tag,
#   SDK 2.31.1; pin the SDK that matches the node AMI's Neuron driver. With a NEURONX_BASE_IMAGE that has no
#   torch_neuronx (a plain Python >= 3.11 image), TORCH_NEURONX_PACKAGES are installed from the Neuron pip
#   index (NEURON_PIP_INDEX_URL); that image can compile but needs the Neuron runtime library (apt package
#   aws-neuronx-runtime-lib) to serve on a device. The DLC keeps its build toolchain (build-essential,
#   cmake): removing it from a vendor image is not safe, so this flavour is the exception to "no compiler".
# - inf1: torch-neuron supports torch 1.13 on Python <= 3.10 only, while neuron-operator requires
#   Python >= 3.11 and torch >= 2.4 (pyproject). The stage exists so the build argument and the chart stay
#   stable, but it stops with that explanation until the runtime supports such an environment.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NEURONX_BASE_IMAGE=public.ecr.aws/neuron/pytorch-inference-neuronx:2.9.0-neuronx-py312-sdk2.31.1-ubuntu24.04
ARG INF1_BASE_IMAGE=public.ecr.aws/neuron/pytorch-inference-neuron:1.13.1-neuron-py310-sdk2.20.2-ubuntu20.04
ARG RUNTIME_FLAVOR=cpu

# ---------------------------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder
ARG UV_VERSION=0.13.8
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_NO_CACHE=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY operator/ operator/
COPY runtime/ runtime/
# Constraints (not requirements): the lock's versions for whatever each image installs; no dev groups.
RUN uv export --frozen --no-default-groups --no-emit-project --no-hashes --format requirements-txt \
        -o /dist/constraints-operator.txt \
 && uv export --frozen --no-default-groups --no-emit-project --no-hashes --format requirements-txt \
        --extra runtime -o /dist/constraints-runtime.txt \
 && uv build --wheel --out-dir /dist .

# -------------------------------------------------------------------------------- operator (no torch)
FROM builder AS operator-venv
# Base dependencies only: no `runtime` extra, so no torch in the operator image.
RUN python -m venv /opt/venv \
 && set -- /dist/neuron_operator-*.whl \
 && /opt/venv/bin/pip install --no-cache-dir --only-binary=:all: \
        -c /dist/constraints-operator.txt "$1"

FROM ${PYTHON_IMAGE} AS operator
ARG PYTHON_IMAGE
ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="neuron-operator" \
      org.opencontainers.image.description="Kubernetes operator that compiles PyTorch models for AWS NeuronCores and serves them" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
RUN groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --create-home --home-dir /home/nonroot \
        --shell /usr/sbin/nologin nonroot
COPY --from=operator-venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /home/nonroot
USER 65532:65532
HEALTHCHECK NONE
ENTRYPOINT ["neuron-operator"]

# ------------------------------------------------------------------------------------ runtime: cpu
FROM builder AS runtime-cpu-venv
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The `runtime` extra (torch, orjson); torch comes from the CPU index (its `+cpu` local version sorts
# above PyPI's CUDA build of the same version).
RUN python -m venv /opt/venv \
 && set -- /dist/neuron_operator-*.whl \
 && /opt/venv/bin/pip install --no-cache-dir --only-binary=:all: \
        --extra-index-url "${TORCH_INDEX_URL}" \
        -c /dist/constraints-runtime.txt "$1[runtime]"

FROM ${PYTHON_IMAGE} AS runtime-cpu
ARG PYTHON_IMAGE
LABEL org.opencontainers.image.base.name="${PYTHON_IMAGE}"
COPY --from=runtime-cpu-venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH}

# -------------------------------------------------------------------------------- runtime: neuronx
FROM ${NEURONX_BASE_IMAGE} AS runtime-neuronx
ARG NEURONX_BASE_IMAGE
ARG NEURON_PIP_INDEX_URL=https://pip.repos.neuron.amazonaws.com
# Used only when the base image lacks torch_neuronx; pin the versions of the SDK release you target.
ARG TORCH_NEURONX_PACKAGES="neuronx-cc==2.* torch-neuronx"
LABEL org.opencontainers.image.base.name="${NEURONX_BASE_IMAGE}"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=builder /dist/neuron_operator-*.whl /tmp/wheels/
# TORCH_NEURONX_PACKAGES is a space-separated list, so it is deliberately unquoted (SC2086). Versions
# are not pinned here (DL3013) on purpose: torch, torch-neuronx and friends are the DLC's own (kept as
# they are); TORCH_NEURONX_PACKAGES is the build argument that pins them otherwise; our wheel is a file.
# hadolint ignore=SC2086,DL3013
RUN if ! python3 -c "import torch_neuronx" 2>/dev/null; then \
        python3 -m pip install --no-cache-dir --extra-index-url "${NEURON_PIP_INDEX_URL}" \
            ${TORCH_NEURONX_PACKAGES}; \
    fi \
 && set -- /tmp/wheels/neuron_operator-*.whl \
 && python3 -m pip install --no-cache-dir --only-binary=:all: \
        --extra-index-url "${NEURON_PIP_INDEX_URL}" "$1[runtime]" \
 && rm -rf /tmp/wheels \
 && python3 -c "import torch_neuronx, neuron_runtime"

# ----------------------------------------------------------------------------------- runtime: inf1
FROM ${INF1_BASE_IMAGE} AS runtime-inf1
ARG INF1_BASE_IMAGE
ARG NEURON_PIP_INDEX_URL=https://pip.repos.neuron.amazonaws.com
# Used only when the base image lacks torch_neuron.
ARG TORCH_NEURON_PACKAGES="torch-neuron neuron-cc[tensorflow]"
LABEL org.opencontainers.image.base.name="${INF1_BASE_IMAGE}"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=builder /dist/neuron_operator-*.whl /tmp/wheels/
# TORCH_NEURON_PACKAGES is a space-separated list, so it is deliberately unquoted (SC2086); versions come
# from the base image or that build argument, and our wheel is a file (DL3013).
# hadolint ignore=SC2086,DL3013
RUN python3 -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
        'RUNTIME_FLAVOR=inf1: neuron-operator needs Python >= 3.11 and torch >= 2.4, but torch-neuron ' \
        '(Inf1) supports torch 1.13 on Python <= 3.10 only; see the header of this Dockerfile')" \
 && if ! python3 -c "import torch_neuron" 2>/dev/null; then \
        python3 -m pip install --no-cache-dir --extra-index-url "${NEURON_PIP_INDEX_URL}" \
            ${TORCH_NEURON_PACKAGES}; \
    fi \
 && set -- /tmp/wheels/neuron_operator-*.whl \
 && python3 -m pip install --no-cache-dir --only-binary=:all: \
        --extra-index-url "${NEURON_PIP_INDEX_URL}" "$1[runtime]" \
 && rm -rf /tmp/wheels \
 && python3 -c "import torch_neuron, neuron_runtime"

# --------------------------------------------------------------------------- runtime (final, any flavour)
# The base is one of the stages above, picked by RUNTIME_FLAVOR; a stage has no tag to pin (DL3006).
# hadolint ignore=DL3006
FROM runtime-${RUNTIME_FLAVOR} AS runtime
ARG RUNTIME_FLAVOR
ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="neuron-runtime-${RUNTIME_FLAVOR}" \
      org.opencontainers.image.description="neuron-operator runtime (compile Jobs and OIP v2 serving), flavour ${RUNTIME_FLAVOR}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --create-home --home-dir /home/nonroot \
        --shell /usr/sbin/nologin nonroot
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/nonroot
WORKDIR /home/nonroot
USER 65532:65532
HEALTHCHECK NONE
ENTRYPOINT ["neuron-runtime"]
CMD ["--help"]

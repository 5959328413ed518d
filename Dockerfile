# neuron-operator images, built from this repository (BuildKit required: RUN --mount, and the runtime flavour is
# chosen with a build argument in a FROM line). No `# syntax=` line on purpose: that line makes BuildKit pull a
# frontend image, and everything used here (RUN --mount=type=secret|cache|bind) is in the frontend built into
# Docker >= 20.10.
#
#   target    image (chart value)                          entrypoint        contents
#   operator  neuron-operator (image.*)                    neuron-operator   base dependencies, no torch
#   runtime   neuron-runtime (runtimeImages.cpu)           neuron-runtime    RUNTIME_FLAVOR=cpu: torch from PyPI
#             neuron-runtime-neuronx (runtimeImages.neuronx)                 RUNTIME_FLAVOR=neuronx: torch-neuronx
#             neuron-runtime-inf1 (runtimeImages.inf1)                       RUNTIME_FLAVOR=inf1: torch-neuron
#
#   docker build --target operator -t ghcr.io/neuron-dev/neuron-operator:0.1.0 .
#   docker build --target runtime --build-arg RUNTIME_FLAVOR=cpu -t ghcr.io/neuron-dev/neuron-runtime:0.1.0 .
#   docker build --target runtime --build-arg RUNTIME_FLAVOR=neuronx \
#                -t ghcr.io/neuron-dev/neuron-runtime-neuronx:0.1.0 .
#   make images   # this machine: a Debian-built base (e2e/kind/python-base.sh), see e2e/kind/build-images.sh
#
# Layout, chosen so that a source change rebuilds only small layers and never re-downloads torch:
# - `builder-base`: the base Python plus uv (in its own venv); the build tools live only in builder stages.
# - `locks`: from pyproject.toml + uv.lock only: constraints exported from the lock (`uv export --frozen`, no
#   dev groups) and the project's direct requirements (`requirements-*.in`, read from pyproject).
# - `*-deps`: install the third-party dependencies into /opt/venv with uv, from those two files only (not from
#   our source). BuildKit keys a COPY by content, so a pyproject edit that leaves them unchanged reuses the layer.
# - `builder`: our source -> one wheel (uv build).
# - final stages: COPY the dependency venv (one big layer that changes only with the lock), then install our
#   wheel with `pip --no-deps --no-index` from a bind mount of `builder` (one small layer; the wheel is not kept).
#   On the Neuron DLC, whose Python and torch we must reuse, only the wheel and its missing dependencies are
#   installed. Final images run as uid/gid 65532, carry OCI labels, have no HEALTHCHECK (Kubernetes probes do
#   that) and, except the Neuron DLC flavour (see below), no compiler.
#
# TLS-intercepting proxies: every RUN that downloads mounts the optional BuildKit secret `ca` over the system CA
# bundle, and builder stages point pip (PIP_CERT) and uv (SSL_CERT_FILE) at that path. Without the secret the
# image's own bundle is used; with `--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt` the build trusts the
# host's CAs, which never land in a layer (secrets are not part of the image or of the cache keys).
# The dependency venvs are installed with `uv pip install` (uv is a builder-only tool) through a BuildKit cache
# mount of uv's cache, so rebuilding them after a lock change downloads only what changed. Not pip: its HTTP
# cache keeps only responses with caching headers, and a TLS-intercepting proxy may strip them (this machine's
# does: pip re-downloaded all 3.5 GB of torch and nvidia-* wheels each time; uv reuses its cache by wheel).
#
# Base image pinning. PYTHON_IMAGE, NEURONX_BASE_IMAGE and INF1_BASE_IMAGE are full image references.
# Their defaults are tags, NOT digests: no registry could be queried where this file was written, and a
# digest we cannot verify would only look pinned. Release builds must pass digests, e.g.
#   digest=$(docker buildx imagetools inspect python:3.11-slim-bookworm --format '{{json .Manifest.Digest}}')
#   docker build --build-arg PYTHON_IMAGE="python:3.11-slim-bookworm@${digest//\"/}" ...
# and likewise for NEURONX_BASE_IMAGE / INF1_BASE_IMAGE, plus VERSION, REVISION, CREATED, SOURCE_URL for
# the labels. PYTHON_IMAGE may be any Debian-like image with python3 >= 3.11 (with venv), bash, groupadd/useradd
# and ca-certificates; `make images` passes one built from Debian packages (e2e/kind/python-base.sh).
#
# Flavours:
# - cpu: torch from PyPI by default, pinned to the versions in uv.lock through a constraints file. PyPI's Linux
#   torch is a CUDA build: it does not import without its nvidia-* wheels (libtorch_cuda.so links cuBLAS, cuDNN,
#   NCCL, ... directly), so this image is large: about 4.3 GB after pruning what only a GPU would load
#   (TORCH_CUDA_PRUNE, see the stage), 5.8 GB without. Where the PyTorch CPU wheel index is reachable,
#   `--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu` gives a lean image: its `X+cpu` wheel
#   sorts above PyPI's `X`, satisfies the lock's `torch==X` and needs no nvidia-* wheels.
# - neuronx (inf2/trn1/trn2): FROM the Neuron deep-learning container (DLC). The DLC ships its own Python
#   (3.12, conda under /opt/conda), torch and torch-neuronx, all of which we keep: only our wheel and its
#   missing dependencies are installed, without uv.lock constraints (the lock pins a newer torch than the
#   DLC's). `pytorch-inference-neuronx` is not published from SDK 2.32, so the default is the last tag,
#   SDK 2.31.1; pin the SDK that matches the node AMI's Neuron driver. With a NEURONX_BASE_IMAGE that has no
#   torch_neuronx (a plain Python >= 3.11 image), TORCH_NEURONX_PACKAGES are installed from the Neuron pip
#   index (NEURON_PIP_INDEX_URL); that image can compile but needs the Neuron runtime library (apt package
#   aws-neuronx-runtime-lib) to serve on a device. The DLC keeps its build toolchain (build-essential,
#   cmake): removing it from a vendor image is not safe, so this flavour is the exception to "no compiler".
# - inf1: FROM the Inf1 DLC (pytorch-inference-neuron, Python 3.10, torch 1.13.1, torch-neuron and neuron-cc;
#   torch-neuron supports torch 1.13 on Python <= 3.10 only). The runtime supports that environment (pyproject:
#   requires-python >= 3.10 for the runtime, torch >= 1.13 on Python 3.10; the operator itself needs 3.11+). As
#   for neuronx, the DLC's Python and Neuron stack are kept: our wheel and its missing dependencies are
#   installed with the image's torch, torch-neuron, neuron-cc and numpy pinned to the versions the image has
#   (INF1_KEEP_PACKAGES), so pip can add packages but never replace those; `pip check` must not report any
#   problem the base image did not already have. With an INF1_BASE_IMAGE that lacks torch_neuron (a plain
#   Python 3.10 image), TORCH_NEURON_PACKAGES come from the Neuron pip index first.
#   NOT BUILT OR RUN HERE: no registry and no Neuron pip index are reachable from where this file was written,
#   and no Inf1 device either, so this stage has been checked by hadolint and tests/packaging/test_dockerfile.py
#   only. The runtime's Python-3.10 code is checked statically (`make lint`) and its configuration models run
#   under a real Python 3.10 in tests/runtime/test_runtime_py310.py; torch 1.13 itself is never imported here.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NEURONX_BASE_IMAGE=public.ecr.aws/neuron/pytorch-inference-neuronx:2.9.0-neuronx-py312-sdk2.31.1-ubuntu24.04
ARG INF1_BASE_IMAGE=public.ecr.aws/neuron/pytorch-inference-neuron:1.13.1-neuron-py310-sdk2.20.2-ubuntu20.04
ARG RUNTIME_FLAVOR=cpu

# ----------------------------------------------------------------------------------------- builder-base
FROM ${PYTHON_IMAGE} AS builder-base
ARG UV_VERSION=0.13.8
# The CA paths are where the optional `ca` secret is mounted (see the header); they exist in the base anyway.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    UV_PYTHON_DOWNLOADS=never \
    UV_CACHE_DIR=/root/.cache/uv \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN --mount=type=secret,id=ca,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/uv \
 && /opt/uv/bin/pip install "uv==${UV_VERSION}" \
 && ln -s /opt/uv/bin/uv /usr/local/bin/uv

# ------------------------------------------------------------------------------------------------ locks
FROM builder-base AS locks
WORKDIR /src
COPY pyproject.toml uv.lock ./
# Constraints (not requirements): the lock's versions for whatever each image installs; no dev groups.
# Requirements: the project's direct dependencies (plus the `runtime` extra), so that an index with other
# builds of torch (TORCH_INDEX_URL) decides which of the lock's packages are needed.
RUN mkdir /locks \
 && uv export --frozen --no-default-groups --no-emit-project --no-hashes --format requirements-txt \
        -o /locks/constraints-operator.txt \
 && uv export --frozen --no-default-groups --no-emit-project --no-hashes --format requirements-txt \
        --extra runtime --extra grpc -o /locks/constraints-runtime.txt \
 && python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
        base, extras = p["dependencies"], p["optional-dependencies"]; \
        open("/locks/requirements-operator.in", "w").write("\n".join(base) + "\n"); \
        runtime = base + extras["runtime"] + extras["grpc"]; \
        open("/locks/requirements-runtime.in", "w").write("\n".join(runtime) + "\n")'

# ---------------------------------------------------------------------------------------------- builder
FROM builder-base AS builder
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY operator/ operator/
COPY runtime/ runtime/
RUN --mount=type=secret,id=ca,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=cache,target=/root/.cache/uv \
    uv build --wheel --out-dir /dist .

# -------------------------------------------------------------------------------- operator (no torch)
FROM builder-base AS operator-deps
COPY --from=locks /locks/requirements-operator.in /locks/constraints-operator.txt /locks/
# Base dependencies only: no `runtime` extra, so no torch in the operator image. The venv keeps its own pip
# (the final stage installs our wheel with it); bytecode is compiled now (UV_COMPILE_BYTECODE), as pip would.
RUN --mount=type=secret,id=ca,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=cache,target=/root/.cache/uv \
    python3 -m venv /opt/venv \
 && uv pip install --python /opt/venv/bin/python --only-binary=:all: \
        -c /locks/constraints-operator.txt -r /locks/requirements-operator.in

FROM ${PYTHON_IMAGE} AS operator
RUN groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --create-home --home-dir /home/nonroot \
        --shell /usr/sbin/nologin nonroot
COPY --from=operator-deps /opt/venv /opt/venv
# Our wheel only (its dependencies are the layer above); `pip check` proves the two agree.
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    set -- /dist/neuron_operator-*.whl \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps --no-index "$1" \
 && /opt/venv/bin/pip check
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Labels last: a new VERSION/REVISION changes no filesystem layer.
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
WORKDIR /home/nonroot
USER 65532:65532
HEALTHCHECK NONE
ENTRYPOINT ["neuron-operator"]

# ------------------------------------------------------------------------------------ runtime: cpu
FROM builder-base AS runtime-cpu-deps
# Empty: PyPI only. Set it to https://download.pytorch.org/whl/cpu for the lean CPU-only torch (see header).
ARG TORCH_INDEX_URL=""
COPY --from=locks /locks/requirements-runtime.in /locks/constraints-runtime.txt /locks/
# The base dependencies plus the `runtime` and `grpc` extras (torch, orjson, grpcio), at the lock's versions. unsafe-best-match
# makes uv pick, like pip, the best version over all indexes (torch `X+cpu` from TORCH_INDEX_URL, the rest
# from PyPI) instead of taking every package the extra index also mirrors from it.
RUN --mount=type=secret,id=ca,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=cache,target=/root/.cache/uv \
    python3 -m venv /opt/venv \
 && uv pip install --python /opt/venv/bin/python --only-binary=:all: --index-strategy unsafe-best-match \
        ${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"} \
        -c /locks/constraints-runtime.txt -r /locks/requirements-runtime.in
# PyPI's torch is a CUDA build. A CPU pod has no GPU driver, so CUDA never initialises, and what only CUDA code
# paths load lazily is dead weight (about 1.4 GB of 5.5): triton (the GPU compiler of torch.compile, imported
# only when present), cuSOLVER (CUDA linear algebra; torch's preload of it is best-effort), NVSHMEM's device
# bitcode and transport plugins, static libraries and headers. Everything libtorch links directly (cuBLAS, cuDNN,
# NCCL, cuFFT, ...) stays, and so do cuDNN's sub-libraries: libcudnn.so.9 loads them lazily, but without them
# even `torch.backends.cudnn.version()` aborts the process (measured). Then the venv must still import torch,
# trace, save, load and run a model. TORCH_CUDA_PRUNE=0 keeps everything; a CPU-index torch has nothing to prune.
ARG TORCH_CUDA_PRUNE=1
RUN site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && if [ "${TORCH_CUDA_PRUNE}" = 1 ] && [ -d "${site}/nvidia" ]; then \
        /opt/venv/bin/pip uninstall --yes triton \
     && rm -f -- "${site}"/nvidia/*/lib/libcusolver*.so* "${site}"/nvidia/*/lib/*.a "${site}"/nvidia/*/lib/*.bc \
            "${site}"/nvidia/nvshmem/lib/nvshmem_*.so.* \
     && rm -rf -- "${site}"/nvidia/*/include; \
    fi \
 && /opt/venv/bin/python -c 'import io, torch; \
        m = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()).eval(); x = torch.randn(2, 8); \
        b = io.BytesIO(); torch.jit.save(torch.jit.trace(m, x), b); b.seek(0); \
        torch.testing.assert_close(torch.jit.load(b)(x), m(x)); print("torch", torch.__version__, "ok")'

FROM ${PYTHON_IMAGE} AS runtime-cpu
ARG PYTHON_IMAGE
LABEL org.opencontainers.image.base.name="${PYTHON_IMAGE}"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=runtime-cpu-deps /opt/venv /opt/venv
# Our wheel only (its dependencies are the layer above); `pip check` proves the two agree, allowing only the
# one requirement the prune above removes on purpose (any other line is printed and fails the build).
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    set -- /dist/neuron_operator-*.whl \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps --no-index "$1" \
 && { /opt/venv/bin/pip check || true; } \
    | { ! grep -v -e '^No broken requirements found\.$' -e '^torch [^ ]* requires triton, which is not installed\.$'; }
ENV PATH=/opt/venv/bin:${PATH}

# -------------------------------------------------------------------------------- runtime: neuronx
FROM ${NEURONX_BASE_IMAGE} AS runtime-neuronx
ARG NEURONX_BASE_IMAGE
ARG NEURON_PIP_INDEX_URL=https://pip.repos.neuron.amazonaws.com
# Used only when the base image lacks torch_neuronx. Default: the Neuron SDK 2.31 packages, the same release as
# the default DLC (aws-neuron-sdk frameworks/torch/torch-neuronx/setup/pytorch-install-prev-u24.rst, "Neuron
# 2.31.0"; 2.31.1 changed only aws-neuron-tools). torch-neuronx 2.9.0.x needs torch 2.9. The runtime needs an SDK
# with the NeuronCore placement APIs (top-level from 2.25, torch_neuronx.experimental before; both work).
ARG TORCH_NEURONX_PACKAGES="neuronx-cc==2.26.6360.0 torch-neuronx==2.9.0.2.15.32035"
LABEL org.opencontainers.image.base.name="${NEURONX_BASE_IMAGE}"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# TORCH_NEURONX_PACKAGES is a space-separated list, so it is deliberately unquoted (SC2086). Versions
# are not pinned here (DL3013) on purpose: torch, torch-neuronx and friends are the DLC's own (kept as
# they are); TORCH_NEURONX_PACKAGES is the build argument that pins them otherwise; our wheel is a file.
# hadolint ignore=SC2086,DL3013
RUN --mount=type=secret,id=ca,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=bind,from=builder,source=/dist,target=/tmp/wheels \
    export PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
 && if ! python3 -c "import torch_neuronx" 2>/dev/null; then \
        python3 -m pip install --no-cache-dir --extra-index-url "${NEURON_PIP_INDEX_URL}" \
            ${TORCH_NEURONX_PACKAGES}; \
    fi \
 && set -- /tmp/wheels/neuron_operator-*.whl \
 && python3 -m pip install --no-cache-dir --only-binary=:all: \
        --extra-index-url "${NEURON_PIP_INDEX_URL}" "$1[runtime,grpc]" \
 && python3 -c "import torch_neuronx, neuron_runtime, neuron_runtime.grpc_server, boto3"

# ----------------------------------------------------------------------------------- runtime: inf1
FROM ${INF1_BASE_IMAGE} AS runtime-inf1
ARG INF1_BASE_IMAGE
ARG NEURON_PIP_INDEX_URL=https://pip.repos.neuron.amazonaws.com
# Used only when the base image lacks torch_neuron; pin the versions of the SDK release you target.
ARG TORCH_NEURON_PACKAGES="torch-neuron neuron-cc[tensorflow]"
# Installed distributions that installing our wheel must never change: torch-neuron is built for one torch
# (1.13), and neuron-cc pins numpy (numpy<=1.21.6,>=1.20 in 2023, aws-neuron/aws-neuron-sdk#762).
ARG INF1_KEEP_PACKAGES="torch torch-neuron neuron-cc numpy"
LABEL org.opencontainers.image.base.name="${INF1_BASE_IMAGE}"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Steps: the Neuron stack if missing; the base image's `pip check` findings; /tmp/keep.txt = "name==version" of
# every INF1_KEEP_PACKAGES member installed; our wheel with the `runtime` extra, constrained by keep.txt (the
# extra asks torch >= 1.13 on Python 3.10, which the DLC's torch 1.13 meets: pip adds what is missing and
# fails rather than replace a kept package); `pip check` again, failing on any finding the base did not have;
# then the runtime must import with torch 1.13 and torch_neuron.
# TORCH_NEURON_PACKAGES and INF1_KEEP_PACKAGES are space-separated lists, deliberately unquoted (SC2086).
# Versions are not pinned here (DL3013) on purpose: torch, torch-neuron and neuron-cc are the DLC's own (kept
# as they are); TORCH_NEURON_PACKAGES is the build argument that pins them otherwise; our wheel is a file.
# hadolint ignore=SC2086,DL3013
RUN --mount=type=secret,id=ca,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=bind,from=builder,source=/dist,target=/tmp/wheels \
    export PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
 && python3 -c "import sys; sys.exit(0 if sys.version_info[:2] == (3, 10) else \
        'RUNTIME_FLAVOR=inf1 needs the Python 3.10 of the Inf1 DLC (torch-neuron supports Python <= 3.10; the ' \
        'runtime needs >= 3.10), got ' + sys.version.split()[0])" \
 && if ! python3 -c "import torch_neuron" 2>/dev/null; then \
        python3 -m pip install --no-cache-dir --extra-index-url "${NEURON_PIP_INDEX_URL}" \
            ${TORCH_NEURON_PACKAGES}; \
    fi \
 && { python3 -m pip check || true; } | sed '/^No broken requirements found\.$/d' | sort > /tmp/pip-check-base.txt \
 && python3 -c 'import importlib.metadata as md, sys; \
        keep = [f"{n}=={md.version(n)}" for n in sys.argv[1:] if any(True for _ in md.distributions(name=n))]; \
        open("/tmp/keep.txt", "w").write("\n".join(keep) + "\n"); print("keeping", *keep)' ${INF1_KEEP_PACKAGES} \
 && set -- /tmp/wheels/neuron_operator-*.whl \
 && python3 -m pip install --no-cache-dir --only-binary=:all: -c /tmp/keep.txt \
        --extra-index-url "${NEURON_PIP_INDEX_URL}" "$1[runtime]" \
 && { python3 -m pip check || true; } | sed '/^No broken requirements found\.$/d' | sort > /tmp/pip-check.txt \
 && { ! comm -13 /tmp/pip-check-base.txt /tmp/pip-check.txt | grep .; } \
 && rm /tmp/keep.txt /tmp/pip-check-base.txt /tmp/pip-check.txt \
 && python3 -c "import boto3, torch, torch_neuron, neuron_runtime.cli, neuron_runtime.compile, neuron_runtime.neuron; \
        assert torch.__version__.startswith('1.13'), torch.__version__"

# --------------------------------------------------------------------------- runtime (final, any flavour)
# The base is one of the stages above, picked by RUNTIME_FLAVOR; a stage has no tag to pin (DL3006).
# hadolint ignore=DL3006
FROM runtime-${RUNTIME_FLAVOR} AS runtime
RUN groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --create-home --home-dir /home/nonroot \
        --shell /usr/sbin/nologin nonroot
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/nonroot
# Labels last: a new VERSION/REVISION changes no filesystem layer.
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
WORKDIR /home/nonroot
USER 65532:65532
HEALTHCHECK NONE
ENTRYPOINT ["neuron-runtime"]
CMD ["--help"]

#!/usr/bin/env bash
# Build the project's two images on this machine (`make images`): the operator and the cpu runtime.
#
# Why a script: this machine has a Docker engine but no image registry, so the Dockerfile's default base
# (python:3.11-slim-bookworm) cannot be pulled. This starts the project's engine (docker-engine.sh), builds a
# Python base from Debian packages (python-base.sh), then builds
#   local/neuron-operator:<tag>   docker build --target operator
#   local/neuron-runtime:<tag>    docker build --target runtime --build-arg RUNTIME_FLAVOR=cpu
# where <tag> is a content hash of every build input: the Dockerfile, the files the .dockerignore lets into
# the build context (exactly what Docker sends: the context is exported by Docker itself and hashed), the base
# image's id and the build arguments. A new tag appears exactly when an input changes; when both tags exist
# nothing is built (a warm call takes seconds). Older tags of the two repositories are removed afterwards
# (untagged, never forced: an image a container uses stays).
#
# stdout: exactly four lines, for callers (Python parses them):
#   OPERATOR_IMAGE=local/neuron-operator:<tag>
#   RUNTIME_IMAGE=local/neuron-runtime:<tag>
#   NEURON_SIM_IMAGE=local/neuron-runtime-neuron-sim:<hash>-sdk2.31.1     SIMULATED Neuron SDK, local testing only
#   NEURON_SIM_OLD_SDK_IMAGE=local/neuron-runtime-neuron-sim:<hash>-sdk2.24.0
# stderr: progress, build time and image sizes.
#
# Environment:
#   NEURON_IMAGE_PREFIX  repository prefix of the two images (default `local/`)
#   TORCH_INDEX_URL      extra pip index for torch (default empty: PyPI's CUDA build; see the Dockerfile header)
#   NEURON_BUILD_NO_CACHE=1  build even when the tags exist, without BuildKit's layer cache or cache mounts
#                        (a from-scratch build apart from the base image; the content, hence the tag, is the same)
#   NEURON_BUILD_CA      CA bundle given to builder stages as the BuildKit secret `ca` (default: the host's
#                        /etc/ssl/certs/ca-certificates.crt, so builds work behind a TLS-intercepting proxy;
#                        it is never baked into an image). Set it empty to pass none.
#   NEURON_BUILD_CACHE_KEEP  after a build, BuildKit's cache is pruned down to this size (default 6GB: enough for the uv download cache of torch and its nvidia-* wheels)
set -euo pipefail
shopt -s inherit_errexit   # a failing command inside $(...) fails the script too
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO/e2e/kind"
PREFIX="${NEURON_IMAGE_PREFIX:-local/}"
OPERATOR_REPO="${PREFIX}neuron-operator"
RUNTIME_REPO="${PREFIX}neuron-runtime"
SIM_REPO="${PREFIX}neuron-runtime-neuron-sim"
# Simulated Neuron SDK releases, each a SIMULATED runtime image: the current one first, then one from before
# SDK 2.25 (placement APIs only under torch_neuronx.experimental; an older compiler for the SDK-gate scenario).
NEURON_SIM_SDKS="2.31.1 2.24.0"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"
NEURON_BUILD_CA="${NEURON_BUILD_CA-/etc/ssl/certs/ca-certificates.crt}"
NEURON_BUILD_CACHE_KEEP="${NEURON_BUILD_CACHE_KEEP:-6GB}"
log() { printf '[build-images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

engine_env=$(bash "$HERE/docker-engine.sh" start)
eval "$engine_env"
export DOCKER_BUILDKIT=1
start=$SECONDS

# PYTHON_IMAGE (e.g. python:3.11-slim-bookworm where a registry is reachable) replaces the local base.
if [[ -n ${PYTHON_IMAGE:-} ]]; then
  base=$PYTHON_IMAGE
  docker image inspect "$base" >/dev/null 2>&1 || docker pull "$base" >&2
else
  base=$(bash "$HERE/python-base.sh" | tail -n 1)
fi
base_id=$(docker image inspect --format '{{.Id}}' "$base")
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -n 1)
build_args=(
  --build-arg "PYTHON_IMAGE=$base"
  --build-arg "VERSION=$version"
  --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"
)

context_digest() {  # sha256 of the build context as Docker sends it (its own .dockerignore matching)
  local dir digest
  dir=$(mktemp -d)
  printf 'FROM scratch\nCOPY . /\n' | docker build -q -f - -o "type=local,dest=$dir" "$REPO" >/dev/null
  digest=$(
    cd "$dir"
    find . \( -type f -o -type l \) -printf '%p %m %y %l\n' | LC_ALL=C sort
    find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
  )
  rm -rf "$dir"
  sha256sum <<< "$digest" | cut -d' ' -f1
}

context=$(context_digest)
dockerfile=$(sha256sum < "$REPO/Dockerfile" | cut -d' ' -f1)
tag=$(
  {
    echo "context $context"
    echo "dockerfile $dockerfile"
    echo "base $base_id"
    printf 'arg %s\n' "${build_args[@]}" "RUNTIME_FLAVOR=cpu"
  } | sha256sum | cut -c1-12
)
operator_image="$OPERATOR_REPO:$tag"
runtime_image="$RUNTIME_REPO:$tag"

exists() { docker image inspect "$1" >/dev/null 2>&1; }

no_cache=()
[[ ${NEURON_BUILD_NO_CACHE:-0} == 1 ]] && no_cache=(--no-cache)

if ((${#no_cache[@]} == 0)) && exists "$operator_image" && exists "$runtime_image"; then
  log "up to date: $operator_image, $runtime_image ($((SECONDS - start))s)"
else
  secret=()
  if [[ -n $NEURON_BUILD_CA ]]; then
    [[ -s $NEURON_BUILD_CA ]] || { log "NEURON_BUILD_CA=$NEURON_BUILD_CA is not a readable file"; exit 1; }
    secret=(--secret "id=ca,src=$NEURON_BUILD_CA")
  fi
  for target in operator runtime; do
    image=$operator_image extra=()
    [[ $target == runtime ]] && image=$runtime_image extra=(--build-arg RUNTIME_FLAVOR=cpu)
    log "building $image (--target $target; base $base)"
    t0=$SECONDS
    previous=$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
    docker build --target "$target" "${no_cache[@]}" "${build_args[@]}" "${extra[@]}" "${secret[@]}" \
      -t "$image" "$REPO" >&2
    # A rebuild under the same tag (NEURON_BUILD_NO_CACHE) leaves the previous image untagged: remove it.
    if [[ -n $previous && $previous != "$(docker image inspect --format '{{.Id}}' "$image")" ]]; then
      docker image rm "$previous" >/dev/null 2>&1 || true
    fi
    log "built $image in $((SECONDS - t0))s"
  done
  # Older tags of our two repositories: untag them (not forced; layers still used by the new images stay).
  for repo in "$OPERATOR_REPO" "$RUNTIME_REPO"; do
    docker image ls --format '{{.Repository}}:{{.Tag}}' "$repo" | while read -r old; do
      [[ $old == "$repo:$tag" ]] || docker image rm "$old" >/dev/null 2>&1 || log "kept $old (in use)"
    done
  done
  # Bound BuildKit's cache (least recently used first): one runtime build alone leaves about 10 GB of stage
  # snapshots, and this engine shares the disk with everything else. The newest layers and uv's cache stay.
  docker builder prune --force --keep-storage "$NEURON_BUILD_CACHE_KEEP" >/dev/null
  log "images built in $((SECONDS - start))s; build cache trimmed to $NEURON_BUILD_CACHE_KEEP"
fi

# The SIMULATED Neuron runtime images (local testing only, never released): the cpu runtime image plus the
# simulated Neuron SDK (e2e/neuron-sdk-sim) installed as torch_neuronx / torch_neuron, one per simulated SDK
# release. A small layer on top of the runtime image; its build context is filtered by its own ignore file
# (Dockerfile.neuron-sim.dockerignore: the simulator only), so the released images' inputs and tags do not
# depend on it.
SIM_DIR="$REPO/e2e/neuron-sdk-sim"
SIM_DOCKERFILE="$HERE/Dockerfile.neuron-sim"
sim_hash=$(
  {
    echo "runtime $runtime_image"
    sha256sum < "$SIM_DOCKERFILE"
    sha256sum < "$SIM_DOCKERFILE.dockerignore"
    (cd "$SIM_DIR" && find . -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z \
      | xargs -0 sha256sum)
  } | sha256sum | cut -c1-12
)
sim_images=()
for sdk in $NEURON_SIM_SDKS; do
  image="$SIM_REPO:$sim_hash-sdk$sdk"
  sim_images+=("$image")
  if ((${#no_cache[@]} == 0)) && exists "$image"; then
    continue
  fi
  t0=$SECONDS
  docker build "${no_cache[@]}" -f "$SIM_DOCKERFILE" --build-arg "RUNTIME_IMAGE=$runtime_image" \
    --build-arg "SIM_SDK_VERSION=$sdk" -t "$image" "$REPO" >&2
  log "built $image (SIMULATED Neuron SDK $sdk) in $((SECONDS - t0))s"
done
docker image ls --format '{{.Repository}}:{{.Tag}}' "$SIM_REPO" | while read -r old; do
  keep=0
  for image in "${sim_images[@]}"; do [[ $old == "$image" ]] && keep=1; done
  ((keep)) || docker image rm "$old" >/dev/null 2>&1 || log "kept $old (in use)"
done

docker image ls --format '  {{.Repository}}:{{.Tag}}  {{.Size}}' "$OPERATOR_REPO:$tag" >&2
docker image ls --format '  {{.Repository}}:{{.Tag}}  {{.Size}}' "$RUNTIME_REPO:$tag" >&2
echo "OPERATOR_IMAGE=$operator_image"
echo "RUNTIME_IMAGE=$runtime_image"
echo "NEURON_SIM_IMAGE=${sim_images[0]}"
echo "NEURON_SIM_OLD_SDK_IMAGE=${sim_images[1]}"

#!/usr/bin/env bash
# Builds the SIMULATED Neuron device plugin (local kind clusters only; never in a release image):
#   1. a static binary in $NEURON_OPERATOR_CACHE/tools/neuron-device-plugin-sim-<hash>/ (skipped when its .complete
#      stamp exists), <hash> covering the non-test sources, go.mod/go.sum, the Dockerfile and the Go version;
#   2. the image local/neuron-device-plugin-sim:<hash> (skipped when the tag exists), FROM scratch, so nothing is pulled.
# Prints the image name as its last stdout line; progress goes to stderr. Uses $DOCKER_HOST when set, else starts
# (idempotently) the project's private engine through ../docker-engine.sh.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${NEURON_OPERATOR_CACHE:-$HOME/.cache/neuron-operator}"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
export GOTOOLCHAIN=local CGO_ENABLED=0
log() { printf '[neuron-device-plugin-sim %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cd "$HERE"
sources=(go.mod go.sum Dockerfile)
for f in *.go; do [[ $f == *_test.go ]] || sources+=("$f"); done
hash=$({ "$GO" version; sha256sum -- "${sources[@]}"; } | sha256sum | cut -c1-12)
out="$CACHE/tools/neuron-device-plugin-sim-$hash"
image="local/neuron-device-plugin-sim:$hash"

if [[ ! -f $out/.complete ]]; then
  log "building $out/neuron-device-plugin-sim"
  mkdir -p "$out"
  "$GO" build -trimpath -ldflags='-s -w' -o "$out/neuron-device-plugin-sim.tmp" .
  mv -f "$out/neuron-device-plugin-sim.tmp" "$out/neuron-device-plugin-sim"
  touch "$out/.complete"
fi

[[ -n ${DOCKER_HOST:-} ]] || eval "$(bash "$HERE/../docker-engine.sh" start)"
if docker image inspect "$image" >/dev/null 2>&1; then
  log "image $image exists"
else
  context=$(mktemp -d)
  trap 'rm -rf "$context"' EXIT
  cp "$out/neuron-device-plugin-sim" "$context/"
  log "building image $image"
  DOCKER_BUILDKIT=1 docker build --quiet -f "$HERE/Dockerfile" -t "$image" "$context" >&2
fi
echo "$image"

#!/usr/bin/env bash
# Build the pinned local control-plane binaries from Go modules (no Docker, no release downloads).
#
# Everything lands in $NEURON_OPERATOR_CACHE (default ~/.cache/neuron-operator), outside the repository,
# one directory per component *and version*; a directory with a `.complete` stamp is never rebuilt,
# so a warm run costs a few stat() calls and changing a pin below builds only that component.
#
# Usage: build-tools.sh [component...]   components: k8s etcd kwok helm promtool (default: all)
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.34.4}"     # kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-0.7.0}"
HELM_VERSION="${HELM_VERSION:-3.19.5}"
# promtool (chart alerts): module v0.3MM.P is Prometheus v3.MM.P; remove_all_sd = no SD plugins.
PROMTOOL_VERSION="${PROMTOOL_VERSION:-0.316.0}"
# SeaweedFS `weed` (Apache-2.0): the real S3-compatible server of the local cluster. Pinned to a commit
# (pseudo-version); its go.mod has a replace directive, so `go install` is refused: wrap it in a module.
WEED_VERSION="${WEED_VERSION:-0.0.0-20261109003541-7506e5f91cd6}"

CACHE="${NEURON_OPERATOR_CACHE:-$HOME/.cache/neuron-operator}"
TOOLS="$CACHE/tools"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
# Go's own caches stay outside the repo too (defaults of `go env`), so a warm rebuild is incremental.

log() { printf '[build-tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

done_or_build() {  # name version builder-function
  local name=$1 version=$2 fn=$3 dir="$TOOLS/$1-v$2"
  if [[ -f "$dir/.complete" ]]; then
    return 0
  fi
  log "building $name v$version into $dir (cold build; progress below)"
  local start=$SECONDS
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  "$fn" "$version" "$dir.tmp"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  echo "$((SECONDS - start))" > "$dir/.complete"
  log "built $name v$version in $((SECONDS - start))s"
}

build_k8s() {
  local v=$1 out=$2 work="$CACHE/gobuild/k8s-v$1"
  mkdir -p "$work" && cd "$work"
  [[ -f go.mod ]] || go mod init local/k8sbuild >/dev/null 2>&1
  # Only the main module's godebug line counts; keep Kubernetes' own runtime defaults.
  grep -q '^godebug' go.mod || printf '\ngodebug default=go1.24\n' >> go.mod
  log "k8s: resolving staging modules for v$v"
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@v$v" | python3 -c 'import json,sys;print(json.load(sys.stdin)["GoMod"])')
  # k8s.io/kubernetes requires its staging modules at v0.0.0 with local replaces that only work
  # inside its own repo: route each to its published tag instead (derived, not hard-coded).
  for m in $(grep -E '^\s+k8s\.io/[A-Za-z0-9._-]+ v0\.0\.0(\s|$)' "$gomod" | awk '{print $1}'); do
    go mod edit -replace="$m=$m@v0.${v#1.}"
  done
  log "k8s: fetching modules"
  go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@v$v" "k8s.io/kubernetes/cmd/kube-controller-manager@v$v" \
    "k8s.io/kubernetes/cmd/kube-scheduler@v$v" "k8s.io/kubernetes/cmd/kubectl@v$v"
  local ldf="-s -w" minor
  minor=$(echo "$v" | cut -d. -f2)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf="$ldf -X $p.gitVersion=v$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    ldf="$ldf -X $p.gitCommit=0000000000000000000000000000000000000000 -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    log "k8s: compiling $cmd (go build -p 2)"
    go build -p 2 -trimpath -ldflags "$ldf" -o "$out/$cmd" "k8s.io/kubernetes/cmd/$cmd"
  done
  "$out/kube-apiserver" --version
}

build_etcd() {
  local v=$1 out=$2 work="$CACHE/gobuild/etcd-v$1"
  mkdir -p "$work" && cd "$work"
  [[ -f go.mod ]] || go mod init local/etcdbuild >/dev/null 2>&1
  # etcd's server module has monorepo replace directives, so `go install` is impossible: wrap etcdmain.
  cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  go get "go.etcd.io/etcd/server/v3@v$v"
  go mod tidy
  go build -trimpath -ldflags "-s -w" -o "$out/etcd" .
  "$out/etcd" --version
}

build_kwok() {
  GOBIN="$2" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@v$1"
  "$2/kwok" --version || true
}

build_helm() {
  set -- "${1%%-k8s*}" "$2"  # the cache key carries the Kubernetes version; the module version does not
  # Stamp the version, and make offline `helm template` assume our Kubernetes minor (the source default
  # is 1.20, which fails charts declaring kubeVersion >= 1.29); against a cluster helm asks the server.
  local minor
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  GOBIN="$2" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v$1 \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
    "helm.sh/helm/v3/cmd/helm@v$1"
  "$2/helm" version --short
}

build_promtool() {
  local minor=${1#0.}
  minor=$((${minor%%.*} - 300))
  GOBIN="$2" go install -trimpath -tags remove_all_sd \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=3.$minor.${1##*.}" \
    "github.com/prometheus/prometheus/cmd/promtool@v$1"
  "$2/promtool" --version
}

build_weed() {
  local v=$1 out=$2 work="$CACHE/gobuild/weed-v$1"
  mkdir -p "$work" && cd "$work"
  [[ -f go.mod ]] || go mod init local/weedbuild >/dev/null 2>&1
  go mod edit -require="github.com/seaweedfs/seaweedfs@v$v"
  # Copied from seaweedfs' own go.mod: a replace only takes effect in the main module.
  go mod edit -replace=github.com/tyler-smith/go-bip39=github.com/cosmos/go-bip39@v1.0.0
  go mod download github.com/seaweedfs/seaweedfs
  go get "github.com/seaweedfs/seaweedfs/weed@v$v"
  log "weed: compiling (go build -p 2; several minutes cold)"
  go build -p 2 -trimpath -ldflags "-s -w" -o "$out/weed" github.com/seaweedfs/seaweedfs/weed
  "$out/weed" version >&2
}

components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=(etcd kwok helm promtool weed k8s)
for c in "${components[@]}"; do
  case $c in
    k8s) done_or_build k8s "$K8S_VERSION" build_k8s ;;
    etcd) done_or_build etcd "$ETCD_VERSION" build_etcd ;;
    kwok) done_or_build kwok "$KWOK_VERSION" build_kwok ;;
    helm) done_or_build helm "$HELM_VERSION-k8s$K8S_VERSION" build_helm ;;
    promtool) done_or_build promtool "$PROMTOOL_VERSION" build_promtool ;;
    weed) done_or_build weed "$WEED_VERSION" build_weed ;;
    *) echo "unknown component: $c" >&2; exit 2 ;;
  esac
done
# One line per tool, machine-readable, for the Python side.
printf 'K8S=%s\nETCD=%s\nKWOK=%s\nHELM=%s\nPROMTOOL=%s\nWEED=%s\n' "$TOOLS/k8s-v$K8S_VERSION" \
  "$TOOLS/etcd-v$ETCD_VERSION" "$TOOLS/kwok-v$KWOK_VERSION" "$TOOLS/helm-v$HELM_VERSION-k8s$K8S_VERSION" \
  "$TOOLS/promtool-v$PROMTOOL_VERSION" "$TOOLS/weed-v$WEED_VERSION"

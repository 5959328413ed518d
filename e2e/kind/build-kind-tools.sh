#!/usr/bin/env bash
# Build the pinned kind toolchain and the node-side binaries from Go modules (and one C file), offline
# except for the Go module proxy: nothing comes from an image registry or a release download.
#
# Why: the project's kind cluster runs a node image assembled on this machine (node-image.sh); these are
# its ingredients, plus kind itself. Pins live in versions.sh. Like e2e/localcluster/build-tools.sh,
# each component lands in $NEURON_OPERATOR_CACHE/tools/<name>-v<version>/ (default cache
# ~/.cache/neuron-operator); a directory with a `.complete` stamp is never rebuilt, so a warm run costs a
# few stat() calls. Each finished directory also holds SHA256SUMS of its binaries (node-image.sh hashes them).
#
# Usage: build-kind-tools.sh [component...]
#   components: kind kubenode containerd runc crictl cni coredns pause (default: all)
#   KIND_TOOLS_JOBS=N   components built at once (default 2: on 2 cores, two concurrent `go build -p 2`
#                       keep both cores busy through the single-threaded link steps)
# Prints one machine-readable NAME=dir line per component on stdout at the end.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.sh
source "$HERE/versions.sh"

CACHE="${NEURON_OPERATOR_CACHE:-$HOME/.cache/neuron-operator}"
TOOLS="$CACHE/tools"
JOBS="${KIND_TOOLS_JOBS:-2}"
export GOTOOLCHAIN=local CGO_ENABLED=0
# Go's build and module caches stay at their `go env` defaults (shared with build-tools.sh), so the
# Kubernetes packages compiled for the control plane are reused by kubeadm/kubelet/kube-proxy.

log() { printf '[build-kind-tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

sums() {  # dir: write SHA256SUMS of the regular files in it
  (cd "$1" && find . -maxdepth 1 -type f ! -name '.*' ! -name SHA256SUMS ! -name '*.log' -printf '%P\n' | sort \
    | xargs -r sha256sum > SHA256SUMS)
}

done_or_build() {  # name version builder-function
  local name=$1 version=$2 fn=$3 dir="$TOOLS/$1-v$2"
  [[ -f "$dir/.complete" ]] && return 0
  mkdir -p "$TOOLS"
  # One builder per directory, also across concurrent invocations of this script.
  exec {lock}>"$TOOLS/.$1-v$2.lock"
  flock "$lock"
  if [[ -f "$dir/.complete" ]]; then exec {lock}>&-; return 0; fi
  log "building $name v$version into $dir (cold build; output in $dir.tmp/build.log)"
  local start=$SECONDS
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  # Background + wait: a subshell run directly in an `if` would ignore `set -e` inside the builder.
  # `times` (in the builder's own subshell) records the CPU time its processes used, for the log line below.
  ("$fn" "$version" "$dir.tmp" && times > "$dir.tmp/.cpu") > "$dir.tmp/build.log" 2>&1 &
  if ! wait $!; then
    log "FAILED $name v$version; last lines of $dir.tmp/build.log:"
    tail -25 "$dir.tmp/build.log" >&2
    exec {lock}>&-
    return 1
  fi
  sums "$dir.tmp"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  echo "$((SECONDS - start))" > "$dir/.complete"
  exec {lock}>&-
  log "built $name v$version in $((SECONDS - start))s (cpu user/sys of the build: $(tail -n 1 "$dir/.cpu"))"
}

# ---- builders: $1 = version, $2 = output dir (run in a subshell, output to build.log) -------------------

build_kind() {
  GOBIN="$2" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kind@v$1"
  "$2/kind" version
}

k8s_ldflags() {  # version -> the same version stamp build-tools.sh uses (`kubeadm version` says v$1)
  local v=$1 ldf="-s -w" minor p
  minor=$(echo "$v" | cut -d. -f2)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf="$ldf -X $p.gitVersion=v$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    ldf="$ldf -X $p.gitCommit=0000000000000000000000000000000000000000 -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ldf"
}

build_kubenode() {
  # build-tools.sh's wrapper-module recipe, in a sibling work dir: build-tools.sh may be editing its own
  # go.mod at the same time. The module versions come out identical (both follow k8s.io/kubernetes' go.mod),
  # so the shared Go build cache makes this incremental on top of the control-plane build.
  local v=$1 out=$2 work="$CACHE/gobuild/kubenode-v$1" gomod m cmd
  export GOFLAGS=-mod=mod
  mkdir -p "$work" && cd "$work"
  [[ -f go.mod ]] || go mod init local/kubenodebuild
  grep -q '^godebug' go.mod || printf '\ngodebug default=go1.24\n' >> go.mod
  gomod=$(go mod download -json "k8s.io/kubernetes@v$v" | python3 -c 'import json,sys;print(json.load(sys.stdin)["GoMod"])')
  for m in $(grep -E '^\s+k8s\.io/[A-Za-z0-9._-]+ v0\.0\.0(\s|$)' "$gomod" | awk '{print $1}'); do
    go mod edit -replace="$m=$m@v0.${v#1.}"
  done
  go get -tool "k8s.io/kubernetes/cmd/kubeadm@v$v" "k8s.io/kubernetes/cmd/kubelet@v$v" \
    "k8s.io/kubernetes/cmd/kube-proxy@v$v"
  for cmd in kubeadm kubelet kube-proxy; do
    echo "== go build $cmd"
    go build -p 2 -trimpath -ldflags "$(k8s_ldflags "$v")" -o "$out/$cmd" "k8s.io/kubernetes/cmd/$cmd"
  done
  "$out/kubeadm" version -o short
}

build_containerd() {
  local v=$1 m=github.com/containerd/containerd/v2
  GOBIN="$2" go install -trimpath -tags "no_aufs no_zfs no_btrfs no_devmapper" \
    -ldflags "-s -w -X $m/version.Version=v$v -X $m/version.Package=$m" \
    "$m/cmd/containerd@v$v" "$m/cmd/ctr@v$v" "$m/cmd/containerd-shim-runc-v2@v$v"
  "$2/containerd" --version
}

build_runc() {
  # cgo + libseccomp (Debian's libseccomp-dev): dynamic against bookworm's glibc/libseccomp, which the
  # node rootfs (same suite) provides. The version comes from the module's embedded VERSION file.
  local missing=() p
  for p in libseccomp-dev pkg-config gcc; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
  CGO_ENABLED=1 GOBIN="$2" go install -trimpath -tags seccomp -ldflags "-s -w" \
    "github.com/opencontainers/runc@v$1"
  "$2/runc" --version
}

build_crictl() {
  GOBIN="$2" go install -trimpath -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=v$1" \
    "sigs.k8s.io/cri-tools/cmd/crictl@v$1"
  "$2/crictl" --version
}

build_cni() {
  local v=$1 m=github.com/containernetworking/plugins p pkgs=()
  for p in ipam/host-local main/loopback main/ptp meta/portmap main/bridge; do pkgs+=("$m/plugins/$p@v$v"); done
  GOBIN="$2" go install -trimpath -ldflags "-s -w -X $m/pkg/utils/buildversion.BuildVersion=v$v" "${pkgs[@]}"
  ls -l "$2"
}

build_coredns() {
  GOBIN="$2" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@v$1"
  "$2/coredns" -version
}

build_pause() {
  # The C source kubernetes builds its pause image from, taken from the k8s.io/kubernetes module.
  local dir
  dir=$(GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" \
    | python3 -c 'import json,sys;print(json.load(sys.stdin)["Dir"])')
  gcc -Os -Wall -Werror -static -DVERSION="v$1" -o "$2/pause" "$dir/build/pause/linux/pause.c"
  strip "$2/pause"
  "$2/pause" -v
}

# ---- driver -----------------------------------------------------------------------------------------------

declare -A VERSION_OF=(
  [kind]=$KIND_VERSION [kubenode]=$K8S_VERSION [containerd]=$CONTAINERD_VERSION [runc]=$RUNC_VERSION
  [crictl]=$CRICTL_VERSION [cni]=$CNI_PLUGINS_VERSION [coredns]=$COREDNS_VERSION [pause]=$PAUSE_TAG
)
ALL=(coredns containerd kubenode kind crictl runc cni pause)   # longest first, for better packing

components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=("${ALL[@]}")
for c in "${components[@]}"; do
  [[ -n ${VERSION_OF[$c]:-} ]] || { echo "unknown component: $c (known: ${ALL[*]})" >&2; exit 2; }
done

start=$SECONDS failed=0 running=0
for c in "${components[@]}"; do
  [[ -f "$TOOLS/$c-v${VERSION_OF[$c]}/.complete" ]] && continue
  if ((running >= JOBS)); then wait -n || failed=1; running=$((running - 1)); fi
  done_or_build "$c" "${VERSION_OF[$c]}" "build_$c" &
  running=$((running + 1))
done
while ((running > 0)); do wait -n || failed=1; running=$((running - 1)); done
((failed == 0)) || { log "some components failed (see above)"; exit 1; }
((SECONDS - start < 2)) || log "all requested components ready after $((SECONDS - start))s"

# One line per component, machine-readable (upper-case name), like build-tools.sh.
for c in "${ALL[@]}"; do
  printf '%s=%s\n' "$(echo "$c" | tr a-z A-Z)" "$TOOLS/$c-v${VERSION_OF[$c]}"
done

#!/usr/bin/env bash
# Assemble the kind node image on this machine, with nothing pulled from any image registry.
#
# Why: `kind build node-image` always fetches etcd/CoreDNS/pause/kindnetd from a registry, which this
# project's machines cannot reach (see /work/shared/docs/kind-on-this-machine.md). This script does what
# kind's base-image Dockerfile and pkg/build/nodeimage do, from:
#   - two Debian root filesystems made with debootstrap (node OS, and a small iptables one for kube-proxy),
#     cached under $NEURON_OPERATOR_CACHE/rootfs/<name>-<suite>-<key>/ with a `.complete` stamp;
#   - the binaries of build-kind-tools.sh and e2e/localcluster/build-tools.sh (built first when missing).
# It produces, in the project's private Docker engine (docker-engine.sh, started when needed):
#   local/kind-base:<suite>                    kind's base image (systemd, containerd, runc, crictl, CNI)
#   <the names `kubeadm config images list` prints>, plus kind's containerd sandbox image (pause:3.10)
#   local/kind-node:v<k8s>-<hash>              the node image; <hash> covers every input (pins, these
#                                              scripts, the conflist, rootfs package sets, binary digests)
# When the node tag already exists it does nothing but print it. Pods get their network from the baked
# CNI conflist (10-ptp.conflist: ptp + host-local + portmap), as kindnetd cannot be built here: create
# clusters with `networking.disableDefaultCNI: true` and run post-create.sh afterwards.
#
# Usage: node-image.sh            -> last line on stdout: the node image name (progress on stderr)
#   NODE_IMAGE_KEEP_OLD=1         keep older local/kind-node tags (default: remove unused older ones)
#   NODE_IMAGE_KEEP_COMPONENTS=1  keep the component images in Docker afterwards (default: remove them once
#                                 imported, about 560 MB; the node image holds them in its own containerd)
#   NODE_IMAGE_MIN_FREE_GB=N      refuse to build with less free space under Docker's data root (default 3;
#                                 a build needs about 2 GB at its peak)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=versions.sh
source "$HERE/versions.sh"
CACHE="${NEURON_OPERATOR_CACHE:-$HOME/.cache/neuron-operator}"
TOOLS="$CACHE/tools"
ROOTFS="$CACHE/rootfs"
LABEL=io.neuron-operator.node-image   # on every image this script makes: value = the node hash
BASE_IMAGE="local/kind-base:$DEBIAN_SUITE"
T0=$SECONDS

log() { printf '[node-image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
export GOTOOLCHAIN=local

# The node OS: kind's base-image package list (minus nfs/iscsi storage-test extras; runc is built instead).
NODE_PACKAGES=systemd,systemd-sysv,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,fuse-overlayfs,e2fsprogs,bash,ca-certificates,curl,jq,procps,socat
# kube-proxy's userland: it execs iptables(-restore), ip6tables, conntrack and ipset.
IPT_PACKAGES=iptables,nftables,conntrack,ipset,kmod,ca-certificates

# ---- root filesystems (debootstrap, cached) ---------------------------------------------------------------

umount_under() {  # unmount anything a failed debootstrap left mounted below $1, deepest first
  local m
  awk -v p="$1/" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do umount -l "$m" || true; done
}

rootfs_dir() {  # name packages -> the cache dir for this suite/mirror/package set
  echo "$ROOTFS/$1-$DEBIAN_SUITE-$(printf '%s %s %s' "$DEBIAN_SUITE" "$DEBIAN_MIRROR" "$2" | sha256sum | cut -c1-10)"
}

build_rootfs() {  # name packages
  local dir start=$SECONDS
  dir=$(rootfs_dir "$1" "$2")
  [[ -f $dir/.complete ]] && return 0
  command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; }
  log "debootstrap $1 rootfs ($DEBIAN_SUITE, minbase + $2) into $dir"
  umount_under "$dir.tmp"; rm -rf "$dir.tmp"; mkdir -p "$ROOTFS"
  if ! debootstrap --variant=minbase --include="$2" "$DEBIAN_SUITE" "$dir.tmp" "$DEBIAN_MIRROR" > "$dir.log" 2>&1; then
    umount_under "$dir.tmp"
    log "debootstrap $1 FAILED; last lines of $dir.log:"; tail -20 "$dir.log" >&2; return 1
  fi
  umount_under "$dir.tmp"
  # What kind's clean-install removes after apt, plus the .debs debootstrap leaves behind.
  rm -rf "$dir.tmp"/var/cache/apt/archives/*.deb "$dir.tmp"/var/lib/apt/lists/* "$dir.tmp"/var/cache/debconf/*-old \
    "$dir.tmp"/var/log/* "$dir.tmp"/tmp/* "$dir.tmp"/var/tmp/* "$dir.tmp"/usr/share/doc/* "$dir.tmp"/usr/share/man/*
  # The stamp records the exact package set; it is part of the node image hash.
  chroot "$dir.tmp" dpkg-query -W -f '${Package} ${Version}\n' > "$dir.tmp/.packages"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  sha256sum < "$dir/.packages" | cut -c1-64 > "$dir/.complete"
  log "rootfs $1 ready in $((SECONDS - start))s ($(du -sh "$dir" | cut -f1))"
}

NODE_ROOTFS=$(rootfs_dir node "$NODE_PACKAGES")
IPT_ROOTFS=$(rootfs_dir ipt "$IPT_PACKAGES")
rootfs_jobs=()
if [[ ! -f $NODE_ROOTFS/.complete || ! -f $IPT_ROOTFS/.complete ]]; then
  # Network-bound: both at once, and in the background of the (CPU-bound) binary builds below.
  build_rootfs node "$NODE_PACKAGES" & rootfs_jobs+=($!)
  build_rootfs ipt "$IPT_PACKAGES" & rootfs_jobs+=($!)
fi

# ---- docker engine and binaries (while debootstrap runs) ----------------------------------------------

eval "$(bash "$HERE/docker-engine.sh" start)"

tools_out=$(bash "$HERE/build-kind-tools.sh")
eval "$(printf '%s\n' "$tools_out" | grep -E '^[A-Z]+=/')"   # KIND= KUBENODE= CONTAINERD= RUNC= ... dirs
K8S="$TOOLS/k8s-v$K8S_VERSION" ETCD="$TOOLS/etcd-v$ETCD_VERSION"
if [[ ! -f $K8S/.complete || ! -f $ETCD/.complete ]]; then
  log "control-plane binaries missing: running e2e/localcluster/build-tools.sh k8s etcd"
  K8S_VERSION=$K8S_VERSION ETCD_VERSION=$ETCD_VERSION bash "$REPO/e2e/localcluster/build-tools.sh" k8s etcd >/dev/null
fi

for p in "${rootfs_jobs[@]}"; do wait "$p" || { log "rootfs build failed"; exit 1; }; done

# ---- the input hash and the early exit ---------------------------------------------------------------------

CNI_CONFLIST="$HERE/10-ptp.conflist"
CP_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
digests_of() {  # dir file...: sha256sum lines, memoised by (inode, size, mtime): hashing 350 MB takes ~3 s here
  local dir=$1 sig memo
  shift
  sig=$(cd "$dir" && stat -c '%n %i %s %Y' "$@" | sha256sum | cut -c1-64)
  memo="$CACHE/.digests/$(basename "$dir")"
  if [[ -f $memo && $(head -n 1 "$memo") == "$sig" ]]; then tail -n +2 "$memo"; return; fi
  mkdir -p "$CACHE/.digests"
  { echo "$sig"; (cd "$dir" && sha256sum "$@"); } > "$memo.tmp" && mv "$memo.tmp" "$memo"
  tail -n +2 "$memo"
}
input_digest() {
  {
    sha256sum "$HERE/versions.sh" "$HERE/node-image.sh" "$HERE/build-kind-tools.sh" "$CNI_CONFLIST" | cut -c1-64
    cat "$NODE_ROOTFS/.complete" "$IPT_ROOTFS/.complete"
    cat "$KUBENODE/SHA256SUMS" "$CONTAINERD/SHA256SUMS" "$RUNC/SHA256SUMS" "$CRICTL/SHA256SUMS" "$CNI/SHA256SUMS" \
      "$COREDNS/SHA256SUMS" "$PAUSE/SHA256SUMS"
    digests_of "$K8S" "${CP_BINS[@]}"
    digests_of "$ETCD" etcd
  } | sha256sum | cut -c1-12
}
HASH=$(input_digest)
NODE_IMAGE="local/kind-node:v$K8S_VERSION-$HASH"

has_image() { docker image inspect "$1" >/dev/null 2>&1; }
label_of() { docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }

if has_image "$NODE_IMAGE"; then
  log "$NODE_IMAGE is up to date"
  echo "$NODE_IMAGE"
  exit 0
fi

# One assembler at a time (two callers would otherwise race on the same tags and container names).
exec {lockfd}>"$CACHE/.node-image.lock"
flock "$lockfd"
has_image "$NODE_IMAGE" && { echo "$NODE_IMAGE"; exit 0; }
log "building $NODE_IMAGE"

WORK=$(mktemp -d "$CACHE/node-image.XXXXXX")   # same filesystem as the rootfs cache: cheap copies
BUILDER="neuron-kind-build-$HASH-$$"
cleanup() {
  docker rm -f -v "$BUILDER" >/dev/null 2>&1 || true
  docker image prune -f --filter "label=$LABEL" >/dev/null 2>&1 || true   # ours, left untagged by re-tags
  rm -rf "$WORK"
}
trap cleanup EXIT

free_gb=$(df --output=avail -B1G "$(docker info -f '{{.DockerRootDir}}')" | tail -n 1 | tr -d ' ')
if ((free_gb < ${NODE_IMAGE_MIN_FREE_GB:-3})); then
  log "only ${free_gb} GB free under Docker's data root; need ${NODE_IMAGE_MIN_FREE_GB:-3} GB"
  log "see \`docker system df\` (BuildKit's cache is the usual culprit: \`docker builder prune\`)"
  exit 1
fi

import_dir() {  # dir image [--change ...]: tar a staged root dir into an image labelled with the hash
  local dir=$1 image=$2
  shift 2
  tar --numeric-owner -C "$dir" -c . | docker import --change "LABEL $LABEL=$HASH" "$@" - "$image" >/dev/null
}

# ---- base image (kind's images/base/Dockerfile, without a Docker build) -----------------------------------

KIND_SRC=$(cd "$WORK" && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kind@v$KIND_VERSION" | jq -r .Dir)
build_base() {
  local s="$WORK/base" f="$KIND_SRC/images/base/files" t=$SECONDS
  log "base: assembling $BASE_IMAGE"
  cp -a "$NODE_ROOTFS" "$s"
  rm -f "$s/.packages" "$s/.complete"
  # COPY --chmod lines of the Dockerfile: scripts 0755, everything else 0644.
  install -m 0755 "$f"/usr/local/bin/* "$s/usr/local/bin/"
  mkdir -p "$s/kind" "$s/LICENSES" && cp -r "$f/kind/." "$s/kind/"
  find "$s/kind" -type d -exec chmod 0755 {} + && find "$s/kind" -type f -exec chmod 0644 {} +
  chmod 0755 "$s"/kind/bin/*
  install -m 0644 "$f"/LICENSES/* "$s/LICENSES/"
  install -m 0644 "$f"/etc/crictl.yaml "$s/etc/"
  install -m 0644 -D -t "$s/etc/containerd" "$f"/etc/containerd/*
  install -m 0644 -D -t "$s/etc/default" "$f"/etc/default/*
  install -m 0644 -D -t "$s/etc/sysctl.d" "$f"/etc/sysctl.d/*
  find "$f/etc/systemd/system" -maxdepth 1 -type f -exec install -m 0644 -t "$s/etc/systemd/system" {} +
  install -m 0644 -D -t "$s/etc/systemd/system/kubelet.service.d" "$f"/etc/systemd/system/kubelet.service.d/*
  # The Dockerfile's RUN: trim systemd's default units, no kmsg in journald, systemd as init.
  find "$s/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
  rm -f "$s"/lib/systemd/system/multi-user.target.wants/* "$s"/etc/systemd/system/*.wants/* \
    "$s"/lib/systemd/system/local-fs.target.wants/* "$s"/lib/systemd/system/sockets.target.wants/*udev* \
    "$s"/lib/systemd/system/sockets.target.wants/*initctl* "$s"/lib/systemd/system/basic.target.wants/*
  echo "ReadKMsg=no" >> "$s/etc/systemd/journald.conf"
  ln -sf /usr/lib/systemd/systemd "$s/sbin/init"
  { chroot "$s" systemctl enable kubelet.service containerd.service undo-mount-hacks.service \
      && chroot "$s" systemctl mask systemd-binfmt.service; } > "$WORK/systemctl.log" 2>&1 \
    || { cat "$WORK/systemctl.log" >&2; exit 1; }
  mkdir -p "$s/etc/kubernetes/manifests" "$s/etc/cni/net.d"
  # Fix 2 of the doc: this host's root lacks CAP_SYS_RESOURCE, so runc cannot lower oom_score_adj to
  # kubelet's -998 and every pod sandbox dies; with this containerd clamps the value instead.
  sed -i 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' "$s/etc/containerd/config.toml"
  grep -q 'restrict_oom_score_adj = true' "$s/etc/containerd/config.toml" || { log "config.toml fix did not apply"; exit 1; }
  # The binaries kind's Dockerfile builds or downloads.
  install -m 0755 "$CONTAINERD"/{containerd,ctr,containerd-shim-runc-v2} "$CRICTL/crictl" "$s/usr/local/bin/"
  install -m 0755 "$RUNC/runc" "$s/usr/local/sbin/runc"
  install -m 0755 -D -t "$s/opt/cni/bin" "$CNI"/{host-local,loopback,ptp,portmap,bridge}
  "$CONTAINERD/ctr" oci spec \
    | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
    | jq 'del(.process.rlimits)' > "$s/etc/containerd/cri-base.json"
  import_dir "$s" "$BASE_IMAGE" --change 'ENV container=docker' \
    --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]'
  # `docker import` cannot set STOPSIGNAL (systemd exits on SIGRTMIN+3); a no-op legacy build can.
  printf 'FROM %s\nSTOPSIGNAL SIGRTMIN+3\n' "$BASE_IMAGE" | DOCKER_BUILDKIT=0 docker build -q -t "$BASE_IMAGE" - >/dev/null
  rm -rf "$s"
  log "base: done in $((SECONDS - t))s"
}
if [[ $(label_of "$BASE_IMAGE") == "$HASH" ]]; then log "base: $BASE_IMAGE is current"; else build_base; fi

# ---- component images (what kubeadm and containerd will ask for) ------------------------------------------

SANDBOX_IMAGE=$(sed -n 's/^\s*sandbox_image\s*=\s*"\(.*\)"/\1/p' "$KIND_SRC/images/base/files/etc/containerd/config.toml")
mapfile -t KUBEADM_IMAGES < <("$KUBENODE/kubeadm" config images list --kubernetes-version "v$K8S_VERSION" 2>/dev/null)
((${#KUBEADM_IMAGES[@]} >= 6)) || { log "kubeadm config images list failed"; exit 1; }
# The pins must name what kubeadm asks for, or the cluster would try to pull.
for want in "etcd:$ETCD_IMAGE_TAG" "coredns:v$COREDNS_VERSION" "pause:$PAUSE_TAG"; do
  printf '%s\n' "${KUBEADM_IMAGES[@]}" | grep -q "/$want\$" \
    || { log "versions.sh pins $want but kubeadm v$K8S_VERSION lists: ${KUBEADM_IMAGES[*]}"; exit 1; }
done
COMPONENT_IMAGES=("${KUBEADM_IMAGES[@]}" "$SANDBOX_IMAGE")

stage_static() {  # dir: the few files a static binary's image wants
  mkdir -p "$1/etc" "$1/tmp" "$1/usr/local/bin"
  chmod 1777 "$1/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' > "$1/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$1/etc/group"
  printf 'hosts: files dns\n' > "$1/etc/nsswitch.conf"
}

build_component() {  # image name as kubeadm prints it
  local image=$1 repo name tag s="$WORK/img"
  repo=${image%:*} tag=${image##*:} name=${repo##*/}
  rm -rf "$s"
  case $name in
    kube-apiserver | kube-controller-manager | kube-scheduler | etcd)
      local bin="$K8S/$name"; [[ $name == etcd ]] && bin="$ETCD/etcd"
      stage_static "$s" && install -m 0755 "$bin" "$s/usr/local/bin/$name"
      # kubeadm's static pod manifests call the binary by bare name.
      import_dir "$s" "$image" --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' ;;
    kube-proxy)
      cp -a "$IPT_ROOTFS" "$s" && rm -f "$s/.packages" "$s/.complete"
      install -m 0755 "$KUBENODE/kube-proxy" "$s/usr/local/bin/kube-proxy"
      import_dir "$s" "$image" --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' ;;
    coredns)
      stage_static "$s" && install -m 0755 "$COREDNS/coredns" "$s/coredns"
      import_dir "$s" "$image" --change 'ENTRYPOINT ["/coredns"]' --change 'EXPOSE 53 53/udp' ;;
    pause)
      stage_static "$s" && install -m 0755 "$PAUSE/pause" "$s/pause"
      import_dir "$s" "$image" --change 'ENTRYPOINT ["/pause"]' --change 'USER 65535:65535' ;;
    *) log "no recipe for image $image"; exit 1 ;;
  esac
  rm -rf "$s"
}
t=$SECONDS
for image in "${COMPONENT_IMAGES[@]}"; do
  if [[ $(label_of "$image") == "$HASH" ]]; then continue; fi
  log "image: $image"
  build_component "$image"
done
log "component images ready in $((SECONDS - t))s"

# ---- node image (kind's pkg/build/nodeimage/buildcontext.go, without pulls) --------------------------------

t=$SECONDS
log "node: starting build container from $BASE_IMAGE"
docker run -d --entrypoint=sleep --name="$BUILDER" --security-opt seccomp=unconfined "$BASE_IMAGE" infinity >/dev/null
for b in "$KUBENODE/kubeadm" "$KUBENODE/kubelet" "$K8S/kubectl"; do
  docker cp "$b" "$BUILDER:/usr/bin/"
done
docker cp "$CNI_CONFLIST" "$BUILDER:/etc/cni/net.d/10-ptp.conflist"
# kind applies /kind/manifests/default-cni.yaml unless disableDefaultCNI is set: make that harmless (the
# pod network is the baked conflist either way).
docker exec -i "$BUILDER" bash -euc "
  chmod 0755 /usr/bin/kubeadm /usr/bin/kubelet /usr/bin/kubectl
  chown root:root /usr/bin/kubeadm /usr/bin/kubelet /usr/bin/kubectl /etc/cni/net.d/10-ptp.conflist
  mkdir -p /kind/manifests && printf 'v$K8S_VERSION' > /kind/version
  cat > /kind/manifests/default-cni.yaml
" <<'YAML'
# The pod network of this node image is the CNI conflist baked at /etc/cni/net.d/10-ptp.conflist
# (ptp + host-local + portmap); multi-node clusters need e2e/kind/post-create.sh. Nothing to install.
apiVersion: v1
kind: ConfigMap
metadata: {name: local-cni-note, namespace: kube-system}
data: {cni: /etc/cni/net.d/10-ptp.conflist}
YAML
docker exec "$BUILDER" bash -c 'nohup containerd >/tmp/containerd.log 2>&1 & echo $! > /tmp/containerd.pid'
for ((i = 0; i < 60; i++)); do docker exec "$BUILDER" ctr version >/dev/null 2>&1 && break; sleep 0.5; done
log "node: importing ${#COMPONENT_IMAGES[@]} images into the node's containerd"
# (ctr's cgroup v1 deprecation warning is noise here.)
docker save "${COMPONENT_IMAGES[@]}" | docker exec -i "$BUILDER" ctr --namespace=k8s.io images import \
  --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests - 2>&1 >/dev/null | grep -v DEPRECATION >&2 || true
imported=$(docker exec "$BUILDER" ctr --namespace=k8s.io images list -q 2>/dev/null)
for image in "${COMPONENT_IMAGES[@]}"; do
  grep -qxF "$image" <<< "$imported" || { log "image $image missing in the node's containerd"; exit 1; }
done
if [[ -z ${NODE_IMAGE_KEEP_COMPONENTS:-} ]]; then   # before the commit: lowers the build's peak disk use
  for image in "${COMPONENT_IMAGES[@]}"; do docker rmi "$image" >/dev/null 2>&1 || true; done
fi
# containerd's parent is `sleep` (PID 1), which never reaps: wait for exit *or* zombie state.
docker exec "$BUILDER" bash -c 'pid=$(cat /tmp/containerd.pid); kill "$pid"
  for i in $(seq 100); do grep -qs "^State:[[:space:]]*[^Z]" /proc/$pid/status || break; sleep 0.2; done
  rm -rf /tmp/containerd.* /run/containerd'
docker commit --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' --change "LABEL $LABEL=$HASH" \
  "$BUILDER" "$NODE_IMAGE" >/dev/null
log "node: done in $((SECONDS - t))s"

# ---- tidy up: our dangling images and older node tags ------------------------------------------------------

docker rm -f -v "$BUILDER" >/dev/null 2>&1 || true
if [[ -z ${NODE_IMAGE_KEEP_OLD:-} ]]; then
  for old in $(docker images --filter "label=$LABEL" --format '{{.Repository}}:{{.Tag}}' local/kind-node); do
    [[ $old == "$NODE_IMAGE" ]] && continue
    docker rmi "$old" >/dev/null 2>&1 && log "removed older $old" || log "kept older $old (in use)"
  done
fi
docker image prune -f --filter "label=$LABEL" >/dev/null
log "$NODE_IMAGE built in $((SECONDS - T0))s ($(docker image inspect -f '{{.Size}}' "$NODE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
echo "$NODE_IMAGE"

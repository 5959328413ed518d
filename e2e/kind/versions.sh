# Pins for the locally built kind toolchain and node image: the ONE place to change a version.
#
# Sourced by build-kind-tools.sh and node-image.sh (`source e2e/kind/versions.sh`); kept to plain
# NAME=value lines (no expansions, no quotes needed) so Python can read it too:
#   dict(l.split("=", 1) for l in open(p).read().splitlines() if l and not l.startswith("#"))
# Changing a pin rebuilds only that component (cache dirs are keyed by version) and gives the node image
# a new tag (its tag hashes this file).

KIND_VERSION=0.33.0
# Must equal K8S_VERSION in e2e/localcluster/build-tools.sh: the control-plane images reuse its binaries.
K8S_VERSION=1.34.4
CONTAINERD_VERSION=2.4.2
RUNC_VERSION=1.4.4
CRICTL_VERSION=1.37.0
CNI_PLUGINS_VERSION=1.10.0
# The CoreDNS and pause tags kubeadm v1.34 expects (`kubeadm config images list`).
COREDNS_VERSION=1.12.1
PAUSE_TAG=3.10.1
# etcd actually built (build-tools.sh's pin) and the tag kubeadm v1.34 expects for its image.
ETCD_VERSION=3.6.16
ETCD_IMAGE_TAG=3.6.5-0
# Node OS: bookworm's systemd 252 still runs on cgroup v1 hosts (systemd >= 256 refuses v1).
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=http://deb.debian.org/debian

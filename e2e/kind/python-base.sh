#!/usr/bin/env bash
# A local Python base image for the project's Dockerfile, built from Debian packages only.
#
# Why: this machine reaches no image registry (no Docker Hub), so `FROM python:3.11-slim-bookworm` cannot be
# pulled. This script debootstraps a small bookworm rootfs with Debian's python3 (3.11), python3-venv and
# ca-certificates (nothing heavier: no compiler, no pip in the system Python; the Dockerfile works in venvs)
# and imports it as `local/python:3.11-bookworm-<hash>`, which is passed as the Dockerfile's PYTHON_IMAGE.
#
#   python-base.sh        build (or find) the image; the LAST stdout line is the image name
#
# Idempotent and cached: <hash> covers the recipe (the two functions below, the suite, the package list and
# the mirror), not the comments; the rootfs lives in $NEURON_OPERATOR_CACHE/rootfs/python-<hash> (default
# ~/.cache/neuron-operator) with a `.complete` stamp, and an existing tag is never rebuilt. The rootfs is a
# snapshot of the mirror on the day it was made: remove the cache directory and the tag to pick up newer
# Debian point releases.
# The image trusts Debian's CA bundle only; a build behind a TLS-intercepting proxy gets that proxy's CA as a
# BuildKit secret in builder stages (see build-images.sh and the Dockerfile header), never baked in here.
#
# Needs root (debootstrap), debootstrap, and the project's Docker engine (e2e/kind/docker-engine.sh; this
# script starts it when DOCKER_HOST is not set).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${NEURON_OPERATOR_CACHE:-$HOME/.cache/neuron-operator}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
PYTHON_VERSION=3.11   # bookworm's python3; checked after debootstrap
PACKAGES=python3,python3-venv,ca-certificates
log() { printf '[python-base %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

make_rootfs() {  # dir: debootstrap into dir.tmp, check, slim, stamp, then rename to dir
  local out=$1 tmp="$1.tmp" start=$SECONDS got
  rm -rf --one-file-system "$tmp" && mkdir -p "$tmp"   # a killed run may leave /proc mounted inside
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "$MIRROR" >&2
  got=$(chroot "$tmp" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [[ $got == "$PYTHON_VERSION" ]] || { log "expected python $PYTHON_VERSION, the rootfs has $got"; exit 1; }
  chroot "$tmp" python3 -m venv /tmp/venv-check && rm -rf "$tmp/tmp/venv-check"
  # Slim it the way Debian's -slim images do: no apt indexes or .debs, no docs (copyright files stay),
  # man pages or translations, and dpkg told to skip them in later installs too.
  chroot "$tmp" apt-get clean
  rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/apt/*.bin "$tmp"/var/log/*.log \
    "$tmp"/usr/share/man/* "$tmp"/usr/share/info/* "$tmp"/usr/share/locale/* \
    "$tmp"/var/cache/debconf/*-old "$tmp"/var/lib/dpkg/*-old
  find "$tmp/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$tmp/usr/share/doc" -mindepth 1 -type d -empty -delete
  cat > "$tmp/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
# Written by neuron-operator's e2e/kind/python-base.sh: keep images small, like Debian's -slim images.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
  echo "$((SECONDS - start))" > "$tmp/.complete"
  rm -rf "$out" && mv "$tmp" "$out"
}

import_image() {  # rootfs image
  local description="Debian $SUITE minbase + python3 $PYTHON_VERSION, python3-venv, ca-certificates"
  tar -C "$1" --exclude=./.complete --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL org.opencontainers.image.description=\"$description (neuron-operator e2e/kind/python-base.sh)\"" \
    --change 'CMD ["python3"]' \
    - "$2" >/dev/null
}

hash=$(
  { declare -f make_rootfs import_image; printf '%s\n' "$SUITE" "$PACKAGES" "$PYTHON_VERSION" "$MIRROR"; } |
    sha256sum | cut -c1-12
)
IMAGE="local/python:$PYTHON_VERSION-$SUITE-$hash"
ROOTFS="$CACHE/rootfs/python-$hash"

if [[ -z ${DOCKER_HOST:-} ]]; then
  engine_env=$(bash "$HERE/docker-engine.sh" start)
  eval "$engine_env"
fi

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "$IMAGE"
  exit 0
fi

if [[ ! -f $ROOTFS/.complete ]]; then
  for b in debootstrap chroot; do
    command -v "$b" >/dev/null || { log "missing $b (apt-get install debootstrap)"; exit 1; }
  done
  [[ $(id -u) == 0 ]] || { log "debootstrap needs root"; exit 1; }
  log "debootstrapping $SUITE ($PACKAGES) from $MIRROR into $ROOTFS (a few minutes, network-bound)"
  make_rootfs "$ROOTFS"
  log "rootfs ready in $(cat "$ROOTFS/.complete")s"
fi

log "importing $ROOTFS as $IMAGE"
import_image "$ROOTFS" "$IMAGE"
log "imported $IMAGE ($(docker image inspect --format '{{.Size}}' "$IMAGE" | numfmt --to=si)B)"
echo "$IMAGE"

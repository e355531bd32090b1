#!/usr/bin/env bash
# Install every Debian package the project, its tests and its benches need.
# Idempotent: packages already present are skipped, and apt-get update runs at most
# once per invocation (and only when something is missing).
set -euo pipefail

PKGS=(
  # Ceph: daemons for the dev cluster, CLI, client libraries and headers.
  ceph-mon ceph-osd ceph-common librados-dev librbd-dev
  # librados' C++ headers (rados/buffer.h, librados.hpp), for rbd-core's C++ shim.
  libradospp-dev
  # Anchors for the benchmark comparison and the nbd backend.
  rbd-fuse rbd-nbd
  # Filesystems and FUSE.
  e2fsprogs xfsprogs btrfs-progs fuse3 util-linux mount gdisk fdisk
  # Docker engine for the end-to-end tests, and the busybox test image.
  docker.io containerd runc busybox-static
  # Compose v1 (Debian's), for the plugin's compose end-to-end test.
  docker-compose
  # Misc tools used by scripts, tests and benches.
  fio iproute2 iptables jq procps psmisc kmod uuid-runtime ca-certificates curl
  # systemd-socket-activate, for the plugin's socket-activation test.
  systemd
  # C toolchain bits for linking librados/librbd, and g++ for rbd-core's C++ shim.
  gcc g++ libc6-dev pkg-config
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install-deps: done"

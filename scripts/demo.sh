#!/usr/bin/env bash
# README command 1: the main job on the embedded default (a local dev cluster).
#
# Installs dependencies, builds, starts the dev Ceph cluster, then uses rbdctl to create,
# list, inspect and remove an image, printing each step. Stops the cluster on exit if this
# script started it.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "installing system dependencies"
"$here/install-deps.sh"

say "building (release)"
cargo build --release --locked -p rbdctl
RBDCTL=$repo/target/release/rbdctl

started_cluster=0
cleanup() {
  local rc=$?
  set +e
  if [ "$started_cluster" = 1 ]; then say "stopping the dev cluster"; "$here/dev-cluster.sh" down; fi
  exit $rc
}
trap cleanup EXIT

say "starting the dev Ceph cluster"
if ! "$here/dev-cluster.sh" status >/dev/null 2>&1; then started_cluster=1; fi
eval "$("$here/dev-cluster.sh" up)"

img=demo-$(date +%s)
say "rbdctl create --size 1G $img"
"$RBDCTL" create --size 1G "$img"

say "rbdctl ls -l"
"$RBDCTL" ls -l

say "rbdctl info $img"
"$RBDCTL" info "$img"

say "rbdctl info $img --format json"
"$RBDCTL" info "$img" --format json

say "Ceph's own rbd CLI agrees"
rbd info "$img"

say "rbdctl rm $img"
"$RBDCTL" rm "$img"

say "rbdctl ls (the image is gone)"
"$RBDCTL" ls
if "$RBDCTL" ls | grep -qx "$img"; then echo "image $img still listed" >&2; exit 1; fi

say "done: created, listed, inspected and removed $img on the dev cluster"

#!/usr/bin/env bash
# README command 1: the main job on the embedded default (a local dev cluster).
#
# Installs dependencies, builds, starts the dev Ceph cluster, then:
#  1. uses rbdctl to create, list, inspect and remove an image;
#  2. starts a dockerd of its own (scripts/dev-docker.sh) and the rbd volume plugin;
#  3. creates a volume with `docker volume create -d rbd-demo`;
#  4. runs a container that writes a file and its checksum into it;
#  5. removes that container and runs another that reads the data back and checks it;
#  6. prints what happened (docker's and Ceph's view), then removes the volume.
# Everything it started (plugin, dockerd, cluster) is stopped on exit, even on failure.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "installing system dependencies"
"$here/install-deps.sh"

say "building (release)"
cargo build --release --locked -p rbdctl -p docker-volume-rbd -p rbd-driver
RBDCTL=$repo/target/release/rbdctl
PLUGIN=$repo/target/release/docker-volume-rbd

DEMO=$repo/.demo                   # plugin socket, state, mounts, logs
DOCKER_DIR=/tmp/rbd-demo-docker    # short: dockerd's exec root holds unix sockets
DRIVER=rbd-demo
SPEC=/etc/docker/plugins/$DRIVER.spec
started_cluster=0
plugin_pid=
vol=
cleanup() {
  local rc=$?
  set +e
  if [ -n "$vol" ] && [ -S "$DEMO/rbd.sock" ]; then
    docker volume rm -f "$vol" >/dev/null 2>&1
  fi
  if [ -n "$plugin_pid" ] && kill -0 "$plugin_pid" 2>/dev/null; then
    say "stopping the plugin (pid $plugin_pid)"
    kill -TERM "$plugin_pid"
    for _ in $(seq 1 100); do kill -0 "$plugin_pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$SPEC"
  if [ -d "$DOCKER_DIR" ]; then say "stopping the demo dockerd"; "$here/dev-docker.sh" down "$DOCKER_DIR"; rm -rf "$DOCKER_DIR"; fi
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

say "rbdctl: created, listed, inspected and removed $img on the dev cluster"

# ---- The Docker volume plugin ---------------------------------------------------------
say "starting a dockerd of our own"
eval "$(DEV_DOCKER_OWN=1 "$here/dev-docker.sh" up "$DOCKER_DIR")"
export DOCKER_HOST

say "starting the rbd volume plugin (docker finds it as '$DRIVER' through $SPEC)"
rm -rf "$DEMO"; mkdir -p "$DEMO"
RBD_PLUGIN_CONFIG= RBD_PLUGIN_SOCKET=$DEMO/rbd.sock RBD_STATE_DIR=$DEMO/state \
  RBD_MOUNT_ROOT=$DEMO/mnt RBD_RUN_DIR=$DEMO/run RBD_BACKEND=userspace \
  "$PLUGIN" >"$DEMO/plugin.log" 2>&1 &
plugin_pid=$!
for _ in $(seq 1 100); do [ -S "$DEMO/rbd.sock" ] && break; sleep 0.1; done
[ -S "$DEMO/rbd.sock" ] || { cat "$DEMO/plugin.log" >&2; echo "the plugin did not start" >&2; exit 1; }
mkdir -p /etc/docker/plugins
echo "unix://$DEMO/rbd.sock" >"$SPEC"
echo "plugin pid $plugin_pid, socket $DEMO/rbd.sock (mode $(stat -c %a "$DEMO/rbd.sock"))"

vol=demo-vol-$(date +%s)
say "docker volume create -d $DRIVER -o size=1G $vol"
docker volume create -d "$DRIVER" -o size=1G "$vol"

IMAGE=rbd-test/busybox:latest
say "docker run ... writer: 4 MiB of random data and its checksum into $vol"
docker run --name "$vol-writer" --network none --pull never -v "$vol:/data" "$IMAGE" sh -c \
  'dd if=/dev/urandom of=/data/blob bs=1M count=4 2>/dev/null && sha256sum /data/blob | tee /data/blob.sum && df -h /data'

say "docker rm $vol-writer; docker run ... reader in a new container"
docker rm "$vol-writer" >/dev/null
docker run --rm --network none --pull never -v "$vol:/data" "$IMAGE" sh -c \
  'sha256sum -c /data/blob.sum && ls -l /data'

say "what happened: docker's view"
docker volume ls --filter "driver=$DRIVER"
docker volume inspect "$vol"

say "what happened: Ceph's view (the volume is the RBD image $vol)"
rbd info "$vol"
"$RBDCTL" ls -l

say "docker volume rm $vol (removes the image)"
docker volume rm "$vol"
if rbd ls | grep -qx "$vol"; then echo "image $vol still listed" >&2; exit 1; fi
vol=

say "plugin log"
cat "$DEMO/plugin.log"

say "done: rbdctl image lifecycle, then a volume written by one container and read back by another"

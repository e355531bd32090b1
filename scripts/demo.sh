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
# Every docker and plugin call is bounded (DEMO_TIMEOUT seconds, default 120).
#
#   DEMO_PROFILE=release (default) or debug: which build of the binaries to use.
#   DEMO_BIN_DIR=DIR: use the binaries already in DIR and build nothing (the test
#   tests/tests/demo.rs runs the demo on the binaries the test suite has built).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

if [ -t 1 ]; then
  say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
else
  say() { printf '\n==> %s\n' "$*"; }
fi

say "installing system dependencies"
"$here/install-deps.sh"

PROFILE=${DEMO_PROFILE:-release}
T=${DEMO_TIMEOUT:-120}
case "$PROFILE" in
  release) build_flags=(--release) ;;
  debug) build_flags=() ;;
  *) echo "DEMO_PROFILE must be release or debug, not '$PROFILE'" >&2; exit 2 ;;
esac
target=${CARGO_TARGET_DIR:-$repo/target}
bin_dir=${DEMO_BIN_DIR:-}
if [ -z "$bin_dir" ]; then
  say "building ($PROFILE)"
  cargo build "${build_flags[@]}" --locked -p rbdctl -p docker-volume-rbd -p rbd-driver --bins
  bin_dir=$target/$PROFILE
fi
RBDCTL=$bin_dir/rbdctl
PLUGIN=$bin_dir/docker-volume-rbd
for b in "$RBDCTL" "$PLUGIN" "$bin_dir/rbd-umap"; do
  [ -x "$b" ] || { echo "demo: $b is missing" >&2; exit 1; }
done
docker() { timeout -k 10 "$T" docker "$@"; }

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
timeout "$T" "$RBDCTL" create --size 1G "$img"

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
  RBD_MOUNT_ROOT=$DEMO/mnt RBD_RUN_DIR=$DEMO/run RBD_BACKEND=userspace RBD_UMAP_BIN=$bin_dir/rbd-umap \
  "$PLUGIN" >"$DEMO/plugin.log" 2>&1 &
plugin_pid=$!
for _ in $(seq 1 100); do [ -S "$DEMO/rbd.sock" ] && break; sleep 0.1; done
[ -S "$DEMO/rbd.sock" ] || { cat "$DEMO/plugin.log" >&2; echo "the plugin did not start" >&2; exit 1; }
# The socket is bound at once; the plugin connects to the cluster (and starts its node
# daemon) in the background and answers every call with an error until then. Wait until
# List answers without one.
ready=0
for _ in $(seq 1 "$((T * 2))"); do
  answer=$(curl -s --max-time 5 --unix-socket "$DEMO/rbd.sock" -X POST \
    -H 'Content-Type: application/vnd.docker.plugins.v1+json' -d '{}' \
    http://plugin/VolumeDriver.List || true)
  if [ -n "$answer" ] && [ "$(jq -r '.Err // ""' <<<"$answer")" = "" ]; then ready=1; break; fi
  sleep 0.5
done
[ "$ready" = 1 ] || { cat "$DEMO/plugin.log" >&2; echo "the plugin did not connect to the cluster: $answer" >&2; exit 1; }
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

#!/usr/bin/env bash
# A dockerd for development and tests, plus the `rbd-test/busybox:latest` test image.
#
# usage: scripts/dev-docker.sh up|down|env|status [DIR]
#   DIR defaults to $DEV_DOCKER_DIR, then to <repo>/.dev-docker
#   DEV_DOCKER_OWN=1       never reuse a pre-existing dockerd; always start our own
#   DEV_DOCKER_TIMEOUT     bound in seconds for start-up and for each docker call (default 30)
#
# `up` reuses a dockerd that already answers ($DOCKER_HOST, then /var/run/docker.sock) and
# records that it did not start it. Otherwise it starts its own containerd and dockerd with
# every path (sockets, roots, logs, pid files) under DIR. Either way it then imports the test
# image (skipped when present) and prints `export DOCKER_HOST=...` lines for `eval`.
# `up` is idempotent: a healthy daemon of ours is left alone; a half-dead one is stopped and
# restarted (images and volumes under DIR/data are kept).
#
# `down` stops only what `up` started, by pid file (TERM, wait, KILL; dockerd first, then
# containerd), then lazily unmounts anything still mounted under DIR and the exec root, and
# removes the docker_gwbridge/docker0 links if they did not exist before our dockerd ran.
# A pre-existing dockerd is left alone.
#
# Our dockerd runs with --bridge=none --iptables=false --ip-forward=false --ip-masq=false: it
# touches neither the host's firewall, nor its sysctls, nor adds a docker0 bridge. Containers
# get no network other than loopback (pass `--network none` to avoid the "IPv4 forwarding is
# disabled" warning). Swarm still works on one node:
#   docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377
# (it creates docker_gwbridge, which `down` removes again).
set -euo pipefail

cmd=${1:-}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
DIR=$(realpath -m "${2:-${DEV_DOCKER_DIR:-$repo/.dev-docker}}")
T=${DEV_DOCKER_TIMEOUT:-30}
IMAGE=rbd-test/busybox:latest

CTD_SOCK=$DIR/containerd.sock
DOCKER_SOCK=$DIR/docker.sock
OWN_HOST=unix://$DOCKER_SOCK
CTD_PID=$DIR/containerd.pid
DOCKERD_PID=$DIR/dockerd.pid          # written by dockerd itself (--pidfile)
DOCKERD_SPAWN_PID=$DIR/dockerd.spawn.pid  # $! of the launch, in case dockerd dies before
MODE_FILE=$DIR/mode                   # "own" or "external"
EXT_HOST_FILE=$DIR/external-host
LINKS_FILE=$DIR/links-before          # bridges that existed before our dockerd started
LOG=$DIR/log

log() { echo "dev-docker: $*" >&2; }
die() { log "error: $*"; exit 1; }

# The exec root holds unix sockets several levels down (libnetwork, swarm control, runc),
# so it must stay short: DIR/exec when DIR is short, else a per-DIR directory in /run.
exec_root() {
  if [ "${#DIR}" -le 48 ]; then
    echo "$DIR/exec"
  else
    echo "/run/dev-docker-$(printf %s "$DIR" | sha256sum | cut -c1-12)"
  fi
}
EXEC_ROOT=$(exec_root)

[ "${#DOCKER_SOCK}" -lt 100 ] || die "DIR is too long for unix socket paths: $DIR"

# docker against a given host, bounded.
dk() {
  local host=$1; shift
  timeout "$T" docker -H "$host" "$@"
}

answers() { timeout 10 docker -H "$1" version >/dev/null 2>&1; }

# pid from a pid file, only if it is alive and still runs the binary we started
# (guards against pid reuse after a crash).
live_pid() {
  local f=$1 exe=$2 p
  [ -s "$f" ] || return 1
  p=$(tr -dc 0-9 <"$f")
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 1
  local real; real=$(readlink "/proc/$p/exe" 2>/dev/null || true)
  real=${real% (deleted)}
  [ "${real##*/}" = "$exe" ] || return 1
  echo "$p"
}

stop_pid() {
  local p=$1 name=$2 wait_s=$3
  log "stopping $name (pid $p)"
  kill -TERM "$p" 2>/dev/null || true
  local i
  for ((i = 0; i < wait_s * 10; i++)); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  log "$name (pid $p) did not stop on TERM within ${wait_s}s; sending KILL"
  kill -KILL "$p" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  log "warning: $name (pid $p) still present after KILL"
}

stop_pidfile() {
  local f=$1 exe=$2 name=$3 wait_s=$4 p
  if p=$(live_pid "$f" "$exe"); then stop_pid "$p" "$name" "$wait_s"; fi
  rm -f "$f"
}

own_healthy() {
  live_pid "$CTD_PID" containerd >/dev/null || return 1
  live_pid "$DOCKERD_PID" dockerd >/dev/null || return 1
  answers "$OWN_HOST"
}

# Mount points at or below a path, deepest first (mountinfo field 5, octal escapes decoded).
mounts_under() {
  local base=$1
  awk -v b="$base" '{ m = $5; if (m == b || index(m, b "/") == 1) print m }' /proc/self/mountinfo \
    | while IFS= read -r m; do printf '%b\n' "$m"; done \
    | awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f2-
}

unmount_under() {
  local base=$1 m n=0
  [ -e "$base" ] || return 0
  while IFS= read -r m; do
    [ -n "$m" ] || continue
    umount -l "$m" 2>/dev/null && n=$((n + 1)) || log "warning: could not unmount $m"
  done < <(mounts_under "$base")
  [ "$n" = 0 ] || log "unmounted $n leftover mount(s) under $base"
}

# Containers left behind when dockerd was killed keep their shims alive. Ask our containerd
# to kill and delete them while it still runs.
kill_leftover_tasks() {
  local a=(ctr --address "$CTD_SOCK") ns id
  command -v ctr >/dev/null || return 0
  for ns in $(timeout 10 "${a[@]}" namespaces ls -q 2>/dev/null); do
    for id in $(timeout 10 "${a[@]}" -n "$ns" tasks ls -q 2>/dev/null); do
      log "killing leftover task $ns/$id"
      timeout 10 "${a[@]}" -n "$ns" tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true
      sleep 0.2
      timeout 10 "${a[@]}" -n "$ns" tasks delete -f "$id" >/dev/null 2>&1 || true
    done
  done
}

# Shims that outlived our containerd: exactly those started with `-address <our socket>`.
kill_orphan_shims() {
  local d p args
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    args=$(tr '\0' ' ' 2>/dev/null <"$d/cmdline") || continue
    case "$args" in
      *containerd-shim*" -address $CTD_SOCK "*)
        log "killing orphan shim pid $p"
        kill -KILL "$p" 2>/dev/null || true ;;
    esac
  done
}

bridges() { ip -o link show type bridge 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1; }

remove_our_links() {
  [ -f "$LINKS_FILE" ] || return 0
  local l
  for l in docker_gwbridge docker0; do
    if ip link show "$l" >/dev/null 2>&1 && ! grep -qx "$l" "$LINKS_FILE"; then
      log "removing link $l created by our dockerd"
      ip link del "$l" 2>/dev/null || log "warning: could not remove link $l"
    fi
  done
  rm -f "$LINKS_FILE"
}

own_down() {
  local had=0
  { [ -f "$DOCKERD_PID" ] || [ -f "$DOCKERD_SPAWN_PID" ] || [ -f "$CTD_PID" ]; } && had=1
  stop_pidfile "$DOCKERD_PID" dockerd dockerd 30
  stop_pidfile "$DOCKERD_SPAWN_PID" dockerd "dockerd (launch)" 5
  if live_pid "$CTD_PID" containerd >/dev/null; then kill_leftover_tasks; fi
  stop_pidfile "$CTD_PID" containerd containerd 15
  kill_orphan_shims
  unmount_under "$DIR"
  unmount_under "$EXEC_ROOT"
  # The exec root only holds runtime state (fifos, sockets, netns files); drop it once
  # nothing is mounted there any more.
  if [ -d "$EXEC_ROOT" ] && [ -z "$(mounts_under "$EXEC_ROOT")" ]; then rm -rf "$EXEC_ROOT"; fi
  remove_our_links
  rm -f "$DOCKER_SOCK" "$CTD_SOCK" "$CTD_SOCK.ttrpc"
  [ "$had" = 0 ] || log "down ($DIR)"
}

do_down() {
  [ -d "$DIR" ] || { log "nothing at $DIR"; return 0; }
  exec 9>"$DIR/lock"
  flock -w 120 9 || die "another dev-docker.sh holds $DIR/lock"
  if [ "$(cat "$MODE_FILE" 2>/dev/null)" = external ]; then
    log "leaving the pre-existing dockerd at $(cat "$EXT_HOST_FILE" 2>/dev/null) alone"
    rm -f "$MODE_FILE" "$EXT_HOST_FILE"
  fi
  own_down
  rm -f "$MODE_FILE"
}

write_containerd_config() {
  cat >"$DIR/containerd.toml" <<EOF
version = 2
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "$CTD_SOCK"

[ttrpc]
  address = "$CTD_SOCK.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$DIR/containerd/opt"
EOF
}

wait_until() {
  # wait_until SECONDS PID NAME LOGFILE -- CMD...
  local secs=$1 pid=$2 name=$3 logf=$4; shift 5
  local i
  for ((i = 0; i < secs * 5; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$logf" >&2 || true; die "$name exited (see $logf)"; }
    sleep 0.2
  done
  tail -n 20 "$logf" >&2 || true
  die "$name did not answer within ${secs}s (see $logf)"
}

own_up() {
  command -v containerd >/dev/null || die "containerd not installed (run scripts/install-deps.sh)"
  command -v dockerd >/dev/null || die "dockerd not installed (run scripts/install-deps.sh)"
  command -v docker >/dev/null || die "docker CLI not installed (run scripts/install-deps.sh)"
  own_down
  mkdir -p "$LOG" "$DIR/containerd" "$DIR/data" "$EXEC_ROOT"
  # A failed start leaves nothing running behind.
  trap 'log "start failed: stopping what was started"; own_down; rm -f "$MODE_FILE"' EXIT
  local t0; t0=$(date +%s%N)

  write_containerd_config
  setsid nohup containerd --config "$DIR/containerd.toml" \
    >>"$LOG/containerd.log" 2>&1 </dev/null 9>&- &
  local cpid=$!
  echo "$cpid" >"$CTD_PID"
  echo own >"$MODE_FILE"
  wait_until "$T" "$cpid" containerd "$LOG/containerd.log" -- \
    timeout 5 ctr --address "$CTD_SOCK" version

  bridges >"$LINKS_FILE" || true
  [ -f "$DIR/daemon.json" ] || echo '{}' >"$DIR/daemon.json"
  setsid nohup dockerd \
    --config-file "$DIR/daemon.json" \
    -H "$OWN_HOST" \
    --containerd "$CTD_SOCK" \
    --data-root "$DIR/data" \
    --exec-root "$EXEC_ROOT" \
    --pidfile "$DOCKERD_PID" \
    --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    >>"$LOG/dockerd.log" 2>&1 </dev/null 9>&- &
  local dpid=$!
  echo "$dpid" >"$DOCKERD_SPAWN_PID"
  wait_until "$T" "$dpid" dockerd "$LOG/dockerd.log" -- answers "$OWN_HOST"
  trap - EXIT
  local t1; t1=$(date +%s%N)
  log "dockerd up in $(((t1 - t0) / 1000000)) ms at $OWN_HOST"
}

ensure_image() {
  local host=$1
  if dk "$host" image inspect "$IMAGE" >/dev/null 2>&1; then return 0; fi
  local bb; bb=$(command -v busybox || true)
  [ -n "$bb" ] || die "busybox not installed (run scripts/install-deps.sh: busybox-static)"
  if ldd "$bb" >/dev/null 2>&1; then
    die "$bb is dynamically linked; install busybox-static"
  fi
  local root="$DIR/image-rootfs"
  rm -rf "$root"
  mkdir -p "$root/bin" "$root/data" "$root/tmp" "$root/etc" "$root/proc" "$root/sys" "$root/dev"
  cp "$bb" "$root/bin/busybox"
  local a
  for a in $("$root/bin/busybox" --list); do
    [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
  done
  chmod 1777 "$root/tmp"
  echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
  echo 'root:x:0:' >"$root/etc/group"
  tar -C "$root" -c . | dk "$host" import \
    -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null \
    || die "docker import of $IMAGE failed"
  rm -rf "$root"
  log "imported $IMAGE"
}

find_external() {
  local h
  if [ "${DEV_DOCKER_OWN:-0}" = 1 ]; then return 1; fi
  if [ -n "${DOCKER_HOST:-}" ] && [ "$DOCKER_HOST" != "$OWN_HOST" ] && answers "$DOCKER_HOST"; then
    echo "$DOCKER_HOST"; return 0
  fi
  h=unix:///var/run/docker.sock
  if [ -S /var/run/docker.sock ] && [ "$h" != "$OWN_HOST" ] && answers "$h"; then
    echo "$h"; return 0
  fi
  return 1
}

current_host() {
  case "$(cat "$MODE_FILE" 2>/dev/null)" in
    external) cat "$EXT_HOST_FILE" ;;
    own) echo "$OWN_HOST" ;;
    *) return 1 ;;
  esac
}

do_up() {
  mkdir -p "$DIR"
  exec 9>"$DIR/lock"
  flock -w 120 9 || die "another dev-docker.sh holds $DIR/lock"
  local mode; mode=$(cat "$MODE_FILE" 2>/dev/null || true)
  local host
  if [ "$mode" = own ] && own_healthy; then
    log "already up ($OWN_HOST)"
    host=$OWN_HOST
  elif [ "$mode" = external ] && answers "$(cat "$EXT_HOST_FILE")"; then
    host=$(cat "$EXT_HOST_FILE")
    log "already using the pre-existing dockerd at $host"
  elif host=$(find_external); then
    own_down   # anything of ours left from an earlier run
    echo "$host" >"$EXT_HOST_FILE"
    echo external >"$MODE_FILE"
    log "using the pre-existing dockerd at $host (down will leave it alone)"
  else
    own_up
    host=$OWN_HOST
  fi
  ensure_image "$host"
  do_env
}

do_env() {
  local host
  host=$(current_host 2>/dev/null) || die "no dev dockerd recorded at $DIR (run: $0 up)"
  echo "export DOCKER_HOST=$host"
  echo "export DEV_DOCKER_DIR=$DIR"
}

do_status() {
  local mode; mode=$(cat "$MODE_FILE" 2>/dev/null || true)
  local host p rc=0
  case "$mode" in
    external)
      host=$(cat "$EXT_HOST_FILE")
      echo "dockerd: pre-existing, not started by us ($host)" ;;
    own)
      host=$OWN_HOST
      if p=$(live_pid "$CTD_PID" containerd); then echo "containerd: running (pid $p, $CTD_SOCK)"
      else echo "containerd: stopped"; rc=1; fi
      if p=$(live_pid "$DOCKERD_PID" dockerd); then echo "dockerd: running (pid $p, $OWN_HOST)"
      else echo "dockerd: stopped"; rc=1; fi ;;
    *)
      echo "no dev dockerd at $DIR"
      local n; n=$(mounts_under "$DIR" | grep -c . || true)
      [ "$n" = 0 ] || echo "warning: $n mount(s) left under $DIR (run: $0 down)"
      return 1 ;;
  esac
  local v
  if v=$(timeout 10 docker -H "$host" version --format '{{.Server.Version}}' 2>/dev/null); then
    echo "api: answering (server $v)"
    if dk "$host" image inspect "$IMAGE" >/dev/null 2>&1; then echo "image: $IMAGE present"
    else echo "image: $IMAGE missing"; rc=1; fi
    local swarm; swarm=$(dk "$host" info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || true)
    echo "swarm: ${swarm:-unknown}"
  else
    echo "api: not answering"; rc=1
  fi
  return $rc
}

case "$cmd" in
  up) do_up ;;
  down) do_down ;;
  env) do_env ;;
  status) do_status ;;
  *) echo "usage: $0 up|down|env|status [DIR]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# A multi-node test bed on one machine: network namespaces created by this script, one
# running a real Ceph cluster (scripts/dev-cluster.sh bound to its address), N "node"
# namespaces, all joined by veth pairs to a bridge that lives in a namespace of its own.
# Nothing touches the host's network: every link, address and route is inside these
# namespaces, in a private range, and traffic never leaves them.
#
# usage: scripts/testbed.sh up N | down | status | env | exec NODE CMD... | cut NODE |
#                           heal NODE | netns NODE
#   NODE is n1..nN (or 1..N), or "ceph" for the cluster's namespace.
#
#   TESTBED_DIR       state directory (default <repo>/.testbed); namespace names derive
#                     from it, so several beds (one per directory) can coexist
#   TESTBED_SUBNET    first three octets of the private /24 (default 10.77.0)
#   TESTBED_CEPH_MEM  memstore size of the cluster's OSD (default 2G)
#
# Layout: namespace <P>-br holds bridge br0 and one veth end per member; <P>-ceph has
# eth0 = SUBNET.2 and runs mon + osd; <P>-nI has eth0 = SUBNET.(10+I). Each node has
# DIR/nodes/nI/{state,mounts,run}: daemons started for a node write their pid files to its
# run dir, and `down` stops them by those pid files.
#
# Commands enter a namespace with `nsenter --net=/run/netns/X` (not `ip netns exec`), so
# only the network namespace changes: mounts made by node daemons (FUSE, loop) stay
# visible to the host and to tests.
#
# `up` is idempotent (missing pieces are created, a healthy cluster is kept). `down` stops
# the daemons by pid file, kills whatever still runs inside our namespaces (by pid),
# unmounts what is mounted under DIR, detaches loop devices backed by files under DIR, and
# deletes every namespace it created (the veths go with them). It is safe to run twice.
set -euo pipefail

cmd=${1:-}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
DIR=${TESTBED_DIR:-$repo/.testbed}
SUBNET=${TESTBED_SUBNET:-10.77.0}
CEPH_MEM=${TESTBED_CEPH_MEM:-2G}
STATE=$DIR/state
T=${TESTBED_TIMEOUT:-30}

log() { echo "testbed: $*" >&2; }
die() { log "error: $*"; exit 1; }

# The namespace prefix: a hash of the state directory, so each bed has its own names.
dir_abs() { mkdir -p "$DIR" && (cd "$DIR" && pwd -P); }
prefix() { echo "tb$(dir_abs | sha1sum | cut -c1-8)"; }

need_root() {
  [ "$(id -u)" = 0 ] || die "must run as root (network namespaces)"
  command -v ip >/dev/null || die "ip not found (install iproute2)"
  command -v nsenter >/dev/null || die "nsenter not found (install util-linux)"
}

ns_exists() { [ -e "/run/netns/$1" ]; }
ipn() { timeout "$T" ip -n "$@"; }

ceph_ip() { echo "$SUBNET.2"; }
node_ip() { echo "$SUBNET.$((10 + $1))"; }

# Normalizes "n3", "3" -> "n3"; "ceph" stays.
node_name() {
  local n=$1
  case "$n" in
    ceph) echo ceph ;;
    n[0-9]*) echo "$n" ;;
    [0-9]*) echo "n$n" ;;
    *) die "unknown node $n (expected n1..nN, 1..N or ceph)" ;;
  esac
}

state_get() { [ -f "$STATE" ] && sed -n "s/^$1=//p" "$STATE" | tail -1; }

create_ns() {
  local ns=$1
  if ! ns_exists "$ns"; then
    timeout "$T" ip netns add "$ns"
  fi
  ipn "$ns" link set lo up
}

# Connects member namespace <P>-<short> to the bridge with address $2.
link_member() {
  local P=$1 short=$2 addr=$3
  local ns=$P-$short br=$P-br veth=v-$short
  create_ns "$ns"
  if ! ipn "$br" link show "$veth" >/dev/null 2>&1; then
    # Both ends are created directly inside the namespaces: nothing appears on the host.
    ipn "$br" link add "$veth" type veth peer name eth0 netns "$ns"
  fi
  ipn "$br" link set "$veth" master br0
  ipn "$br" link set "$veth" up
  if ! ipn "$ns" -o addr show dev eth0 | grep -q "inet $addr/"; then
    ipn "$ns" addr add "$addr/24" dev eth0
  fi
  ipn "$ns" link set eth0 up
}

write_state() {
  local P=$1 n=$2
  cat > "$STATE.tmp" <<EOF
PREFIX=$P
NODES=$n
SUBNET=$SUBNET
CEPH_IP=$(ceph_ip)
CEPH_CONF=$DIR/ceph/ceph.conf
EOF
  mv "$STATE.tmp" "$STATE"
}

in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" -- "$@"; }

do_up() {
  local n=${1:-}
  [[ "$n" =~ ^[1-9][0-9]?$ ]] || die "usage: $0 up N (N = 1..99 nodes)"
  need_root
  local P; P=$(prefix)
  local old; old=$(state_get NODES || true)
  if [ -n "$old" ] && [ "$old" -gt "$n" ]; then
    die "the bed at $DIR is up with $old nodes; run down first to shrink it"
  fi
  mkdir -p "$DIR"
  create_ns "$P-br"
  if ! ipn "$P-br" link show br0 >/dev/null 2>&1; then
    ipn "$P-br" link add br0 type bridge
  fi
  ipn "$P-br" link set br0 up
  link_member "$P" ceph "$(ceph_ip)"
  local i
  for i in $(seq 1 "$n"); do
    link_member "$P" "n$i" "$(node_ip "$i")"
    mkdir -p "$DIR/nodes/n$i"/{state,mounts,run}
  done
  write_state "$P" "$n"

  # The cluster, inside its namespace, bound to its address.
  in_ns "$P-ceph" env DEV_CLUSTER_IP="$(ceph_ip)" DEV_CLUSTER_DIR="$DIR/ceph" \
    DEV_CLUSTER_MEM="$CEPH_MEM" "$repo/scripts/dev-cluster.sh" up >/dev/null \
    || die "the Ceph cluster did not come up in $P-ceph (see $DIR/ceph/log)"
  # Every node must reach it.
  for i in $(seq 1 "$n"); do
    in_ns "$P-n$i" timeout "$T" rbd -c "$DIR/ceph/ceph.conf" ls rbd >/dev/null \
      || die "node n$i cannot reach the cluster at $(ceph_ip)"
  done
  log "up: $n nodes, cluster at $(ceph_ip) ($DIR, namespaces $P-*)"
  do_env
}

do_env() {
  [ -f "$STATE" ] || die "no test bed at $DIR (run: $0 up N)"
  echo "export TESTBED_DIR=$DIR"
  echo "export TESTBED_PREFIX=$(state_get PREFIX)"
  echo "export TESTBED_NODES=$(state_get NODES)"
  echo "export TESTBED_CEPH_IP=$(state_get CEPH_IP)"
  echo "export TESTBED_CEPH_CONF=$(state_get CEPH_CONF)"
}

stop_pidfile() {
  local f=$1 p
  p=$(cat "$f" 2>/dev/null || true)
  if [[ "$p" =~ ^[0-9]+$ ]] && kill -0 "$p" 2>/dev/null; then
    log "stopping pid $p ($f)"
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  fi
  rm -f "$f"
}

# Kills, by pid, every process still inside namespace $1 (all started by us: the namespace
# is ours).
kill_ns_pids() {
  local ns=$1 pids p
  ns_exists "$ns" || return 0
  pids=$(timeout "$T" ip netns pids "$ns" 2>/dev/null || true)
  [ -n "$pids" ] || return 0
  log "stopping processes left in $ns: $(echo $pids)"
  for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    pids=$(timeout "$T" ip netns pids "$ns" 2>/dev/null || true)
    [ -n "$pids" ] || return 0
    sleep 0.1
  done
  for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
}

do_down() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  [ -d "$DIR" ] || { log "nothing at $DIR"; return 0; }
  local P; P=$(prefix)
  local f
  for f in "$DIR"/nodes/*/run/*.pid; do
    [ -e "$f" ] && stop_pidfile "$f"
  done
  if [ -d "$DIR/ceph" ]; then
    DEV_CLUSTER_DIR="$DIR/ceph" "$repo/scripts/dev-cluster.sh" down >/dev/null 2>&1 || true
  fi
  local ns
  for ns in $(ls /run/netns 2>/dev/null | grep "^$P-" || true); do
    kill_ns_pids "$ns"
  done
  # Mounts under DIR (deepest first), then loop devices backed by files under DIR.
  local d; d=$(dir_abs)
  local m
  for m in $(awk -v d="$d/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    log "unmounting $m"
    timeout "$T" umount -l "$m" 2>/dev/null || true
  done
  local line dev back
  while read -r dev back; do
    case "$back" in
      "$d"/*) log "detaching $dev ($back)"; timeout "$T" losetup -d "$dev" 2>/dev/null || true ;;
    esac
  done < <(timeout "$T" losetup -l -n -O NAME,BACK-FILE 2>/dev/null || true)
  for ns in $(ls /run/netns 2>/dev/null | grep "^$P-" || true); do
    timeout "$T" ip netns del "$ns" 2>/dev/null || log "could not delete namespace $ns"
  done
  rm -rf "$DIR/ceph" "$DIR/nodes" "$STATE"
  log "down ($DIR)"
}

do_status() {
  [ -f "$STATE" ] || { echo "no test bed at $DIR"; return 1; }
  local P n ok=0
  P=$(state_get PREFIX); n=$(state_get NODES)
  echo "test bed $DIR: prefix $P, $n nodes, cluster at $(state_get CEPH_IP)"
  local short ns
  for short in br ceph $(seq -f 'n%g' 1 "$n"); do
    ns=$P-$short
    if ! ns_exists "$ns"; then echo "$short: namespace missing"; ok=1; continue; fi
    if [ "$short" = br ]; then echo "br: bridge $(ipn "$ns" -br link show br0 | awk '{print $2}')"; continue; fi
    echo "$short: $(ipn "$ns" -br addr show dev eth0 | awk '{print $2, $3}')"
  done
  if in_ns "$P-ceph" env DEV_CLUSTER_DIR="$DIR/ceph" "$repo/scripts/dev-cluster.sh" status; then :; else ok=1; fi
  local f
  for f in "$DIR"/nodes/*/run/*.pid; do
    [ -e "$f" ] || continue
    if kill -0 "$(cat "$f")" 2>/dev/null; then echo "daemon $(basename "$f" .pid) ($f): running"
    else echo "daemon $(basename "$f" .pid) ($f): stopped"; fi
  done
  return $ok
}

node_ns() {
  [ -f "$STATE" ] || die "no test bed at $DIR (run: $0 up N)"
  local name; name=$(node_name "$1")
  local n; n=$(state_get NODES)
  if [ "$name" != ceph ] && [ "${name#n}" -gt "$n" ]; then die "no node $name (the bed has $n)"; fi
  echo "$(state_get PREFIX)-$name"
}

do_exec() {
  [ $# -ge 2 ] || die "usage: $0 exec NODE CMD..."
  local ns name; ns=$(node_ns "$1"); name=$(node_name "$1"); shift
  ns_exists "$ns" || die "namespace $ns does not exist"
  local nd=$DIR/nodes/$name
  exec nsenter --net="/run/netns/$ns" -- env TESTBED_NODE="$name" TESTBED_NODE_DIR="$nd" \
    CEPH_CONF="$(state_get CEPH_CONF)" "$@"
}

do_cut() {
  local ns; ns=$(node_ns "${1:?usage: $0 cut NODE}")
  [ "$(node_name "$1")" != ceph ] || die "cut a node, not the cluster"
  ipn "$ns" link set eth0 down
  log "cut $(node_name "$1") (eth0 down in $ns)"
}

do_heal() {
  local ns; ns=$(node_ns "${1:?usage: $0 heal NODE}")
  ipn "$ns" link set eth0 up
  log "healed $(node_name "$1") (eth0 up in $ns)"
}

case "$cmd" in
  up) shift; do_up "$@" ;;
  down) do_down ;;
  status) do_status ;;
  env) do_env ;;
  exec) shift; do_exec "$@" ;;
  cut) shift; do_cut "$@" ;;
  heal) shift; do_heal "$@" ;;
  netns) shift; echo "/run/netns/$(node_ns "${1:?usage: $0 netns NODE}")" ;;
  *) echo "usage: $0 up N | down | status | env | exec NODE CMD... | cut NODE | heal NODE | netns NODE" >&2; exit 2 ;;
esac

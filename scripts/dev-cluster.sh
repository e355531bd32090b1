#!/usr/bin/env bash
# A real single-node Ceph cluster for development and tests: one mon and one memstore OSD,
# cephx on, pool `rbd` initialised, bound to one address on ports of its own.
#
# usage: scripts/dev-cluster.sh up|down|status|env|wait [DIR]
#   DIR defaults to $DEV_CLUSTER_DIR, then to <repo>/.dev-cluster
#   DEV_CLUSTER_IP    address to bind (default 127.0.0.1)
#   DEV_CLUSTER_PORT  mon v2 port (default: a free one is chosen; v1 is PORT+1)
#   DEV_CLUSTER_MEM   memstore size (default 8G; RAM is only used for data written)
#
# `up` is idempotent: a healthy running cluster is left alone, a dead or half-started one is
# wiped and recreated. `down` stops only the daemons this script started, by their pid files.
set -euo pipefail

cmd=${1:-}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
DIR=${2:-${DEV_CLUSTER_DIR:-$repo/.dev-cluster}}
IP=${DEV_CLUSTER_IP:-127.0.0.1}
MEM=${DEV_CLUSTER_MEM:-8G}
CONF=$DIR/ceph.conf
T=${DEV_CLUSTER_TIMEOUT:-30}

log() { echo "dev-cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

ceph_() { timeout "$T" ceph -c "$CONF" --connect-timeout "$T" "$@"; }

pid_alive() {
  local f=$1
  [ -s "$f" ] || return 1
  local p; p=$(cat "$f")
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null
}

daemons_alive() {
  pid_alive "$DIR/run/mon.a.pid" && pid_alive "$DIR/run/osd.0.pid"
}

healthy() {
  [ -f "$CONF" ] || return 1
  daemons_alive || return 1
  ceph_ osd stat --format json 2>/dev/null | grep -q '"num_up_osds":1' || return 1
  timeout "$T" rbd -c "$CONF" ls rbd >/dev/null 2>&1 || return 1
  # A write must go through too (a full or wedged OSD accepts reads but not writes).
  timeout 10 rados -c "$CONF" -p rbd put dev-cluster-health "$CONF" >/dev/null 2>&1
}

stop_pidfile() {
  local f=$1 name=$2
  if pid_alive "$f"; then
    local p; p=$(cat "$f")
    log "stopping $name (pid $p)"
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then
      log "$name (pid $p) did not stop on TERM; sending KILL"
      kill -KILL "$p" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    fi
  fi
  rm -f "$f"
}

do_down() {
  [ -d "$DIR" ] || { log "nothing at $DIR"; return 0; }
  stop_pidfile "$DIR/run/osd.0.pid" osd.0
  stop_pidfile "$DIR/run/mon.a.pid" mon.a
  log "down ($DIR)"
}

port_free() {
  ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q . 
}

pick_port() {
  if [ -n "${DEV_CLUSTER_PORT:-}" ]; then echo "$DEV_CLUSTER_PORT"; return; fi
  local p i ok
  for _ in $(seq 1 200); do
    p=$(( 20000 + (RANDOM % 400) * 100 ))
    ok=1
    for i in 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
      port_free $((p + i)) || { ok=0; break; }
    done
    [ $ok = 1 ] && { echo "$p"; return; }
  done
  die "no free port range found"
}

write_conf() {
  local fsid=$1 port=$2
  cat > "$CONF" <<CONF
[global]
fsid = $fsid
mon host = [v2:$IP:$port,v1:$IP:$((port + 1))]
public addr = $IP
cluster addr = $IP
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $DIR/keyring
run dir = $DIR/run
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
crash dir = $DIR/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
mon data avail warn = 1
mon data avail crit = 0
# memstore's used-bytes counter has been seen to underflow during tests; the OSD then
# computes a ratio of about 2e9 and engages "failsafe full", dropping every write. The dev
# cluster does not test fullness, so the thresholds are set out of reach (Ceph divides
# ratios above 1 by 100).
mon osd nearfull ratio = 10000000000000
mon osd backfillfull ratio = 10000000000000
mon osd full ratio = 10000000000000
osd failsafe full ratio = 10000000000000

[mon]
mon data = $DIR/mon/\$cluster-\$id
admin socket = $DIR/run/\$name.asok
mon cluster log file = $DIR/log/cluster.log

[osd]
osd data = $DIR/osd/\$cluster-\$id
osd objectstore = memstore
memstore device bytes = $(numfmt --from=iec "$MEM")
admin socket = $DIR/run/\$name.asok
ms bind port min = $((port + 2))
ms bind port max = $((port + 20))
osd max object name len = 460
osd max object namespace len = 64

[client]
admin socket =
log file =
CONF
}

do_up() {
  if healthy; then
    log "already up ($DIR)"
    do_env
    return 0
  fi
  if [ -d "$DIR" ]; then
    log "stale or partial cluster at $DIR: recreating"
    do_down
    rm -rf "$DIR"
  fi
  command -v ceph-mon >/dev/null || die "ceph-mon not installed (run scripts/install-deps.sh)"
  local t0; t0=$(date +%s%N)
  mkdir -p "$DIR"/{run,log,crash,mon/ceph-a,osd/ceph-0}
  local fsid port osd_uuid
  fsid=$(uuidgen)
  osd_uuid=$(uuidgen)
  port=$(pick_port)
  write_conf "$fsid" "$port"

  # One keyring with mon., client.admin and osd.0 before ceph-mon --mkfs, so osd.0 can
  # authenticate when it runs --mkfs.
  local kr=$DIR/keyring
  ceph-authtool --create-keyring "$kr" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "$kr" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
  ceph-authtool "$kr" --gen-key -n osd.0 \
    --cap mon 'allow profile osd' --cap osd 'allow *' --cap mgr 'allow profile osd' >/dev/null
  chmod 600 "$kr"

  monmaptool --create --fsid "$fsid" --addv a "[v2:$IP:$port,v1:$IP:$((port + 1))]" \
    "$DIR/monmap" >/dev/null
  ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$kr" >"$DIR/log/mkfs-mon.log" 2>&1 \
    || { cat "$DIR/log/mkfs-mon.log" >&2; die "ceph-mon --mkfs failed"; }
  ceph-mon -c "$CONF" -i a || die "ceph-mon did not start (see $DIR/log/mon.a.log)"

  ceph_ osd new "$osd_uuid" 0 >/dev/null || die "ceph osd new failed"
  ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" >"$DIR/log/mkfs-osd.log" 2>&1 \
    || { cat "$DIR/log/mkfs-osd.log" >&2; die "ceph-osd --mkfs failed"; }
  ceph-osd -c "$CONF" -i 0 2>>"$DIR/log/osd-start.log" || die "ceph-osd did not start (see $DIR/log/osd.0.log)"

  local ok=0
  for _ in $(seq 1 200); do
    if ceph_ osd stat --format json 2>/dev/null | grep -q '"num_up_osds":1'; then ok=1; break; fi
    sleep 0.1
  done
  [ $ok = 1 ] || die "osd.0 did not come up (see $DIR/log/osd.0.log)"

  ceph_ osd pool create rbd 8 8 >/dev/null 2>&1 || die "pool create failed"
  timeout "$T" rbd -c "$CONF" pool init rbd || die "rbd pool init failed"
  local t1; t1=$(date +%s%N)
  log "up in $(( (t1 - t0) / 1000000 )) ms at $IP:$port ($DIR)"
  do_env
}

do_env() {
  [ -f "$CONF" ] || die "no cluster at $DIR"
  echo "export CEPH_CONF=$CONF"
  echo "export DEV_CLUSTER_DIR=$DIR"
}

do_status() {
  if [ ! -f "$CONF" ]; then echo "no cluster at $DIR"; return 1; fi
  for n in mon.a osd.0; do
    if pid_alive "$DIR/run/$n.pid"; then echo "$n: running (pid $(cat "$DIR/run/$n.pid"))"
    else echo "$n: stopped"; fi
  done
  if healthy; then echo "cluster: healthy ($(grep '^mon host' "$CONF" | cut -d= -f2-))"; return 0; fi
  echo "cluster: not healthy"; return 1
}

case "$cmd" in
  up) do_up ;;
  down) do_down ;;
  status) do_status ;;
  env) do_env ;;
  *) echo "usage: $0 up|down|status|env [DIR]" >&2; exit 2 ;;
esac

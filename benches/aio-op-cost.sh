#!/usr/bin/env bash
# What one 4K random read costs the client, in counts rather than throughput: rbd-core's
# aio (benches/src/bin/aio_op_cost.rs, both APIs) against `rbd bench --io-threads 16`
# (plain, and with the rados_osd_op_timeout rbd-core always sets).
#
# usage: benches/aio-op-cost.sh [--mallocs | --instructions] [--runs R (3)] [--ops N (200000)]
#                               [--base B (20000)] [--subjects "zc copy rbd rbd-tmo"] [--write]
#
# Needs a dev cluster (CEPH_CONF set: eval "$(scripts/dev-cluster.sh up)"), perf, and a
# release build (cargo build --release -p benches --bin aio_op_cost). Creates and fills
# the image rbd/aio-op-cost (256 MiB) if it does not exist, and leaves it for the next run.
#
# Each subject runs B and B+N requests (16 in flight), R times each, alternating, under
# `perf stat`; the per-request figure is (median at B+N - median at B) / N, so connecting,
# opening the image and exiting cancel out. Counted: task-clock (CPU time, all threads),
# user and system time, context switches, CPU migrations, system calls, futex calls.
# --mallocs adds uprobes on glibc's malloc, calloc, realloc, posix_memalign and free
# (`perf probe`, removed again on exit; uprobes slow the process down, so times printed
# in that mode mean little).
# --instructions counts user-space instructions instead (the VM has no hardware counters
# for perf): each run under valgrind's callgrind, its total `Ir`; use smaller counts, e.g.
# --ops 20000 --base 2000 --runs 1 (valgrind runs one thread at a time, 30-50x slower).
# AIO_OP_COST_BIN=path picks another build of aio_op_cost; AIO_OP_COST_OTHER=path adds the
# subjects zc-other and copy-other, run from that build (e.g. one from before a change),
# interleaved with the others so that both see the same machine.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
bin=${AIO_OP_COST_BIN:-$repo/target/release/aio_op_cost}
image=rbd/aio-op-cost
runs=3 ops=200000 base=20000 mallocs=0 write=0 instructions=0
subjects="zc copy rbd rbd-tmo"
while [ $# -gt 0 ]; do
  case $1 in
    --mallocs) mallocs=1 ;;
    --instructions) instructions=1 ;;
    --write) write=1 ;;
    --runs) runs=$2; shift ;;
    --ops) ops=$2; shift ;;
    --base) base=$2; shift ;;
    --subjects) subjects=$2; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
: "${CEPH_CONF:?run eval \"\$(scripts/dev-cluster.sh up)\" first}"
[ -x "$bin" ] || { echo "$bin missing: cargo build --release -p benches --bin aio_op_cost" >&2; exit 1; }
command -v perf >/dev/null || { echo "perf is not installed" >&2; exit 1; }
T=600

tmo=$(timeout 30 ceph -c "$CEPH_CONF" config get client rados_osd_op_timeout 2>/dev/null || true)
# rbd-core's default (Timeouts::default().osd_op) is 30 s.
tmo=${tmo:-30}
[ "$tmo" = 0 ] && tmo=30

if ! timeout 30 rbd -c "$CEPH_CONF" info "$image" >/dev/null 2>&1; then
  timeout 30 rbd -c "$CEPH_CONF" create "$image" --size 256M
  timeout $T rbd -c "$CEPH_CONF" bench --io-type write --io-size 4M --io-pattern seq \
    --io-total 256M "$image" >/dev/null
fi

events=task-clock,user_time,system_time,context-switches,cpu-migrations,raw_syscalls:sys_enter,syscalls:sys_enter_futex
probes=()
cleanup() {
  for p in "${probes[@]}"; do perf probe -q -d "probe_libc:$p" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
if [ "$mallocs" = 1 ]; then
  libc=$(ldconfig -p | awk '/libc\.so\.6 .*x86-64/ {print $NF; exit}')
  for f in malloc calloc realloc posix_memalign free; do
    if ! perf probe -l 2>/dev/null | grep -q "probe_libc:$f "; then
      perf probe -q -x "$libc" "$f" >/dev/null
      probes+=("$f")
    fi
    events+=",probe_libc:$f"
  done
fi

iotype=read; [ "$write" = 1 ] && iotype=write
set_cmd() { # subject ops -> the array `c`
  local n=$2
  case $1 in
    zc|copy|zc-other|copy-other)
      local api=zero-copy b=$bin
      case $1 in copy*) api=copy ;; esac
      case $1 in *-other) b=${AIO_OP_COST_OTHER:?AIO_OP_COST_OTHER is not set} ;; esac
      c=(timeout $T "$b" --image "$image" --ops "$n" --api "$api")
      if [ "$write" = 1 ]; then c+=(--write); fi ;;
    rbd|rbd-tmo)
      c=(timeout $T rbd -c "$CEPH_CONF" --rbd-cache=false)
      if [ "$1" = rbd-tmo ]; then c+=("--rados-osd-op-timeout=$tmo"); fi
      c+=(bench --io-type "$iotype" --io-size 4096 --io-pattern rand --io-threads 16
        --io-total $((n * 4096)) "$image") ;;
    *) echo "unknown subject $1" >&2; exit 2 ;;
  esac
}

out=$(mktemp -d)
trap 'cleanup; rm -rf "$out"' EXIT
for r in $(seq 1 "$runs"); do
  for s in $subjects; do
    for n in $base $((base + ops)); do
      set_cmd "$s" "$n"
      if [ "$instructions" = 1 ]; then
        # timeout first, then valgrind: the limit applies to the whole run.
        c=("${c[@]:0:2}" valgrind --tool=callgrind --callgrind-out-file="$out/cg" "${c[@]:2}")
        "${c[@]}" >/dev/null 2>"$out/log" ||
          { echo "$s with $n requests failed:" >&2; cat "$out/log" >&2; exit 1; }
        awk '/^summary:/ {print $2 ",,Ir"}' "$out/cg" >"$out/$s.$n.$r"
        continue
      fi
      perf stat -x, -e "$events" -o "$out/$s.$n.$r" -- "${c[@]}" >/dev/null 2>"$out/log" ||
        { echo "$s with $n requests failed:" >&2; cat "$out/log" >&2; exit 1; }
    done
  done
done

# Per subject and event: median over runs at each count, then the difference per request.
[ "$instructions" = 1 ] && events=Ir
printf '%-8s' subject
ev_names=$(echo "$events" | tr , ' ')
for e in $ev_names; do printf ' %16s' "${e#*:}"; done
echo
for s in $subjects; do
  printf '%-8s' "$s"
  for e in $ev_names; do
    med() { # file glob -> median of event $e
      cat "$out/$s.$1."* | awk -F, -v e="$e" '$3 == e {print $1}' | sort -g |
        awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'
    }
    lo=$(med "$base") hi=$(med "$((base + ops))")
    awk -v lo="$lo" -v hi="$hi" -v n="$ops" -v e="$e" 'BEGIN {
      d = (hi - lo) / n
      if (e == "task-clock") printf " %13.2f us", d * 1000          # msec -> us
      else if (e ~ /_time$/) printf " %13.2f us", d / 1000          # ns -> us
      else printf " %16.3f", d }'
  done
  echo
done
echo "(per request: (median of $runs runs at $((base + ops)) - median at $base) / $ops; 16 in flight; $iotype 4K random on $image)"

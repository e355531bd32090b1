#!/usr/bin/env bash
# Throughput of the userspace mapper (rbd-umap: FUSE + loop) against two anchors on the
# same cluster and the same image, in one run:
#   - `rbd bench --io-threads 16` (librbd, no kernel in the path), with librbd's default
#     write-around cache, and again with `--rbd_cache=false`: rbd-core (and so our mapper)
#     runs with the cache off, because the cache acknowledges writes before the OSD does
#     and can lose a fenced client's write errors;
#   - Ceph's `rbd-fuse` + `losetup --direct-io=on` + fio;
#   - ours: `rbd-map-probe map userspace` (the UserspaceMapper) + fio on its /dev/loopN.
# fio: --direct=1 --ioengine=libaio --iodepth=16, one job. Workloads: 4M sequential write
# and read, 4K random write and read. Each repetition runs every contender on every
# workload (contenders interleaved, to spread noise); the table shows medians.
#
# usage: benches/fio-compare.sh            (root; CEPH_CONF pointing at the dev cluster)
#   SIZE=1G        image size (the image is filled once before measuring)
#   SEQ_TOTAL=2G   bytes moved per 4M run     RAND_TOTAL=256M  bytes per 4K run
#   REPS=5         repetitions                POOL=rbd
#   BIN_DIR=target/release (rbd-umap, rbd-map-probe; built with `cargo build --release`)
# Prints markdown tables on stdout; OUT=DIR keeps the raw figures (DIR/raw.txt).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
: "${CEPH_CONF:?CEPH_CONF must point at the dev cluster (eval \"\$(scripts/dev-cluster.sh up)\")}"
SIZE=${SIZE:-1G}
SEQ_TOTAL=${SEQ_TOTAL:-2G}
RAND_TOTAL=${RAND_TOTAL:-256M}
REPS=${REPS:-5}
POOL=${POOL:-rbd}
BIN_DIR=${BIN_DIR:-$repo/target/release}
T=${T:-300}
[ "$(id -u)" -eq 0 ] || { echo "fio-compare: needs root (loop devices, FUSE)" >&2; exit 1; }
for b in fio rbd rbd-fuse losetup jq; do
  command -v "$b" >/dev/null || { echo "fio-compare: $b is missing (scripts/install-deps.sh)" >&2; exit 1; }
done
for b in rbd-umap rbd-map-probe; do
  [ -x "$BIN_DIR/$b" ] || { echo "fio-compare: $BIN_DIR/$b missing: cargo build --release -p rbd-driver --bins" >&2; exit 1; }
done

work=$(mktemp -d /run/fio-compare.XXXXXX)
OUT=${OUT:-$work}
mkdir -p "$OUT"
IMG=fio-compare-$$-$RANDOM
FUSE_MNT=$work/rbd-fuse
RUN_DIR=$work/umap
mkdir -p "$FUSE_MNT" "$RUN_DIR"
FUSE_PID=
FUSE_LOOP=
OUR_DEV=

log() { echo "fio-compare: $*" >&2; }

cleanup() {
  set +e
  [ -n "$OUR_DEV" ] && timeout 60 "$BIN_DIR/rbd-map-probe" unmap userspace "$OUR_DEV" --force --run-dir "$RUN_DIR" >/dev/null 2>&1
  [ -n "$FUSE_LOOP" ] && losetup -d "$FUSE_LOOP" 2>/dev/null
  if [ -n "$FUSE_PID" ]; then
    umount -l "$FUSE_MNT" 2>/dev/null
    kill "$FUSE_PID" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$FUSE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$FUSE_PID" 2>/dev/null
  fi
  timeout 60 rbd -c "$CEPH_CONF" rm --no-progress "$POOL/$IMG" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

rbd_() { timeout "$T" rbd -c "$CEPH_CONF" "$@"; }

# Parses `rbd bench` output; prints "<bytes/s> <ops/s>".
bench_rate() {
  local bs=$1
  awk -v bs="$bs" '/^elapsed:/ { for (i = 1; i <= NF; i++) if ($i == "ops/sec:") ops = $(i + 1) }
    END { if (ops == "") exit 1; printf "%.0f %.1f\n", ops * bs, ops }'
}

to_bytes() { numfmt --from=iec "$1"; }

# fio on a device; prints "<bytes/s> <iops>".
fio_run() {
  local dev=$1 rw=$2 bs=$3 total=$4 side
  case $rw in *write) side=write ;; *) side=read ;; esac
  timeout "$T" fio --name=cmp --filename="$dev" --direct=1 --ioengine=libaio --iodepth=16 \
    --numjobs=1 --rw="$rw" --bs="$bs" --size="$SIZE" --io_size="$total" \
    --randrepeat=0 --norandommap --group_reporting --output-format=json \
    | jq -r ".jobs[0].$side | \"\(.bw_bytes) \(.iops)\""
}

WORKLOADS=("seqwrite write 4M $SEQ_TOTAL" "seqread read 4M $SEQ_TOTAL"
  "randwrite randwrite 4K $RAND_TOTAL" "randread randread 4K $RAND_TOTAL")

run_rbd_bench() {
  local tag=$1 name rw bs total type pattern bytes
  shift
  for w in "${WORKLOADS[@]}"; do
    read -r name rw bs total <<<"$w"
    case $rw in *write) type=write ;; *) type=read ;; esac
    case $rw in rand*) pattern=rand ;; *) pattern=seq ;; esac
    bytes=$(to_bytes "$bs")
    rbd_ bench "$@" --io-type "$type" --io-size "$bs" --io-threads 16 --io-total "$total" \
      --io-pattern "$pattern" "$POOL/$IMG" 2>/dev/null | bench_rate "$bytes" \
      | sed "s/^/$tag $name /" >>"$OUT/raw.txt"
  done
}

run_rbd_fuse() {
  rbd-fuse -c "$CEPH_CONF" -p "$POOL" -r "$IMG" "$FUSE_MNT" -f 2>>"$OUT/rbd-fuse.log" &
  FUSE_PID=$!
  for _ in $(seq 1 100); do [ -e "$FUSE_MNT/$IMG" ] && break; sleep 0.05; done
  [ -e "$FUSE_MNT/$IMG" ] || { log "rbd-fuse did not show $IMG"; exit 1; }
  FUSE_LOOP=$(losetup --direct-io=on -f --show "$FUSE_MNT/$IMG")
  local n=${FUSE_LOOP#/dev/loop}
  [ "$(cat /sys/block/loop$n/loop/dio)" = 1 ] || log "warning: direct I/O is off on $FUSE_LOOP (rbd-fuse)"
  for w in "${WORKLOADS[@]}"; do
    read -r name rw bs total <<<"$w"
    fio_run "$FUSE_LOOP" "$rw" "$bs" "$total" | sed "s/^/rbd-fuse $name /" >>"$OUT/raw.txt"
  done
  losetup -d "$FUSE_LOOP"; FUSE_LOOP=
  umount "$FUSE_MNT" || umount -l "$FUSE_MNT"
  kill "$FUSE_PID" 2>/dev/null || true
  wait "$FUSE_PID" 2>/dev/null || true
  FUSE_PID=
}

run_umap() {
  local id out
  id=$(rbd_ info --format json "$POOL/$IMG" | jq -r .id)
  out=$(timeout 120 "$BIN_DIR/rbd-map-probe" map userspace --pool "$POOL" --image "$IMG" \
    --image-id "$id" --conf "$CEPH_CONF" --run-dir "$RUN_DIR" --io-timeout 60)
  OUR_DEV=$(jq -r .result.device <<<"$out")
  [ -b "$OUR_DEV" ] || { log "map failed: $out"; exit 1; }
  local n=${OUR_DEV#/dev/loop}
  [ "$(cat /sys/block/loop$n/loop/dio)" = 1 ] || log "warning: direct I/O is off on $OUR_DEV (ours)"
  for w in "${WORKLOADS[@]}"; do
    read -r name rw bs total <<<"$w"
    fio_run "$OUR_DEV" "$rw" "$bs" "$total" | sed "s/^/userspace $name /" >>"$OUT/raw.txt"
  done
  timeout 120 "$BIN_DIR/rbd-map-probe" unmap userspace "$OUR_DEV" --run-dir "$RUN_DIR" >/dev/null
  OUR_DEV=
}

log "image $POOL/$IMG ($SIZE), $REPS repetitions"
rbd_ create --size "$SIZE" "$POOL/$IMG"
# Fill it, so every workload reads and overwrites allocated objects.
rbd_ bench --io-type write --io-size 4M --io-threads 16 --io-total "$SIZE" --io-pattern seq \
  "$POOL/$IMG" >/dev/null 2>&1
: >"$OUT/raw.txt"
for rep in $(seq 1 "$REPS"); do
  log "repetition $rep/$REPS"
  case $((rep % 3)) in
    1) run_umap; run_rbd_fuse; run_rbd_bench rbd-bench; run_rbd_bench rbd-bench-nc --rbd_cache=false ;;
    2) run_rbd_fuse; run_rbd_bench rbd-bench-nc --rbd_cache=false; run_umap; run_rbd_bench rbd-bench ;;
    0) run_rbd_bench rbd-bench; run_umap; run_rbd_bench rbd-bench-nc --rbd_cache=false; run_rbd_fuse ;;
  esac
done

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
fig() { awk -v c="$1" -v w="$2" -v f="$3" '$1 == c && $2 == w { print $f }' "$OUT/raw.txt" | median; }
fmt() { # bytes/s or iops -> human
  case $1 in
    seq*) awk -v b="$2" 'BEGIN { printf "%.0f MiB/s", b / 1048576 }' ;;
    *) awk -v i="$2" 'BEGIN { printf "%.1fk IOPS", i / 1000 }' ;;
  esac
}

echo "| workload | rbd bench | rbd bench, cache off | rbd-fuse + loop | userspace (ours) | ours / rbd bench | ours / rbd bench cache off | ours / rbd-fuse |"
echo "|---|---|---|---|---|---|---|---|"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
for w in seqwrite seqread randwrite randread; do
  case $w in seq*) f=3 ;; *) f=4 ;; esac
  b=$(fig rbd-bench $w $f); c=$(fig rbd-bench-nc $w $f); r=$(fig rbd-fuse $w $f); u=$(fig userspace $w $f)
  label=$(case $w in seqwrite) echo "4M seq write" ;; seqread) echo "4M seq read" ;;
    randwrite) echo "4K rand write" ;; randread) echo "4K rand read" ;; esac)
  echo "| $label | $(fmt $w "$b") | $(fmt $w "$c") | $(fmt $w "$r") | $(fmt $w "$u") | $(ratio "$u" "$b") | $(ratio "$u" "$c") | $(ratio "$u" "$r") |"
done
echo
echo "Spread (min-max over $REPS repetitions):"
echo
echo "| workload | rbd bench | rbd bench, cache off | rbd-fuse + loop | userspace (ours) |"
echo "|---|---|---|---|---|"
span() { awk -v c="$1" -v w="$2" -v f="$3" '$1 == c && $2 == w { v = $f; if (min == "" || v < min) min = v; if (max == "" || v > max) max = v }
  END { print min, max }' "$OUT/raw.txt"; }
for w in seqwrite seqread randwrite randread; do
  case $w in seq*) f=3 ;; *) f=4 ;; esac
  row="| $w"
  for c in rbd-bench rbd-bench-nc rbd-fuse userspace; do
    read -r lo hi <<<"$(span $c $w $f)"
    row="$row | $(fmt $w "$lo") - $(fmt $w "$hi")"
  done
  echo "$row |"
done

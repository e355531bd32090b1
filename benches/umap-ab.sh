#!/usr/bin/env bash
# A/B of two builds of the userspace mapper on one image of the dev cluster: for each
# repetition, each build maps the image (rbd-map-probe map userspace), fio runs 4M
# sequential reads and writes on its /dev/loopN, and the mapping is removed; the builds
# alternate. Prints one line per build and repetition (MiB/s).
#
# usage: OLD_BIN=DIR NEW_BIN=DIR benches/umap-ab.sh   (root; CEPH_CONF at the dev cluster)
#   DIR holds rbd-map-probe and rbd-umap (e.g. a worktree's target/release)
#   REPS=4  READ_TOTAL=2G  WRITE_TOTAL=1G  POOL=rbd
set -euo pipefail
: "${CEPH_CONF:?CEPH_CONF must point at the dev cluster}"
: "${OLD_BIN:?OLD_BIN: directory of the first build}" "${NEW_BIN:?NEW_BIN: directory of the second build}"
REPS=${REPS:-4} READ_TOTAL=${READ_TOTAL:-2G} WRITE_TOTAL=${WRITE_TOTAL:-1G} POOL=${POOL:-rbd}
[ "$(id -u)" -eq 0 ] || { echo "umap-ab: needs root (loop devices, FUSE)" >&2; exit 1; }
IMG=umap-ab-$$-$RANDOM
work=$(mktemp -d /run/umap-ab.XXXXXX)
DEV= BIN=
cleanup() {
  set +e
  [ -n "$DEV" ] && timeout 60 "$BIN/rbd-map-probe" unmap userspace "$DEV" --force --run-dir "$work" >/dev/null 2>&1
  timeout 60 rbd -c "$CEPH_CONF" rm --no-progress "$POOL/$IMG" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
rbd_() { timeout 300 rbd -c "$CEPH_CONF" "$@"; }
rbd_ create --size 1G "$POOL/$IMG"
rbd_ bench --io-type write --io-size 4M --io-total 1G --io-threads 16 "$POOL/$IMG" >/dev/null 2>&1
id=$(rbd_ info --format json "$POOL/$IMG" | jq -r .id)
fio_mib() {
  timeout 300 fio --name=ab --filename="$1" --direct=1 --ioengine=libaio --iodepth=16 \
    --numjobs=1 --rw="$2" --bs=4M --size=1G --io_size="$3" --randrepeat=0 --norandommap \
    --output-format=json | jq -r ".jobs[0].$2.bw_bytes / 1048576 | floor"
}
for rep in $(seq 1 "$REPS"); do
  for side in old new; do
    if [ "$side" = old ]; then BIN=$OLD_BIN; else BIN=$NEW_BIN; fi
    out=$(timeout 120 "$BIN/rbd-map-probe" map userspace --pool "$POOL" --image "$IMG" \
      --image-id "$id" --conf "$CEPH_CONF" --run-dir "$work" --io-timeout 60)
    DEV=$(jq -r .result.device <<<"$out")
    r=$(fio_mib "$DEV" read "$READ_TOTAL")
    w=$(fio_mib "$DEV" write "$WRITE_TOTAL")
    echo "rep $rep $side: 4M read $r MiB/s, 4M write $w MiB/s"
    timeout 60 "$BIN/rbd-map-probe" unmap userspace "$DEV" --run-dir "$work" >/dev/null
    DEV=
  done
done

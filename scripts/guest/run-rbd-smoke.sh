#!/usr/bin/env bash
# End-to-end check of scripts/qemu-guest.sh: krbd (`rbd device map` and sysfs) and rbd-nbd
# inside the qemu guest against the dev cluster, then the data checked from the host.
#
# usage: scripts/guest/run-rbd-smoke.sh [KRBD_IMAGE NBD_IMAGE]
#   Without arguments two fresh 64 MiB images are created and removed afterwards. Given
#   images (POOL/NAME, at least 64 MiB) are used as they are and kept.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

log() { echo "rbd-smoke: $*" >&2; }
"$repo/scripts/dev-cluster.sh" up >/dev/null
eval "$("$repo/scripts/dev-cluster.sh" env)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/rbd-smoke.XXXXXX")
created=()
cleanup() {
  local i
  for i in "${created[@]}"; do rbd rm --no-progress "$i" >/dev/null 2>&1 || log "could not remove $i"; done
  rm -rf "$tmp"
}
trap cleanup EXIT

if [ $# -ge 2 ]; then
  K=$1 N=$2
else
  s=$$-$RANDOM
  K=rbd/qg-krbd-$s N=rbd/qg-nbd-$s
  for i in "$K" "$N"; do rbd create --size 64M "$i"; created+=("$i"); done
fi

t0=$(date +%s%N)
"$repo/scripts/qemu-guest.sh" run -- "$here/rbd-smoke.sh" "$K" "$N"
t1=$(date +%s%N)

fail=0
for i in "$K" "$N"; do
  rbd export --no-progress "$i" "$tmp/img" >/dev/null
  want=$( (yes "qemu-guest pattern for $i" || true) | head -c 4194304 | md5sum | cut -d' ' -f1)
  got=$(dd if="$tmp/img" bs=1M skip=56 count=4 2>/dev/null | md5sum | cut -d' ' -f1)
  hello=$(debugfs -R 'cat /hello.txt' "$tmp/img" 2>/dev/null || true)
  log "$i: pattern $([ "$want" = "$got" ] && echo ok || echo MISMATCH), /hello.txt: ${hello:-missing}"
  [ "$want" = "$got" ] || fail=1
  case $hello in "hello from "*) ;; *) fail=1 ;; esac
  rm -f "$tmp/img"
done
log "guest run $(( (t1 - t0) / 1000000 )) ms; host check $(( ($(date +%s%N) - t1) / 1000000 )) ms"
if [ $fail = 0 ]; then log "PASS"; else log "FAIL"; exit 1; fi

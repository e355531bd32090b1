#!/bin/sh
# Guest half of rbd-driver/tests/nbd_guest.rs: runs inside the qemu guest (busybox sh),
# drives NbdMapper (Debian's rbd-nbd) through rbd-map-probe, and prints one
# "@@ TAG rc=N OUTPUT" line per step for the host to check.
#
# Environment (from the host test): POOL IMG_C ID_C SNAP_C IMG_D ID_D, and from the
# harness CEPH_CONF and CEPH_KEYRING.
set -u
P=rbd-map-probe
RUN=/run/rbd-volumes

step() {
  tag=$1; shift
  out=$("$@" 2>/tmp/step.err)
  rc=$?
  out=$(printf '%s' "$out" | tr '\n' ' ')
  echo "@@ $tag rc=$rc $out"
  if [ -s /tmp/step.err ]; then sed "s/^/@@stderr $tag /" /tmp/step.err; fi
}
must() { case $out in *'"ok":true'*) ;; *) echo "@@ FAIL $1"; exit 1 ;; esac; }
dev_of() { printf '%s' "$1" | sed -n 's/.*"device":"\([^"]*\)".*/\1/p'; }
# queue_timeout TAG DEV: the block layer's request timeout of DEV (ms), which rbd-nbd's
# --io-timeout sets through the nbd netlink interface.
queue_timeout() { step "$1" cat "/sys/block/${2#/dev/}/queue/io_timeout"; }

step check $P check nbd; must check
# Automatic selection without krbd: the harness loaded the rbd module; unload it (nothing
# is mapped yet) and auto must fall through to nbd, while krbd by name is refused.
step rmmod_rbd rmmod rbd
step checkKrbd $P check krbd
step checkAuto $P check auto; must checkAuto

# C: read-write, exclusive lock, I/O timeout, explicit keyring.
step mapC $P map nbd --pool "$POOL" --image "$IMG_C" --image-id "$ID_C" \
  --keyring "$CEPH_KEYRING" --exclusive --io-timeout 60; must mapC
DEV_C=$(dev_of "$out")
# --exclusive: rbd-nbd holds the exclusive lock from map time on.
step lockC_map rbd lock ls --format json "$POOL/$IMG_C"
queue_timeout timeoutC "$DEV_C"
# C's snapshot, read-only (key through the conf's keyring).
step mapCsnap $P map nbd --pool "$POOL" --image "$IMG_C" --image-id "$ID_C" --snap "$SNAP_C"
must mapCsnap
DEV_CS=$(dev_of "$out")
# A name that does not refer to the requested id: refused, nothing left behind.
step mapWrongId $P map nbd --pool "$POOL" --image "$IMG_D" --image-id 0000bad0000

step list $P list nbd; must list
step list_mapped rbd-nbd list-mapped --format json
step records ls "$RUN/nbd"
step statusC rbd status --format json "$POOL/$IMG_C"
# busybox here has no pgrep: count rbd-nbd processes through /proc.
step procs sh -c "echo count=\$(grep -lx rbd-nbd /proc/[0-9]*/comm 2>/dev/null | wc -l)"

# Data on C: 4 MiB at offset 1 MiB, direct I/O, read back.
dd if=/dev/urandom of=/tmp/data bs=1M count=4 2>/dev/null
step sha_data sha256sum /tmp/data
step dd_write dd if=/tmp/data of="$DEV_C" bs=1M seek=1 oflag=direct conv=fsync
sync
echo 3 > /proc/sys/vm/drop_caches
step sha_readback sh -c "dd if=$DEV_C bs=1M skip=1 count=4 iflag=direct 2>/dev/null | sha256sum"
# The snapshot mapping is read-only.
step snap_write_refused dd if=/tmp/data of="$DEV_CS" bs=1M count=1 oflag=direct

# ext4 on D, mapped with the automatic backend (nbd here), no --io-timeout, not exclusive;
# unmap refused while mounted.
step mapD $P map auto --pool "$POOL" --image "$IMG_D" --image-id "$ID_D"; must mapD
DEV_D=$(dev_of "$out")
queue_timeout timeoutD "$DEV_D"
step lockD_map rbd lock ls --format json "$POOL/$IMG_D"
step mkfs mkfs.ext4 -q -F "$DEV_D"
mkdir -p /mnt/d
step mount mount -t ext4 "$DEV_D" /mnt/d
echo "hello from the nbd guest: $IMG_D" > /mnt/d/hello.txt
sync
step unmapD_mounted $P unmap nbd "$DEV_D"
step umount umount /mnt/d
step unmapD $P unmap nbd "$DEV_D"

# Held open by a process: refused without force, unmapped with force.
sleep 600 < "$DEV_C" &
holder=$!
sleep 1
step unmapC_busy $P unmap nbd "$DEV_C"
step unmapC_force $P unmap nbd "$DEV_C" --force
kill $holder 2>/dev/null
wait $holder 2>/dev/null

step unmapCsnap $P unmap nbd "$DEV_CS"
step listEnd $P list nbd
step procsEnd sh -c "echo count=\$(grep -lx rbd-nbd /proc/[0-9]*/comm 2>/dev/null | wc -l)"
step recordsEnd sh -c "ls $RUN/nbd | grep -v -x map.lock | wc -l"
echo "@@ END rc=0"
exit 0

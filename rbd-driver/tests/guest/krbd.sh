#!/bin/sh
# Guest half of rbd-driver/tests/krbd_guest.rs: runs inside the qemu guest (busybox sh),
# drives KrbdMapper through rbd-map-probe, and prints one "@@ TAG rc=N OUTPUT" line per
# step for the host to check. It stops at the first step that must not fail.
#
# Environment (from the host test): IMG_A ID_A IMG_B ID_B SNAP_B POOL, and from the
# harness CEPH_CONF and CEPH_KEYRING.
set -u
P=rbd-map-probe

# step TAG CMD...: run, print "@@ TAG rc=N <stdout on one line>", stderr as "@@stderr TAG".
step() {
  tag=$1; shift
  out=$("$@" 2>/tmp/step.err)
  rc=$?
  out=$(printf '%s' "$out" | tr '\n' ' ')
  echo "@@ $tag rc=$rc $out"
  if [ -s /tmp/step.err ]; then sed "s/^/@@stderr $tag /" /tmp/step.err; fi
}
# ok TAG: the last step's JSON said ok:true, else stop.
must() { case $out in *'"ok":true'*) ;; *) echo "@@ FAIL $1"; exit 1 ;; esac; }
dev_of() { printf '%s' "$1" | sed -n 's/.*"device":"\([^"]*\)".*/\1/p'; }

step check $P check krbd; must check
# Automatic selection: the rbd module is loaded, so auto picks krbd.
step checkAuto $P check auto; must checkAuto

# A: msgr1 (no ms_mode), explicit keyring, exclusive lock, tuning options.
step mapA $P map krbd --pool "$POOL" --image "$IMG_A" --image-id "$ID_A" \
  --keyring "$CEPH_KEYRING" --exclusive --queue-depth 32 --io-timeout 60; must mapA
DEV_A=$(dev_of "$out")
# B: msgr2 (ms_mode=crc), key found through the conf's keyring option.
step mapB $P map krbd --pool "$POOL" --image "$IMG_B" --image-id "$ID_B" --ms-mode crc; must mapB
DEV_B=$(dev_of "$out")
# B's snapshot, read-only, a third client instance.
step mapBsnap $P map krbd --pool "$POOL" --image "$IMG_B" --image-id "$ID_B" --snap "$SNAP_B"
must mapBsnap
DEV_BS=$(dev_of "$out")
# A name that does not refer to the requested id: must fail and leave no device behind.
step mapWrongId $P map krbd --pool "$POOL" --image "$IMG_A" --image-id 0000bad0000 --read-only

step list $P list krbd; must list
step ls_dev ls /dev/rbd0 /dev/rbd1 /dev/rbd2 /dev/rbd3

# The cluster's view of the watchers, while mapped.
step statusA rbd status --format json "$POOL/$IMG_A"
step statusB rbd status --format json "$POOL/$IMG_B"

# Raw data on A: 4 MiB at offset 1 MiB, direct I/O, read back.
dd if=/dev/urandom of=/tmp/data bs=1M count=4 2>/dev/null
step sha_data sha256sum /tmp/data
step dd_write dd if=/tmp/data of="$DEV_A" bs=1M seek=1 oflag=direct conv=fsync
sync
echo 3 > /proc/sys/vm/drop_caches
step sha_readback sh -c "dd if=$DEV_A bs=1M skip=1 count=4 iflag=direct 2>/dev/null | sha256sum"

# ext4 on B through msgr2.
step mkfs mkfs.ext4 -q -F "$DEV_B"
mkdir -p /mnt/b
step mount mount -t ext4 "$DEV_B" /mnt/b
echo "hello from the krbd guest: $IMG_B" > /mnt/b/hello.txt
sync
# Mounted: a plain unmap must be refused.
step unmapB_mounted $P unmap krbd "$DEV_B"
step umount umount /mnt/b

# Force unmap while A is held open by a process.
sleep 600 < "$DEV_A" &
holder=$!
sleep 1
step unmapA_busy $P unmap krbd "$DEV_A"
step unmapA_force $P unmap krbd "$DEV_A" --force
kill $holder 2>/dev/null
wait $holder 2>/dev/null

step unmapB $P unmap krbd "$DEV_B"
step unmapBsnap $P unmap krbd "$DEV_BS"
step listEnd $P list krbd
echo "@@ END rc=0"
exit 0

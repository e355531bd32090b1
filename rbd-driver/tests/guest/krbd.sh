#!/bin/sh
# Guest half of rbd-driver/tests/krbd_guest.rs: runs inside the qemu guest (busybox sh),
# drives KrbdMapper through rbd-map-probe, and prints one "@@ TAG rc=N OUTPUT" line per
# step for the host to check. It stops at the first step that must not fail.
#
# Environment (from the host test): IMG_A ID_A IMG_B ID_B SNAP_B POOL NS IMG_N ID_N, and
# from the harness CEPH_CONF and CEPH_KEYRING.
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
# lock TAG IMAGE_SPEC: the image's lockers as the cluster sees them (exclusive-lock owner
# included, as "auto <cookie>").
lock() { step "$1" rbd lock ls --format json "$2"; }
# steal TAG IMAGE_SPEC: a librbd client (rbd bench) writes 4 KiB, which needs the exclusive
# lock: it asks the owner to release it, and releases it itself when it closes the image.
steal() {
  step "$1" timeout 90 rbd bench --io-type write --io-size 4096 --io-total 4096 \
    --io-threads 1 "$2"
}
# opts TAG N: the add line the kernel keeps for /sys/bus/rbd/devices/N (config_info),
# with the secret cut out, split into words (options one per word).
opts() {
  step "$1" sh -c "sed 's/secret=[^, ]*/secret=<redacted>/' /sys/bus/rbd/devices/$2/config_info \
    | tr ', ' '\n\n' | grep -v '^secret=' | tr '\n' ' '"
}

step check $P check krbd; must check
# Automatic selection: the rbd module is loaded, so auto picks krbd.
step checkAuto $P check auto; must checkAuto

# A: msgr1 (no ms_mode), explicit keyring, exclusive lock, tuning options.
step mapA $P map krbd --pool "$POOL" --image "$IMG_A" --image-id "$ID_A" \
  --keyring "$CEPH_KEYRING" --exclusive --queue-depth 32 --io-timeout 60; must mapA
DEV_A=$(dev_of "$out")
N_A=${DEV_A#/dev/rbd}
# This kernel takes the lock at map time for every read-write head mapping of an image
# with exclusive-lock; `exclusive` also turns off the automatic release when another
# client asks for it (checked below).
lock lockA_map "$POOL/$IMG_A"
opts optsA "$N_A"
# queue_depth=32 sizes the blk-mq tag set (nr_requests also depends on the scheduler).
step qdA sh -c "echo tags=\$(cat /sys/block/rbd$N_A/mq/0/nr_tags) \
  requests=\$(cat /sys/block/rbd$N_A/queue/nr_requests) \
  scheduler=\$(cat /sys/block/rbd$N_A/queue/scheduler | tr ' ' _)"
# B: msgr2 (ms_mode=crc), key found through the conf's keyring option, lock_on_read. B has
# exclusive-lock but no object-map: without lock_on_read, only writes would need the lock.
step mapB $P map krbd --pool "$POOL" --image "$IMG_B" --image-id "$ID_B" --ms-mode crc \
  --lock-on-read; must mapB
DEV_B=$(dev_of "$out")
opts optsB "${DEV_B#/dev/rbd}"
lock lockB_map "$POOL/$IMG_B"
# Another client takes the lock away (B is not exclusive, so it lets go) and closes...
steal stealB "$POOL/$IMG_B"
lock lockB_stolen "$POOL/$IMG_B"
# ...then a mere read through B takes it back: lock_on_read.
step readB dd if="$DEV_B" of=/dev/null bs=4k count=1 iflag=direct
lock lockB_read "$POOL/$IMG_B"
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

# `exclusive`: A's kernel client refuses to hand the lock over, so another client's write
# fails (and does not hang), and A still owns the lock.
steal stealA "$POOL/$IMG_A"
lock lockA_kept "$POOL/$IMG_A"

# A read-only mapping of A's head, next to the exclusive read-write one: it reads the head's
# data, refuses writes, and the block device is read-only.
step mapAro $P map krbd --pool "$POOL" --image "$IMG_A" --image-id "$ID_A" --read-only
must mapAro
DEV_AR=$(dev_of "$out")
step roflagAro cat "/sys/block/${DEV_AR#/dev/}/ro"
step sha_ro sh -c "dd if=$DEV_AR bs=1M skip=1 count=4 iflag=direct 2>/dev/null | sha256sum"
step ro_write_refused dd if=/tmp/data of="$DEV_AR" bs=1M count=1 oflag=direct
step unmapAro $P unmap krbd "$DEV_AR"

# An image in a RADOS namespace, mapped with the automatic backend (krbd here); no
# lock_on_read and no object-map: once another client took the lock away, a read does not
# take it back, a write does.
step mapNs $P map auto --pool "$POOL" --namespace "$NS" --image "$IMG_N" --image-id "$ID_N"
must mapNs
DEV_N=$(dev_of "$out")
opts optsNs "${DEV_N#/dev/rbd}"
step listNs $P list krbd
step statusNs rbd status --format json "$POOL/$NS/$IMG_N"
lock lockNs_map "$POOL/$NS/$IMG_N"
steal stealNs "$POOL/$NS/$IMG_N"
lock lockNs_stolen "$POOL/$NS/$IMG_N"
step readNs dd if="$DEV_N" of=/dev/null bs=4k count=1 iflag=direct
lock lockNs_read "$POOL/$NS/$IMG_N"
step sha_data1 sh -c "head -c 1048576 /tmp/data | sha256sum"
step writeNs dd if=/tmp/data of="$DEV_N" bs=1M count=1 oflag=direct conv=fsync
lock lockNs_write "$POOL/$NS/$IMG_N"
step unmapNs $P unmap auto "$DEV_N"

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

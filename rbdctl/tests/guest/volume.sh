#!/bin/sh
# Guest half of rbdctl/tests/volume_guest.rs: runs inside the qemu guest (busybox sh, real
# root with every capability, the kernel's rbd module loaded) and drives the volume driver
# through `rbdctl volume` with the krbd backend: create, attach (krbd map, mkfs, mount),
# write a file, resize while mounted (the filesystem must grow online: ext4 through
# EXT4_IOC_RESIZE_FS, which the host sandbox refuses without CAP_SYS_RESOURCE; xfs through
# xfs_growfs), check the mounted filesystem's size, detach, attach again, fsck the
# detached image, rm. One "@@ TAG rc=N OUTPUT" line per step for the host to check; it
# stops at the first step that must not fail.
#
# Environment (from the host test): NODE, POOL, VOLS (words "NAME:FSTYPE:SIZE:NEWSIZE"),
# and from the harness CEPH_CONF and CEPH_KEYRING (rbdctl reads both).
set -u
export RBD_BACKEND=krbd
export RBD_STATE_DIR=/var/lib/rbd-volumes-guest
export RBD_MOUNT_ROOT=/var/lib/rbd-volumes-guest/mounts
export RBD_RUN_DIR=/run/rbd-volumes-guest
export RBD_NODE_ID="$NODE"
R="rbdctl --format json --timeout 60"

# step TAG CMD...: run, print "@@ TAG rc=N <stdout on one line>", stderr as "@@stderr TAG".
step() {
  tag=$1; shift
  out=$("$@" 2>/tmp/step.err)
  rc=$?
  out=$(printf '%s' "$out" | tr '\n' ' ')
  echo "@@ $tag rc=$rc $out"
  if [ -s /tmp/step.err ]; then sed "s/^/@@stderr $tag /" /tmp/step.err; fi
}
must() { [ "$rc" = 0 ] || { echo "@@ FAIL $1"; exit 1; }; }
# The mounted filesystem's total bytes as statvfs(2) gives them (f_blocks * f_frsize).
fs_bytes() { stat -f -c '%b %S' "$1" | { read -r b s; echo $((b * s)); }; }
# The mount at a mountpoint, from /proc/self/mountinfo: "MOUNT_ID MAJ:MIN MOUNTPOINT
# FSTYPE SOURCE MOUNT_OPTIONS". A new mount of the same device gets a new mount ID.
mount_line() {
  awk -v mp="$1" '$5 == mp { i = 7; while ($i != "-") i++; print $1, $3, $5, $(i+1), $(i+2), $6 }' \
    /proc/self/mountinfo
}
# A block device's size in bytes (512-byte sectors in sysfs).
dev_bytes() { echo $(( $(cat "/sys/block/$(basename "$1")/size") * 512 )); }
# json_str JSON KEY: the first string value of KEY.
json_str() { printf '%s' "$1" | sed -n "s/.*\"$2\": *\"\\([^\"]*\\)\".*/\\1/p" | head -n1; }

for spec in $VOLS; do
  V=${spec%%:*}; rest=${spec#*:}
  FS=${rest%%:*}; rest=${rest#*:}
  SIZE=${rest%%:*}; NEW=${rest#*:}
  T=$V

  step "$T.create" $R volume create "$V" -o size="$SIZE" -o fstype="$FS"; must "$T.create"
  step "$T.attach" $R volume attach "$V" --mount-id m1; must "$T.attach"
  MP=$(json_str "$out" mountpoint)
  step "$T.status" $R volume status "$V"; must "$T.status"
  DEV=$(json_str "$out" device)
  step "$T.mount" mount_line "$MP"
  step "$T.write" dd if=/dev/urandom of="$MP/data" bs=64k count=16; must "$T.write"
  step "$T.sha" sh -c "sync && sha256sum '$MP/data'"
  step "$T.devsize" dev_bytes "$DEV"
  step "$T.fs_before" fs_bytes "$MP"
  step "$T.df_before" df -k "$MP"

  # Grow while mounted: the image, then the mounted filesystem, online.
  step "$T.resize" $R volume resize "$V" --size "$NEW"; must "$T.resize"
  step "$T.fs_after" fs_bytes "$MP"
  step "$T.df_after" df -k "$MP"
  step "$T.devsize_after" dev_bytes "$DEV"
  step "$T.mount_after" mount_line "$MP"
  step "$T.sha_after" sha256sum "$MP/data"
  step "$T.info" rbd info --format json "$POOL/$V"
  # A snapshot of the mounted volume (frozen for the moment): the lock is handed over too.
  step "$T.snap" $R volume snapshot "$V" s1
  step "$T.snap_ls" rbd snap ls --format json "$POOL/$V"
  step "$T.write_after_snap" sh -c "echo after > '$MP/after' && sync && cat '$MP/after'"

  step "$T.detach" $R volume detach "$V" --mount-id m1; must "$T.detach"
  step "$T.unmounted" mount_line "$MP"
  # The grown filesystem, attached again: same size, the file intact.
  step "$T.reattach" $R volume attach "$V" --mount-id m2; must "$T.reattach"
  step "$T.fs_reattach" fs_bytes "$MP"
  step "$T.sha_reattach" sha256sum "$MP/data"
  step "$T.detach2" $R volume detach "$V" --mount-id m2; must "$T.detach2"

  # The detached image's filesystem is consistent (read-only map with the rbd CLI).
  step "$T.fsck_map" rbd device map --read-only -o noudev "$POOL/$V"; must "$T.fsck_map"
  FDEV=$out
  case $FS in
    ext4) step "$T.fsck" e2fsck -fn "$FDEV" ;;
    xfs) step "$T.fsck" xfs_repair -n "$FDEV" ;;
  esac
  step "$T.fsck_unmap" rbd device unmap -o noudev "$FDEV"; must "$T.fsck_unmap"

  step "$T.rm" $R volume rm --force "$V"; must "$T.rm"
  step "$T.inspect_gone" $R volume inspect "$V"
  step "$T.info_gone" rbd info "$POOL/$V"
done
step mapped ls /sys/bus/rbd/devices
echo "@@ END rc=0"

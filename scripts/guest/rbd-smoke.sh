# Guest script for scripts/qemu-guest.sh (runs under busybox sh inside the guest).
# usage (in the guest): rbd-smoke.sh KRBD_IMAGE NBD_IMAGE   (each POOL/NAME, at least 64 MiB)
#
# For each image and mapper (krbd via `rbd device map`, krbd via sysfs add_single_major,
# rbd-nbd): map, check, write a deterministic 4 MiB pattern at offset 56 MiB with dd, make a
# 48 MiB ext4 (nodiscard) at the start, mount it, write /hello.txt, unmount, unmap.
# The host side (scripts/guest/run-rbd-smoke.sh) then checks both with `rbd export`.
set -eu
KRBD_IMG=${1:?krbd image}
NBD_IMG=${2:?nbd image}

t() { cut -d' ' -f1 /proc/uptime; }
step() { echo "== $* (t=$(t)s)"; }
pattern() { yes "qemu-guest pattern for $1" | head -c 4194304; }

# fs_and_data DEV IMAGE MAPPER
fs_and_data() {
  dev=$1 img=$2 how=$3
  step "$how: dd pattern to $dev at 56 MiB"
  pattern "$img" > /tmp/pat
  dd if=/tmp/pat of="$dev" bs=1M seek=56 oflag=direct conv=fsync 2>&1 | tail -n1
  want=$(md5sum < /tmp/pat | cut -d' ' -f1)
  got=$(dd if="$dev" bs=1M skip=56 count=4 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
  echo "pattern md5 want=$want got=$got"
  [ "$want" = "$got" ]
  step "$how: mkfs.ext4 (48 MiB) on $dev"
  mkfs.ext4 -q -F -E nodiscard -L smoke "$dev" 48M
  mkdir -p /mnt/smoke
  mount -t ext4 "$dev" /mnt/smoke
  echo "hello from $how in the qemu guest ($img)" > /mnt/smoke/hello.txt
  cat /mnt/smoke/hello.txt
  df -k /mnt/smoke | tail -n1
  umount /mnt/smoke
  sync
}

echo "CEPH_CONF=$CEPH_CONF"
grep '^mon host' "$CEPH_CONF"

# --- krbd through the rbd CLI ---------------------------------------------------------
step "rbd device map $KRBD_IMG"
dev=$(rbd device map -o noudev,ms_mode=crc "$KRBD_IMG")
step "mapped $dev"
for f in pool name image_id client_addr client_id current_snap size; do
  echo "sysfs $f=$(cat /sys/bus/rbd/devices/0/$f)"
done
[ "$(cat /sys/bus/rbd/devices/0/pool)/$(cat /sys/bus/rbd/devices/0/name)" = "$KRBD_IMG" ]
rbd device list
fs_and_data "$dev" "$KRBD_IMG" krbd
step "rbd device unmap $dev"
rbd device unmap -o noudev "$dev"
[ ! -e /sys/bus/rbd/devices/0 ]

# --- krbd through sysfs, key from the keyring ----------------------------------------
step "sysfs add_single_major $KRBD_IMG (read-only check)"
key=$(awk '/^\[client.admin\]/{s=1; next} /^\[/{s=0} s && $1 == "key" {print $3; exit}' "$CEPH_KEYRING")
port=$(sed -n 's/^mon host = \[v2:[^:]*:\([0-9]*\),.*/\1/p' "$CEPH_CONF")
echo "mon v2 port $port"
echo "127.0.0.1:$port name=admin,secret=$key,ms_mode=crc,read_only ${KRBD_IMG%%/*} ${KRBD_IMG#*/} -" \
  > /sys/bus/rbd/add_single_major
step "mapped via sysfs"
id=$(ls /sys/bus/rbd/devices | head -n1)
for f in pool name image_id client_addr; do echo "sysfs $f=$(cat "/sys/bus/rbd/devices/$id/$f")"; done
got=$(dd if="/dev/rbd$id" bs=1M skip=56 count=4 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
want=$(pattern "$KRBD_IMG" | md5sum | cut -d' ' -f1)
echo "pattern reread md5 want=$want got=$got"
[ "$want" = "$got" ]
echo "$id" > /sys/bus/rbd/remove_single_major
step "removed via sysfs"

# --- rbd-nbd -------------------------------------------------------------------------
step "rbd-nbd map $NBD_IMG"
ndev=$(rbd-nbd map "$NBD_IMG")
step "mapped $ndev"
rbd-nbd list-mapped
fs_and_data "$ndev" "$NBD_IMG" rbd-nbd
step "rbd-nbd unmap $ndev"
rbd-nbd unmap "$ndev"
step "done"

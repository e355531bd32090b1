#!/usr/bin/env bash
# Run a shell script inside a throwaway qemu (TCG) guest that has a real Debian kernel with
# the rbd, libceph and nbd modules, so krbd and rbd-nbd can be tested against the dev
# cluster even though the host kernel lacks them. See scripts/guest/README.md.
#
# usage:
#   scripts/qemu-guest.sh fetch
#       Download (apt-get download, never install) and extract into the cache dir: the
#       current linux-image-*-cloud-amd64 kernel, qemu-system-x86 with the runtime
#       libraries and firmware the host lacks, busybox-static, iptables and libnl for the
#       guest. Idempotent.
#   scripts/qemu-guest.sh run [--bin PATH]... [--file SRC:DEST]... [--env NAME=VALUE]...
#                            [--module NAME]... [--] GUEST_SCRIPT [ARG]...
#       Build a busybox initramfs, boot it, run GUEST_SCRIPT (busybox sh) inside, print the
#       serial console and exit with the script's exit code (non-zero if no result marker
#       was seen: boot failure, guest timeout, host timeout).
#         --bin PATH       host ELF (path or command name) copied to the same absolute path,
#                          with its shared-library closure; also linked into /usr/local/bin
#         --file SRC:DEST  host file or directory copied to DEST in the guest
#         --env NAME=VAL   exported to the guest script
#         --module NAME    an extra kernel module (e.g. xfs, btrfs) loaded at boot, with
#                          its dependencies
#       Exit codes: the guest script's own; 124 when no result marker was seen (boot
#       failure, or the host timeout killed qemu); 137 when the guest-side time limit
#       killed the script; 125 when the guest firewall could not be set up.
#   scripts/qemu-guest.sh clean       remove the cache dir
#
# environment:
#   QEMU_GUEST_DIR             cache dir (default <repo>/.qemu)
#   QEMU_GUEST_TIMEOUT         host wall-clock limit for qemu (from its start, not counting
#                              the initramfs build), seconds (default 300)
#   QEMU_GUEST_SCRIPT_TIMEOUT  limit for the guest script inside the guest
#                              (default QEMU_GUEST_TIMEOUT - 30)
#   QEMU_GUEST_MEM             guest memory in MiB (default 1024)
#   QEMU_GUEST_APPEND          extra kernel command line (default: quiet)
#   QEMU_GUEST_LOG             also save the serial console log to this file
#   QEMU_GUEST_KEEP=1          keep the temp dir (initramfs, log) and print its path
#   QEMU_GUEST_LOCK            lock file that lets one guest run at a time on this machine
#                              (default ${TMPDIR:-/tmp}/qemu-guest.lock)
#   QEMU_GUEST_LOCK_WAIT       longest wait for that lock, seconds (default 900); then exit 1
#   QEMU_GUEST_FETCH_WAIT      longest wait for a concurrent fetch, seconds (default 900)
#   QEMU_GUEST_BUILD_TIMEOUT   limit for building the initramfs, seconds (default 300)
#   CEPH_CONF / DEV_CLUSTER_DIR  the dev cluster whose ceph.conf and keyring are copied in
#                              (default <repo>/.dev-cluster/ceph.conf when it exists)
#
# Network safety: the guest has qemu user networking only (no IPv6, no option ROM). Before
# eth0 comes up, the guest installs iptables rules that DNAT tcp to 127.0.0.1 onto 10.0.2.2
# (qemu's alias for the host loopback), SNAT to 10.0.2.15 and drop everything else leaving
# eth0. There is no default route. If the firewall cannot be installed, eth0 stays down.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
QD=${QEMU_GUEST_DIR:-$repo/.qemu}
MULTI=x86_64-linux-gnu

log() { echo "qemu-guest: $*" >&2; }

# Serialises fetches: tests may call `fetch` (or `run`, which fetches) concurrently, and two
# extractions into one cache directory would delete each other's files.
with_fetch_lock() {
  mkdir -p "$(dirname "$QD")"
  exec 8>"$QD.fetch.lock"
  local wait=${QEMU_GUEST_FETCH_WAIT:-900}
  flock -w "$wait" 8 || die "another fetch held $QD.fetch.lock for more than ${wait}s"
  "$@"
  flock -u 8
  exec 8>&-
}
die() { log "error: $*"; exit 1; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# Packages extracted into $QD/guest (their files go into the initramfs).
GUEST_PKGS=(busybox-static iptables libxtables12 libip4tc2 libip6tc2 libnl-3-200 libnl-genl-3-200)
# Packages always extracted into $QD/qemu; the rest of qemu's dependency closure is added
# when the host lacks it.
QEMU_PKGS=(qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu
           libslirp0 libfdt1 libcapstone4 libvdeplug2)

# ---------------------------------------------------------------------------------- fetch

declare -A INSTALLED=()
load_installed() {
  local name status
  while IFS=' ' read -r name status; do
    [ "$status" = installed ] && INSTALLED[${name%%:*}]=1
  done < <(dpkg-query -W -f='${binary:Package} ${db:Status-Status}\n' 2>/dev/null)
  return 0
}
pkg_installed() { [ -n "${INSTALLED[${1%%:*}]:-}" ]; }

# apt-cache is slow here (no pkgcache.bin: about 1 s a call), so calls are batched.

# For each package named, one line "PKG<TAB>ALT1 ALT2..." per Depends/PreDepends group.
dep_groups() {
  apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances "$@" 2>/dev/null | awk '
    /^[^ <]/ { pkg = $1; grp = ""; next }
    /^  \|?(Pre)?Depends: / {
      alt = ($1 ~ /^\|/); n = $2; sub(/:any$/, "", n)
      grp = (grp == "" ? n : grp " " n)
      if (!alt) { print pkg "\t" grp; grp = "" }
    }'
}

# The packages apt would have to add to install "$@" on this host (Depends/PreDepends
# only, first real alternative, recursing only through packages that are not installed).
missing_closure() {
  declare -A seen=()
  local level=("$@") next out=() p grp m pick
  while [ ${#level[@]} -gt 0 ]; do
    next=()
    local expand=()
    for p in "${level[@]}"; do
      [ -n "${seen[$p]:-}" ] && continue
      seen[$p]=1
      pkg_installed "$p" && continue
      out+=("$p"); expand+=("$p")
    done
    [ ${#expand[@]} -gt 0 ] || break
    while IFS=$'\t' read -r p grp; do
      pick=""
      for m in $grp; do
        case $m in "<"*) continue ;; esac
        if pkg_installed "$m" || [ -n "${seen[$m]:-}" ]; then pick=""; continue 2; fi
        [ -z "$pick" ] && pick=$m
      done
      [ -n "$pick" ] && next+=("$pick")
    done < <(dep_groups "${expand[@]}")
    level=("${next[@]}")
  done
  printf '%s\n' "${out[@]}"
}

# download PKG...: fetch the candidate versions into $QD/debs unless already there; print
# the paths of the .debs, one a line.
download() {
  local info p ver arch f
  info=$(apt-cache show --no-all-versions "$@" 2>/dev/null \
         | awk '/^Package: /{p=$2} /^Version: /{v=$2} /^Architecture: /{a=$2}
                /^$/ { if (p != "") print p, v, a; p = "" } END { if (p != "") print p, v, a }')
  local files=() want=()
  for p in "$@"; do
    ver=""; arch=""
    read -r _ ver arch < <(awk -v p="$p" '$1 == p {print; exit}' <<<"$info") || true
    [ -n "$ver" ] || die "no candidate version for package $p"
    f="$QD/debs/${p}_${ver//:/%3a}_${arch}.deb"
    files+=("$f")
    [ -s "$f" ] || want+=("$p=$ver")
  done
  if [ ${#want[@]} -gt 0 ]; then
    log "downloading ${want[*]}"
    (cd "$QD/debs" && apt-get download -q -o APT::Sandbox::User=root "${want[@]}" >/dev/null) \
      || die "apt-get download failed"
  fi
  for f in "${files[@]}"; do
    [ -s "$f" ] || die "apt-get download did not produce $f"
    echo "$f"
  done
}

# extract_into NAME DEB...: (re)extract the debs into $QD/NAME unless the same set was
# extracted before.
extract_into() {
  local name=$1; shift
  local stamp="$QD/$name.stamp" want
  want=$(printf '%s\n' "$@" | xargs -n1 basename | sort)
  if [ -d "$QD/$name" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  log "extracting $name ($# packages)"
  rm -rf "$QD/$name.new"
  mkdir -p "$QD/$name.new"
  local d
  for d in "$@"; do dpkg-deb -x "$d" "$QD/$name.new"; done
  rm -rf "${QD:?}/${name:?}"
  mv "$QD/$name.new" "$QD/$name"
  echo "$want" > "$stamp"
}

qemu_env() {
  QEMU_BIN=$QD/qemu/usr/bin/qemu-system-x86_64
  QEMU_LD=$QD/qemu/usr/lib/$MULTI:$QD/qemu/lib/$MULTI
}

do_fetch() {
  command -v apt-get >/dev/null || die "apt-get not found"
  mkdir -p "$QD/debs"
  if ! apt-cache show --no-all-versions linux-image-cloud-amd64 >/dev/null 2>&1 \
     || ! apt-cache show --no-all-versions qemu-system-x86 >/dev/null 2>&1; then
    log "apt-get update"
    apt-get update -q >/dev/null || die "apt-get update failed"
  fi

  # Kernel: the image linux-image-cloud-amd64 currently points at.
  local kpkg
  kpkg=$(apt-cache depends linux-image-cloud-amd64 \
         | awk '/Depends: linux-image-[0-9].*-cloud-amd64/{print $2; exit}')
  [ -n "$kpkg" ] || die "cannot resolve linux-image-cloud-amd64"
  local kdeb
  kdeb=$(download "$kpkg")
  extract_into kernel "$kdeb"
  local kver
  kver=$(cd "$QD/kernel/lib/modules" && ls | head -n1)
  [ -n "$kver" ] && [ -f "$QD/kernel/boot/vmlinuz-$kver" ] || die "kernel package has no vmlinuz/modules"
  if [ ! -s "$QD/kernel/lib/modules/$kver/modules.dep" ]; then
    depmod -b "$QD/kernel" "$kver" || die "depmod on the extracted kernel failed"
  fi
  echo "$kver" > "$QD/kernel.version"

  # qemu and whatever of its runtime closure this host lacks.
  local p debs=() qp=() extra
  declare -A have=()
  load_installed
  extra=$(missing_closure qemu-system-x86)
  for p in "${QEMU_PKGS[@]}" $extra; do
    [ -n "${have[$p]:-}" ] && continue
    have[$p]=1; qp+=("$p")
  done
  local d
  d=$(download "${qp[@]}"); mapfile -t debs <<<"$d"
  extract_into qemu "${debs[@]}"

  d=$(download "${GUEST_PKGS[@]}"); mapfile -t debs <<<"$d"
  extract_into guest "${debs[@]}"

  # Check that the extracted qemu runs.
  qemu_env
  local missing
  missing=$(LD_LIBRARY_PATH=$QEMU_LD ldd "$QEMU_BIN" | awk '/not found/{print $1}')
  [ -z "$missing" ] || die "qemu still lacks libraries: $missing"
  local v
  v=$(LD_LIBRARY_PATH=$QEMU_LD "$QEMU_BIN" -version | head -n1) || die "qemu does not run"
  [ -x "$QD/guest/bin/busybox" ] || die "busybox missing from $QD/guest"
  [ -e "$QD/guest/usr/sbin/iptables-legacy" ] || die "iptables-legacy missing from $QD/guest"
  log "ready: kernel $kver; $v; ${#qp[@]} qemu packages; cache $QD"
  touch "$QD/.ready"
}

# ------------------------------------------------------------------------------------ run

STAGE=""
GUEST_LD=""

# copy_path SRC DEST: copy a file into the stage at DEST (absolute), following symlinks.
stage_copy() {
  local src=$1 dest=$2
  mkdir -p "$STAGE$(dirname "$dest")"
  cp -L --preserve=mode "$src" "$STAGE$dest"
}

# Where a host path resolved through the cache lands in the guest.
guest_path() {
  local p=$1
  case $p in
    "$QD/guest/"*) echo "${p#"$QD/guest"}" ;;
    *) echo "$p" ;;
  esac
}

declare -A LIBS_DONE=()
# add_libs FILE: copy the shared-library closure of ELF FILE into the stage.
add_libs() {
  local f=$1 out line lib
  out=$(LD_LIBRARY_PATH=$GUEST_LD ldd "$f" 2>&1) || {
    # Static executables make ldd fail; that is fine.
    grep -qE 'not a dynamic executable|statically linked' <<<"$out" && return 0
    die "ldd $f failed: $out"
  }
  if grep -q 'not found' <<<"$out"; then
    die "missing libraries for $f: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ')"
  fi
  while read -r line; do
    lib=""
    case $line in
      *"=> /"*) lib=${line#*=> }; lib=${lib%% (*} ;;
      /*) lib=${line%% (*} ;;
    esac
    [ -n "$lib" ] || continue
    [ -n "${LIBS_DONE[$lib]:-}" ] && continue
    LIBS_DONE[$lib]=1
    stage_copy "$lib" "$(guest_path "$lib")"
  done <<<"$out"
}

# add_bin SRC [DEST]: an executable with its libraries.
add_bin() {
  local src=$1 dest=${2:-}
  [ -n "$dest" ] || dest=$(guest_path "$src")
  stage_copy "$src" "$dest"
  add_libs "$src"
}

is_elf() { [ "$(head -c 4 "$1" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]; }

resolve_ceph_conf() {
  local conf=${CEPH_CONF:-}
  if [ -z "$conf" ] && [ -n "${DEV_CLUSTER_DIR:-}" ]; then conf=$DEV_CLUSTER_DIR/ceph.conf; fi
  if [ -z "$conf" ] && [ -f "$repo/.dev-cluster/ceph.conf" ]; then conf=$repo/.dev-cluster/ceph.conf; fi
  echo "$conf"
}

write_init() {
  local nonce=$1 script_timeout=$2
  cat > "$STAGE/init" <<'INIT'
#!/bin/sh
# qemu-guest init (generated by scripts/qemu-guest.sh)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# Files staged under /tmp or /run (--file, a dev cluster whose conf lives under /tmp)
# would be hidden by the tmpfs mounts: carry them over.
for d in tmp run; do
  if [ -n "$(ls -A /$d 2>/dev/null)" ]; then mkdir -p /.staged/$d && cp -a /$d/. /.staged/$d/; fi
done
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
for d in tmp run; do
  if [ -d /.staged/$d ]; then cp -a /.staged/$d/. /$d/ && rm -rf /.staged/$d; fi
done
. /etc/qemu-guest/config

up() { cut -d' ' -f1 /proc/uptime; }
finish() {
  sync
  echo "$MARKER rc=$1"
  poweroff -f
  echo o > /proc/sysrq-trigger
  while :; do sleep 1; done
}
echo "qemu-guest: init at $(up)s, kernel $(uname -r)"

while read -r m; do
  [ -n "$m" ] || continue
  insmod "$m" || echo "qemu-guest: insmod $m failed"
done < /etc/qemu-guest/modules

# Firewall before the interface comes up: tcp to 127.0.0.1 goes to the host loopback
# (10.0.2.2 in qemu user networking); nothing else may leave eth0.
# (No set -e here: it is ignored inside an if condition, so every step is checked.)
fw() {
  ipt=iptables-legacy
  [ -d /sys/class/net/eth0 ] || { echo "qemu-guest: no eth0"; return 1; }
  echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet || return 1
  echo 1 > /proc/sys/net/ipv4/conf/default/route_localnet || return 1
  echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet || return 1
  $ipt -P FORWARD DROP || return 1
  $ipt -t nat -A OUTPUT -p tcp -d 127.0.0.1 -j DNAT --to-destination 10.0.2.2 || return 1
  $ipt -t nat -A POSTROUTING -o eth0 -j SNAT --to-source 10.0.2.15 || return 1
  $ipt -A OUTPUT -o eth0 -p tcp -d 10.0.2.2 -j ACCEPT || return 1
  $ipt -A OUTPUT -o eth0 -j DROP || return 1
}
ip link set lo up
if ! fw; then
  echo "qemu-guest: firewall setup failed; not bringing eth0 up"
  finish 125
fi
ip addr add 10.0.2.15/24 dev eth0
ip link set eth0 up
echo "qemu-guest: network up at $(up)s; running guest script (limit ${SCRIPT_TIMEOUT}s)"

cd /root
timeout -s KILL "$SCRIPT_TIMEOUT" sh -c '. /etc/qemu-guest/env; exec sh /guest/script "$@"' guest-script "$@" </dev/null
rc=$?
[ $rc = 137 ] && echo "qemu-guest: guest script killed (time limit ${SCRIPT_TIMEOUT}s?)"
echo "qemu-guest: guest script exited with $rc at $(up)s"
finish $rc
INIT
  chmod 755 "$STAGE/init"
  {
    printf 'MARKER=%q\n' "QEMU-GUEST-RESULT $nonce"
    printf 'SCRIPT_TIMEOUT=%q\n' "$script_timeout"
    printf 'set --'
    [ ${#SCRIPT_ARGS[@]} -eq 0 ] || printf ' %q' "${SCRIPT_ARGS[@]}"
    printf '\n'
  } > "$STAGE/etc/qemu-guest/config"
}

do_run() {
  BINS=(); FILES=(); ENVS=(); MODS=(); SCRIPT=""; SCRIPT_ARGS=()
  while [ $# -gt 0 ]; do
    case $1 in
      --bin) [ $# -ge 2 ] || die "--bin needs a path"; BINS+=("$2"); shift 2 ;;
      --bin=*) BINS+=("${1#--bin=}"); shift ;;
      --file) [ $# -ge 2 ] || die "--file needs SRC:DEST"; FILES+=("$2"); shift 2 ;;
      --file=*) FILES+=("${1#--file=}"); shift ;;
      --env) [ $# -ge 2 ] || die "--env needs NAME=VALUE"; ENVS+=("$2"); shift 2 ;;
      --env=*) ENVS+=("${1#--env=}"); shift ;;
      --module) [ $# -ge 2 ] || die "--module needs a name"; MODS+=("$2"); shift 2 ;;
      --module=*) MODS+=("${1#--module=}"); shift ;;
      --) shift; break ;;
      -*) die "unknown option $1" ;;
      *) break ;;
    esac
  done
  [ $# -ge 1 ] || die "usage: $0 run [--bin PATH]... [--file SRC:DEST]... [--env N=V]... [--module NAME]... -- GUEST_SCRIPT [ARG]..."
  SCRIPT=$1; shift
  SCRIPT_ARGS=("$@")
  [ -f "$SCRIPT" ] || die "guest script $SCRIPT not found"

  local timeout=${QEMU_GUEST_TIMEOUT:-300}
  local script_timeout=${QEMU_GUEST_SCRIPT_TIMEOUT:-$(( timeout > 60 ? timeout - 30 : timeout * 3 / 4 ))}
  local mem=${QEMU_GUEST_MEM:-1024}
  local append_extra=${QEMU_GUEST_APPEND-quiet}

  [ -f "$QD/.ready" ] || with_fetch_lock do_fetch
  qemu_env
  local kver
  kver=$(cat "$QD/kernel.version")
  local kroot=$QD/kernel
  GUEST_LD=$QD/guest/usr/lib/$MULTI:$QD/guest/lib/$MULTI

  # One guest at a time on this machine (TCG is CPU-bound): wait for any other run.
  local lockf=${QEMU_GUEST_LOCK:-${TMPDIR:-/tmp}/qemu-guest.lock}
  exec 9>>"$lockf"
  local lock_wait=${QEMU_GUEST_LOCK_WAIT:-900}
  if ! flock -n 9; then
    log "waiting up to ${lock_wait}s for another guest to finish (lock $lockf)"
    flock -w "$lock_wait" 9 || die "another guest held $lockf for more than ${lock_wait}s"
  fi

  local t0 tmp
  t0=$(now_ms)
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/qemu-guest.XXXXXX")
  QPID=""; TPID=""; WPID=""
  # shellcheck disable=SC2064
  trap "cleanup '$tmp'" EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  # The initramfs build has a limit of its own (QEMU_GUEST_TIMEOUT starts at the boot):
  # a watchdog TERMs this script, whose EXIT trap cleans up.
  local build_timeout=${QEMU_GUEST_BUILD_TIMEOUT:-300}
  ( trap 'kill "$sp" 2>/dev/null; exit 0' TERM
    sleep "$build_timeout" & sp=$!
    wait "$sp" || exit 0
    log "initramfs build took more than ${build_timeout}s: giving up"
    kill -TERM $$ ) &
  WPID=$!
  STAGE=$tmp/root
  mkdir -p "$STAGE"/{usr/bin,usr/sbin,usr/lib,usr/lib64,usr/local/bin,etc/qemu-guest,proc,sys,dev,tmp,run,root,guest,mnt,var/tmp}
  ln -s usr/bin "$STAGE/bin"; ln -s usr/sbin "$STAGE/sbin"
  ln -s usr/lib "$STAGE/lib"; ln -s usr/lib64 "$STAGE/lib64"
  # (init reopens its console after mounting devtmpfs, so these are best effort.)
  mknod -m 600 "$STAGE/dev/console" c 5 1 2>/dev/null || true
  mknod -m 666 "$STAGE/dev/null" c 1 3 2>/dev/null || true

  # Kernel modules: rbd, nbd, virtio-net and netfilter bits, and those asked for with
  # --module, with dependencies.
  local m line mods=() deps
  declare -A mseen=()
  for m in rbd nbd virtio_pci virtio_net ip_tables iptable_filter iptable_nat xt_nat xt_tcpudp \
           ${MODS[@]+"${MODS[@]}"}; do
    [[ $m =~ ^[A-Za-z0-9_-]+$ ]] || die "--module $m: not a module name"
    deps=$(modprobe --show-depends -d "$kroot" -S "$kver" "$m") || die "module $m not found in $kver"
    while read -r line; do
      case $line in
        insmod\ *)
          line=${line#insmod }; line=${line%% *}
          [ -n "${mseen[$line]:-}" ] && continue
          mseen[$line]=1
          mods+=("${line#"$kroot"}")
          stage_copy "$line" "${line#"$kroot"}"
          ;;
      esac
    done <<<"$deps"
  done
  local f
  for f in modules.builtin modules.builtin.modinfo modules.order; do
    [ -f "$kroot/lib/modules/$kver/$f" ] && cp "$kroot/lib/modules/$kver/$f" "$STAGE/usr/lib/modules/$kver/"
  done
  depmod -b "$STAGE" "$kver" || die "depmod failed"
  printf '%s\n' "${mods[@]}" > "$STAGE/etc/qemu-guest/modules"

  # busybox and its applets (real tools copied below take precedence).
  cp "$QD/guest/bin/busybox" "$STAGE/usr/bin/busybox"

  # iptables-legacy (from the cache) and its extensions.
  local x
  x=$(readlink -f "$QD/guest/usr/sbin/iptables-legacy")
  add_bin "$x" "/usr/sbin/$(basename "$x")"
  ln -sf "$(basename "$x")" "$STAGE/usr/sbin/iptables-legacy"
  local xdir=$QD/guest/usr/lib/$MULTI/xtables
  mkdir -p "$STAGE/usr/lib/$MULTI/xtables"
  for f in "$xdir"/libxt_standard.so "$xdir"/libxt_tcp.so "$xdir"/libxt_udp.so \
           "$xdir"/libxt_DNAT.so "$xdir"/libxt_SNAT.so "$xdir"/libipt_DNAT.so "$xdir"/libipt_SNAT.so \
           "$xdir"/libxt_conntrack.so "$xdir"/libxt_state.so "$xdir"/libipt_REJECT.so "$xdir"/libxt_REJECT.so; do
    [ -e "$f" ] || continue
    add_bin "$f"
  done

  # mke2fs and friends, the xfs tools, rbd, rbd-nbd from the host (the volume driver runs
  # mkfs, fsck and the online grow tools: resize2fs, xfs_growfs).
  local b
  for b in mke2fs e2fsck resize2fs mkfs.xfs xfs_growfs xfs_repair rbd rbd-nbd blkid; do
    local p
    p=$(command -v "$b" || true)
    case $b in rbd|mke2fs) [ -n "$p" ] || die "$b not installed on the host (scripts/install-deps.sh)" ;; esac
    [ -n "$p" ] || { log "note: $b not on the host; not in the guest"; continue; }
    add_bin "$p" "$(readlink -f "$p")"
    [ "$(readlink -f "$p")" = "$p" ] || ln -sf "$(readlink -f "$p")" "$STAGE$p"
  done
  for x in mkfs.ext4 mkfs.ext3 mkfs.ext2; do ln -sf mke2fs "$STAGE/usr/sbin/$x"; done
  for x in fsck.ext4 fsck.ext2 e2fsck.ext4; do [ -e "$STAGE/usr/sbin/e2fsck" ] && ln -sf e2fsck "$STAGE/usr/sbin/$x"; done
  [ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$STAGE/etc/"

  # librados dlopens its crypto and compressor plugins.
  local pd=/usr/lib/$MULTI/ceph
  for x in crypto compressor; do
    [ -d "$pd/$x" ] || continue
    mkdir -p "$STAGE$pd/$x"
    cp -a "$pd/$x/." "$STAGE$pd/$x/"
    for f in "$pd/$x"/*.so; do [ -e "$f" ] && add_libs "$f"; done
  done

  # --bin
  for b in "${BINS[@]}"; do
    local p=$b
    case $p in */*) ;; *) p=$(command -v "$p") || die "--bin $b: not found" ;; esac
    [ -f "$p" ] || die "--bin $b: not a file"
    p=$(cd "$(dirname "$p")" && pwd)/$(basename "$p")
    stage_copy "$p" "$p"
    is_elf "$p" && add_libs "$p"
    [ -e "$STAGE/usr/local/bin/$(basename "$p")" ] || ln -s "$p" "$STAGE/usr/local/bin/$(basename "$p")"
  done
  # --file
  for f in "${FILES[@]}"; do
    local src=${f%%:*} dest=${f#*:}
    [ "$src" != "$f" ] && [ -n "$dest" ] || die "--file $f: want SRC:DEST"
    case $dest in /*) ;; *) die "--file $f: DEST must be absolute" ;; esac
    [ -e "$src" ] || die "--file $f: $src not found"
    mkdir -p "$STAGE$(dirname "$dest")"
    cp -aL "$src" "$STAGE$dest"
  done

  # Busybox applet links where no real tool sits.
  local a
  while read -r a; do
    [ -e "$STAGE/$a" ] || [ -L "$STAGE/$a" ] || ln -s /usr/bin/busybox "$STAGE/$a"
  done < <("$STAGE/usr/bin/busybox" --list-full)

  # Minimal /etc.
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$STAGE/etc/passwd"
  printf 'root:x:0:\n' > "$STAGE/etc/group"
  printf '127.0.0.1 localhost\n::1 localhost\n' > "$STAGE/etc/hosts"
  printf 'qemu-guest\n' > "$STAGE/etc/hostname"
  : > "$STAGE/etc/resolv.conf"

  # The dev cluster's conf and keyring at the same absolute paths.
  local conf kr envf=$STAGE/etc/qemu-guest/env
  conf=$(resolve_ceph_conf)
  : > "$envf"
  if [ -n "$conf" ] && [ -f "$conf" ]; then
    conf=$(readlink -f "$conf")
    stage_copy "$conf" "$conf"
    mkdir -p "$STAGE/etc/ceph"
    ln -sf "$conf" "$STAGE/etc/ceph/ceph.conf"
    printf 'export CEPH_CONF=%q\n' "$conf" >> "$envf"
    kr=$(awk -F= '/^[[:space:]]*keyring[[:space:]]*=/{gsub(/^[ \t]+|[ \t]+$/, "", $2); print $2; exit}' "$conf")
    if [ -n "$kr" ] && [ -f "$kr" ]; then
      stage_copy "$kr" "$kr"
      printf 'export CEPH_KEYRING=%q\n' "$kr" >> "$envf"
    fi
    printf 'export DEV_CLUSTER_DIR=%q\n' "$(dirname "$conf")" >> "$envf"
    for x in run log crash; do mkdir -p "$STAGE$(dirname "$conf")/$x"; done
  else
    log "note: no dev cluster conf found (CEPH_CONF, DEV_CLUSTER_DIR, $repo/.dev-cluster); none in the guest"
  fi
  local e
  for e in "${ENVS[@]}"; do
    [[ $e == *=* ]] && [[ ${e%%=*} =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--env $e: want NAME=VALUE"
    printf 'export %s=%q\n' "${e%%=*}" "${e#*=}" >> "$envf"
  done

  cp "$SCRIPT" "$STAGE/guest/script"
  local nonce
  nonce=$(cat /proc/sys/kernel/random/uuid)
  write_init "$nonce" "$script_timeout"

  (cd "$STAGE" && find . -mindepth 1 | "$QD/guest/bin/busybox" cpio -o -H newc -R 0:0 2>/dev/null) \
    | gzip -1 > "$tmp/initrd.gz"
  local t1 isize
  t1=$(now_ms)
  isize=$(du -k "$tmp/initrd.gz" | cut -f1)
  kill "$WPID" 2>/dev/null || true
  wait "$WPID" 2>/dev/null || true
  WPID=""
  log "initramfs $(( isize / 1024 )) MiB built in $(( t1 - t0 )) ms; booting (timeout ${timeout}s)"

  local serial=$tmp/serial.log
  : > "$serial"
  LD_LIBRARY_PATH=$QEMU_LD "$QEMU_BIN" \
    -L "$QD/qemu/usr/share/qemu" \
    -accel tcg -cpu max -smp 1 -m "$mem" \
    -nographic -no-reboot -nodefaults -serial stdio -monitor none \
    -kernel "$kroot/boot/vmlinuz-$kver" -initrd "$tmp/initrd.gz" \
    -append "console=ttyS0 panic=-1 ipv6.disable=1 rdinit=/init $append_extra" \
    -netdev user,id=n0,ipv6=off \
    -device virtio-net-pci,netdev=n0,romfile= \
    </dev/null >"$serial" 2>&1 &
  QPID=$!
  ( tail -n +1 -s 0.2 -f --pid="$QPID" "$serial" | clean_console ) &
  TPID=$!

  local timed_out=0 deadline=$(( $(now_ms) + timeout * 1000 ))
  while kill -0 "$QPID" 2>/dev/null; do
    if [ "$(now_ms)" -ge "$deadline" ]; then
      timed_out=1
      log "timeout after ${timeout}s: killing qemu (pid $QPID)"
      kill -TERM "$QPID" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$QPID" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  local qrc=0
  wait "$QPID" || qrc=$?
  QPID=""
  wait "$TPID" 2>/dev/null || true
  TPID=""
  local t2
  t2=$(now_ms)
  if [ -n "${QEMU_GUEST_LOG:-}" ]; then clean_console < "$serial" > "$QEMU_GUEST_LOG"; fi

  local rc
  rc=$(clean_console < "$serial" | sed -n "s/^QEMU-GUEST-RESULT $nonce rc=\([0-9][0-9]*\)\$/\1/p" | tail -n1)
  if [ -z "$rc" ]; then
    if [ $timed_out = 1 ]; then log "no result marker: host timeout (${timeout}s)"
    else log "no result marker: qemu exited with $qrc"; fi
    log "qemu ran $(( t2 - t1 )) ms"
    exit 124
  fi
  log "guest script exit code $rc; qemu ran $(( t2 - t1 )) ms, total $(( t2 - t0 )) ms"
  exit "$rc"
}

# Serial output without CRs and the firmware's terminal escapes.
clean_console() { sed -u -e 's/\r//g' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1b[c]//g'; }

cleanup() {
  local tmp=$1
  if [ -n "${WPID:-}" ]; then kill "$WPID" 2>/dev/null || true; fi
  if [ -n "${QPID:-}" ] && kill -0 "$QPID" 2>/dev/null; then
    kill -TERM "$QPID" 2>/dev/null || true
    sleep 0.5
    kill -KILL "$QPID" 2>/dev/null || true
    wait "$QPID" 2>/dev/null || true
  fi
  if [ -n "${TPID:-}" ] && kill -0 "$TPID" 2>/dev/null; then
    kill "$TPID" 2>/dev/null || true
  fi
  if [ "${QEMU_GUEST_KEEP:-0}" = 1 ]; then
    log "kept $tmp"
  else
    rm -rf "$tmp"
  fi
}

case ${1:-} in
  fetch) shift; with_fetch_lock do_fetch "$@" ;;
  run) shift; do_run "$@" ;;
  clean) rm -rf "$QD"; log "removed $QD" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Builds the managed Docker plugin from the locally built binaries (no registry):
# assembles a rootfs holding docker-volume-rbd, the userspace mapper rbd-umap, the mkfs /
# fsck / grow tools the driver runs, and every shared library they load (the ldd closure,
# including librados, librbd (which rbd-core dlopens on first use) and the Ceph plugins
# librados dlopens from /usr/lib/x86_64-linux-gnu/ceph/{crypto,compressor}); then `docker plugin create` and,
# unless --no-enable, `docker plugin set` + `docker plugin enable`.
#
# usage: docker/plugin/build.sh [options]
#   --name NAME        plugin name (default rbd:latest); volumes then use `-d NAME`
#   --bin-dir DIR      where the binaries are (default <repo>/target/plugin)
#   --build            run `cargo build --profile plugin` for them first (the shipping
#                      profile: release with LTO, see Cargo.toml)
#   --set KEY=VALUE    passed to `docker plugin set` before enabling (repeatable), e.g.
#                      --set ceph.source=/etc/ceph --set CEPH_ID=docker
#   --no-enable        create only (then: docker plugin set ...; docker plugin enable NAME)
#   --replace          remove an existing plugin of that name first (it must be unused)
#   --work DIR         assemble in DIR (default: a temp dir, removed afterwards)
#   --rootfs-only      assemble the rootfs in --work DIR and stop (no docker calls)
# env: DOCKER_HOST as for the docker CLI; PLUGIN_TIMEOUT bounds each docker call (120 s).
#      ALLOW_NO_UMAP=1 builds without rbd-umap (the plugin then needs krbd or rbd-nbd).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
NAME=rbd:latest
BIN_DIR=$repo/target/plugin
BUILD=0
ENABLE=1
REPLACE=0
ROOTFS_ONLY=0
WORK=
SETS=()
T=${PLUGIN_TIMEOUT:-120}

log() { echo "plugin-build: $*" >&2; }
die() { log "error: $*"; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME=$2; shift 2 ;;
    --bin-dir) BIN_DIR=$2; shift 2 ;;
    --build) BUILD=1; shift ;;
    --set) SETS+=("$2"); shift 2 ;;
    --no-enable) ENABLE=0; shift ;;
    --replace) REPLACE=1; shift ;;
    --work) WORK=$2; shift 2 ;;
    --rootfs-only) ROOTFS_ONLY=1; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

dk() { timeout "$T" docker "$@"; }

if [ "$BUILD" = 1 ]; then
  log "building the binaries (profile plugin)"
  (cd "$repo" && timeout 3600 cargo build --profile plugin -p docker-volume-rbd -p rbd-driver --bins)
fi

PLUGIN_BIN=$BIN_DIR/docker-volume-rbd
UMAP_BIN=$BIN_DIR/rbd-umap
[ -x "$PLUGIN_BIN" ] || die "$PLUGIN_BIN not found (build it: cargo build --profile plugin -p docker-volume-rbd, or pass --build)"
if [ ! -x "$UMAP_BIN" ]; then
  [ "${ALLOW_NO_UMAP:-0}" = 1 ] || die "$UMAP_BIN not found (cargo build --profile plugin -p rbd-driver --bins, or ALLOW_NO_UMAP=1)"
  log "warning: building without rbd-umap (ALLOW_NO_UMAP=1)"
  UMAP_BIN=
fi

cleanup_work=0
if [ -z "$WORK" ]; then
  WORK=$(mktemp -d /tmp/rbd-plugin-build.XXXXXX)
  cleanup_work=1
fi
trap '[ "$cleanup_work" = 1 ] && rm -rf "$WORK"' EXIT
ROOT=$WORK/rootfs
rm -rf "$ROOT"
mkdir -p "$ROOT"

# Tools the driver and fs-format run (found on this host; missing optional ones are skipped).
REQUIRED_TOOLS=(mkfs.ext4 e2fsck resize2fs mkfs.xfs xfs_repair xfs_growfs mkfs.btrfs btrfs)
OPTIONAL_TOOLS=(fusermount3 rbd-nbd modprobe blkid)

# Copies one file to the same path under the rootfs, following symlinks but keeping the
# link itself too (so /usr/lib/... and /lib/... names both resolve).
copy_path() {
  local src=$1 dst
  [ -e "$src" ] || return 0
  dst=$ROOT$src
  [ -e "$dst" ] && return 0
  mkdir -p "$(dirname "$dst")"
  if [ -L "$src" ]; then
    local target; target=$(readlink "$src")
    ln -s "$target" "$dst"
    case "$target" in
      /*) copy_path "$target" ;;
      *) copy_path "$(dirname "$src")/$target" ;;
    esac
  else
    cp -p "$src" "$dst"
  fi
}

# The shared libraries an ELF file needs, resolved by the host's loader. A library the
# loader cannot find is fatal: the plugin would not start.
libs_of() {
  local out
  out=$(ldd "$1" 2>/dev/null || true)
  if grep -q 'not found' <<<"$out"; then
    die "$1 needs libraries this host does not have: $(grep 'not found' <<<"$out" | tr -s ' \t\n' ' ')"
  fi
  awk '
    /=> \// { print $3; next }
    /^[[:space:]]*\// { print $1 }' <<<"$out"
}

copy_libs() {
  local lib
  while IFS= read -r lib; do
    [ -n "$lib" ] || continue
    copy_path "$lib"
    # /lib is a symlink to /usr/lib on merged-/usr hosts; keep both spellings working.
    copy_path "$(realpath "$lib")"
  done < <(libs_of "$1")
}

copy_with_libs() {
  copy_path "$1"
  copy_libs "$1"
}

install_bin() {
  local src=$1 name=$2
  mkdir -p "$ROOT/usr/bin"
  cp -p "$src" "$ROOT/usr/bin/$name"
  # Debug builds carry ~100 MB of debug info that the plugin never reads.
  if command -v strip >/dev/null 2>&1; then strip --strip-debug "$ROOT/usr/bin/$name"; fi
  copy_libs "$src"
}

is_elf() { [ "$(od -An -tx1 -N4 "$1" 2>/dev/null | tr -d ' \n')" = 7f454c46 ]; }

log "assembling rootfs in $ROOT"
install_bin "$PLUGIN_BIN" docker-volume-rbd
[ -z "$UMAP_BIN" ] || install_bin "$UMAP_BIN" rbd-umap

for t in "${REQUIRED_TOOLS[@]}"; do
  p=$(command -v "$t" 2>/dev/null) || die "$t not found on this host (run scripts/install-deps.sh)"
  copy_with_libs "$p"
  copy_with_libs "$(realpath "$p")"
done
for t in "${OPTIONAL_TOOLS[@]}"; do
  if p=$(command -v "$t" 2>/dev/null); then
    copy_with_libs "$p"
    copy_with_libs "$(realpath "$p")"
  else
    log "note: $t not found; not included"
  fi
done

# rbd-core loads librbd at run time (dlopen on first use, so an idle plugin does not carry
# it); ldd cannot see it either.
LIBRBD=$(ldconfig -p 2>/dev/null | awk '$1 == "librbd.so.1" && /x86-64/ { print $NF; exit }')
[ -n "$LIBRBD" ] || LIBRBD=/usr/lib/x86_64-linux-gnu/librbd.so.1
[ -e "$LIBRBD" ] || die "librbd.so.1 not found (is librbd1 installed?)"
copy_with_libs "$LIBRBD"
copy_with_libs "$(realpath "$LIBRBD")"

# librados loads its crypto and compression plugins at run time (dlopen): ldd cannot see
# them.
CEPH_PLUGINS=/usr/lib/x86_64-linux-gnu/ceph
for d in crypto compressor; do
  [ -d "$CEPH_PLUGINS/$d" ] || die "$CEPH_PLUGINS/$d missing (is librados2 installed?)"
  for so in "$CEPH_PLUGINS/$d"/*.so*; do
    [ -e "$so" ] && copy_with_libs "$so"
  done
done
# Name resolution for mon host names, through files and DNS.
for so in /lib/x86_64-linux-gnu/libnss_files.so.2 /lib/x86_64-linux-gnu/libnss_dns.so.2 \
          /lib/x86_64-linux-gnu/libresolv.so.2; do
  [ -e "$so" ] && copy_with_libs "$so"
done
# The dynamic loader itself.
copy_path /lib64/ld-linux-x86-64.so.2

mkdir -p "$ROOT/etc"
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$ROOT/etc/mke2fs.conf"
echo 'hosts: files dns' >"$ROOT/etc/nsswitch.conf"
echo 'root:x:0:0:root:/root:/bin/false' >"$ROOT/etc/passwd"
echo 'root:x:0:' >"$ROOT/etc/group"
: >"$ROOT/etc/hosts"
: >"$ROOT/etc/resolv.conf"
mkdir -p "$ROOT"/{dev,proc,sys,tmp,run/docker/plugins,run/rbd-volumes,etc/ceph,lib/modules}
mkdir -p "$ROOT"/var/lib/rbd-volumes "$ROOT"/mnt/rbd-volumes
chmod 1777 "$ROOT/tmp"

# Every ELF in the rootfs must resolve all its libraries inside the rootfs.
missing=0
while IFS= read -r f; do
  is_elf "$f" || continue
  while IFS= read -r lib; do
    [ -n "$lib" ] || continue
    if [ ! -e "$ROOT$lib" ]; then
      log "missing in rootfs: $lib (needed by ${f#"$ROOT"})"
      missing=1
    fi
  done < <(libs_of "$f")
done < <(find "$ROOT" -type f \( -perm -u+x -o -name '*.so*' \))
[ "$missing" = 0 ] || die "the rootfs is incomplete"

cp "$here/config.json" "$WORK/config.json"
size=$(du -sh "$ROOT" | cut -f1)
log "rootfs ready ($size)"
if [ "$ROOTFS_ONLY" = 1 ]; then
  cleanup_work=0
  echo "$WORK"
  exit 0
fi

if dk plugin inspect "$NAME" >/dev/null 2>&1; then
  [ "$REPLACE" = 1 ] || die "plugin $NAME already exists (pass --replace, or docker plugin rm $NAME)"
  log "removing existing plugin $NAME"
  dk plugin disable -f "$NAME" >/dev/null 2>&1 || true
  dk plugin rm -f "$NAME" >/dev/null
fi
log "docker plugin create $NAME"
dk plugin create "$NAME" "$WORK" >/dev/null
for s in "${SETS[@]}"; do
  log "docker plugin set $NAME $s"
  dk plugin set "$NAME" "$s"
done
if [ "$ENABLE" = 1 ]; then
  log "docker plugin enable $NAME"
  dk plugin enable --timeout "$T" "$NAME" >/dev/null
fi
log "done: $(dk plugin ls --format '{{.Name}} enabled={{.Enabled}}' | grep -F "${NAME%%:*}" || true)"

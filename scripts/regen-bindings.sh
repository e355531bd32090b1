#!/usr/bin/env bash
# Regenerates rbd-core/src/sys/bindings.rs from the installed Ceph headers.
#
# Pinned tool: bindgen-cli 0.73.2 (`cargo install bindgen-cli --version 0.73.2 --locked`),
# against the headers of librados-dev/librbd-dev 16.2.15 (Debian 12) and libclang-dev 14.
# The exact command is below; the output is checked in so builds need no libclang.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
BINDGEN_VERSION=0.73.2

export DEBIAN_FRONTEND=noninteractive
for p in libclang-dev librados-dev librbd-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || {
    apt-get update -q && apt-get install -y -q --no-install-recommends libclang-dev librados-dev librbd-dev
    break
  }
done
if ! bindgen --version 2>/dev/null | grep -q "bindgen $BINDGEN_VERSION"; then
  cargo install bindgen-cli --version "$BINDGEN_VERSION" --locked
fi

out=$repo/rbd-core/src/sys/bindings.rs
hdr=$(mktemp --suffix=.h)
trap 'rm -f "$hdr"' EXIT
printf '#include <rados/librados.h>\n#include <rbd/librbd.h>\n' > "$hdr"

bindgen "$hdr" \
  --rust-edition 2024 \
  --rust-target 1.85 \
  --allowlist-function 'rados_.*' \
  --allowlist-function 'rbd_.*' \
  --allowlist-type 'rados_.*' \
  --allowlist-type 'rbd_.*' \
  --allowlist-var 'RBD_.*' \
  --allowlist-var 'LIBRADOS_.*' \
  --allowlist-var 'LIBRBD_.*' \
  --allowlist-var 'CEPH_OSD_.*' \
  --no-prepend-enum-name \
  --default-enum-style consts \
  --no-doc-comments \
  --merge-extern-blocks \
  --sort-semantically \
  -o "$out" \
  -- -D_FILE_OFFSET_BITS=64

# librbd is not linked (rbd-core loads it on first use, src/librbd.rs): its functions move
# out of the extern block into `lazy_librbd! { ... }` (src/sys/mod.rs), which turns each
# declaration into a wrapper of the same signature. --sort-semantically puts every rbd_
# function after every rados_ one.
awk '!moved && /^    pub fn rbd_/ { print "}"; print "lazy_librbd! {"; moved = 1 } { print }' \
  "$out" > "$out.tmp"
mv "$out.tmp" "$out"
grep -q '^lazy_librbd! {' "$out" || { echo "regen-bindings: no rbd_ functions in $out" >&2; exit 1; }
if sed -n '/^lazy_librbd! {/,$p' "$out" | grep -q 'pub fn rados_'; then
  echo "regen-bindings: a rados_ function follows the rbd_ ones in $out" >&2; exit 1
fi

echo "regen-bindings: wrote $out ($(wc -l < "$out") lines) with $(bindgen --version)"

#!/bin/bash
# Builds the VM test's images under target/vm/ (or $PLATTE_VM_DIR).
#
# The Debian 12 base (debootstrap + configure-rootfs.sh, about 90 s and 110 MB of downloads) is
# cached as cache/rootfs-<key>.tar.zst, key = these scripts' hash + the ISO week (packages are
# not pinned; a week-old base is fine). Platte's binaries (from $PLATTE_VM_BIN, default
# target/debug, which `cargo test --workspace` builds), units and configuration go in on every run, then make-disk.sh writes image/.
# A release key pair and a machine id are made once under keys/.
#
# Needs root (debootstrap chroots) and: debootstrap e2fsprogs dosfstools mtools fdisk zstd.
# usage: tests/vm/build-image.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
W=${PLATTE_VM_DIR:-$SRC/target/vm}
BIN=${PLATTE_VM_BIN:-$SRC/target/debug}
mkdir -p "$W/cache" "$W/keys"

t0=$(date +%s)
step() { printf '  [build-image %3ss] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }

for b in update-agent updatectl payload; do
  [ -x "$BIN/$b" ] || { echo "build-image: $BIN/$b is missing; run cargo build -p update-agent -p update-server -p payloads" >&2; exit 1; }
done

# The Debian mirror this machine's apt already uses (deb822 .sources or a classic .list).
apt_mirror() {
  { grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    grep -h '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}'
  } 2>/dev/null | grep -v security | head -n 1 || true
}
MIRROR=${MIRROR:-$(apt_mirror)}
PACKAGES=systemd,systemd-sysv,dbus,udev,linux-image-amd64,systemd-boot

key=$( { cat "$HERE/build-image.sh" "$HERE/configure-rootfs.sh"; echo "$PACKAGES"; } | sha256sum | cut -c1-12)-$(date -u +%G-W%V)
cache=$W/cache/rootfs-$key.tar.zst
rootfs=$W/rootfs
if [ ! -s "$cache" ]; then
  step "no cached base ($key): debootstrap bookworm from $MIRROR"
  rm -rf "$rootfs"
  debootstrap --cache-dir="$W/cache" --variant=minbase --include="$PACKAGES" \
    bookworm "$rootfs" "$MIRROR" > "$W/debootstrap.log" 2>&1 \
    || { tail -n 30 "$W/debootstrap.log" >&2; exit 1; }
  step "configure the base"
  "$HERE/configure-rootfs.sh" "$rootfs"
  tar --numeric-owner --xattrs -C "$rootfs" -I 'zstd -T0 -3' -cf "$cache.tmp" .
  mv "$cache.tmp" "$cache"
  find "$W/cache" -maxdepth 1 -name 'rootfs-*.tar.zst' ! -name "rootfs-$key.tar.zst" -delete
  rm -f "$W"/cache/*.deb
  step "cached the base as $(basename "$cache") ($(du -m "$cache" | cut -f1) MiB)"
else
  step "cached base $(basename "$cache")"
  rm -rf "$rootfs"
  mkdir "$rootfs"
  tar --numeric-owner --xattrs -C "$rootfs" -I zstd -xf "$cache"
fi

if [ ! -s "$W/keys/release.pub" ]; then
  "$BIN/payload" keygen --out "$W/keys/release" >/dev/null
fi
[ -s "$W/keys/machine-id" ] || od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$W/keys/machine-id"
step "install Platte ($BIN)"
"$HERE/install-platte.sh" "$rootfs" "$BIN" "$W/keys/release.pub" "$(cat "$W/keys/machine-id")"
step "assemble the disk and release images"
"$HERE/make-disk.sh" "$rootfs" "$W/image"
rm -rf "$rootfs"
step "done: $W/image"

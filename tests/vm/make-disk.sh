#!/bin/bash
# Assembles the VM test's disk and release images from a rootfs with Platte installed, without
# loop devices or mounts (mkfs.ext4 -d, mtools, sfdisk on files; no root needed).
# usage: make-disk.sh ROOTFS OUTDIR
# out:   OUTDIR/root-1.0.0.img, root-2.0.0.img, root-3.0.0.img  slot images (ext4); 3.0.0's own
#                                                              health check fails
#        OUTDIR/disk.img  GPT: ESP (systemd-boot, slot A's kernel and blessed entry),
#                         ROOT-A (1.0.0), ROOT-B (empty), PLATTE-STATE (the agent's state)
set -euo pipefail
R=$1 O=$2
ESP_MB=64 STATE_MB=16
mkdir -p "$O"
export MTOOLS_SKIP_CHECK=1

# Slot size: the tree plus a third, rounded up to 16 MiB (the same for every release here).
used_mb=$(du -sxm "$R" | cut -f1)
ROOT_MB=$(( ((used_mb * 4 / 3 + 32) + 15) / 16 * 16 ))

release() { # VERSION HEALTH: the tree as release VERSION, its health check answering HEALTH
  rm -f "$R/etc/os-release"
  cat > "$R/etc/os-release" <<EOF
NAME="Platte VM test OS"
ID=platte-vm
ID_LIKE=debian
VERSION_ID=$1
PRETTY_NAME="Platte VM test OS $1"
EOF
  echo "$2" > "$R/usr/local/lib/platte-vm/health"
  rm -f "$O/root-$1.img"
  # Reproducible: the same UUID, hash seed and time for every release, so two releases differ
  # only where their files do (what a delta payload ships).
  E2FSPROGS_FAKE_TIME=1704067200 mkfs.ext4 -q -m 0 -U "$FS_UUID" \
    -E nodiscard,hash_seed="$FS_UUID" -d "$R" "$O/root-$1.img" "${ROOT_MB}M"
}
FS_UUID=5f0e3c6a-1d2b-4c8e-9a7f-2b6d4e8c1a30
release 1.0.0 ok
release 2.0.0 ok
release 3.0.0 fail

kver=$(basename "$(readlink "$R/boot/vmlinuz")" | sed 's/^vmlinuz-//')
esp=$O/esp.img
rm -f "$esp"
mkfs.vfat -F 32 -n ESP -C "$esp" $((ESP_MB * 1024)) >/dev/null
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/EFI/systemd ::/loader ::/loader/entries ::/platte ::/platte/a
mcopy -i "$esp" "$R/usr/lib/systemd/boot/efi/systemd-bootx64.efi" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$R/usr/lib/systemd/boot/efi/systemd-bootx64.efi" ::/EFI/systemd/systemd-bootx64.efi
mcopy -i "$esp" "$R/boot/vmlinuz-$kver" ::/platte/a/vmlinuz
mcopy -i "$esp" "$R/boot/initrd.img-$kver" ::/platte/a/initrd.img
# The loader tries the platte-* entry that sorts first: tries left before exhausted ones, then
# the highest version (what the agent writes for a new slot).
printf 'timeout 0\ndefault platte-*\neditor no\n' > "$O/loader.conf"
printf '%s\n' "title Platte VM test OS 1.0.0 (slot A)" "sort-key platte" "version 1" \
  "linux /platte/a/vmlinuz" "initrd /platte/a/initrd.img" \
  "options root=PARTLABEL=ROOT-A ro console=ttyS0 quiet" > "$O/platte-a.conf"
mcopy -i "$esp" "$O/loader.conf" ::/loader/loader.conf
mcopy -i "$esp" "$O/platte-a.conf" ::/loader/entries/platte-a.conf
rm -f "$O/loader.conf" "$O/platte-a.conf"

state=$O/state.img
rm -f "$state"
mkfs.ext4 -q -m 0 -E nodiscard "$state" "${STATE_MB}M"

disk=$O/disk.img
rm -f "$disk"
truncate -s $(( (1 + ESP_MB + 2 * ROOT_MB + STATE_MB + 1) * 1024 * 1024 )) "$disk"
sfdisk -q "$disk" <<EOF
label: gpt
start=1MiB, size=${ESP_MB}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="ESP"
size=${ROOT_MB}MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="ROOT-A"
size=${ROOT_MB}MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="ROOT-B"
size=${STATE_MB}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="PLATTE-STATE"
EOF
dd if="$esp" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$O/root-1.0.0.img" of="$disk" bs=1M seek=$((1 + ESP_MB)) conv=notrunc,sparse status=none
dd if="$state" of="$disk" bs=1M seek=$((1 + ESP_MB + 2 * ROOT_MB)) conv=notrunc,sparse status=none
rm -f "$esp" "$state"
echo "disk: ESP ${ESP_MB} MiB, ROOT-A/ROOT-B ${ROOT_MB} MiB each (tree ${used_mb} MiB), state ${STATE_MB} MiB"

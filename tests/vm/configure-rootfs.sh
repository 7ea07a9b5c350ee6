#!/bin/bash
# Turns a debootstrapped Debian 12 tree into the VM test's base OS (cached by build-image.sh):
# serial console, DHCP with systemd-networkd, the ESP and the shared state partition in fstab,
# a small initramfs, a trimmed module tree, and the test's own units (boot markers, host command
# channel, per-run config from QEMU's fw_cfg). Nothing of Platte's own is installed here; that is
# install-platte.sh, run on every build.
# usage: configure-rootfs.sh ROOTFS
set -euo pipefail
R=${1:?usage: configure-rootfs.sh ROOTFS}

echo platte-vm > "$R/etc/hostname"
chroot "$R" passwd -d root >/dev/null # serial-console login, for debugging a kept VM
mkdir -p "$R/efi" "$R/var/lib/platte"
# Each slot (ROOT-A/ROOT-B) is a whole root filesystem, mounted read-only (`ro` on the kernel
# command line), as Flatcar mounts its /usr: the running slot stays block for block the image it
# was written as, which is what a delta payload copies from. What the OS writes as it runs goes
# to tmpfs; the ESP and the agent's state are shared, persistent partitions.
cat > "$R/etc/fstab" <<'EOF'
PARTLABEL=ESP            /efi             vfat  umask=0077                 0 0
tmpfs                    /var             tmpfs mode=0755,size=64m         0 0
PARTLABEL=PLATTE-STATE   /var/lib/platte  ext4  defaults                   0 0
tmpfs                    /tmp             tmpfs mode=1777,size=64m         0 0
EOF

# DHCP on QEMU user networking (the host is 10.0.2.2).
mkdir -p "$R/etc/systemd/network"
cat > "$R/etc/systemd/network/50-dhcp.network" <<'EOF'
[Match]
Name=en* eth*
[Network]
DHCP=ipv4
EOF
chroot "$R" systemctl enable systemd-networkd.service >/dev/null 2>&1
# Under emulation every second of boot counts: nothing that only does housekeeping.
chroot "$R" systemctl mask e2scrub_reap.service e2scrub_all.timer apt-daily.timer \
  apt-daily-upgrade.timer fstrim.timer systemd-timesyncd.service >/dev/null 2>&1
# The per-run config arrives through fw_cfg (opt/platte/agent.toml).
echo qemu_fw_cfg > "$R/etc/modules-load.d/platte-vm.conf"

# Only what a virtio guest needs is kept of the 400 MB module tree; the rest is dead weight in
# every payload.
kdir=$(ls -d "$R"/lib/modules/* | head -n 1)
kver=$(basename "$kdir")
for d in drivers/gpu drivers/net/wireless drivers/net/ethernet drivers/media drivers/infiniband \
  drivers/staging drivers/scsi drivers/usb drivers/bluetooth drivers/hid drivers/iio drivers/isdn \
  drivers/mtd drivers/md drivers/net/can drivers/input drivers/hwmon drivers/thunderbolt \
  drivers/nvme drivers/ata drivers/mmc drivers/pinctrl drivers/platform drivers/edac drivers/target \
  drivers/misc drivers/leds drivers/power drivers/video drivers/atm drivers/crypto drivers/spi \
  drivers/i2c drivers/gpio drivers/mfd drivers/regulator drivers/watchdog drivers/net/phy \
  drivers/net/usb drivers/net/ieee802154 drivers/net/wwan drivers/net/dsa drivers/net/hamradio \
  sound net/wireless net/mac80211 net/bluetooth net/netfilter net/ipv4/netfilter net/ipv6/netfilter \
  net/bridge net/sched net/openvswitch net/sunrpc net/ceph net/rxrpc net/mac802154 net/sctp \
  fs/btrfs fs/xfs fs/ocfs2 fs/nfs fs/nfsd fs/smb fs/cifs fs/ceph fs/gfs2 fs/f2fs fs/ntfs3 fs/jfs \
  fs/reiserfs fs/ubifs fs/nilfs2 fs/dlm fs/afs fs/orangefs fs/erofs fs/bcachefs fs/ufs; do
  rm -rf "${kdir:?}/kernel/$d"
done
chroot "$R" depmod "$kver"

# A small initramfs: everything the root needs is a module (virtio, ext4).
sed -i 's/^MODULES=.*/MODULES=list/' "$R/etc/initramfs-tools/initramfs.conf"
printf 'virtio_pci\nvirtio_blk\next4\n' >> "$R/etc/initramfs-tools/modules"
chroot "$R" update-initramfs -u -k all >/dev/null
# The agent installs a slot's kernel from these two names (boot.systemd_boot.kernel_path, …).
ln -sfn "vmlinuz-$kver" "$R/boot/vmlinuz"
ln -sfn "initrd.img-$kver" "$R/boot/initrd.img"

rm -rf "$R"/usr/share/doc/* "$R"/usr/share/man/* "$R"/usr/share/locale/* "$R"/usr/share/info/* \
  "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/* "$R"/var/log/*.log

# ---- test units --------------------------------------------------------------------------
install -d "$R/usr/local/lib/platte-vm"
install -m755 /dev/stdin "$R/usr/local/bin/platte-vm-slot" <<'EOF'
#!/bin/sh
# Which slot the kernel mounted as root (A or B).
sed -n 's/.*root=PARTLABEL=ROOT-\([AB]\).*/\1/p' /proc/cmdline
EOF
install -m755 /dev/stdin "$R/usr/local/bin/platte-vm-efivar" <<'EOF'
#!/bin/sh
# A Boot Loader Interface variable as text (efivarfs files cannot seek: read through cat).
f=/sys/firmware/efi/efivars/$1-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
[ -e "$f" ] && cat "$f" | tail -c +5 | tr -d '\000' | tr '\\' / || true
EOF
install -m755 /dev/stdin "$R/usr/local/bin/platte-vm-marker" <<'EOF'
#!/bin/sh
# One marker line on the serial console: PLATTE-VM-<WHAT> slot=… version=… <more>.
. /etc/os-release
echo "PLATTE-VM-$1 slot=$(platte-vm-slot) version=$VERSION_ID uptime=$(cut -d' ' -f1 /proc/uptime) $2" > /dev/ttyS0
EOF
install -m755 /dev/stdin "$R/usr/local/bin/platte-vm-ready" <<'EOF'
#!/bin/sh
platte-vm-marker BOOT "counted=$(platte-vm-efivar LoaderBootCountPath) selected=$(platte-vm-efivar LoaderEntrySelected)"
st=$(systemctl is-system-running --wait)
platte-vm-marker READY "state=$st entries=$(ls /efi/loader/entries | tr '\n' ,) mark-good=$(systemctl is-active update-agent-mark-good.service) agent=$(systemctl is-active update-agent.service)"
EOF
cat > "$R/etc/systemd/system/platte-vm-ready.service" <<'EOF'
[Unit]
Description=VM test: boot markers on the serial console
After=multi-user.target
[Service]
Type=exec
ExecStart=/usr/local/bin/platte-vm-ready
[Install]
WantedBy=multi-user.target
EOF
# The image's health check (the agent's [health.checks.image]): the file decides, so a "bad"
# release is an image whose own check fails.
install -m755 /dev/stdin "$R/usr/local/bin/platte-vm-health" <<'EOF'
#!/bin/sh
r=$(cat /usr/local/lib/platte-vm/health 2>/dev/null || echo missing)
platte-vm-marker HEALTH "result=$r selected=$(platte-vm-efivar LoaderEntrySelected) counted=$(platte-vm-efivar LoaderBootCountPath)"
[ "$r" = ok ]
EOF
echo ok > "$R/usr/local/lib/platte-vm/health"
# Host command channel: one shell command per line over virtio-serial port "platte.cmd"; the
# answer is its output, then "__EOC__ <status>". read() returns EOF while no host is connected,
# so the loop reopens the port.
install -m755 /dev/stdin "$R/usr/local/bin/platte-vm-cmd" <<'EOF'
#!/bin/bash
P=/dev/virtio-ports/platte.cmd
while :; do
  if [ -e $P ] && exec 3<>$P; then
    while IFS= read -r line <&3; do
      out=$(bash -c "$line" 2>&1); rc=$?
      printf '%s\n__EOC__ %d\n' "$out" "$rc" >&3
    done
    exec 3<&-
  fi
  sleep 0.5
done
EOF
cat > "$R/etc/systemd/system/platte-vm-cmd.service" <<'EOF'
[Unit]
Description=VM test: host command channel
[Service]
ExecStart=/usr/local/bin/platte-vm-cmd
Restart=always
[Install]
WantedBy=multi-user.target
EOF
# Per-run agent config from fw_cfg into the agent's highest-precedence drop-in directory.
cat > "$R/etc/systemd/system/platte-vm-config.service" <<'EOF'
[Unit]
Description=VM test: agent config from QEMU fw_cfg
DefaultDependencies=no
After=systemd-modules-load.service local-fs.target
Before=update-agent.service update-agent-mark-good.service sysinit.target
ConditionPathExists=/sys/firmware/qemu_fw_cfg/by_name/opt/platte/agent.toml/raw
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'mkdir -p /run/platte/agent.d && cp /sys/firmware/qemu_fw_cfg/by_name/opt/platte/agent.toml/raw /run/platte/agent.d/50-vm.toml'
[Install]
WantedBy=sysinit.target
EOF
chroot "$R" systemctl enable platte-vm-ready.service platte-vm-cmd.service platte-vm-config.service >/dev/null 2>&1

# Scenario 3's demo container runtime is not in the image at all: its program and its unit
# (platte-demo-runtime.service) both come from the platte-demo-runtime system extension, which
# run.py builds and the agent installs, merges and (after systemd's daemon-reload) starts.

#!/bin/bash
# Installs Platte's agent into a configured rootfs the way a distribution would: the release
# binaries, the shipped units and D-Bus policy from systemd/, the systemd-boot drop-ins, the
# trusted release key, and the image's agent configuration. The server's address is per run
# (fw_cfg, see configure-rootfs.sh).
# usage: install-platte.sh ROOTFS BIN_DIR PUBLIC_KEY MACHINE_ID
set -euo pipefail
R=$1 BIN=$2 PUB=$3 MID=$4
SRC=$(cd "$(dirname "$0")/../.." && pwd)

# The release profile keeps debug info; the image does not need it.
install -m755 "$BIN/update-agent" "$BIN/updatectl" "$R/usr/bin/"
if command -v strip >/dev/null; then strip "$R/usr/bin/update-agent" "$R/usr/bin/updatectl"; fi
install -m644 "$SRC/systemd/update-agent.service" "$SRC/systemd/update-agent-mark-good.service" \
  "$R/etc/systemd/system/"
for unit in update-agent.service update-agent-mark-good.service; do
  install -d "$R/etc/systemd/system/$unit.d"
  install -m644 "$SRC/systemd/systemd-boot/$unit.d/systemd-boot.conf" "$R/etc/systemd/system/$unit.d/"
done
install -Dm644 "$SRC/systemd/org.platte.Update1.conf" "$R/usr/share/dbus-1/system.d/org.platte.Update1.conf"
install -Dm644 "$SRC/systemd/platte-tmpfiles.conf" "$R/usr/lib/tmpfiles.d/platte.conf"
install -Dm644 "$PUB" "$R/usr/share/platte/keys.d/release.pub"
chroot "$R" systemctl enable update-agent.service update-agent-mark-good.service >/dev/null 2>&1

# One machine whichever slot runs (the id would live on a persistent partition on a real host).
echo "$MID" > "$R/etc/machine-id"

install -d "$R/etc/platte/agent.d"
cat > "$R/etc/platte/agent.d/40-image.toml" <<'EOF'
# The VM image's agent configuration (the server URL comes per run in /run/platte/agent.d/).
[updates]
group = "stable"

[check]
# Check at start (reports a finished update or a rollback at once), then hourly; the test
# asks for the checks it needs with `updatectl check`.
initial_delay_secs = 0
jitter_secs = 0

[boot]
backend = "systemd-boot"

[boot.systemd_boot]
esp = "/efi"
kernel_options = "ro console=ttyS0 quiet"

[health.checks.image]
command = ["/usr/local/bin/platte-vm-health"]
timeout_secs = 30

[reboot]
strategy = "fleet-lock"
notify_command = []
EOF

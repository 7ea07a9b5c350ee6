#!/usr/bin/env python3
"""Platte's real-VM test: Debian 12 + systemd-boot boot counting under QEMU (issue #10).

A debootstrapped Debian 12 on a GPT disk (ESP, ROOT-A, ROOT-B, PLATTE-STATE) boots under OVMF
and systemd-boot; Platte's update-agent (this checkout's release build) talks to an
update-server on the host through QEMU user networking (10.0.2.2).

  Scenario 1: boot A (1.0.0) -> publish 2.0.0 with a delta from 1.0.0 -> `updatectl check`
  installs it into B by the delta (copying the rest from the running slot A, which the guest
  mounts read-only), the agent takes the FleetLock slot and reboots through logind ->
  systemd-boot tries B -> mark-good passes and blesses B -> the server shows the instance
  complete, updated by the delta, and the lock released.
  Scenario 2: publish 3.0.0, whose own health check fails -> installed into A, reboot -> A is
  tried once, the health gate fails and reboots -> systemd-boot falls back to B by itself ->
  the agent reports the rollback (3/0, code 44) and deny-lists 3.0.0 -> a later check installs
  nothing (exit 3 if the server still offers it, 0 if it stopped) and downloads nothing.
  Scenario 3: a runtime extension (a systemd-sysext image with /usr/bin/platte-demo-runtime and
  its unit, platte-demo-runtime.service, whose definition differs per build; built here for the
  booted OS) is configured for the agent -> 1.0.0 is published and activated: systemd, which did
  not know the unit, runs 1.0.0's unit and program -> 1.1.0 replaces it: the link switches,
  systemd-sysext merges it, the agent has systemd reload its unit files and restart the unit,
  which now runs 1.1.0's unit definition and program; the server shows the extension complete ->
  1.2.0, whose program exits 1, fails its restart: the agent rolls back to 1.1.0, systemd runs
  1.1.0's unit and program again, the server has the failure (3/0, code 3112); the OS slots are
  untouched -> the server no longer offers 1.2.0 to this machine, and a later check leaves 1.1.0
  running.

Progress is read from marker lines on the serial console (PLATTE-VM-BOOT/HEALTH/READY, see
configure-rootfs.sh) and the server's admin API; commands run in the guest over a virtio-serial
channel. Every phase's duration is printed.

usage: tests/vm/run.py [--keep] [--accel auto|kvm|tcg] [--no-build]
  --keep      keep the run directory (serial log, server log, overlay disk) afterwards
  --no-build  use target/vm/image as it is (skip build-image.sh)
env: PLATTE_VM_DIR (default target/vm), PLATTE_VM_BIN (default target/debug: the binaries
     `cargo test --workspace` builds; target/release works too), PLATTE_VM_SMP (vCPUs; default
     1 under TCG, 2 with KVM), PLATTE_VM_QEMU_ARGS (extra QEMU arguments)
exit: 0 passed, 1 failed, 77 cannot run here (the reason is printed)
"""

import argparse
import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
APP = "7b3f6a2e-5c1d-4e8a-9f40-2d6b8c1e9a53"  # the agent's default app id
# Scenario 3: the demo runtime extension's app; its name names the extension, its program
# (/usr/bin/NAME), its unit (NAME.service, shipped in the extension, not in the base image) and
# its NAME.raw link.
EXT_APP = "0d5c7a1e-3b9f-4e2a-8c6d-9f1b2a3c4d5e"
EXT = "platte-demo-runtime"
EXT_UNIT = EXT + ".service"
# The first build's unit file's mtime (2024-01-01 UTC); each later build's is an hour newer.
UNIT_MTIME = 1704067200
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
SKIP = 77

T0 = time.monotonic()


def now():
    return time.monotonic() - T0


def log(msg):
    print(f"  [{now():7.1f}s] {msg}", flush=True)


class Failed(Exception):
    """A scenario step did not do what it should."""


class CannotRun(Exception):
    """This machine cannot run the test at all."""


class Phases:
    """Named, timed phases; the table is printed at the end (also after a failure)."""

    def __init__(self):
        self.done = []

    def run(self, name, fn, *args):
        print(f"== {name}", flush=True)
        t = time.monotonic()
        try:
            return fn(*args)
        finally:
            d = time.monotonic() - t
            self.done.append((name, d))
            print(f"   {name}: {d:.1f} s", flush=True)

    def table(self):
        print("\nVM test phases:")
        for name, d in self.done:
            print(f"  {d:7.1f} s  {name}")
        print(f"  {now():7.1f} s  total")


# ---------------------------------------------------------------------------------------------
# Probing
# ---------------------------------------------------------------------------------------------


def probe_accel(wanted):
    """KVM only when a stock-kernel guest can really run: kvm_intel/kvm_amd loaded (a PVM host's
    /dev/kvm, kvm_pvm, cannot run a normal guest) and /dev/kvm usable; TCG otherwise."""
    if wanted == "tcg":
        return "tcg", "requested"
    mods = [m for m in ("kvm_intel", "kvm_amd") if os.path.isdir(f"/sys/module/{m}")]
    if not mods:
        other = [m for m in os.listdir("/sys/module") if m.startswith("kvm")]
        why = f"no kvm_intel/kvm_amd module (found: {', '.join(other) or 'none'})"
    elif not os.access("/dev/kvm", os.R_OK | os.W_OK):
        why = "/dev/kvm is not usable"
    else:
        return "kvm", f"{mods[0]} loaded and /dev/kvm usable"
    if wanted == "kvm":
        raise CannotRun(f"KVM requested but {why}")
    return "tcg", why


def probe_tools():
    missing = [t for t in ("qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.vfat", "mcopy",
                           "sfdisk", "mkfs.ext4", "zstd") if shutil.which(t) is None]
    missing += [f for f in (OVMF_CODE, OVMF_VARS) if not os.path.exists(f)]
    if missing:
        raise CannotRun("missing " + ", ".join(missing) +
                        " (Debian: qemu-system-x86 qemu-utils ovmf debootstrap dosfstools mtools"
                        " fdisk e2fsprogs zstd)")
    if os.geteuid() != 0:
        raise CannotRun("debootstrap and chroot need root")


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise Failed(f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r.stdout


class Server:
    """update-server on 127.0.0.1; the guest reaches it as 10.0.2.2 (QEMU user networking)."""

    def __init__(self, bin_dir, rundir, keys_dir):
        self.bin = os.path.join(bin_dir, "update-server")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.guest_url = f"http://10.0.2.2:{self.port}"
        self.data = os.path.join(rundir, "server-data")
        self.logf = os.path.join(rundir, "server.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("UPDATE_SERVER_")}
        env.update(RUST_LOG="info", NO_COLOR="1")
        self.proc = subprocess.Popen(
            [self.bin, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data,
             "--trusted-keys", keys_dir, "--public-url", self.guest_url,
             "--flush-interval-ms", "100"],
            stdin=subprocess.DEVNULL, stdout=open(self.logf, "w"), stderr=subprocess.STDOUT, env=env)
        self.token = None

    def wait_ready(self, timeout=30):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise Failed(f"update-server exited {self.proc.returncode}:\n{tail(self.logf)}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        else:
            raise Failed(f"update-server not ready after {timeout} s:\n{tail(self.logf)}")
        with open(os.path.join(self.data, "admin-token")) as f:
            self.token = f.read().strip()

    def cli(self, *args):
        env = dict(os.environ, UPDATE_SERVER_URL=self.url, UPDATE_SERVER_TOKEN=self.token)
        log("$ update-server " + " ".join(args))
        return run([self.bin, *args], env=env)

    def cli_json(self, *args):
        return json.loads(self.cli(*args, "--json"))

    def api(self, path):
        req = urllib.request.Request(self.url + "/api/v1" + path,
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def instance(self, machine, app=APP):
        v = self.api(f"/instances?app={app}&search={machine}&limit=10")
        items = v if isinstance(v, list) else next(
            (x for x in v.values() if isinstance(x, list)), [])
        return next((i for i in items if i.get("machine_id") == machine), None)

    def events(self, machine, app=None):
        v = self.api(f"/events?machine={machine}&limit=200" + (f"&app={app}" if app else ""))
        return v if isinstance(v, list) else next(
            (x for x in v.values() if isinstance(x, list)), [])

    def lock_holders(self, group="default"):
        return [h["id"] for h in self.api(f"/fleetlock/groups/{group}").get("holders", [])]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def tail(path, n=40):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


ANSI = re.compile(r"\x1b\[[0-9;?=]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1bc")


class Vm:
    """QEMU with OVMF on a throw-away qcow2 overlay of disk.img; serial console lines go to a
    queue (and the log), commands to the guest over virtio-serial port "platte.cmd"."""

    def __init__(self, image_dir, rundir, accel, agent_toml):
        self.rundir = rundir
        self.serial_log = open(os.path.join(rundir, "serial.log"), "w")
        self.lines = queue.Queue()
        self.markers = []
        self.sock = self.chan = None
        for f in ("disk.qcow2", "cmd.sock"):
            if os.path.exists(os.path.join(rundir, f)):
                os.unlink(os.path.join(rundir, f))
        shutil.copy(OVMF_VARS, os.path.join(rundir, "vars.fd"))
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
             os.path.join(image_dir, "disk.img"), os.path.join(rundir, "disk.qcow2")])
        cfg = os.path.join(rundir, "agent.toml")
        with open(cfg, "w") as f:
            f.write(agent_toml)
        # Under TCG the plain qemu64 model boots about 20 % faster than "max" (fewer emulated
        # features to set up and use); the Debian kernel needs nothing more.
        cpu = "host" if accel == "kvm" else "qemu64"
        # One vCPU under TCG: with two, OVMF sometimes hangs after a guest reboot (the boot CPU
        # waits forever for the halted second one in its MP services; seen 2 reboots in 6).
        smp = os.environ.get("PLATTE_VM_SMP", "2" if accel == "kvm" else "1")
        self.cmdline = [
            "qemu-system-x86_64", "-machine", f"q35,accel={accel}", "-cpu", cpu, "-m", "1024",
            "-smp", smp, "-display", "none", "-no-user-config", "-nodefaults", "-serial", "stdio",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={rundir}/vars.fd",
            "-drive", f"file={rundir}/disk.qcow2,format=qcow2,if=none,id=os,cache=unsafe",
            "-device", "virtio-blk-pci,drive=os,bootindex=0",
            "-nic", "user,model=virtio-net-pci",
            "-fw_cfg", f"name=opt/platte/agent.toml,file={cfg}",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=cmd,path={rundir}/cmd.sock,server=on,wait=off",
            "-device", "virtserialport,chardev=cmd,name=platte.cmd",
        ] + os.environ.get("PLATTE_VM_QEMU_ARGS", "").split()
        self.proc = subprocess.Popen(self.cmdline, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        log(f"qemu pid {self.proc.pid} ({accel})")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while True:
            chunk = self.proc.stdout.read1(4096)
            if not chunk:
                self.lines.put(None)
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                s = ANSI.sub("", line.decode(errors="replace")).strip("\r")
                self.serial_log.write(f"[{now():7.1f}] {s}\n")
                self.serial_log.flush()
                self.lines.put(s)

    def wait(self, pattern, timeout):
        """The match of the first serial line matching `pattern`; every marker line passed on
        the way (PLATTE-VM-…) is echoed and appended to `self.markers`."""
        end = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise Failed(f"no serial line matching {pattern!r} within {timeout} s")
            try:
                s = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if s is None:
                raise Failed(f"qemu exited while waiting for {pattern!r}")
            if "PLATTE-VM-" in s:
                marker = s[s.index("PLATTE-VM-"):]
                log("serial: " + marker)
                self.markers.append(marker)
            m = rx.search(s)
            if m:
                return m

    def collect(self, pattern, timeout):
        """The marker lines seen until (and including) the first line matching `pattern`."""
        self.markers = []
        self.wait(pattern, timeout)
        return self.markers

    def cmd(self, command, timeout=300):
        """Runs `command` with bash in the guest; returns (status, output)."""
        if self.sock is None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(os.path.join(self.rundir, "cmd.sock"))
            self.chan = self.sock.makefile("rwb", buffering=0)
        self.sock.settimeout(timeout)
        t = now()
        self.chan.write((command + "\n").encode())
        out = []
        while True:
            try:
                line = self.chan.readline()
            except OSError as e:
                raise Failed(f"guest command {command!r}: no answer ({e})") from e
            if not line:
                raise Failed(f"guest command channel closed during {command!r}")
            line = line.decode(errors="replace").rstrip("\n")
            if line.startswith("__EOC__"):
                rc = int(line.split()[1])
                log(f"guest$ {command}  -> {rc} ({now() - t:.1f} s)")
                for o in out:
                    print(f"      {o}", flush=True)
                return rc, "\n".join(out)
            out.append(line)

    def reset_channel(self):
        """Drops the command channel (the guest side restarts with each boot)."""
        if self.sock is not None:
            self.sock.close()
        self.sock = self.chan = None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------------------------
# The scenarios
# ---------------------------------------------------------------------------------------------


def write_file(path, text, mode):
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def demo_unit(version):
    """/usr/lib/systemd/system/platte-demo-runtime.service of one build: each build's definition
    differs (Description=, Environment=PLATTE_DEMO_UNIT=VERSION), so which definition systemd
    loaded shows in `systemctl show` and which one the running invocation was started from shows
    in the program's record. Not enabled: the agent's RestartUnit starts it."""
    return f"""[Unit]
Description=VM test: demo container runtime, unit of build {version} (from the {EXT} extension)
[Service]
# The program records its version, this unit's PLATTE_DEMO_UNIT and $INVOCATION_ID in
# /run/{EXT}/state, leaves a daemon process behind and exits 0 once it is up; a build that exits
# non-zero fails the start job, which the agent sees as a failed restart.
Type=forking
Environment=PLATTE_DEMO_UNIT={version}
ExecStart=/usr/bin/{EXT}
RuntimeDirectory={EXT}
"""


def demo_runtime(version, broken):
    """/usr/bin/platte-demo-runtime of one build of the demo runtime extension: started by
    platte-demo-runtime.service (Type=forking), it records its version, the unit definition's
    PLATTE_DEMO_UNIT and the unit's invocation and leaves a daemon behind; `--health` (the agent's
    health command) passes when the unit's current invocation runs this build's program (the
    unit definition is the test's to check). A broken build exits 1, so its start job fails."""
    start = (f'echo "{EXT} {version} (unit $PLATTE_DEMO_UNIT): this build is broken, exiting 1" >&2'
             '\n  exit 1'
             if broken else
             f'echo "version=$V unit=$PLATTE_DEMO_UNIT invocation=$INVOCATION_ID" > "$S.tmp"\n'
             f'  mv "$S.tmp" "$S"\n'
             f'  sleep infinity </dev/null >/dev/null 2>&1 &\n'
             f'  echo "{EXT} {version} (unit $PLATTE_DEMO_UNIT): running (daemon pid $!)"')
    return f"""#!/bin/sh
# {EXT} {version}: the Platte VM test's stand-in for a container runtime (tests/vm/run.py).
set -e
V={version}
S=/run/{EXT}/state
case "$1" in
--health)
  inv=$(systemctl show -P InvocationID {EXT_UNIT})
  case "$(cat "$S" 2>/dev/null)" in
  "version=$V unit="*" invocation=$inv") ;;
  *) exit 1 ;;
  esac
  ;;
"")
  {start}
  ;;
*)
  echo "usage: {EXT} [--health]" >&2
  exit 2
  ;;
esac
"""


def poll(what, timeout, fn, interval=0.5):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise Failed(f"timed out after {timeout} s waiting for {what}")


def expect(cond, msg):
    if not cond:
        raise Failed(msg)


def expect_marker(seen, pattern):
    """One of the marker lines `seen` matches `pattern`."""
    if not any(re.search(pattern, m) for m in seen):
        raise Failed(f"no marker matching {pattern!r}; seen:\n  " + "\n  ".join(seen))


class Test:
    def __init__(self, args):
        self.args = args
        self.phases = Phases()
        self.vmdir = os.environ.get("PLATTE_VM_DIR", os.path.join(SRC, "target", "vm"))
        self.bin = os.environ.get("PLATTE_VM_BIN", os.path.join(SRC, "target", "debug"))
        self.image = os.path.join(self.vmdir, "image")
        self.rundir = os.path.join(self.vmdir, "run")
        self.server = self.vm = None
        self.releases = {}
        self.delta_2 = None
        self.ext_releases = {}
        self.ext_os = self.os_before = self.os_agent_before = self.ext_invocation = None
        self.machine = None

    # -- setup --

    def build(self):
        env = dict(os.environ, PLATTE_VM_DIR=self.vmdir, PLATTE_VM_BIN=self.bin)
        subprocess.run([os.path.join(HERE, "build-image.sh")], check=True, env=env)

    def start_server(self):
        keys = os.path.join(self.rundir, "server-keys")
        os.makedirs(keys, exist_ok=True)
        shutil.copy(os.path.join(self.vmdir, "keys", "release.pub"), keys)
        self.server = Server(self.bin, self.rundir, keys)
        self.server.wait_ready()
        log(f"update-server at {self.server.url} (guest: {self.server.guest_url})")
        self.server.cli("app", "create", APP, "Platte VM test OS")
        self.server.cli("channel", "create", APP, "stable")
        self.server.cli("group", "create", APP, "stable", "--channel", "stable")
        with open(os.path.join(self.vmdir, "keys", "machine-id")) as f:
            self.machine = f.read().strip()

    def build_payloads(self):
        key = os.path.join(self.vmdir, "keys", "release.key")
        for v in ("2.0.0", "3.0.0"):
            out = os.path.join(self.rundir, f"platte-{v}.payload")
            t = time.monotonic()
            run([os.path.join(self.bin, "payload"), "build", "--key", key, "--app", APP,
                 "--version", v, "--arch", "amd64",
                 "--image", os.path.join(self.image, f"root-{v}.img"), "--out", out])
            log(f"payload {v}: {os.path.getsize(out) >> 20} MiB in {time.monotonic() - t:.1f} s")
            self.releases[v] = out
        # 2.0.0 also as a delta from 1.0.0 (the image slot A was written with).
        out = os.path.join(self.rundir, "platte-1.0.0-to-2.0.0.payload")
        t = time.monotonic()
        run([os.path.join(self.bin, "payload"), "delta", "--key", key, "--app", APP,
             "--version", "2.0.0", "--arch", "amd64",
             "--from", os.path.join(self.image, "root-1.0.0.img"), "--from-version", "1.0.0",
             "--to", os.path.join(self.image, "root-2.0.0.img"), "--out", out])
        full, delta = os.path.getsize(self.releases["2.0.0"]), os.path.getsize(out)
        log(f"delta 1.0.0 -> 2.0.0: {delta >> 10} KiB ({100 * delta / full:.1f} % of the full "
            f"payload) in {time.monotonic() - t:.1f} s")
        self.delta_2 = out

    def publish(self, version):
        pkg = self.server.cli_json("package", "publish", self.releases[version])
        self.server.cli("channel", "set", APP, "stable", pkg["id"])

    def boot_vm(self, accel):
        toml = (f'[updates]\nserver = "{self.server.guest_url}/v1/update/"\n'
                f'[reboot.fleet_lock]\nbase_url = "{self.server.guest_url}/fleetlock/"\n')
        self.vm = Vm(self.image, self.rundir, accel, toml)

    # -- scenario 1 --

    def boot_a(self):
        seen = self.vm.collect(r"PLATTE-VM-READY", 300)
        expect_marker(seen, r"PLATTE-VM-BOOT slot=A version=1\.0\.0 .*selected=platte-a\.conf$")
        expect_marker(seen, r"PLATTE-VM-READY slot=A version=1\.0\.0 .*state=running ")
        poll("the agent's first check-in on the server", 90,
             lambda: self.server.instance(self.machine))
        log(f"server knows machine {self.machine}")

    def update_to_b(self):
        self.publish("2.0.0")
        pkg = self.server.cli_json("package", "publish", self.delta_2)
        expect([d.get("source_version") for d in pkg.get("deltas", [])] == ["1.0.0"],
               f"the delta was not linked to 2.0.0: {pkg}")
        # The agent reboots right after staging, so the answer is all this boot can give; the
        # entry it wrote shows in the next boot's markers.
        rc, out = self.vm.cmd("updatectl check", timeout=600)
        expect(rc == 2, f"updatectl check: expected 2 (staged), got {rc}: {out}")
        self.vm.reset_channel()

    def reboot_into_b(self):
        # The agent takes the FleetLock slot and reboots through logind by itself; systemd-boot
        # tries the counted entry, mark-good passes and blesses it.
        seen = self.vm.collect(r"PLATTE-VM-READY", 400)
        expect_marker(seen, r"PLATTE-VM-BOOT slot=B version=2\.0\.0 .*selected=platte-b\+1\.conf$")
        expect_marker(seen, r"PLATTE-VM-HEALTH slot=B version=2\.0\.0 .*result=ok")
        expect_marker(seen, r"PLATTE-VM-READY slot=B version=2\.0\.0 .*state=running "
                            r"entries=platte-a\.conf,platte-b\.conf, mark-good=active agent=active")

    def b_complete(self):
        inst = poll("the server to show the instance complete on 2.0.0", 120, lambda: (
            lambda i: i if i and i.get("status") == "complete" and i.get("version") == "2.0.0"
            else None)(self.server.instance(self.machine)))
        log(f"server: status={inst.get('status')} version={inst.get('version')} "
            f"payload={inst.get('served_payload')}")
        expect(inst.get("served_payload") == "delta", f"2.0.0 did not arrive by the delta: {inst}")
        poll("the FleetLock slot to be released", 60,
             lambda: self.server.lock_holders() == [])
        log("server: FleetLock group default has no holders")

    # -- scenario 2 --

    def install_bad_into_a(self):
        self.publish("3.0.0")
        rc, out = self.vm.cmd("updatectl check", timeout=600)
        expect(rc == 2, f"updatectl check: expected 2 (staged), got {rc}: {out}")
        self.vm.reset_channel()

    def fall_back(self):
        # Nobody touches the VM: A is tried once, its health gate fails and reboots, and
        # systemd-boot skips the spent entry and boots B again.
        seen = self.vm.collect(r"PLATTE-VM-READY slot=B", 600)
        expect_marker(seen, r"PLATTE-VM-HEALTH slot=A version=3\.0\.0 .*result=fail")
        expect(not any(re.search(r"READY slot=A .*state=running", m) for m in seen),
               f"the bad release came up as running: {seen}")
        expect_marker(seen, r"PLATTE-VM-BOOT slot=B version=2\.0\.0 .*selected=platte-b\.conf$")
        expect_marker(seen, r"PLATTE-VM-READY slot=B version=2\.0\.0 .*state=running "
                            r"entries=platte-a\+0-1\.conf,platte-b\.conf, ")

    def rollback_reported(self):
        def rollback():
            return next((e for e in self.server.events(self.machine)
                         if e.get("event_type") == 3 and e.get("event_result") == 0), None)
        ev = poll("the rollback event (3/0) on the server", 120, rollback)
        expect((int(ev.get("error_code") or 0) & 0xFFFF) == 44, f"rollback event: {ev}")
        log(f"server: rollback event {ev.get('event_type')}/{ev.get('event_result')} "
            f"code {ev.get('error_code')}")
        rc, out = self.vm.cmd("updatectl deny-list")
        expect(rc == 0 and "3.0.0" in out, f"3.0.0 not deny-listed: {out}")
        poll("the FleetLock slot to be released again", 60,
             lambda: self.server.lock_holders() == [])

    def later_check(self):
        before = len(self.server.events(self.machine))
        # 3: offered and refused (deny list); 0: the server, told of the rollback, no longer
        # offers it. Either way nothing is downloaded or written.
        rc, out = self.vm.cmd("updatectl check", timeout=300)
        expect(rc in (0, 3), f"updatectl check: expected 0 or 3 (not installed), got {rc}: {out}")
        events = self.server.events(self.machine)
        new = events[: len(events) - before] if events and len(events) > before else []
        expect(not any(e.get("event_type") == 13 for e in new),
               f"a download started again: {new}")
        rc, out = self.vm.cmd("ls /efi/loader/entries; . /etc/os-release; echo $VERSION_ID; "
                              "platte-vm-slot")
        expect(rc == 0 and "platte-a+0-1.conf" in out and "2.0.0" in out,
               f"state after the refused check: {out}")
        inst = self.server.instance(self.machine)
        expect(inst and inst.get("version") == "2.0.0", f"server view: {inst}")

    # -- scenario 3 --

    def ext_setup(self):
        """Builds the demo runtime's three builds for the booted OS, creates its app on the server
        and configures it for the agent (a runtime drop-in; scenarios 1 and 2 ran without)."""
        rc, out = self.vm.cmd(". /etc/os-release; echo \"os=$ID $VERSION_ID\"; "
                              "ls /efi/loader/entries | tr '\\n' ,; echo; platte-vm-slot")
        m = re.search(r"^os=(\S+) (\S+)\n(\S*)\n([AB])$", out, re.M)
        expect(rc == 0 and m, f"guest OS and slots: {out}")
        os_id, self.ext_os = m.group(1), m.group(2)
        self.os_before = (m.group(3), m.group(4))
        self.os_agent_before = self.os_fields(self.agent_status())
        # ext4 without a journal (mkfs.ext4 -d, no root or loop device needed): what systemd 252's
        # systemd-sysext merges from a raw image. extension-release.NAME must name the link
        # (NAME.raw), and its ID and VERSION_ID must be the booted OS's, as os.versions says.
        root = os.path.join(self.rundir, "ext")
        for i, (v, broken) in enumerate((("1.0.0", False), ("1.1.0", False), ("1.2.0", True))):
            tree = os.path.join(root, v)
            write_file(os.path.join(tree, "usr", "bin", EXT), demo_runtime(v, broken), 0o755)
            unit = os.path.join(tree, "usr", "lib", "systemd", "system", EXT_UNIT)
            write_file(unit, demo_unit(v), 0o644)
            # Later builds' unit files are newer, as real builds' are (mkfs.ext4 -d keeps
            # mtimes): systemd's NeedDaemonReload only says yes when the file on disk is newer
            # than the one it loaded, and these three are otherwise written in the same second.
            t = UNIT_MTIME + 3600 * i
            os.utime(unit, (t, t))
            write_file(os.path.join(tree, "usr", "lib", "extension-release.d",
                                    f"extension-release.{EXT}"),
                       f"ID={os_id}\nVERSION_ID={self.ext_os}\n", 0o644)
            img = os.path.join(root, f"{EXT}-{v}.raw")
            with open(img, "wb") as f:
                f.truncate(1 << 20)
            run(["mkfs.ext4", "-q", "-m", "0", "-O", "^has_journal", "-E", "nodiscard",
                 "-d", tree, img])
            out = os.path.join(self.rundir, f"{EXT}-{v}.payload")
            run([os.path.join(self.bin, "payload"), "build",
                 "--key", os.path.join(self.vmdir, "keys", "release.key"), "--app", EXT_APP,
                 "--version", v, "--kind", "file", "--arch", "amd64",
                 "--meta", f"os.versions={self.ext_os}", "--image", img, "--out", out])
            self.ext_releases[v] = out
        log(f"{EXT} 1.0.0, 1.1.0, 1.2.0 (exits 1), each with its {EXT_UNIT}, built for "
            f"{os_id} {self.ext_os}")
        self.server.cli("app", "create", EXT_APP, "Platte VM demo runtime")
        self.server.cli("channel", "create", EXT_APP, "stable")
        self.server.cli("group", "create", EXT_APP, "stable", "--channel", "stable")
        dropin = [
            "# VM test scenario 3 (tests/vm/run.py): the demo runtime extension.",
            f"[extensions.{EXT}]",
            f'app_id = "{{{EXT_APP}}}"',
            'group = "stable"',
            f'restart_units = ["{EXT_UNIT}"]',
            f'health_command = ["/usr/bin/{EXT}", "--health"]',
            "health_timeout_secs = 30",
            "restart_timeout_secs = 60",
        ]
        # Neither the program nor the unit exists before the extension brings them.
        rc, out = self.vm.cmd(
            f"test ! -e /usr/bin/{EXT} && "
            f"test \"$(systemctl show -P LoadState {EXT_UNIT})\" = not-found && "
            "printf '%s\\n' " + " ".join(shlex.quote(x) for x in dropin) +
            " > /run/platte/agent.d/60-vm-extension.toml && "
            "update-agent check-config >/dev/null && systemctl restart update-agent.service")
        expect(rc == 0, f"configuring the extension and restarting the agent: {out}")

    def ext_state(self):
        """The guest's view of the extension: link, merged extensions, the unit (the definition
        systemd loaded and whether it is stale), the running program's record, the kept images,
        and the agent's status (updatectl status --json)."""
        rc, out = self.vm.cmd(
            f"echo link=$(readlink /var/lib/extensions/{EXT}.raw); "
            "echo usr=$(systemd-sysext status --no-pager | awk '$1 == \"/usr\" {print $2}'); "
            "systemctl show -p LoadState -p FragmentPath -p Description -p Environment "
            f"-p NeedDaemonReload -p ActiveState -p InvocationID {EXT_UNIT}; "
            f"echo runtime=$(cat /run/{EXT}/state 2>/dev/null); "
            "echo images=$(ls /var/lib/platte/extensions)")
        expect(rc == 0, f"extension state: {out}")
        st = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        st["agent"] = self.agent_status()
        exts = {e[0]: e[1:] for e in st["agent"].get("extensions", [])}
        st["ext"] = exts.get(EXT)
        return st

    def agent_status(self):
        rc, out = self.vm.cmd("updatectl status --json")
        expect(rc == 0, f"updatectl status --json: {out}")
        try:
            return json.loads(out)
        except ValueError as e:
            raise Failed(f"updatectl status --json is not JSON ({e}): {out}") from e

    @staticmethod
    def os_fields(agent):
        """What the agent says of the OS: an extension must leave all of it alone."""
        return {k: agent.get(k) for k in ("current_version", "new_version", "booted_slot",
                                          "deny_list", "held_lock", "reboot_wait")}

    def ext_publish_and_check(self, version):
        pkg = self.server.cli_json("package", "publish", self.ext_releases[version])
        self.server.cli("channel", "set", EXT_APP, "stable", pkg["id"])
        # The OS app is up to date (0), or 3.0.0 is still offered and refused (3); the
        # extension is handled inside the same check, before it returns.
        rc, out = self.vm.cmd("updatectl check", timeout=300)
        expect(rc in (0, 3), f"updatectl check: expected 0 or 3, got {rc}: {out}")
        return self.ext_state()

    def expect_running(self, st, version):
        """`version` is linked and merged into /usr, systemd has loaded `version`'s unit file from
        the extension and it is not stale, and the unit's current invocation was started from
        that definition and runs `version`'s program."""
        expect(st.get("link", "").endswith(f"/{EXT}-{version}.raw"),
               f"{EXT}.raw links {st.get('link')!r}, not the {version} image")
        expect(EXT in st.get("usr", "").split(","),
               f"systemd-sysext status: /usr has {st.get('usr')!r}, not {EXT}")
        expect(st.get("LoadState") == "loaded"
               and st.get("FragmentPath", "").endswith(f"/lib/systemd/system/{EXT_UNIT}")
               and not st.get("FragmentPath", "").startswith("/etc/"),
               f"{EXT_UNIT} is not loaded from the extension: LoadState={st.get('LoadState')!r} "
               f"FragmentPath={st.get('FragmentPath')!r}")
        expect(st.get("Environment") == f"PLATTE_DEMO_UNIT={version}"
               and f"unit of build {version} " in st.get("Description", ""),
               f"systemd has loaded another build's {EXT_UNIT}, not {version}'s: "
               f"Environment={st.get('Environment')!r} Description={st.get('Description')!r}")
        expect(st.get("NeedDaemonReload") == "no",
               f"{EXT_UNIT}'s loaded definition is stale: NeedDaemonReload="
               f"{st.get('NeedDaemonReload')!r}")
        expect(st.get("ActiveState") == "active", f"{EXT_UNIT} is {st.get('ActiveState')!r}")
        want = f"version={version} unit={version} invocation={st.get('InvocationID')}"
        expect(st.get("runtime") == want,
               f"{EXT_UNIT}'s invocation {st.get('InvocationID')} does not run {version}'s unit "
               f"and program: {st.get('runtime')!r}, expected {want!r}")

    def ext_install(self):
        st = self.ext_publish_and_check("1.0.0")
        self.expect_running(st, "1.0.0")
        expect(st["ext"] and st["ext"][0] == "1.0.0" and st["ext"][1] == "active",
               f"agent's extension status: {st['ext']}")
        log(f"{EXT_UNIT}, new to systemd, loaded from {st['FragmentPath']} "
            f"({st['Environment']}) and started: running 1.0.0")
        self.ext_invocation = st["InvocationID"]

    def ext_update(self):
        st = self.ext_publish_and_check("1.1.0")
        self.expect_running(st, "1.1.0")
        expect(st["ext"] and st["ext"][0] == "1.1.0" and st["ext"][1] == "active",
               f"agent's extension status: {st['ext']}")
        expect(st["InvocationID"] != self.ext_invocation,
               f"{EXT_UNIT} was not restarted (invocation {st['InvocationID']} unchanged)")
        log(f"{EXT_UNIT} reloaded and restarted by systemd: invocation "
            f"{self.ext_invocation[:8]}… -> {st['InvocationID'][:8]}…, running 1.1.0's unit "
            f"({st['Environment']}, NeedDaemonReload={st['NeedDaemonReload']}) and program")
        self.ext_invocation = st["InvocationID"]
        inst = poll(f"the server to show {EXT} complete on 1.1.0", 60, lambda: (
            lambda i: i if i and i.get("status") == "complete" and i.get("version") == "1.1.0"
            else None)(self.server.instance(self.machine, EXT_APP)))
        log(f"server: {EXT} status={inst.get('status')} version={inst.get('version')}")

    def ext_rollback(self):
        os_inst = self.server.instance(self.machine)
        seen = max((e.get("id", 0) for e in self.server.events(self.machine, EXT_APP)), default=0)
        st = self.ext_publish_and_check("1.2.0")
        # The agent rolled back: 1.1.0 linked, merged, its unit file reloaded and running again
        # in a new invocation (restarted after the failed start), the failed image deleted.
        self.expect_running(st, "1.1.0")
        expect(st["InvocationID"] != self.ext_invocation,
               f"{EXT_UNIT} was not restarted by the rollback")
        self.ext_invocation = st["InvocationID"]
        expect(f"{EXT}-1.2.0.raw" not in st.get("images", ""),
               f"the failed image was kept: {st.get('images')}")
        expect(st["ext"] and st["ext"][0] == "1.1.0" and st["ext"][1].startswith("failed"),
               f"agent's extension status: {st['ext']}")
        # The failed start ran 1.2.0's program from 1.2.0's unit definition (the activation's
        # reload); the rollback's reload brought 1.1.0's back (expect_running above).
        rc, out = self.vm.cmd(f"journalctl -b --no-pager -o cat -u {EXT_UNIT} "
                              f"| grep -F '{EXT} 1.2.0 (unit 1.2.0):'")
        expect(rc == 0, f"the 1.2.0 program did not run under systemd from 1.2.0's unit: {out}")

        # The failure is reported on the extension's app, by the version it runs (1.1.0), with
        # code 3112 (restart failed) in the low bits; the instance shows the 1.2.0 grant failed.
        def failure():
            return next((e for e in self.server.events(self.machine, EXT_APP)
                         if e.get("id", 0) > seen and e.get("event_type") == 3
                         and e.get("event_result") == 0), None)
        ev = poll(f"the {EXT} 1.2.0 failure (3/0) on the server", 60, failure)
        expect((int(ev.get("error_code") or 0) & 0xFFFFFFF) == 3112, f"failure event: {ev}")
        inst = self.server.instance(self.machine, EXT_APP)
        expect(inst and inst.get("status") == "error" and inst.get("version") == "1.1.0"
               and inst.get("granted_version") == "1.2.0", f"server's {EXT} instance: {inst}")
        log(f"server: {EXT} event 3/0 code {ev.get('error_code')} (3112), instance "
            f"status={inst.get('status')} version={inst.get('version')} "
            f"granted={inst.get('granted_version')}")
        # The OS is untouched: same slot, same boot entries, nothing staged, same server view.
        rc, out = self.vm.cmd("ls /efi/loader/entries | tr '\\n' ,; echo; platte-vm-slot")
        expect(rc == 0 and tuple(out.split("\n")) == self.os_before,
               f"OS slots changed: before {self.os_before}, now {out!r}")
        agent = st["agent"]
        expect(self.os_fields(agent) == self.os_agent_before
               and agent.get("status") not in ("staged", "rebooting"),
               f"agent's OS status changed: {self.os_agent_before} -> {agent}")
        now = self.server.instance(self.machine)
        expect(now and os_inst and (now.get("version"), now.get("status")) ==
               (os_inst.get("version"), os_inst.get("status")),
               f"server's OS instance changed: {os_inst} -> {now}")

    def ext_later_check(self):
        # The channel still points at 1.2.0, but the server took the failure (3112: a build the
        # agent deny-lists) as a refusal and no longer offers it to this machine, and the agent
        # would refuse it anyway: a later check neither downloads it nor touches 1.1.0.
        apps = self.server.api(f"/instances/{self.machine}").get("apps", [])
        refused = [r for a in apps for r in a.get("refused_versions", [])
                   if r.get("app_id") == EXT_APP]
        expect([(r.get("version"), r.get("reason")) for r in refused] == [("1.2.0", "deny_listed")],
               f"server's refused {EXT} versions: {refused}")
        seen = max((e.get("id", 0) for e in self.server.events(self.machine, EXT_APP)), default=0)
        rc, out = self.vm.cmd("updatectl check", timeout=300)
        expect(rc in (0, 3), f"updatectl check: expected 0 or 3, got {rc}: {out}")
        st = self.ext_state()
        self.expect_running(st, "1.1.0")
        expect(st["InvocationID"] == self.ext_invocation,
               f"{EXT_UNIT} was restarted again ({self.ext_invocation} -> {st['InvocationID']})")
        new = [e for e in self.server.events(self.machine, EXT_APP) if e.get("id", 0) > seen]
        expect(not any(e.get("event_type") == 13 for e in new),
               f"a download of {EXT} started again: {new}")

    # -- driver --

    def diagnose(self):
        print("\n--- diagnostics", flush=True)
        if self.vm and self.vm.proc.poll() is None:
            try:
                self.vm.reset_channel()
                self.vm.cmd("platte-vm-slot; ls /efi/loader/entries; systemctl --failed --no-pager;"
                            " journalctl -b --no-pager -u update-agent -u update-agent-mark-good"
                            f" -u systemd-sysext -u {EXT_UNIT} | tail -n 60", timeout=30)
            except (Failed, OSError) as e:
                print(f"  (guest command channel: {e})")
        print("--- serial console (last 40 lines)")
        print(tail(os.path.join(self.rundir, "serial.log")))
        print("--- update-server log (last 30 lines)")
        print(tail(os.path.join(self.rundir, "server.log"), 30))

    def main(self):
        accel = None
        failed = True
        try:
            probe_tools()
            accel, why = probe_accel(self.args.accel)
            print(f"VM test: accelerator {accel} ({why})", flush=True)
            shutil.rmtree(self.rundir, ignore_errors=True)
            os.makedirs(self.rundir)
            p = self.phases
            if not self.args.no_build:
                p.run("build image", self.build)
            p.run("start update-server, create app/channel/group", self.start_server)
            p.run("build and sign payloads 2.0.0, 3.0.0 and a delta 1.0.0 -> 2.0.0",
                  self.build_payloads)
            p.run("start qemu", self.boot_vm, accel)
            p.run("S1: boot slot A (1.0.0), first check-in", self.boot_a)
            p.run("S1: publish 2.0.0 and its delta, updatectl check installs it into B",
                  self.update_to_b)
            p.run("S1: agent reboots via FleetLock+logind, B tried, mark-good", self.reboot_into_b)
            p.run("S1: server shows complete (by the delta), lock released", self.b_complete)
            p.run("S2: publish 3.0.0 (bad), installed into A", self.install_bad_into_a)
            p.run("S2: A tried once, health fails, fallback to B", self.fall_back)
            p.run("S2: rollback reported, 3.0.0 deny-listed", self.rollback_reported)
            p.run("S2: a later check does not reinstall 3.0.0", self.later_check)
            p.run(f"S3: build {EXT} 1.0.0-1.2.0, configure it, restart the agent",
                  self.ext_setup)
            p.run(f"S3: publish {EXT} 1.0.0, updatectl check activates it", self.ext_install)
            p.run(f"S3: publish 1.1.0: link, sysext merge, unit restarted, server complete",
                  self.ext_update)
            p.run("S3: publish 1.2.0 (exits 1): restart fails, rollback to 1.1.0, reported",
                  self.ext_rollback)
            p.run("S3: 1.2.0 refused for good: a later check leaves 1.1.0 running",
                  self.ext_later_check)
            print("\nVM TEST PASSED", flush=True)
            failed = False
            return 0
        except CannotRun as e:
            print(f"VM test cannot run here: {e}", flush=True)
            failed = False
            return SKIP
        except (Failed, subprocess.CalledProcessError, OSError, urllib.error.URLError) as e:
            print(f"\nVM TEST FAILED: {e}", flush=True)
            self.diagnose()
            return 1
        finally:
            if self.vm:
                self.vm.kill()
            if self.server:
                self.server.stop()
            self.phases.table()
            if self.args.keep or (failed and os.path.isdir(self.rundir)):
                print(f"kept {self.rundir} (serial.log, server.log, disk.qcow2)")
            elif os.path.isdir(self.rundir) and accel:
                shutil.rmtree(self.rundir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    args = ap.parse_args()
    t = Test(args)
    # SIGTERM (CI timeout) cleans up like a failure.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(t.main())


if __name__ == "__main__":
    main()

"""A disk made by :mod:`amic.targets.local.disk` booted under QEMU (``amic run --vm``:
:mod:`.vmrun`; ``amic up``: :mod:`.devvm`).

KVM when it can boot a stock kernel, else TCG (plain emulation). ``/dev/kvm``
alone is not enough: a host that only has ``kvm_pvm`` (a PVM hypervisor, as
on some nested cloud VMs) opens ``/dev/kvm`` but runs only PVM-built guest
kernels, so KVM counts as usable only with ``kvm_intel`` or ``kvm_amd``
loaded (``AMIC_QEMU_ACCEL=kvm|tcg`` overrides). The serial console is
streamed line by line; SSH is forwarded from a free loopback port; services
requested with ``--service`` travel as the SMBIOS type 11 string
``io.systemd.credential:amic.services=...`` that the boot hook reads
(``runtime/amic``: ``vm_requests``). Networking is QEMU's user mode, with
``restrict=on`` unless the caller allows the guest out. Shutdown is ACPI
power-off through QMP, then a kill if the guest does not stop in time.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from amic.errors import BuildError

KVM_SILENCE = 60.0
"""Seconds of an empty console under KVM after which the guest is taken as not booting:
SeaBIOS and GRUB write to the serial port within a second or two where KVM works."""


class VmBootError(BuildError):
    """The VM did not get to the boot hook's report (not a failed build: nothing was built)."""

    def render(self, command: str = "run") -> str:
        return f"amic: {command} failed: the VM did not boot: {self}"

BOOT_DONE = re.compile(r"amic: boot: (ok|failed)\s*$")
"""The boot hook's last line on the console (``runtime/amic``: ``do_boot``)."""
ANSI = re.compile(r"\x1b(\[[0-9;?=]*[A-Za-z]|[()][A-Z0-9]|[A-Za-z=>])")
OVMF_CANDIDATES = [("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
                   ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
                   ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd")]


LINE_MAX = 1 << 16
"""Bytes of console line amic keeps before it cuts the line (the guest writes what it wants)."""


def kvm_usable() -> bool:
    """True when QEMU can run a stock kernel with KVM here (see the module docstring)."""
    forced = os.environ.get("AMIC_QEMU_ACCEL", "")
    if forced in ("kvm", "tcg"):
        return forced == "kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    return any(Path("/sys/module", m).is_dir() for m in ("kvm_intel", "kvm_amd"))


TCG_CPU = "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16,+rdrand,-svm"
"""The emulated CPU: x86-64-v2 (what RHEL 9-class binaries need) plus RDRAND, without
what costs the emulation and gains a dev VM nothing.

RDRAND (which QEMU serves from the host's ``getrandom``) is what lets a guest with two
vCPUs boot every time. Without it the guest kernel seeds its CRNG by timing jitter,
~11 s into the boot under TCG; when that ends, the kernel patches its own code (the
``crng_is_ready`` static key, also inside ``getrandom``) while userspace is calling
``getrandom`` on both vCPUs, and now and then both vCPUs stayed at that very instruction
for good (one boot in ~25: systemd and udevd in soft lockup at
``__x64_sys_getrandom+0x73``, every NMI backtrace at the same address: a stale
translation of patched code that QEMU 7.2's multi-threaded TCG kept running). With
RDRAND, Debian's kernel (which trusts the CPU's generator) has its CRNG ready at 0.06 s,
before the second vCPU is brought up and before any user process exists; no seconds of
jitter either.

``max`` offered AVX2 (glibc's string functions then run as emulated 256-bit vector
code), 5-level paging (a longer page walk on every TLB miss) and SVM: the guest loaded
kvm_amd at boot and at power-off made every vCPU leave "hardware virtualisation" through
a cross-CPU call, where a two-vCPU guest hung too ("No irq handler for vector" on CPU
1). AMD's vendor string (qemu64's) keeps the guest kernel from page-table isolation,
which a Meltdown-affected Intel model would get (a TLB flush per system call under
TCG)."""


def accel_args(kvm: bool | None = None) -> list[str]:
    if kvm if kvm is not None else kvm_usable():
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi", "-cpu", TCG_CPU]


def ovmf() -> tuple[Path, Path]:
    """(firmware code, variable store template) of OVMF, for UEFI boots."""
    for code, vars_ in OVMF_CANDIDATES:
        if Path(code).is_file() and Path(vars_).is_file():
            return Path(code), Path(vars_)
    raise BuildError("UEFI boot needs OVMF (apt-get install ovmf)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean(line: str) -> str:
    return ANSI.sub("", line).replace("\r", "").rstrip()


class QemuVm:
    """One QEMU process booting ``disk`` (qcow2 or raw); files it needs live in ``workdir``."""

    def __init__(self, disk: Path, workdir: Path, *, uefi: bool = False,
                 services: Sequence[str] = (), restrict: bool = True, memory: int = 1024,
                 cpus: int | None = None, kvm: bool | None = None,
                 snapshot: bool = False, forwards: Sequence[tuple[int, int]] = (),
                 shares: Sequence[tuple[str, Path]] = (),
                 credentials: Sequence[tuple[str, str]] = (),
                 credential_files: Sequence[Path] = (), direct=None) -> None:
        self.disk, self.workdir, self.uefi = disk, workdir, uefi
        self.direct = direct
        """A :class:`amic.targets.local.kernelboot.DirectBoot` (QEMU loads the kernel, no
        GRUB), or None: the disk boots by itself."""
        self.services, self.restrict = list(services), restrict
        self.kvm = kvm_usable() if kvm is None else kvm
        # Two vCPUs under TCG too, since RDRAND (TCG_CPU) ended the hang two had.
        self.memory, self.snapshot = memory, snapshot
        self.cpus = cpus or 2
        self.ssh_port = free_port()
        self.forwards, self.credentials = list(forwards), list(credentials)
        self.credential_files = list(credential_files)
        """SMBIOS strings QEMU reads from files (secrets stay off its command line)."""
        self.shares = list(shares)
        """(virtiofs tag, virtiofsd's vhost-user socket) per shared folder."""
        self.qmp_path = workdir / "qmp.sock"
        self.proc: subprocess.Popen | None = None
        self.console: list[str] = []
        self.boot_result: str | None = None
        self.started = 0.0
        self.boot_seconds: float | None = None
        self.changed = threading.Condition()
        self.reader_done = False

    def argv(self) -> list[str]:
        fmt = "qcow2" if self.disk.suffix == ".qcow2" else "raw"
        net = f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"
        for host, guest in self.forwards:       # loopback only, as the SSH port
            net += f",hostfwd=tcp:127.0.0.1:{host}-:{guest}"
        if self.restrict:
            net += ",restrict=on"
        # romfile= (empty): no iPXE option ROM for the firmware to load and run; the disk
        # is what boots.
        argv = ["qemu-system-x86_64", *accel_args(self.kvm), "-m", str(self.memory),
                "-smp", str(self.cpus), "-display", "none", "-monitor", "none",
                "-serial", "stdio", "-no-reboot",
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
                *self.drive_args(fmt),
                "-netdev", net, "-device", "virtio-net-pci,netdev=n0,romfile="]
        if self.direct is not None:
            argv += self.direct.qemu_args()
        if self.uefi:
            code, vars_ = ovmf()
            local_vars = self.workdir / "OVMF_VARS.fd"
            if not local_vars.exists():
                shutil.copyfile(vars_, local_vars)
            argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={code}",
                     "-drive", f"if=pflash,format=raw,file={local_vars}"]
        if self.shares:     # vhost-user needs the guest's RAM shared with virtiofsd
            argv += ["-object", f"memory-backend-memfd,id=mem,size={self.memory}M,share=on",
                     "-numa", "node,memdev=mem"]
            for n, (tag, sock) in enumerate(self.shares):
                argv += ["-chardev", f"socket,id=fs{n},path={sock}",
                         "-device", f"vhost-user-fs-pci,chardev=fs{n},tag={tag}"]
        credentials = list(self.credentials)
        if self.services:
            credentials.insert(0, ("amic.services", " ".join(self.services)))
        for name, value in credentials:
            argv += ["-smbios", f"type=11,value=io.systemd.credential:{name}={value}"]
        for path in self.credential_files:
            argv += ["-smbios", f"type=11,path={path}"]
        return argv

    def drive_args(self, fmt: str) -> list[str]:
        """The disk: virtio-blk, or NVMe for a kernel booted without initramfs (its NVMe
        driver is built in, virtio-blk is a module: :mod:`.kernelboot`)."""
        drive = f"file={self.disk},format={fmt}" + (",snapshot=on" if self.snapshot else "")
        if self.direct is not None and self.direct.nvme:
            return ["-drive", f"{drive},if=none,id=disk0",
                    "-device", "nvme,drive=disk0,serial=amic-root"]
        return ["-drive", f"{drive},if=virtio"]

    def start(self, on_output: Callable[[str], None] | None = None, *,
              detach: bool = False) -> None:
        """Start QEMU; a thread reads the console. ``detach``: QEMU survives amic (``--keep``):
        its own session, console into ``workdir/console.log``."""
        if shutil.which("qemu-system-x86_64") is None:
            raise BuildError("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
        self.started = time.monotonic()
        if detach:
            from amic.targets.local.vmfiles import create_fresh

            log = create_fresh(self.workdir / "console.log")     # never through a link
            try:
                self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)
            finally:
                os.close(log)
            with open(create_fresh(self.workdir / "qemu.pid"), "w") as fh:
                fh.write(f"{self.proc.pid}\n")
            threading.Thread(target=self.follow_log, args=(on_output,), daemon=True).start()
            return
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=self.read_console, args=(self.proc.stdout, on_output),
                         daemon=True).start()

    def follow_log(self, on_output) -> None:
        from amic.targets.local.vmfiles import open_regular

        with open(open_regular(self.workdir / "console.log", os.O_RDONLY), "rb") as fh:
            self.read_console(fh, on_output, follow=True)

    def read_console(self, stream, on_output, *, follow: bool = False) -> None:
        buf = b""
        while True:
            chunk = stream.readline(LINE_MAX)
            if not chunk:
                if follow and self.proc and self.proc.poll() is None:
                    time.sleep(0.2)
                    continue
                break
            buf += chunk
            if not buf.endswith(b"\n") and len(buf) < LINE_MAX:   # a guest's endless line
                continue                                         # is cut, never hoarded
            line = clean(buf.decode(errors="replace"))
            buf = b""
            self.note(line, on_output)
        with self.changed:
            self.reader_done = True
            self.changed.notify_all()

    def note(self, line: str, on_output) -> None:
        with self.changed:
            self.console.append(line)
            m = BOOT_DONE.search(line)
            if m and self.boot_result is None:
                self.boot_result = m.group(1)
                self.boot_seconds = time.monotonic() - self.started
            self.changed.notify_all()
        if on_output and line.strip():
            on_output(line)

    def wait_boot(self, timeout: float) -> str:
        """Wait for the boot hook's last line; return ``ok`` or ``failed``."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while self.boot_result is None:
                if self.proc is None or self.proc.poll() is not None:
                    settle = time.monotonic() + 3       # the reader's last lines: QEMU's error
                    while not self.reader_done and time.monotonic() < settle:
                        self.changed.wait(0.2)
                    if self.boot_result is not None:
                        break
                    raise self.boot_error("QEMU stopped before the boot hook reported")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.boot_error(f"the boot hook did not report within {timeout:.0f}s")
                if (self.kvm and not any(self.console)
                        and time.monotonic() - self.started > KVM_SILENCE):
                    raise self.boot_error(f"nothing on the serial console for {KVM_SILENCE:.0f}s "
                                          "under KVM")
                self.changed.wait(min(left, 1.0))
            return self.boot_result

    def boot_error(self, what: str) -> VmBootError:
        """``what`` happened, with the console's tail and, under KVM, the hint to use TCG."""
        tail = [line for line in self.console if line.strip()][-25:]
        text = what + (":\n" + "\n".join(tail) if tail else " (the console stayed empty)")
        if self.kvm:
            text += ("\nhint: this host's KVM may not run a stock kernel (a PVM-only kvm, or "
                     "nested virtualisation off); boot with emulation: AMIC_QEMU_ACCEL=tcg")
        return VmBootError(text)

    def qmp(self, command: str) -> None:
        from amic.targets.local import qmp

        qmp.execute(self.qmp_path, command)

    def stop(self, timeout: float = 60) -> int | None:
        """ACPI power-off, then SIGKILL after ``timeout``; return QEMU's exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.qmp("system_powerdown")
                self.proc.wait(timeout=timeout)
            except (OSError, BuildError, subprocess.TimeoutExpired):
                self.kill()
            except BaseException:       # a second Ctrl-C: do not wait for the guest
                self.kill()
                raise
        return self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


def ssh_run(port: int, key: Path, command: str, *, timeout: float = 120,
            host_key: tuple[str, str] | None = None) -> tuple[int, str]:
    """Run ``command`` as root on the VM over the forwarded port; (exit status, output).
    ``host_key`` (type, base64 blob): the only key the VM may show (vmhostkey); None: any
    (a disk amic did not key)."""
    import paramiko

    client = paramiko.SSHClient()
    if host_key is None:
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    else:
        kind, blob = host_key
        client.get_host_keys().add(f"[127.0.0.1]:{port}", kind,
                                   paramiko.PKey.from_type_string(kind, base64.b64decode(blob)))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.connect("127.0.0.1", port, username="root", key_filename=str(key),
                           timeout=15, banner_timeout=30, auth_timeout=30,
                           allow_agent=False, look_for_keys=False)
            break
        except (paramiko.AuthenticationException, paramiko.BadHostKeyException):
            raise           # sshd answered: waiting would not change its key nor its mind
        except (OSError, paramiko.SSHException):
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
    try:
        _, out, _ = client.exec_command(command + " 2>&1", timeout=timeout)
        text = out.read().decode(errors="replace")
        return out.channel.recv_exit_status(), text
    finally:
        client.close()


def vm_key(store) -> Path:
    """The store's SSH key for ``amic run --vm`` (made once; authorised on its disks)."""
    key = store.root / "vm" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "amic-run-vm",
                        "-f", str(key)], check=True, stdin=subprocess.DEVNULL)
    return key


def cached_disk(target, image, *, log=None, kernel_into: Path | None = None):
    """A qcow2 of ``image`` (with the VM layer) authorised for :func:`vm_key`, made once.

    Made in the store's ``tmp/`` (prune finds it after a kill -9) and renamed into ``vm/``
    when complete; the VM layer is use-locked meanwhile (prune keeps it). ``kernel_into``
    (a VM's directory): returns (disk, DirectBoot or None) instead, the VM layer's kernel
    and initramfs copied there for a boot without GRUB (:mod:`.kernelboot`; None, and
    why logged, when they cannot be taken safely)."""
    from amic.fsutil import file_lock
    from amic.targets.local import disk

    key = vm_key(target.store)
    direct = None
    with disk.vm_layer_in_use(target, image, log=log) as vm_image:
        if kernel_into is not None:
            direct = direct_boot(target.store, vm_image, kernel_into, log=log)
        out = target.store.root / "vm" / f"{vm_image.id[:12]}.qcow2"
        with file_lock(out.with_suffix(".lock")):
            if not out.exists():
                with target.store.scratch("vm-disk-") as scratch:
                    disk.write_disk(target.store, vm_image, scratch / "disk.qcow2", fmt="qcow2",
                                    authorized_key=key.with_suffix(".pub"), devvm=True)
                    os.rename(scratch / "disk.qcow2", out)
    return out if kernel_into is None else (out, direct)


def direct_boot(store, vm_image, workdir: Path, *, log=None):
    """The VM layer's kernel for a fresh disk of ``vm_image`` (:mod:`.kernelboot`), or None."""
    from amic.targets.local import kernelboot
    from amic.targets.local.disk import ROOT_LABEL

    try:
        return kernelboot.extract(store.lowers(vm_image.id), workdir, ROOT_LABEL)
    except kernelboot.Unusable as exc:
        if log:
            log(f"booting through the disk's GRUB (the image's kernel is not loaded "
                f"directly: {exc})")
        return None


def overlay_of(base: Path | str, overlay: Path) -> None:
    """A qcow2 ``overlay`` whose reads fall through to ``base`` (never written; a ``json:``
    name from :func:`amic.targets.local.vmdisks.self_contained` is a qcow2)."""
    fmt = "qcow2" if str(base).endswith(".qcow2") or str(base).startswith("json:") else "raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(base),
                    str(overlay)], check=True)


def powering_off(vm: QemuVm, log, timeout: float = 60) -> None:
    """Ctrl-C while a VM runs: say so, power it off (ACPI); a second Ctrl-C kills it."""
    log("interrupted: powering the VM off (ACPI; press Ctrl-C again to force it off)")
    try:
        vm.stop(timeout)
    except KeyboardInterrupt:
        log("forced off")
        raise

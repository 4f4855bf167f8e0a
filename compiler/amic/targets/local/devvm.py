"""``amic up``, ``stop``, ``rm``, ``logs``, ``ssh``: a named, per-project dev VM that stays up.

``up`` boots the image's cached disk (:func:`amic.targets.local.vm.cached_disk`) under a
qcow2 overlay of the VM's own, in the background (QEMU in a session of its own, the
console into ``console.log``), and returns once the boot hook reported. A stopped VM
booted again keeps its overlay: what was installed or written inside is still there
(``amic rm`` starts afresh). The registry is :mod:`amic.targets.local.machines`.

Port forwards are QEMU user networking ``hostfwd`` rules bound to 127.0.0.1, with
``restrict=on`` kept: the guest reaches nothing outside. Shared folders are virtiofs
(``virtiofsd``, one per folder, and a vhost-user-fs device): the VM layer's kernel
(Debian's cloud kernel) has virtiofs but not 9p, and virtiofs gives the guest the host's
permission semantics with no per-file metadata of its own (9p's ``mapped-xattr`` would
store the guest's owners in xattrs). The guest mounts them before the boot hook
(``amic-mounts.service`` in ``scripts/vm-layer.sh``), from the SMBIOS credential
``amic.mounts``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from amic.errors import AmicError, BuildError, UsageError
from amic.diagnostics import escape_controls
from amic.targets.local import machines, vmfiles, vmhostkey
from amic.targets.local.machines import VmRecord

GUEST_PATH = re.compile(r"(/[A-Za-z0-9._+-]+)+")
"""Matched whole (``fullmatch``: a trailing newline is not a path character)."""
VIRTIOFSD = ("virtiofsd", "/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd")


def parse_forward(text: str) -> tuple[int, int]:
    """``HOST:GUEST`` (or ``PORT`` for both) as two TCP ports."""
    parts = text.split(":")
    try:
        ports = [int(p) for p in parts]
    except ValueError:
        ports = []
    if len(ports) not in (1, 2) or not all(0 < p < 65536 for p in ports):
        raise UsageError(f"-p {text!r}: expected HOST:GUEST, two TCP ports (e.g. 8080:80)")
    return ports[0], ports[-1]


def parse_mount(text: str) -> tuple[Path, str]:
    """``DIR[:GUEST]``: an existing host directory and an absolute guest path (default
    ``/mnt/<DIR's name>``)."""
    host, _, guest = text.partition(":")
    if not host:
        raise UsageError(f"--mount {text!r}: name the host directory (e.g. --mount .:/srv)")
    if not host.isprintable() or "," in host or "\\" in host:
        # virtiofsd's -o source= splits on commas: "a,source=/etc" would share /etc
        raise UsageError(f"--mount {text!r}: a host path with control characters, ',' or "
                         "'\\' cannot be shared (virtiofsd's options split on ','): rename it")
    named = Path(host).expanduser()
    if named.is_symlink():
        raise UsageError(f"--mount {text!r}: {escape_controls(host)} is a symbolic link; amic "
                         "shares only a directory named as itself (name what it points to)")
    path = named.resolve()
    if not path.is_dir():
        raise UsageError(f"--mount {text!r}: {escape_controls(host)} is not a directory")
    if path != Path(os.path.abspath(named)):     # a link in between (./data -> /etc)
        raise UsageError(f"--mount {text!r}: {escape_controls(host)} reaches "
                         f"{escape_controls(str(path))} through a symbolic link; name that "
                         "directory itself if it is the one to share")
    if not str(path).isprintable() or "," in str(path) or "\\" in str(path):
        raise UsageError(f"--mount {text!r}: its real path {str(path)!r} has control "
                         "characters, ',' or '\\', which virtiofsd cannot be given")
    guest = guest or f"/mnt/{path.name or 'host'}"
    if not GUEST_PATH.fullmatch(guest) or ".." in guest.split("/"):
        raise UsageError(f"--mount {text!r}: the guest path must be absolute, of letters, "
                         "digits and . _ + - (no spaces)")
    return path, guest


def check_forwards(forwards: Sequence[tuple[int, int]]) -> None:
    """Each host port once, and free on 127.0.0.1 now (QEMU's own error would be vaguer)."""
    hosts = [h for h, _ in forwards]
    for port in set(hosts):
        if hosts.count(port) > 1:
            raise UsageError(f"-p: host port {port} given twice")
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                raise UsageError(f"-p: host port {port} on 127.0.0.1 is taken ({exc.strerror})")


def up(target, image, *, name: str, project, forwards: Sequence[tuple[int, int]] = (),
       mounts: Sequence[tuple[Path, str]] = (), memory: int = 1024, cpus: int | None = None,
       services: Sequence[str] = (), timeout: float = 900, log=print,
       on_output=None) -> tuple[VmRecord, float]:
    """Boot VM ``name`` of ``project`` from ``image`` (or its existing overlay, when it was
    stopped); return its record and power-on → boot hook seconds once the hook reported.
    Ctrl-C powers the VM off (a second one kills it); a VM that does not boot is killed
    and stays registered as exited (``amic logs``/``amic rm``)."""
    from amic.targets.local import vm as qemu

    store = target.store
    check_forwards(forwards)
    with machines.locked(store, name) as vdir:
        old = machines.load(store, name)
        if old is not None and machines.running(store, old):
            raise UsageError(f"VM {name!r} is already running (amic ssh {name}; amic stop {name})")
        if old is not None and old.project_id != project.id:
            raise UsageError(f"VM {name!r} belongs to project {old.project or old.project_id}: "
                             f"choose another --name, or `amic rm {name}` first")
        overlay = vdir / "disk.qcow2"
        base, image_id, direct, fresh = vm_disk(target, image, old, overlay, log=log)
        (vdir / "qmp.sock").unlink(missing_ok=True)
        key = qemu.vm_key(store)
        helpers, shares = start_virtiofsd(vdir, [host for host, _ in mounts])
        tags = " ".join(f"{tag}={guest}" for (tag, _), (_, guest) in zip(shares, mounts))
        secrets = vmhostkey.make(vdir, name) if fresh else []   # the first boot takes it
        vm = qemu.QemuVm(overlay, vdir, memory=memory, cpus=cpus, services=services,
                         forwards=forwards, shares=shares,
                         credentials=[("amic.mounts", tags)] if tags else [],
                         credential_files=secrets, direct=direct)
        record = VmRecord(name=name, project=project.name, project_id=project.id,
                          image=image_id, base=str(base), ssh_port=vm.ssh_port, key=str(key),
                          forwards=tuple(forwards),
                          mounts=tuple((str(h), g) for h, g in mounts), memory=memory,
                          cpus=vm.cpus, accel="kvm" if vm.kvm else "tcg",
                          helpers=tuple(helpers))
        machines.save(store, record)
        say = stage_logger(store, name, log)
        say(f"booting {name} ({image_id[:12]}) under QEMU "
            f"({'KVM' if vm.kvm else 'TCG emulation'}, {memory} MiB, {vm.cpus} vCPU)")
        try:
            vm.start(on_output, detach=True)
            record = attrs.evolve(record, pid=vm.proc.pid, started=time.time())
            machines.save(store, record)
            result = vm.wait_boot(timeout)
        except qemu.VmBootError as exc:
            vm.kill()
            end_helpers(store, record)
            machines.append_log(store, name, f"did not boot: {exc}")
            raise qemu.VmBootError(f"{exc}\n(amic logs {name}: the whole console; "
                                   f"amic rm {name} removes it)") from None
        except KeyboardInterrupt:
            machines.append_log(store, name, "interrupted: powering off")
            qemu.powering_off(vm, log)
            end_helpers(store, record)
            raise
        except BaseException:
            vm.kill()
            end_helpers(store, record)
            raise
        finally:    # QEMU read them at power-on (not always before Popen returned)
            vmhostkey.forget(vdir)
        if direct is not None:
            direct.remove()
        record = attrs.evolve(record, booted=time.time(), boot_result=result)
        machines.save(store, record)
        say(f"boot hook {result} after {vm.boot_seconds:.1f}s")
        return record, vm.boot_seconds


def vm_disk(target, image, old: VmRecord | None, overlay: Path, *, log):
    """(base disk, image id, DirectBoot or None, fresh) for the VM whose overlay is
    ``overlay``: a stopped VM starts again on its own disk (and its GRUB: its kernel may
    have been upgraded, and its own host key); else a fresh overlay of the image's disk."""
    from amic.targets.local import vm as qemu

    if overlay.is_symlink() or (overlay.exists() and not overlay.is_file()):
        raise vmfiles.refused(overlay, "not a regular file")
    if old is not None and overlay.exists() and Path(old.base).exists():
        log(f"starting {old.name} again on its own disk (image {old.image[:12]}; "
            f"`amic rm {old.name}` to start from a newer image)")
        return Path(old.base), old.image, None, False
    overlay.parent.mkdir(parents=True, exist_ok=True)
    base, direct = qemu.cached_disk(target, image, log=log, kernel_into=overlay.parent)
    overlay.unlink(missing_ok=True)
    qemu.overlay_of(base, overlay)
    return base, image.id, direct, True


def stage_logger(store, name: str, log):
    def say(line: str) -> None:
        machines.append_log(store, name, line)
        log(line)
    return say


def start_virtiofsd(vdir: Path, folders: Sequence[Path]) -> tuple[list[int], list[tuple[str, Path]]]:
    """A virtiofsd per folder, serving it on ``vdir/fsN.sock``; (pids, (tag, socket))."""
    if not folders:
        return [], []
    exe = next((p for p in map(shutil.which, VIRTIOFSD) if p), None)
    if exe is None:
        raise BuildError("--mount needs virtiofsd (apt-get install qemu-system-common, or the "
                         "virtiofsd package)")
    pids, shares = [], []
    for n, folder in enumerate(folders):
        sock = vdir / f"fs{n}.sock"
        sock.unlink(missing_ok=True)
        with open(vmfiles.create_fresh(vdir / f"virtiofsd{n}.log"), "wb") as out:
            proc = subprocess.Popen([exe, f"--socket-path={sock}", "-o", f"source={folder}",
                                     "-o", "cache=auto"], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        pids.append(proc.pid)
        deadline = time.monotonic() + 10
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                text = "".join(vmfiles.chunks(vdir / f"virtiofsd{n}.log"))[-2000:]
                raise BuildError(f"virtiofsd for {folder} did not start:\n{text}")
            time.sleep(0.05)
        shares.append((f"amic{n}", sock))
    return pids, shares


def end_helpers(store, record: VmRecord) -> None:
    """virtiofsd ends when QEMU does; a helper left over (QEMU killed early) is ended here
    (only a process that is still the VM's: its command line names the VM's directory)."""
    for pid in record.helpers:
        machines.signal_vm(store, record.name, pid, signal.SIGTERM, helper=True)


def find(store, name: str) -> VmRecord:
    record = machines.load(store, name)
    if record is None:
        known = ", ".join(machines.names(store)) or "none"
        raise UsageError(f"no VM named {name!r} (VMs: {known}; `amic ps` lists them)")
    return record


def stop(store, name: str, *, timeout: float = 60, log=print) -> str:
    """ACPI power-off through QMP; SIGKILL when the guest is not off after ``timeout``.
    Returns what happened (``powered off``, ``forced off``, ``was not running``)."""
    from amic.targets.local import qmp

    with machines.locked(store, name):
        record = find(store, name)
        if not machines.running(store, record):
            end_helpers(store, record)
            return "was not running"
        machines.append_log(store, name, "stop: ACPI power-off (system_powerdown)")
        log(f"powering {name} off (ACPI; forced after {timeout:.0f}s)")
        try:
            qmp.execute(machines.vm_dir(store, name) / "qmp.sock", "system_powerdown")
        except (OSError, AmicError) as exc:    # gone, or a link/file planted as qmp.sock
            log(f"QMP did not answer ({exc}): forcing it off")
        else:
            if wait_gone(store, record, timeout):
                end_helpers(store, record)
                machines.append_log(store, name, "stop: powered off")
                return "powered off"
        machines.signal_vm(store, name, record.pid, signal.SIGKILL)
        wait_gone(store, record, 10)
        end_helpers(store, record)
        machines.append_log(store, name, f"stop: forced off after {timeout:.0f}s")
        return "forced off"


def wait_gone(store, record: VmRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while machines.running(store, record):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def remove(store, name: str, *, force: bool = False, log=print) -> None:
    """Remove a stopped VM's directory (its overlay and logs); ``force``: stop it first."""
    vdir = machines.vm_dir(store, name)
    if vdir.is_symlink():       # a link planted as the VM's directory: it goes, its target stays
        with machines.lock_only(store, name):
            if vdir.is_symlink():
                vdir.unlink()
        return
    try:
        record = find(store, name)
    except machines.DamagedRecord:      # no pid to trust: is any process its QEMU?
        with machines.locked(store, name) as vdir:
            if machines.qemu_pids(store, name):
                raise UsageError(f"VM {name!r} has a damaged record and its QEMU still runs "
                                 f"(pids {machines.qemu_pids(store, name)}): end it first")
            shutil.rmtree(vdir)
        return
    if machines.running(store, record):
        if not force:
            raise UsageError(f"VM {name!r} is running: `amic stop {name}` first (or rm --force)")
        stop(store, name, timeout=0.1, log=log)
    with machines.locked(store, name) as vdir:
        if vmfiles.real_dir(vdir):
            shutil.rmtree(vdir)


def ssh_argv(store, record: VmRecord, command: Sequence[str] = ()) -> list[str]:
    """The ``ssh`` command line into the VM as root, checking the host key amic gave it
    (:mod:`.vmhostkey`)."""
    return ["ssh", "-i", record.key, "-p", str(record.ssh_port), "-o", "IdentitiesOnly=yes",
            *vmhostkey.ssh_options(machines.vm_dir(store, record.name), record.name),
            "-o", "LogLevel=ERROR", "root@127.0.0.1", *command]


def follow(path: Path, alive, *, poll: float = 0.3) -> Iterator[str]:
    """The text appended to ``path`` while ``alive()``; then the rest, and the end (a link or
    special file there is refused: :mod:`.vmfiles`)."""
    with vmfiles.open_log(path) as fh:
        while True:
            chunk = fh.read(vmfiles.CHUNK)
            if chunk:
                yield chunk
            elif not alive():
                while rest := fh.read(vmfiles.CHUNK):
                    yield rest
                return
            else:
                time.sleep(poll)

"""The registry of dev VMs (``amic up``): one directory per VM under the local store.

``<store>/vms/<name>/`` holds ``vm.json`` (the record below, written atomically), the
VM's qcow2 overlay ``disk.qcow2`` over the image's cached disk (``vm/``), ``console.log``
(the serial console), ``boot.log`` (amic's own lines: stages, timings, errors), QEMU's
QMP socket ``qmp.sock`` and virtiofsd's sockets. ``<store>/vms/<name>.lock`` is held by
whoever changes a VM (``up``, ``stop``, ``rm``); it lies beside the directory so ``rm``
can remove the directory while it holds the lock.

A VM is *running* when the pid in its record is alive and that process's command line
names the VM's directory (so a reused pid of a dead VM is not taken for it): a VM whose
QEMU died, was killed or powered itself off shows as exited, and ``rm`` cleans it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import attrs

from amic.errors import UsageError
from amic.fsutil import LockBusy, file_lock, write_atomic
from amic.targets.local import vmfiles

NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
"""A VM's name (matched whole: ``fullmatch``, so no trailing newline slips through)."""


@attrs.frozen
class VmRecord:
    """What ``amic up`` started, as ``vm.json`` keeps it."""

    name: str
    project: str | None
    """The project's readable name (``amic:name``)."""
    project_id: str | None
    image: str
    """The image id the VM's disk was made from (an exported .qcow2's path for a file)."""
    base: str
    """The disk under the overlay (never written)."""
    ssh_port: int
    key: str
    """The private key authorised for root on the disk."""
    forwards: tuple[tuple[int, int], ...] = ()
    mounts: tuple[tuple[str, str], ...] = ()
    """(host directory, guest directory) per shared folder."""
    memory: int = 1024
    cpus: int = 1
    accel: str = "tcg"
    pid: int | None = None
    helpers: tuple[int, ...] = ()
    """virtiofsd's pids (they end with QEMU; stop makes sure)."""
    started: float | None = None
    """Power-on, seconds since the epoch."""
    booted: float | None = None
    """When the boot hook reported (None: not yet, or it never did)."""
    boot_result: str | None = None


def root(store) -> Path:
    return store.root / "vms"


class DamagedRecord(UsageError):
    """A VM's ``vm.json`` that is not a record amic wrote (``amic rm`` still removes it)."""


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise UsageError(f"VM name {name!r}: use lowercase letters, digits, '.', '_' and '-' "
                         "(at most 63, starting with a letter or digit)")
    return name


def vm_dir(store, name: str) -> Path:
    return root(store) / check_name(name)


@contextlib.contextmanager
def locked(store, name: str) -> Iterator[Path]:
    """Hold VM ``name``'s lock (another ``up``/``stop``/``rm`` of it is refused, not waited
    for); yields its directory (maybe not there yet)."""
    path = vm_dir(store, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with file_lock(path.parent / f"{name}.lock", wait=False):
            vmfiles.real_dir(path)
            yield path
    except LockBusy:
        raise UsageError(f"VM {name!r} is being started, stopped or removed by another amic")


@contextlib.contextmanager
def lock_only(store, name: str) -> Iterator[None]:
    """VM ``name``'s lock, whatever its directory is (``rm`` of a planted link)."""
    path = vm_dir(store, name)
    try:
        with file_lock(path.parent / f"{name}.lock", wait=False):
            yield
    except LockBusy:
        raise UsageError(f"VM {name!r} is being started, stopped or removed by another amic")


def load(store, name: str) -> VmRecord | None:
    """VM ``name``'s record (None: there is none); :class:`DamagedRecord` when its
    ``vm.json`` is not one amic wrote, and UsageError when the directory or the file is a
    link or a special file (neither is followed or read)."""
    path = vm_dir(store, name)
    if not vmfiles.real_dir(path):
        return None
    try:
        raw = vmfiles.read_record(path / "vm.json")
        if raw is None:
            return None
        return decode(name, json.loads(raw))
    except DamagedRecord:
        raise
    except UsageError as exc:           # a link, FIFO or device as vm.json: never read
        raise DamagedRecord(f"{exc}") from None
    except (ValueError, TypeError, RecursionError) as exc:
        raise DamagedRecord(f"VM {name!r}: its record {vmfiles.shown(path / 'vm.json')} is "
                            f"damaged ({str(exc)[:200]}); `amic rm {name}` removes the VM"
                            ) from None


def _port(value) -> int:
    if type(value) is not int or not 0 < value < 65536:
        raise ValueError("a port that is not one")
    return value


def _text(value, what: str, *, none: bool = False) -> str | None:
    if value is None and none:
        return None
    if not isinstance(value, str) or len(value) > 4096:
        raise ValueError(f"{what} is not a string")
    return value


def _number(value, what: str) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float) or value != value:
        raise ValueError(f"{what} is not a number")
    return float(value)


def _whole(value, what: str, *, none: bool = False) -> int | None:
    if value is None and none:
        return None
    if type(value) is not int or value <= 0:
        raise ValueError(f"{what} is not a whole number above 0")
    return value


def decode(name: str, data) -> VmRecord:
    """A record from ``vm.json``'s JSON, every field checked for its type (ValueError); its
    name is the directory's, whatever the file says."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    pairs = data.get("forwards", [])
    mounts = data.get("mounts", [])
    helpers = data.get("helpers", [])
    if not all(isinstance(x, list) for x in (pairs, mounts, helpers)) or any(
            not isinstance(p, list) or len(p) != 2 for p in [*pairs, *mounts]):
        raise ValueError("forwards, mounts or helpers are not lists of pairs")
    return VmRecord(
        name=name, project=_text(data.get("project"), "project", none=True),
        project_id=_text(data.get("project_id"), "project_id", none=True),
        image=_text(data.get("image"), "image"), base=_text(data.get("base"), "base"),
        ssh_port=_port(data.get("ssh_port")), key=_text(data.get("key"), "key"),
        forwards=tuple((_port(h), _port(g)) for h, g in pairs),
        mounts=tuple((_text(h, "a mount"), _text(g, "a mount")) for h, g in mounts),
        memory=_whole(data.get("memory", 1024), "memory"),
        cpus=_whole(data.get("cpus", 1), "cpus"), accel=_text(data.get("accel", "tcg"), "accel"),
        pid=_whole(data.get("pid"), "pid", none=True),
        helpers=tuple(_whole(p, "a helper pid") for p in helpers),
        started=_number(data.get("started"), "started"),
        booted=_number(data.get("booted"), "booted"),
        boot_result=_text(data.get("boot_result"), "boot_result", none=True))


def save(store, record: VmRecord) -> None:
    write_atomic(vm_dir(store, record.name) / "vm.json",
                 json.dumps(attrs.asdict(record), indent=1), mode=0o600)


def names(store) -> list[str]:
    top = root(store)
    if not top.is_dir():
        return []
    out = []
    for entry in os.scandir(top):       # a link to a directory is not a VM
        if entry.is_dir(follow_symlinks=False) and NAME.fullmatch(entry.name) and \
                os.path.lexists(os.path.join(entry.path, "vm.json")):
            out.append(entry.name)
    return sorted(out)


def _argv(pid: int) -> list[bytes] | None:
    """Process ``pid``'s command line (None: gone, or exited and not yet reaped)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if status.rsplit(")", 1)[-1].split()[0] == "Z":
        return None
    return cmdline.split(b"\0")


def is_vm_process(store, name: str, pid: int | None, *, helper: bool = False) -> bool:
    """True when ``pid`` is VM ``name``'s QEMU (a ``qemu-system-*`` whose QMP socket is the
    VM's ``qmp.sock``, word for word) or, with ``helper``, one of its virtiofsd (serving a
    socket in the VM's directory). A pid planted in ``vm.json``, reused by another process
    or another VM's (``vms/dev`` is a prefix of ``vms/dev2``) is none of these."""
    if type(pid) is not int or pid <= 0:
        return False
    argv = _argv(pid)
    if not argv:
        return False
    vdir = os.fsencode(vm_dir(store, name))
    program = os.path.basename(argv[0])
    if helper:
        sock = re.compile(re.escape(b"--socket-path=" + vdir + b"/fs") + rb"[0-9]+\.sock")
        return program == b"virtiofsd" and any(sock.fullmatch(a) for a in argv[1:])
    qmp = b"unix:" + vdir + b"/qmp.sock,server=on,wait=off"
    return program.startswith(b"qemu-system-") and qmp in argv[1:]


def signal_vm(store, name: str, pid: int | None, sig: int, *, helper: bool = False) -> bool:
    """Send ``sig`` to ``pid`` only while it is VM ``name``'s QEMU (or helper): through a
    pidfd taken before the check, so a pid reused in between is never signalled. False
    when it is not (or no longer) that process."""
    if type(pid) is not int or pid <= 0:
        return False
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if not is_vm_process(store, name, pid, helper=helper):
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


def pid_of(store, name: str, pid: int | None) -> bool:
    """True when ``pid`` is alive and is one of the VM's helpers (virtiofsd)."""
    return is_vm_process(store, name, pid, helper=True)


def qemu_pids(store, name: str) -> list[int]:
    """Every process that is VM ``name``'s QEMU (whatever its record says)."""
    return [int(e.name) for e in os.scandir("/proc")
            if e.name.isdigit() and is_vm_process(store, name, int(e.name))]


def running(store, record: VmRecord) -> bool:
    return is_vm_process(store, record.name, record.pid)


def state(store, record: VmRecord) -> str:
    """``running``, ``booting`` or ``exited``."""
    if not running(store, record):
        return "exited"
    return "running" if record.booted else "booting"


def default_name(project_name: str | None) -> str:
    """A project's VM name: its readable name, made a valid VM name."""
    text = re.sub(r"[^a-z0-9_.-]+", "-", (project_name or "").lower()).strip("-._")
    return text[:63] or "devvm"


def append_log(store, name: str, line: str) -> None:
    """A line of amic's own into the VM's ``boot.log``."""
    import time

    vmfiles.append_line(vm_dir(store, name) / "boot.log",
                        f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kept_machines(store) -> list[dict]:
    """The nspawn machines ``amic run --keep`` left (``<store>/kept/<image12>-XXXXXXXX``): a
    machine runs while a process's command line names its directory (the boot's shell,
    which nspawn runs under); its uptime is that process's."""
    top = store.root / "kept"
    if not top.is_dir():
        return []
    commands: dict[int, bytes] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                commands[int(entry.name)] = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                pass
    out = []
    for path in sorted(p for p in top.iterdir() if p.is_dir()):
        needle = str(path).encode() + b"/"
        pids = sorted(pid for pid, cmd in commands.items() if needle in cmd)
        out.append({"name": path.name, "image": path.name.rsplit("-", 1)[0],
                    "pid": pids[0] if pids else None,
                    "uptime": process_age(pids[0]) if pids else None, "dir": str(path)})
    return out


def process_age(pid: int) -> float | None:
    """Seconds since process ``pid`` started (None: gone)."""
    try:
        start = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start / os.sysconf("SC_CLK_TCK")

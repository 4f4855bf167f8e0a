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
from collections.abc import Iterator
from pathlib import Path

import attrs

from amic.errors import UsageError
from amic.fsutil import LockBusy, file_lock, write_atomic

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


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


def check_name(name: str) -> str:
    if not NAME.match(name):
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
            yield path
    except LockBusy:
        raise UsageError(f"VM {name!r} is being started, stopped or removed by another amic")


def load(store, name: str) -> VmRecord | None:
    try:
        data = json.loads((vm_dir(store, name) / "vm.json").read_text())
    except (OSError, ValueError):
        return None
    data["forwards"] = tuple(tuple(f) for f in data.get("forwards", ()))
    data["mounts"] = tuple(tuple(m) for m in data.get("mounts", ()))
    data["helpers"] = tuple(data.get("helpers", ()))
    fields = {f.name for f in attrs.fields(VmRecord)}
    return VmRecord(**{k: v for k, v in data.items() if k in fields})


def save(store, record: VmRecord) -> None:
    write_atomic(vm_dir(store, record.name) / "vm.json",
                 json.dumps(attrs.asdict(record), indent=1), mode=0o600)


def names(store) -> list[str]:
    top = root(store)
    if not top.is_dir():
        return []
    return sorted(p.name for p in top.iterdir()
                  if p.is_dir() and NAME.match(p.name) and (p / "vm.json").exists())


def pid_of(store, name: str, pid: int | None) -> bool:
    """True when ``pid`` is alive and is the VM's (its command line names the VM's dir)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":      # exited, not yet reaped
        return False
    return str(vm_dir(store, name)).encode() in cmdline


def running(store, record: VmRecord) -> bool:
    return pid_of(store, record.name, record.pid)


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

    with open(vm_dir(store, name) / "boot.log", "a") as fh:
        fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")


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

"""What ``amic run --vm`` keeps in the store's ``vm/``, as prune and rmi see it.

::

    vm/<id12>.qcow2     the cached disk of the VM layer <id12> (~500 MB), made once
                        (:func:`amic.targets.local.vm.cached_disk`), with vm/<id12>.lock
    vm/runs/<dir>/      a VM left running (``--keep``): qemu.pid, disk.qcow2 (an overlay
                        whose backing file is a cached disk), console.log
    vm/id_ed25519       the store's SSH key for its VMs (never removed)

A VM is running when the pid in a ``qemu.pid`` anywhere under ``vm/`` is alive and its
command line names that directory (a reused pid is not taken for it); the cached disks
behind the overlays in its directory are then in use. A directory whose QEMU is gone is
left over (after ``kill``, a crash or a reboot) and prune removes it. A dev VM of ``amic
up`` (``vms/NAME/``, :mod:`amic.targets.local.machines`) holds the disk under its overlay
until ``amic rm``, running or stopped: its own disk would be lost with it.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from pathlib import Path

QCOW2_MAGIC = b"QFI\xfb"
CACHED = re.compile(r"^[0-9a-f]{12}\.qcow2$")


EC2_DISKS = "ec2-disks"
"""Under the store: each project's previous EC2 disk, which ``--bake local`` changes in
place (``amic.targets.ec2.disk_reuse``) so an upload sends only the blocks that changed."""


def ec2_disk_dir(store, lineage: str) -> Path:
    """The directory of ``lineage``'s (a project identity or name) previous EC2 disk."""
    return store.root / EC2_DISKS / hashlib.sha256(lineage.encode()).hexdigest()[:32]


def ec2_disk_dirs(store) -> list[Path]:
    root = store.root / EC2_DISKS
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def vm_dir(store) -> Path:
    return store.root / "vm"


def disk_path(store, vm_image_id: str) -> Path:
    """Where the cached disk of the VM layer ``vm_image_id`` lives."""
    return vm_dir(store) / f"{vm_image_id[:12]}.qcow2"


def cached_disks(store) -> list[Path]:
    d = vm_dir(store)
    return sorted(p for p in d.iterdir() if CACHED.match(p.name)) if d.is_dir() else []


def backing_file(path: Path) -> Path | None:
    """The backing file a qcow2's header names (absolute), or None (read, never run)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(20)
            if len(head) < 20 or head[:4] != QCOW2_MAGIC:
                return None
            offset, size = struct.unpack(">QI", head[8:20])
            if not offset or not 0 < size <= 4096:
                return None
            fh.seek(offset)
            name = fh.read(size).decode(errors="replace")
    except OSError:
        return None
    return Path(os.path.normpath(os.path.join(path.parent, name)))


def alive(workdir: Path) -> bool:
    """True when the QEMU of ``workdir`` (its ``qemu.pid``) is running."""
    try:
        pid = int((workdir / "qemu.pid").read_text().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except (OSError, ValueError):
        return False
    return os.fsencode(workdir) in cmdline


def run_dirs(store) -> list[Path]:
    """Every directory under ``vm/`` with a ``qemu.pid`` (a VM, running or left over)."""
    d = vm_dir(store)
    return sorted(p.parent for p in d.rglob("qemu.pid")) if d.is_dir() else []


def disk_users(store) -> dict[Path, list[Path]]:
    """Cached disk -> the directories of the running VMs booted from it, and of the dev VMs
    (``amic up``) whose overlay sits on it."""
    from amic.targets.local import machines

    users: dict[Path, list[Path]] = {}
    for name in machines.names(store):
        record = machines.load(store, name)
        if record is not None and record.base:
            users.setdefault(Path(record.base), []).append(machines.vm_dir(store, name))
    for workdir in run_dirs(store):
        if not alive(workdir):
            continue
        for disk in workdir.glob("*.qcow2"):
            backing = backing_file(disk)
            if backing is not None:
                users.setdefault(backing, []).append(workdir)
    return users


def dead_runs(store) -> list[Path]:
    """Directories of VMs that are no longer running."""
    return [w for w in run_dirs(store) if not alive(w)]

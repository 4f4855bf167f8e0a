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
import json
import os
import re
import stat
import struct
import subprocess
from pathlib import Path

from amic.diagnostics import escape_controls
from amic.errors import UsageError

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
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()) \
        if root.is_dir() and not root.is_symlink() else []


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
    try:        # never through a link, never blocked on a FIFO (a run dir is writable by QEMU)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        with os.fdopen(fd, "rb") as fh:
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


def self_contained(path: Path) -> str:
    """``amic run --vm FILE.qcow2``: ``path`` checked to be a regular file holding a qcow2
    that needs no other file (no backing file, no external data file: either could name
    /etc/shadow or a host disk, which the guest would then read); returns the ``json:``
    name an overlay's backing is given, which opens it with its backing forbidden even if
    the file changes after this check. UsageError otherwise (no byte of the file shown)."""
    shown = escape_controls(str(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"{shown}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"{shown}: not a regular file (a disk image file is booted, "
                             "never a device, FIFO or directory)")
    finally:
        os.close(fd)
    full = os.path.realpath(path)
    try:
        proc = subprocess.run(["qemu-img", "info", "--output=json", "-f", "qcow2", "-U", full],
                              capture_output=True, text=True, errors="replace", timeout=60)
    except subprocess.TimeoutExpired:
        raise UsageError(f"{shown}: qemu-img info did not answer within 60 s") from None
    info = None
    if proc.returncode == 0:
        try:
            info = json.loads(proc.stdout)
        except ValueError:
            pass
    if not isinstance(info, dict) or info.get("format") != "qcow2":
        raise UsageError(f"{shown}: not a qcow2 disk (`amic export --format qcow2` makes one; "
                         "a raw disk: `qemu-img convert -O qcow2` it first)")
    data = (info.get("format-specific") or {}).get("data") or {}
    if "backing-filename" in info or "full-backing-filename" in info:
        raise UsageError(f"{shown}: the qcow2 names a backing file, which the VM would read "
                         "from this host; amic boots only a self-contained disk "
                         "(`qemu-img convert -O qcow2` makes one)")
    if isinstance(data, dict) and "data-file" in data:
        raise UsageError(f"{shown}: the qcow2 keeps its data in an external file, which the VM "
                         "would read from this host; amic boots only a self-contained disk "
                         "(`qemu-img convert -O qcow2` makes one)")
    return "json:" + json.dumps({"driver": "qcow2", "file": {"driver": "file",
                                                            "filename": full},
                                 "backing": None})


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
        vdir = machines.vm_dir(store, name)
        try:
            record = machines.load(store, name)
            base = Path(record.base) if record is not None and record.base else None
        except UsageError:      # a damaged record: its overlay's own header names the disk
            base = backing_file(vdir / "disk.qcow2")
        if base is not None:
            users.setdefault(base, []).append(vdir)
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

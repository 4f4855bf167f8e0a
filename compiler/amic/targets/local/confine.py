"""Enter a root for good and run a command there with a container's capabilities.

Run by ``scripts/enter.sh`` as the last step of ``rootfs.chroot_argv``'s namespaces (PID 1
of a new PID namespace, in private mount, UTS and IPC namespaces, the root's overlay and
API file systems mounted):  ``python -I -S confine.py ROOT COMMAND [ARG...]``.

A plain ``chroot`` left the host's tree one ``chroot`` away from a root INIT (chroot into
a subdirectory, ``chdir("..")`` past the old root, ``chroot(".")``: the double-chroot
escape), and kept every capability a root process has on the host (mount the host's disk,
load modules, change the host's network, ``mknod`` a disk device). Here, as runc does:

- the root becomes the namespace's root with ``pivot_root(".", ".")`` and the host's tree
  is detached beneath it (``umount2(MNT_DETACH)``): no path, ``..`` or ``chroot`` leads
  back to it;
- the capability bounding set keeps Docker's default set less ``CAP_MKNOD`` and
  ``CAP_NET_RAW`` (there is no device cgroup to make ``mknod`` harmless, and the root shares
  the host's network namespace, so raw sockets would see the host's traffic); the command
  starts as root with no other capability, whatever setuid program it runs later.

Only the standard library, imported before the host's tree goes away (``-I -S``: nothing
from the root or the environment is imported). A host where ``/`` is no mount point (an
initramfs, an enclosing chroot) cannot ``pivot_root``: there the root is entered with
``chroot`` and ``CAP_SYS_CHROOT`` is dropped too, which leaves the escape no first step.
"""

from __future__ import annotations

import ctypes
import os
import sys

KEPT = {"chown": 0, "dac_override": 1, "fowner": 3, "fsetid": 4, "kill": 5, "setgid": 6,
        "setuid": 7, "setpcap": 8, "net_bind_service": 10, "sys_chroot": 18,
        "audit_write": 29, "setfcap": 31}
"""The capabilities a command in a root keeps (linux/capability.h numbers)."""
CAP_SYS_CHROOT = KEPT["sys_chroot"]
PR_CAPBSET_DROP = 24
MNT_DETACH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41}
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def kept_mask(pivoted: bool) -> int:
    """The bounding set (as /proc/self/status shows CapBnd) of a command in a root."""
    caps = {n for n in KEPT.values() if pivoted or n != CAP_SYS_CHROOT}
    return sum(1 << n for n in caps)


def root_is_mount_point() -> bool:
    """Whether this process's ``/`` is a mount point other than the initial ramfs (what
    ``pivot_root`` needs), from ``/proc/self/mountinfo``."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 4 and fields[4] == "/" and " - " in line:
                    fstype = line.split(" - ", 1)[1].split()[0]
                    return fstype not in ("rootfs", "ramfs")
    except OSError:
        pass
    return False


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def enter(root: str) -> bool:
    """Make ``root`` this process's root for good; True when the host's tree is detached."""
    libc = ctypes.CDLL(None, use_errno=True)
    os.chdir(root)
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    pivoted = number is not None and root_is_mount_point()
    if pivoted:
        # the old root ends up stacked over the new one at "/"; detaching it leaves the root
        _check(libc.syscall(number, b".", b"."), "pivot_root")
        _check(libc.umount2(b".", MNT_DETACH), "detaching the host's tree")
    else:
        os.chroot(".")
    os.chdir("/")
    # bytes: the host's codecs are gone with its tree (nothing more can be imported)
    with open("/proc/sys/kernel/cap_last_cap", "rb") as fh:
        last = int(fh.read())
    keep = kept_mask(pivoted)
    for cap in range(last + 1):
        if not keep >> cap & 1:
            _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping capability {cap}")
    # root's capabilities after exec are the bounding set plus the inheritable and ambient
    # sets: both emptied, so nothing dropped comes back through them
    _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing ambient")
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(libc.capget(ctypes.byref(header), data), "capget")
    for half in data:
        half.inheritable = 0
    _check(libc.capset(ctypes.byref(header), data), "capset")
    return pivoted


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        sys.stderr.write("usage: confine.py ROOT COMMAND [ARG...]\n")
        return 2
    try:
        enter(argv[1])
    except OSError as exc:
        sys.stderr.write(f"amic: entering the root: {exc.strerror or exc}\n")
        return 125
    # root's permitted set is recomputed at exec from the bounding set: from here on the
    # command and everything it starts have the kept capabilities at most
    program = find_program(argv[2], os.environ.get("PATH", "/usr/bin:/bin"))
    if program is None:
        sys.stderr.write(f"amic: {argv[2]}: not found in the root\n")
        return 127
    try:
        os.execv(program, argv[2:])
    except OSError as exc:
        sys.stderr.write(f"amic: {argv[2]}: {exc.strerror}\n")
        return 126


def find_program(name: str, path: str) -> str | None:
    """``name`` looked up in ``path`` as a shell would (``os.execvp`` imports modules, and
    nothing can be imported once the host's tree is gone)."""
    if "/" in name:
        return name
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Exception as exc:    # noqa: BLE001 - never exit 1, which tar's callers accept
        sys.stderr.write(f"amic: entering the root failed: {type(exc).__name__}\n")
        sys.exit(125)

"""Reading files others wrote: below a directory descriptor, no symlink at any level, no FIFO wait.

No FIFO or device is opened by surprise, and the type is checked on the open
descriptor.

:func:`open_beneath` is how every file of a build context is opened: relative to
the context's directory descriptor, with ``openat2(RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS)`` where the kernel has it (Linux 5.6 and later), else one
``O_NOFOLLOW`` open per path component. A directory swapped for a symlink
(``renameat2(RENAME_EXCHANGE)``) between amic's check and its read makes the open
fail; it cannot make amic read the symlink's target. :func:`open_side_file` opens a
file the user named (a secret's ``src=``): symlinks in that path are the user's, but
it never blocks on a FIFO and refuses anything but a regular file.

Files are first opened ``O_PATH`` and checked with ``fstat``, then re-opened for reading
through ``/proc/self/fd`` (the same inode), so a device is never opened. Every failure
is an ``OSError`` whose ``filename`` is the path as given; callers turn
it into their own message (never the file's content).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import stat

_SYS_OPENAT2 = 437          # the same number on every architecture (the unified table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
"""Read-only, never blocking on a FIFO, never becoming a controlling terminal."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = None
use_openat2 = os.uname().machine in ("x86_64", "aarch64", "arm64", "i686", "i386", "armv7l",
                                     "armv8l", "ppc64le", "ppc64", "s390x", "riscv64")
"""Whether to try openat2: number 437 on these (the unified syscall table; elsewhere, alpha
or MIPS, the walk); False once the kernel or a seccomp filter refused it (tests set it too)."""


def _openat2(dir_fd: int, rel: str, flags: int) -> int:
    """``openat2`` beneath ``dir_fd`` with no symlink; -1 when the kernel lacks it."""
    global _libc, use_openat2
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    name = os.fsencode(rel)
    for _ in range(8):   # EAGAIN: a rename raced the lookup; the kernel asks to retry
        fd = _libc.syscall(_SYS_OPENAT2, ctypes.c_int(dir_fd), ctypes.c_char_p(name),
                           ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM, errno.E2BIG):
            use_openat2 = False
            return -1
        if err != errno.EAGAIN:
            break
    raise OSError(err, os.strerror(err), rel)


def _walk_open(dir_fd: int, parts: list[str], flags: int, rel: str) -> int:
    """One ``O_NOFOLLOW`` open per component: a symlink anywhere is ``ELOOP``/``ENOTDIR``."""
    here = dir_fd
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=here)
            except OSError as e:
                raise OSError(e.errno, e.strerror, rel) from None
            if here != dir_fd:
                os.close(here)
            here = nxt
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW, dir_fd=here)
        except OSError as e:
            raise OSError(e.errno, e.strerror, rel) from None
    finally:
        if here != dir_fd:
            os.close(here)


def open_beneath(dir_fd: int, rel: str, *, directory: bool = False) -> int:
    """A descriptor for ``rel`` below directory ``dir_fd``: a regular file opened for
    reading, or (``directory``) a directory. No component may be a symlink, ``..`` or
    absolute; the type is checked with ``fstat`` before the file is opened for reading
    (a device is never opened) and on the result. The caller closes it."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if rel.startswith("/") or ".." in parts:
        raise OSError(errno.EXDEV, "not a path inside the directory", rel)
    # a file is first opened O_PATH: no open of a device, no wait on a FIFO
    flags = READ_FLAGS | os.O_DIRECTORY if directory else os.O_PATH | os.O_CLOEXEC
    if not parts:
        fd = os.open(".", flags, dir_fd=dir_fd)
    else:
        fd = _openat2(dir_fd, "/".join(parts), flags) if use_openat2 else -1
        if fd < 0:
            fd = _walk_open(dir_fd, parts, flags, rel)
    try:
        check_kind(fd, rel, directory=directory)
    except BaseException:
        os.close(fd)
        raise
    if directory:
        return fd
    return _reopen(fd, rel, lambda: _walk_open(dir_fd, parts, READ_FLAGS, rel))


def _reopen(path_fd: int, name: str, again) -> int:
    """The regular file behind the ``O_PATH`` descriptor ``path_fd``, opened for reading
    (through ``/proc/self/fd``: the same inode, whatever its name is now; without /proc,
    ``again()`` opens it by name, non-blocking, and the inode must be the same); closes
    ``path_fd``."""
    try:
        before = os.fstat(path_fd)
        try:
            fd = os.open(f"/proc/self/fd/{path_fd}", READ_FLAGS)
        except FileNotFoundError:
            if os.path.isdir("/proc/self/fd"):
                raise
            fd = again()
        except OSError as e:
            raise OSError(e.errno, e.strerror, name) from None
    finally:
        os.close(path_fd)
    try:
        st = check_kind(fd, name)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise OSError(errno.EXDEV, "another file took its place", name)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_kind(fd: int, name: str, *, directory: bool = False) -> os.stat_result:
    """``fstat(fd)``, which must be a regular file (or a directory): else ``OSError``."""
    st = os.fstat(fd)
    if directory and not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, "not a directory", name)
    if not directory and not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, f"is {kind_name(st.st_mode)}", name)
    return st


def open_dir(path: str) -> int:
    """A descriptor for the directory ``path`` names (symlinks in ``path`` followed: the
    user named it); everything below it is then opened with :func:`open_beneath`."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


MAX_SYMLINKS = 40
"""Symlinks one path may go through (the kernel's limit)."""


def resolve_dir(path: str) -> tuple[str, tuple[int, int]]:
    """The real path of directory ``path`` and its (device, inode), resolved one component
    at a time through ``O_PATH|O_NOFOLLOW`` descriptors, following only symlinks owned by
    root or by this user: a symlink another user planted (or swapped in, mid-walk, for a
    directory of theirs) is ``OSError(EPERM)``, never followed. What the path names is
    bound as it is walked, so a later swap cannot change it."""
    trusted = {0, os.geteuid()}
    parts = path.split("/")
    fd = os.open("/" if path.startswith("/") else ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    real = [] if path.startswith("/") else [p for p in os.getcwd().split("/") if p]
    links = 0
    try:
        while parts:
            name = parts.pop(0)
            if name in ("", "."):
                continue
            nfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            st = os.fstat(nfd)
            if stat.S_ISLNK(st.st_mode):
                try:
                    if st.st_uid not in trusted:
                        raise OSError(errno.EPERM, f"goes through a symlink owned by uid "
                                      f"{st.st_uid} ({'/'.join(['', *real, name])})", path)
                    target = os.readlink("", dir_fd=nfd)   # the link fstat just saw
                finally:
                    os.close(nfd)
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                if target.startswith("/"):
                    os.close(fd)
                    fd, real = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), []
                parts[:0] = target.split("/")
                continue
            if not stat.S_ISDIR(st.st_mode):
                os.close(nfd)
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            os.close(fd)
            fd = nfd
            if name == "..":
                real = real[:-1]
            else:
                real.append(name)
        st = os.fstat(fd)
        return "/" + "/".join(real), (st.st_dev, st.st_ino)
    except OSError as e:
        if e.filename == path:
            raise
        raise OSError(e.errno, e.strerror, path) from None
    finally:
        os.close(fd)


def open_side_file(path: str, *, follow: bool = True) -> int:
    """A regular file the user named, opened for reading (nor following a final symlink
    unless ``follow``); a FIFO, device, socket or directory is ``OSError``, refused from
    its ``fstat`` before it is opened for reading (never waited on, never opened)."""
    flags = os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        check_kind(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return _reopen(fd, path, lambda: os.open(path, READ_FLAGS | (0 if follow else os.O_NOFOLLOW)))


def sha256_of(fd: int, size: int, name: str) -> str:
    """sha256 of exactly ``size`` bytes of ``fd`` (the size ``fstat`` gave when it was
    opened: a file that grows meanwhile is hashed as it was; one that shrinks is EIO)."""
    h = hashlib.sha256()
    left = size
    while left > 0:
        data = os.read(fd, min(left, 1 << 20))
        if not data:
            raise OSError(errno.EIO, "it shrank while it was read", name)
        h.update(data)
        left -= len(data)
    return h.hexdigest()


def read_at_most(fd: int, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes from ``fd`` (so the caller can tell "over the limit")."""
    chunks: list[bytes] = []
    left = limit + 1
    while left > 0:
        data = os.read(fd, min(left, 1 << 20))
        if not data:
            break
        chunks.append(data)
        left -= len(data)
    return b"".join(chunks)


_SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
            (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symlink"))


def kind_name(st_mode: int) -> str:
    """What a file that is not regular is, for messages ("a FIFO", "a directory")."""
    return next((what for test, what in _SPECIAL if test(st_mode)), "not a regular file")

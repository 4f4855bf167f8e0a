"""A dev VM's registry files (``<store>/vms/NAME/``), opened as if someone planted them.

Never through a symbolic link, never blocking on a FIFO, never a device or a directory,
read within a size bound.

A link or special file where amic keeps a log, a record or a socket is refused with an
error naming it (its control characters escaped), never followed: ``amic logs`` does not
print what a ``console.log`` link names, ``boot.log`` appends never land in the file a
link names, a ``qmp.sock`` link never connects ``amic stop`` to another QEMU's monitor.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

from amic.diagnostics import escape_controls
from amic.errors import UsageError

MAX_RECORD = 1 << 20
"""Bytes a ``vm.json`` may have (a real one is under 2 KiB)."""

CHUNK = 1 << 16

_OPEN = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def shown(path: str | os.PathLike) -> str:
    return escape_controls(os.fspath(path))


def refused(path: str | os.PathLike, what: str) -> UsageError:
    return UsageError(f"{shown(path)}: {what}; amic neither follows nor replaces it "
                      "(remove it, or `amic rm` the VM)")


def real_dir(path: Path) -> bool:
    """True when ``path`` is a directory (not a link to one); False when it is missing;
    UsageError when something else is there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise refused(path, "the VM's directory is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise refused(path, "the VM's directory is not a directory")
    return True


def open_regular(path: Path, flags: int, mode: int = 0o600) -> int:
    """``path`` opened with ``flags`` when it is a regular file (or created as one); a link,
    FIFO, device, socket or directory there is a UsageError."""
    try:
        fd = os.open(path, flags | _OPEN, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise refused(path, "a symbolic link") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR, errno.ENODEV, errno.EOPNOTSUPP):
            raise refused(path, "not a regular file") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise refused(path, "not a regular file")
    os.set_blocking(fd, True)
    return fd


def read_record(path: Path) -> bytes | None:
    """A small file's bytes (None: missing); UsageError when it is not a regular file or is
    over :data:`MAX_RECORD`."""
    try:
        fd = open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_RECORD + 1)
    if len(data) > MAX_RECORD:
        raise refused(path, f"over {MAX_RECORD} bytes, not a VM record")
    return data


def chunks(path: Path) -> Iterator[str]:
    """A log's text in chunks (nothing when it is missing), read as it is now."""
    try:
        fd = open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    with open(fd, errors="replace", closefd=True) as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


def open_log(path: Path):
    """A log opened for reading as text (FileNotFoundError when missing)."""
    return open(open_regular(path, os.O_RDONLY), errors="replace", closefd=True)


def append_line(path: Path, line: str) -> None:
    fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    with os.fdopen(fd, "a") as fh:
        fh.write(line)


def create_fresh(path: Path, mode: int = 0o644) -> int:
    """``path`` emptied (or made) for writing: a descriptor QEMU's console, a pid file or a
    helper's log goes to."""
    return open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)


def connect_unix(path: Path, sock: socket.socket) -> None:
    """Connect ``sock`` to the UNIX socket at ``path`` itself, never to what a link there
    names: reached through an ``O_PATH|O_NOFOLLOW`` descriptor of the socket file."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise refused(path, "a symbolic link") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISLNK(mode):
            raise refused(path, "a symbolic link")
        if not stat.S_ISSOCK(mode):
            raise refused(path, "not a socket")
        sock.connect(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)

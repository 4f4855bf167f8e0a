"""Filesystem helpers with the properties everything here needs: safe writes, file locks.

Writes to a path a user gave go through :func:`write_output` / :func:`open_output`
(or, for output another program makes in a file, :func:`staging_path` then
:func:`place_output`): a regular file (or a new one) is replaced atomically; an
existing special file (``/dev/null``, a FIFO, a terminal, a disk) is opened and
written in place, never renamed over; a missing directory or a directory as the
target is a :class:`UsageError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from amic.errors import UsageError


def write_atomic(path: str | os.PathLike, data: bytes | str, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one, never a part.

    An existing non-regular file (a device, a FIFO) is written in place instead: renaming
    over it would replace, say, ``/dev/null`` with a regular file.
    """
    if isinstance(data, str):
        data = data.encode()
    with _open(os.fspath(path), mode) as fh:
        fh.write(data)


def _special(path: str) -> bool:
    """True when ``path`` exists and is neither a regular file nor a directory."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode)


@contextlib.contextmanager
def _open(path: str, mode: int) -> Iterator[BinaryIO]:
    if _special(path):
        with open(path, "wb") as fh:  # O_WRONLY|O_TRUNC: a device or FIFO, written in place
            yield fh
        return
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".amic-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_output(path: str | os.PathLike) -> str:
    """``path`` if a command may write its output there, else a :class:`UsageError`.

    Call it before the work that makes the output, so a typo costs nothing.
    """
    name = os.fspath(path)
    if not name:
        raise UsageError("the output path is empty")
    if os.path.isdir(name):
        raise UsageError(f"cannot write {name}: it is a directory")
    if _special(name):
        return name
    parent = os.path.dirname(os.path.abspath(name))
    if not os.path.isdir(parent):
        raise UsageError(f"cannot write {name}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {name}: directory {parent} is not writable")
    return name


def write_output(path: str | os.PathLike, data: bytes | str, mode: int = 0o644) -> None:
    """:func:`write_atomic` to a path the user gave, checked first (:func:`check_output`)."""
    check_output(path)
    try:
        write_atomic(path, data, mode)
    except OSError as exc:
        raise UsageError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def open_output(path: str | os.PathLike, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A binary file to stream output into; on success it replaces ``path`` atomically (or,
    for a device or FIFO, was written in place); on failure an existing file is untouched."""
    check_output(path)
    try:
        cm = _open(os.fspath(path), mode)
        fh = cm.__enter__()
    except OSError as exc:
        raise UsageError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}") from None
    with contextlib.ExitStack() as stack:
        stack.push(cm)
        yield fh


def staging_path(path: str | os.PathLike, scratch: str | os.PathLike) -> str:
    """Where to make the output for the user's ``path`` before :func:`place_output`: beside
    it (so the rename is atomic), or in ``scratch`` when ``path`` is a special file (no
    stray file in ``/dev``)."""
    name = os.fspath(path)
    if _special(name):
        return os.path.join(os.fspath(scratch), "output.part")
    return os.path.join(os.path.dirname(os.path.abspath(name)),
                        f".{os.path.basename(name)}.part")


def place_output(done: str | os.PathLike, path: str | os.PathLike, mode: int = 0o644) -> None:
    """Put the finished file ``done`` (made at :func:`staging_path`) at the user's ``path``:
    renamed over it, or copied into it in place when it is a device or FIFO (never
    replaced). ``done`` is gone afterwards, whatever happened."""
    import shutil

    name = os.fspath(path)
    try:
        if _special(name):
            with open(done, "rb") as src, open(name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            return
        os.chmod(done, mode)
        os.replace(done, name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(done)


class LockBusy(Exception):
    """:func:`file_lock` with ``wait=False`` found the lock held elsewhere."""


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, shared: bool = False, wait: bool = True) -> Iterator[None]:
    """Hold an ``flock`` on ``path`` (created if missing) for the ``with`` block.

    ``shared`` takes a reader's lock (many at once, none while a writer holds it);
    ``wait=False`` raises :class:`LockBusy` instead of blocking.
    """
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    if not wait:
        mode |= fcntl.LOCK_NB
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, mode)
        except BlockingIOError:
            raise LockBusy(os.fspath(path)) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

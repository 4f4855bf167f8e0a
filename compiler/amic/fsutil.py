"""Filesystem helpers with the properties everything here needs: atomic writes, file locks."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator


def write_atomic(path: str | os.PathLike, data: bytes | str, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one, never a part."""
    path = os.fspath(path)
    if isinstance(data, str):
        data = data.encode()
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".amic-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


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

"""Finding and reading an Amifile: the file checks, without the parser.

Apart from :mod:`amic.amifile.parser` so that the CLI can resolve its AMIFILE
argument (and an unchanged build answer from its memo) without importing lark.
"""

from __future__ import annotations

import errno
import os
import stat

from amic.errors import AmifileError, Pos

MAX_AMIFILE_BYTES = 4 * 1024 * 1024
"""The largest Amifile read (docs/language.md, "Limits"); checked before anything is parsed."""

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_regular(name: str, mode: int) -> AmifileError:
    kind = next((what for test, what in _KINDS if test(mode)), "not a regular file")
    return AmifileError(f"{name}: is {kind}, not an Amifile",
                        hint="an Amifile is a regular file (or a directory holding one)")


def amifile_path(path: str | os.PathLike[str]) -> str:
    """``path``, or ``path/Amifile`` when it is a directory (as INCLUDE of a directory does).

    A special file (FIFO, device, socket) is refused here, before anything opens it.
    ``OSError`` (missing, unreadable) is raised unchanged.
    """
    name = os.fspath(path)
    st = os.stat(name)
    if stat.S_ISDIR(st.st_mode):
        name = os.path.join(name, "Amifile")
        st = os.stat(name)
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(name, st.st_mode)
    return name


def read_source(path: str | os.PathLike[str]) -> tuple[str, bytes]:
    """``(name, bytes)`` of the Amifile at ``path``: a regular file (a directory is
    ``IsADirectoryError``: :func:`amifile_path` maps it first where that is meant).

    Opened without blocking (a FIFO swapped in after the check cannot hang it) and
    checked again on the open descriptor; never more than the size limit is read.
    """
    name = os.fspath(path)
    st = os.stat(name)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name)
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(name, st.st_mode)
    fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(name, st.st_mode)
        try:
            data = f.read(MAX_AMIFILE_BYTES + 1)
        except OSError as e:   # a "regular" file that cannot be read (/proc/self/mem: EIO)
            raise OSError(e.errno, e.strerror, name) from None
    if len(data) > MAX_AMIFILE_BYTES:
        raise AmifileError(f"the Amifile is larger than {MAX_AMIFILE_BYTES} bytes",
                           Pos(name, 1, 1), hint="split it with INCLUDE")
    return name, data

"""Filesystem helpers with the properties everything here needs: safe writes, file locks.

Output to a path a user gave (``-o``, ``--manifest``): :func:`check_output` before the work,
then :func:`write_output` / :func:`open_output` (amic writes the bytes) or
:func:`staged_output` (another program, ``mke2fs`` or ``qemu-img``, makes the file):

- **a new or regular file** is replaced atomically. The output's directory is held open;
  amic's bytes go to a staging file with a random name, ``.NAME.amic-XXXXXXXXXXXXXXXX``,
  created ``O_CREAT|O_EXCL|O_NOFOLLOW`` relative to that descriptor (so it fails rather than
  open anything already there), and renamed into place with ``renameat`` on the same
  descriptor. Another program (``mke2fs``, ``qemu-img``) writes ``part`` in a private
  directory of that name instead (mode 0700, made with ``mkdir``), reached as
  ``/proc/PID/fd/N/part``: through amic's descriptor of it, whatever happens to its name.
  No name amic opens beside the output is predictable, so a link planted there is never
  written through (issue 18).
- **an existing special file** (``/dev/null``, a disk, a FIFO, a terminal) is opened
  ``O_NONBLOCK|O_NOFOLLOW``, its type checked on the open descriptor, and written in place,
  never replaced. A FIFO with no reader yet is waited for at most :data:`FIFO_WAIT` seconds,
  then refused with an error (never a hang).
- **a symbolic link at the output name** is followed only when root or the caller owns it
  (as ``fs.protected_symlinks`` would allow; ``-o /dev/stdout``), and what it names is then
  written in place (truncated, not replaced); a link anyone else owns is refused: name the
  file itself. A link planted in a shared directory by another user is thus never followed.
- a missing directory, or a directory as the output, is a :class:`UsageError`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
import time
from collections.abc import Iterator
from typing import BinaryIO

from amic.errors import BuildError, UsageError

FIFO_WAIT = 10.0
"""Seconds an output FIFO may go without a reader before amic gives up on it."""

STAGING_MARK = ".amic-"
"""In the name of every private staging directory (``.NAME.amic-<16 hex>``)."""

IN_PLACE = ("special", "followed")
"""Kinds of output (:func:`_kind`) written in place rather than replaced."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def write_atomic(path: str | os.PathLike, data: bytes | str, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one, never a part.

    An existing special file (a device, a FIFO) is written in place instead: renaming
    over it would replace, say, ``/dev/null`` with a regular file. See the module docstring.
    """
    if isinstance(data, str):
        data = data.encode()
    with _output(os.fspath(path), mode) as fh:
        fh.write(data)


def _split(path: str) -> tuple[str, str]:
    full = os.path.abspath(path)
    return os.path.dirname(full), os.path.basename(full)


def _kind(dir_fd: int, base: str) -> str:
    """What is at ``base`` in ``dir_fd``: new, file, dir, special, followed (a link root or
    the caller owns, to a file) or link (refused)."""
    try:
        st = os.stat(base, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return "new"
    if stat.S_ISLNK(st.st_mode):
        if st.st_uid not in (0, os.geteuid()):
            return "link"
        try:
            target = os.stat(base, dir_fd=dir_fd)
        except OSError:
            return "link"
        return "dir" if stat.S_ISDIR(target.st_mode) else "followed"
    if stat.S_ISREG(st.st_mode):
        return "file"
    return "dir" if stat.S_ISDIR(st.st_mode) else "special"


def _refuse_link(display: str) -> UsageError:
    return UsageError(f"cannot write {display}: it is a symbolic link that neither root nor "
                      "you own, or that names nothing; amic does not write through it: name "
                      "the file itself")


def _is_fifo(dir_fd: int, base: str) -> bool:
    with contextlib.suppress(OSError):
        return stat.S_ISFIFO(os.stat(base, dir_fd=dir_fd).st_mode)
    return False


def _open_in_place(dir_fd: int, base: str, display: str, *, follow: bool) -> int:
    """A device or FIFO (or, through a followed link, any file) opened for writing in place
    without blocking on it; a FIFO with no reader is retried for :data:`FIFO_WAIT` seconds.
    The descriptor is blocking again once open."""
    flags = os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    if not follow:
        flags |= os.O_NOFOLLOW
    deadline = time.monotonic() + FIFO_WAIT
    while True:
        try:
            fd = os.open(base, flags, dir_fd=dir_fd)
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO or not _is_fifo(dir_fd, base):
                raise
            if time.monotonic() >= deadline:
                raise UsageError(f"cannot write {display}: the FIFO has no reader (waited "
                                 f"{FIFO_WAIT:g}s); start its reader first") from None
            time.sleep(0.05)
    mode = os.fstat(fd).st_mode
    if (stat.S_ISREG(mode) and not follow) or stat.S_ISDIR(mode):  # swapped since looked at
        os.close(fd)
        raise UsageError(f"cannot write {display}: it changed while amic opened it")
    if stat.S_ISREG(mode):
        os.ftruncate(fd, 0)
    os.set_blocking(fd, True)
    return fd


class _Staging:
    """A private directory (0700, random name) in the directory ``parent_fd``, held by a
    descriptor; the output is made in it as ``part`` (see the module docstring)."""

    def __init__(self, parent_fd: int, base: str, *, parent: str = "",
                 record_in: str | os.PathLike | None = None) -> None:
        self.parent_fd = parent_fd
        while True:
            self.name = f".{base[:80]}{STAGING_MARK}{secrets.token_hex(8)}"
            try:
                os.mkdir(self.name, 0o700, dir_fd=parent_fd)
                break
            except FileExistsError:
                continue
        self.fd = os.open(self.name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
        st = os.fstat(self.fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:   # swapped since the mkdir
            os.close(self.fd)
            raise OSError(errno.EPERM, "the staging directory was replaced")
        if record_in is not None:
            _record(record_in, os.path.join(parent, self.name), st)

    @property
    def path(self) -> str:
        """``part`` as another program reaches it: through this process's descriptor."""
        return f"/proc/{os.getpid()}/fd/{self.fd}/part"

    def finish(self, mode: int) -> None:
        """``part`` (made by another program) given ``mode`` and flushed to disk."""
        fd = os.open("part", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "the staged output is not a regular file")
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename_to(self, dir_fd: int, base: str) -> None:
        os.rename("part", base, src_dir_fd=self.fd, dst_dir_fd=dir_fd)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            for entry in os.listdir(self.fd):
                os.unlink(entry, dir_fd=self.fd)
        os.close(self.fd)
        with contextlib.suppress(OSError):
            os.rmdir(self.name, dir_fd=self.parent_fd)


@contextlib.contextmanager
def _directory(path: str) -> Iterator[int]:
    fd = os.open(path or "/", _DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


RECORD_PREFIX = "staging-"


def _staging_file(dir_fd: int, base: str) -> tuple[int, str]:
    """A new file ``.BASE.amic-<random>`` in ``dir_fd``, opened for writing; its name."""
    while True:
        name = f".{base[:80]}{STAGING_MARK}{secrets.token_hex(8)}"
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                           | os.O_CLOEXEC, 0o600, dir_fd=dir_fd), name
        except FileExistsError:
            continue


def _record(record_in: str | os.PathLike, staging: str, st: os.stat_result) -> None:
    """Note where a staging file or directory is, in ``record_in`` (a scratch directory of amic's
    own that outlives a ``kill -9``), for :func:`remove_recorded_staging`."""
    import json

    note = os.path.join(os.fspath(record_in), f"{RECORD_PREFIX}{secrets.token_hex(8)}.json")
    with open(note, "x") as fh:
        json.dump({"path": staging, "dev": st.st_dev, "ino": st.st_ino}, fh)


def remove_recorded_staging(record_in: str | os.PathLike, *, dry_run: bool = False) -> int:
    """Remove the staging files and directories noted in ``record_in`` whose writer died (the
    caller knows it is dead: it holds the scratch's lock); return the bytes they held. Only
    the very file or directory noted goes (same device and inode, not through a link)."""
    import json

    freed = 0
    for note in sorted(os.listdir(record_in)):
        if not note.startswith(RECORD_PREFIX):
            continue
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            with open(os.path.join(os.fspath(record_in), note)) as fh:
                facts = json.load(fh)
            parent, name = os.path.split(facts["path"])
            if STAGING_MARK in name:
                with _directory(parent) as parent_fd:
                    freed += _remove_noted(parent_fd, name, (facts["dev"], facts["ino"]),
                                           dry_run=dry_run)
    return freed


def _remove_noted(parent_fd: int, name: str, identity: tuple[int, int], *,
                  dry_run: bool) -> int:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                 dir_fd=parent_fd)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != identity:
            return 0
        if not stat.S_ISDIR(st.st_mode):
            if not dry_run:
                os.unlink(name, dir_fd=parent_fd)
            return st.st_blocks * 512
        freed = 0
        for entry in os.listdir(fd):
            freed += os.stat(entry, dir_fd=fd, follow_symlinks=False).st_blocks * 512
            if not dry_run:
                os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    if not dry_run:
        os.rmdir(name, dir_fd=parent_fd)
    return freed


OUTPUT_BUFFER = 1 << 20
"""Bytes gathered before a write to a staged output file: a stage2 is millions of 512-byte
headers. (A device or FIFO keeps the default buffer: its writes stay as they were.)"""


@contextlib.contextmanager
def _output(path: str, mode: int, record_in: str | os.PathLike | None = None
            ) -> Iterator[BinaryIO]:
    """A file object for the output ``path`` (module docstring); placed when the block ends
    without an exception, else an existing file is untouched and the staging removed."""
    parent, base = _split(path)
    with _directory(parent) as dir_fd:
        kind = _kind(dir_fd, base)
        if kind == "link":
            raise _refuse_link(path)
        if kind == "dir":
            raise IsADirectoryError(errno.EISDIR, "it is a directory")
        if kind in IN_PLACE:
            fd = _open_in_place(dir_fd, base, path, follow=kind == "followed")
            with os.fdopen(fd, "wb") as fh:
                yield fh
            return
        fd, name = _staging_file(dir_fd, base)
        try:
            if record_in is not None:
                _record(record_in, os.path.join(parent, name), os.fstat(fd))
            with os.fdopen(fd, "wb", buffering=OUTPUT_BUFFER) as fh:
                yield fh
                fh.flush()
                os.fchmod(fh.fileno(), mode)
                os.fsync(fh.fileno())
            os.rename(name, base, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
            raise


def _ours(exc: OSError, path: str) -> bool:
    """True when ``exc`` is about writing the output (no name, or a name of its staging)."""
    name = exc.filename
    return name is None or name in ("part", path, os.path.basename(path)) \
        or STAGING_MARK in str(name)


def _write_error(path: str, exc: OSError) -> BuildError:
    return BuildError(f"cannot write {path}: {exc.strerror or exc}")


def check_output(path: str | os.PathLike) -> str:
    """``path`` if a command may write its output there, else a :class:`UsageError`.

    Call it before the work that makes the output, so a typo costs nothing. A FIFO is not
    opened here (a reader would see end-of-file): its reader is waited for at the write.
    """
    name = os.fspath(path)
    if not name:
        raise UsageError("the output path is empty")
    parent, base = _split(name)
    if name.endswith("/") or os.path.isdir(name):
        raise UsageError(f"cannot write {name}: it is a directory")
    try:
        with _directory(parent) as dir_fd:
            kind = _kind(dir_fd, base)
    except (FileNotFoundError, NotADirectoryError):
        raise UsageError(f"cannot write {name}: directory {parent} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot write {name}: {exc.strerror or exc}") from None
    if kind == "link":
        raise _refuse_link(name)
    if kind in IN_PLACE:
        return name
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {name}: directory {parent} is not writable")
    return name


def write_output(path: str | os.PathLike, data: bytes | str, mode: int = 0o644) -> None:
    """:func:`write_atomic` to a path the user gave, checked first (:func:`check_output`)."""
    if isinstance(data, str):
        data = data.encode()
    with open_output(path, mode) as fh:
        fh.write(data)


@contextlib.contextmanager
def open_output(path: str | os.PathLike, mode: int = 0o644, *,
                record_in: str | os.PathLike | None = None) -> Iterator[BinaryIO]:
    """A binary file to stream output into; on success it replaces ``path`` atomically (or,
    for a device or FIFO, was written in place); on failure an existing file is untouched.
    A failure to write (``ENOSPC``) is an error naming ``path``. ``record_in``: a directory
    where the staging directory's place is noted, for :func:`remove_recorded_staging`
    after a ``kill -9``."""
    name = check_output(path)
    try:
        cm = _output(name, mode, record_in)
        fh = cm.__enter__()
    except OSError as exc:
        raise UsageError(f"cannot write {name}: {exc.strerror or exc}") from None
    try:
        with contextlib.ExitStack() as stack:
            stack.push(cm)
            yield fh
    except OSError as exc:
        if not _ours(exc, name):
            raise
        raise _write_error(name, exc) from None


@contextlib.contextmanager
def staged_output(path: str | os.PathLike, *, scratch: str | os.PathLike,
                  mode: int = 0o644) -> Iterator[str]:
    """A path for another program to make the output ``path`` at; when the block ends
    without an exception the file is put at ``path``: renamed over it, or copied into it when
    it is a device or FIFO (never replaced; then the file is made in ``scratch``, a directory
    of amic's own). Nothing is left behind either way; after a ``kill -9``, the staging
    directory's place is noted in ``scratch`` (:func:`remove_recorded_staging`)."""
    name = check_output(path)
    parent, base = _split(name)
    with _directory(parent) as dir_fd:
        kind = _kind(dir_fd, base)
    special = kind in IN_PLACE
    try:
        with _directory(os.fspath(scratch) if special else parent) as home_fd:
            staging = _Staging(home_fd, "output" if special else base,
                               parent=os.fspath(scratch) if special else parent,
                               record_in=None if special else scratch)
            try:
                yield staging.path
                staging.finish(mode)
                if special:
                    _copy_into(staging, name)
                else:
                    with _directory(parent) as dir_fd:
                        if _kind(dir_fd, base) == "link":
                            raise _refuse_link(name)
                        staging.rename_to(dir_fd, base)
            finally:
                staging.remove()
    except OSError as exc:
        if not _ours(exc, name):
            raise
        raise _write_error(name, exc) from None


def _copy_into(staging: _Staging, path: str) -> None:
    import shutil

    src = os.open("part", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=staging.fd)
    with os.fdopen(src, "rb") as fh_in, _output(path, 0o600) as fh_out:
        shutil.copyfileobj(fh_in, fh_out, 1 << 20)


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
    try:        # never a link's target (created if missing), never blocked on a FIFO
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise
        fd = -1
    if fd < 0 or not stat.S_ISREG(os.fstat(fd).st_mode):
        if fd >= 0:
            os.close(fd)
        raise UsageError(f"lock file {os.fspath(path)!r} is a symbolic link or not a regular "
                         "file; amic neither follows nor replaces it (remove it)")
    with open(fd, "a") as fh:
        try:
            fcntl.flock(fh, mode)
        except BlockingIOError:
            raise LockBusy(os.fspath(path)) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

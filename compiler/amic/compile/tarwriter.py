"""A reproducible tar writer for the stage2: the bytes of ``tarfile``'s PAX format, faster.

``tarfile`` spends most of a compile's artifact time on per-entry bookkeeping
(a copied TarInfo, a dict of fields, the pax checks) for entries that need
none of it. For an entry whose name and link are ASCII and fit the ustar
fields, and whose size fits 11 octal digits, PAX format writes a plain ustar
header; this module writes that header itself. Anything else (a long or
non-ASCII name) goes through ``tarfile`` unchanged, so the output is
byte-for-byte what ``tarfile.open(format=PAX_FORMAT)`` writes
(``tests/unit/test_tarwriter.py`` holds the two side by side).
"""

from __future__ import annotations

import shutil
import tarfile
from typing import BinaryIO

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
_NUL8 = b"\0" * 8
_MAGIC = tarfile.POSIX_MAGIC


def _octal(value: int, digits: int) -> bytes:
    return b"%0*o\0" % (digits - 1, value)


def _field(text: str, length: int) -> bytes | None:
    """``text`` as a NUL-padded ustar field, or None if it needs a pax header."""
    if len(text) > length or not text.isascii():
        return None
    return text.encode("ascii").ljust(length, b"\0")


# Every header is root:root, mtime 0, ustar magic: those fields never change, so they
# are joined once, and their share of the checksum is summed once.
_OWNER = _octal(0, 8) + _octal(0, 8)        # uid, gid
_MTIME_CHKSUM = _octal(0, 12) + b"        "  # mtime; the checksum counts as eight spaces
_TAIL = (_MAGIC + b"root" + b"\0" * 28 + b"root" + b"\0" * 28 + _NUL8 + _NUL8 + b"\0" * 155
         + b"\0" * 12)                        # magic..prefix, then the padding to 512
_FIXED_SUM = sum(_OWNER) + sum(_MTIME_CHKSUM) + sum(_TAIL)


def _header(name: str, mode: int, size: int, kind: bytes, linkname: str) -> bytes | None:
    """The 512-byte ustar header root:root, mtime 0, or None where pax is needed."""
    if kind == tarfile.DIRTYPE and not name.endswith("/"):
        name += "/"
    name_field = _field(name, 100)
    link_field = _field(linkname, 100) if linkname else b"\0" * 100
    if name_field is None or link_field is None or not 0 <= size < 8 ** 11:
        return None
    mode_field, size_field = _octal(mode & 0o7777, 8), _octal(size, 12)
    checksum = (_FIXED_SUM + sum(name_field) + sum(mode_field) + sum(size_field) + kind[0]
                + sum(link_field))
    return b"".join((name_field, mode_field, _OWNER, size_field, _octal(0, 12),
                     b"%06o\0 " % checksum, kind, link_field, _TAIL))


class TarWriter:
    """Entries appended in order, then :meth:`close` (the end blocks, padded to a record)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.offset = 0

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.offset += len(data)

    @staticmethod
    def _info(name: str, mode: int, size: int, kind: bytes, linkname: str) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
        info.mode, info.size, info.type, info.linkname = mode, size, kind, linkname
        return info

    def add(self, name: str, mode: int, *, data: bytes | None = None, fileobj=None,
            size: int = 0, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> None:
        """One entry: ``data`` or ``size`` bytes of ``fileobj`` (regular files), else none."""
        if data is not None:
            size = len(data)
        head = _header(name, mode, size, kind, linkname)
        if head is None:
            self._write(self._info(name, mode, size, kind, linkname).tobuf(
                tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"))
        else:
            self._write(head)
        if kind != tarfile.REGTYPE:
            return
        if data is not None:
            self._write(data)
        elif size:
            shutil.copyfileobj(_Exactly(fileobj, size), self.out)
            self.offset += size
        if size % BLOCK:
            self._write(b"\0" * (BLOCK - size % BLOCK))

    def close(self) -> None:
        self._write(b"\0" * (2 * BLOCK))
        if self.offset % RECORD:
            self._write(b"\0" * (RECORD - self.offset % RECORD))


class _Exactly:
    """``size`` bytes of a file; fewer is an error (the file shrank since it was planned)."""

    def __init__(self, fileobj, size: int) -> None:
        self.fileobj, self.left = fileobj, size

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if n < 0 else min(n, self.left)
        data = self.fileobj.read(n)
        if not data:
            raise OSError("unexpected end of file")
        self.left -= len(data)
        return data


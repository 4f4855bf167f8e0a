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

import functools
import shutil
import tarfile
from collections.abc import Callable
from operator import itemgetter
from typing import BinaryIO

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
_NUL8 = b"\0" * 8
_MAGIC = tarfile.POSIX_MAGIC


def _octal(value: int, digits: int) -> bytes:
    return b"%0*o\0" % (digits - 1, value)


# Every header is root:root, mtime 0, ustar magic: those fields never change, so they
# are joined once, and their share of the checksum is summed once.
_OWNER = _octal(0, 8) + _octal(0, 8)        # uid, gid
_MTIME = _octal(0, 12)
_MTIME_CHKSUM = _MTIME + b"        "  # mtime; the checksum counts as eight spaces
_TAIL = (_MAGIC + b"root" + b"\0" * 28 + b"root" + b"\0" * 28 + _NUL8 + _NUL8 + b"\0" * 155
         + b"\0" * 12)                        # magic..prefix, then the padding to 512
_FIXED_SUM = sum(_OWNER) + sum(_MTIME_CHKSUM) + sum(_TAIL)
_NO_LINK = b"\0" * 100
_ZEROS = bytes(RECORD)


@functools.lru_cache(maxsize=4096)
def _middle(mode: int, size: int, kind: bytes) -> tuple[bytes, int]:
    """Mode, owner, size and mtime fields, and the checksum of all but name and link.

    Cached: a large stage2 repeats a few modes and sizes over millions of entries.
    """
    middle = _octal(mode, 8) + _OWNER + _octal(size, 12) + _MTIME
    return middle, _FIXED_SUM - sum(_OWNER) - sum(_MTIME) + sum(middle) + kind[0]


def _header(name: str, mode: int, size: int, kind: bytes, linkname: str) -> bytes | None:
    """The 512-byte ustar header root:root, mtime 0, or None where pax is needed (a name
    or link that is not ASCII or longer than its 100-byte field, a size over 11 octal
    digits). NULs pad the fields and add nothing to the checksum."""
    if kind == tarfile.DIRTYPE and not name.endswith("/"):
        name += "/"
    if len(name) > 100 or not name.isascii() or not 0 <= size < 8 ** 11:
        return None
    middle, checksum = _middle(mode & 0o7777, size, kind)
    if linkname:
        if len(linkname) > 100 or not linkname.isascii():
            return None
        link = linkname.encode("ascii")
        checksum += sum(link)
        link = link.ljust(100, b"\0")
    else:
        link = _NO_LINK
    field = name.encode("ascii")
    return b"".join((field.ljust(100, b"\0"), middle, b"%06o\0 " % (checksum + sum(field)),
                     kind, link, _TAIL))


def _template(width: int, slash: bool, shape: Shape, sizes: tuple[int, ...]) -> _Template | None:
    """The bytes of a block of entries (see :meth:`TarWriter.add_block`) as a %-format, and
    what to pick for it from ``(prefix, checksum of each entry..., data of each file...)``;
    None where an entry needs more than a plain ustar header (see :func:`_header`).
    ``slash``: the prefix ends with ``/`` (a directory named by it alone needs no other)."""
    parts: list[bytes] = []
    sums: list[int] = []
    pick: list[int] = []
    files = iter(range(1 + len(shape), 1 + len(shape) + len(sizes)))
    size_of = iter(sizes)
    for k, (suffix, mode, is_dir) in enumerate(shape, 1):
        kind = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
        size = 0 if is_dir else next(size_of)
        if is_dir and not suffix.endswith("/") and (suffix or not slash):
            suffix += "/"
        if width + len(suffix) > 100 or not suffix.isascii() or size >= 8 ** 11:
            return None
        middle, checksum = _middle(mode & 0o7777, size, kind)
        field = suffix.encode("ascii")
        fixed = field + b"\0" * (100 - width - len(field)) + middle
        parts.append(b"%s" + fixed.replace(b"%", b"%%") + b"%06o\0 " + kind + _NO_LINK + _TAIL)
        pick += (0, k)
        if not is_dir:
            data_at = next(files)
            if size:
                parts.append(b"%s" + _ZEROS[:-size % BLOCK])
                pick.append(data_at)
        sums.append(checksum + sum(field))
    return b"".join(parts), tuple(sums), itemgetter(*pick)


Shape = tuple[tuple[str, int, bool], ...]
"""(suffix, mode, is a directory) of each entry of a block."""
_Template = tuple[bytes, tuple[int, ...], Callable[[tuple], tuple]]
_TEMPLATES: dict[tuple, _Template | None] = {}
"""Templates by prefix width, shape and file sizes: a large stage2 has millions of services'
entries in a few dozen shapes (cleared when it grows past a few thousand: memory stays
bounded)."""


class TarWriter:
    """Entries appended in order, then :meth:`close` (the end blocks, padded to a record).

    Every header and small file is one ``out.write``: give it a buffered file (a large
    stage2 has millions of entries; the callers open theirs with a 1 MiB buffer).
    """

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
            head = self._info(name, mode, size, kind, linkname).tobuf(
                tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
        if kind != tarfile.REGTYPE:
            self._write(head)
            return
        if data is not None and size > BLOCK * 2048:   # a large one is not copied
            self._write(head)
            self._write(data)
            if size % BLOCK:
                self._write(_ZEROS[:BLOCK - size % BLOCK])
            return
        if data is not None:
            self._write(head + data + _ZEROS[:BLOCK - size % BLOCK] if size % BLOCK else head + data)
            return
        self._write(head)
        if size:
            shutil.copyfileobj(_Exactly(fileobj, size), self.out)
            self.offset += size
        if size % BLOCK:
            self._write(_ZEROS[:BLOCK - size % BLOCK])

    def add_data(self, name: str, mode: int, data: bytes) -> None:
        """A regular file holding ``data``: :meth:`add` without its choices, for the
        millions of small generated files of a large stage2."""
        size = len(data)
        head = _header(name, mode, size, tarfile.REGTYPE, "")
        if head is None:
            self.add(name, mode, data=data)
        elif size % BLOCK:
            self._write(head + data + _ZEROS[:BLOCK - size % BLOCK])
        else:
            self._write(head + data)

    def add_block(self, prefix: str, shape: Shape, datas: tuple[bytes, ...]) -> None:
        """Entries named ``prefix + suffix``, in the order of ``shape`` ((suffix, mode, is a
        directory) of each), ``datas`` the contents of its regular files in order: the
        bytes :meth:`add` writes, made by one %-format per block. A large stage2 has six
        or seven entries per service in the same few shapes, and one header at a time was
        most of a compile's time."""
        key = (len(prefix), prefix.endswith("/"), shape, *map(len, datas))
        template = _TEMPLATES.get(key, False)
        if template is False:
            if len(_TEMPLATES) > 4096:
                _TEMPLATES.clear()
            template = _TEMPLATES[key] = _template(len(prefix), key[1], shape, key[3:])
        if template is None or not prefix.isascii():
            files = iter(datas)
            for suffix, mode, is_dir in shape:
                if is_dir:
                    self.add(prefix + suffix, mode, kind=tarfile.DIRTYPE)
                else:
                    self.add_data(prefix + suffix, mode, next(files))
            return
        fmt, sums, pick = template
        field = prefix.encode("ascii")
        base = sum(field)
        args = pick((field, *[checksum + base for checksum in sums], *datas))
        self._write(fmt % args)   # two or more picked per entry: always a tuple

    def close(self) -> None:
        self._write(_ZEROS[:2 * BLOCK])
        if self.offset % RECORD:
            self._write(_ZEROS[:RECORD - self.offset % RECORD])


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


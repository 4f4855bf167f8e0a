"""The build context: which host files a COPY may read, and what it puts in the image.

Like Docker's: a COPY source must resolve (``..`` and symlinks followed) to a
path inside the build context, the directory of the root Amifile or the
``--context DIR`` given to ``amic compile``. A stock service (an ``INCLUDE
name`` from ``services/``) has its own directory as its context. Anything
else is an :class:`~amic.errors.AmifileError` at the source's position,
raised before any file content is read.

A ``.amicignore`` at the top of a context (dockerignore syntax: ``*``, ``?``,
``[...]``, ``**``, ``!`` to re-include, ``#`` comments; the last matching line
wins; a pattern matches from the top of the context and everything below a
matching directory) keeps files out of the artifact and so out of every key.

Every file is read through a descriptor of the context's directory, with no symlink
at any level below it (:func:`amic.safeopen.open_beneath`), and checked again on
the open descriptor: a directory swapped for a symlink while amic reads cannot
bring a file from outside into the artifact. The artifact re-opens each file the
same way and refuses one that is no longer the file (device and inode) or the bytes
(sha256) the plan hashed.

Modes are the context's permission bits (``0600`` stays ``0600``; setuid,
setgid and sticky are dropped unless ``--mode`` sets them). FIFOs, sockets
and devices are refused, never opened. The regular files all COPYs of one
build read add up to at most :data:`DEFAULT_COPY_LIMIT` bytes
(``$AMIC_COPY_LIMIT`` overrides it). docs/language.md, "COPY", is the user's view.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator

import attrs

from amic import safeopen
from amic.amifile import ir
from amic.amifile.resolve import source_line, stock_service_dirs
from amic.amifile.source import MAX_AMIFILE_BYTES
from amic.compile.ignore import IgnoreRules, load_ignore
from amic.contract import IGNORE_FILE
from amic.errors import AmifileError, Pos, UsageError
from amic.safeopen import kind_name

DEFAULT_COPY_LIMIT = 2 * 1024 ** 3
"""Bytes of regular files all COPYs of one build may read (2 GiB)."""
LIMIT_ENV = "AMIC_COPY_LIMIT"
"""Overrides :data:`DEFAULT_COPY_LIMIT`: a byte count, or with a K, M, G or T suffix (binary)."""
PERMISSION_BITS = 0o777


@attrs.frozen
class CopyFile:
    """One file or directory a COPY puts into the image."""

    rel: str
    """Path below the COPY destination ('' for a single-file COPY)."""
    source: str = attrs.field(eq=False)
    """Absolute path on the build machine (never written into the artifact)."""
    mode: int
    kind: str
    """``file``, ``dir`` or ``symlink``."""
    digest: str
    """sha256 of the content (or of the link target)."""
    root: str = attrs.field(default="", eq=False)
    """The context directory the file was read from (its real path)."""
    below: str = attrs.field(default="", eq=False)
    """The path below ``root``, with no symlink in it: how the artifact opens the file."""
    identity: tuple[int, int, int] = attrs.field(default=(0, 0, 0), eq=False)
    """(device, inode, size) of the file hashed: the artifact reads that file, that many bytes."""
    target: str = attrs.field(default="", eq=False)
    """A symlink's target, as read when the plan was made."""


@attrs.frozen
class CopyPlan:
    """A COPY with its sources expanded into files."""

    index: int
    dest: str
    """Absolute destination; a file path for ``single`` copies, else a directory."""
    single: bool
    """True when one regular file is installed as ``dest`` exactly."""
    files: tuple[CopyFile, ...] = attrs.field(converter=tuple)


# ---- contexts ------------------------------------------------------------------------


@attrs.frozen
class BuildContext:
    root: str
    """Real path of the context directory."""
    shown: str
    """The directory as the user gave it (for messages)."""
    label: str
    """How messages name the context: the directory and why it is the context."""
    ignore: IgnoreRules
    identity: tuple[int, int] = (0, 0)
    """(device, inode) of the directory when it was first opened: every COPY reads that one."""


class Contexts:
    """The contexts of one plan: the build context, stock service directories, the size budget."""

    def __init__(self, main: str, *, explicit: bool = False, limit: int | None = None) -> None:
        if explicit and not os.path.isdir(main):
            raise UsageError(f"--context {main}: not a directory")
        self.explicit = explicit
        self.main_shown = main or "."
        self.main_label = (f"{self.main_shown} (--context)" if explicit
                           else f"{self.main_shown} (the Amifile's directory)")
        self.limit = copy_limit() if limit is None else limit
        self.used = 0
        self.stock = [os.path.realpath(d) for d in stock_service_dirs()]
        self.cache: dict[str, BuildContext] = {}
        self._main: tuple[str, tuple[int, int]] | None = None

    @property
    def main(self) -> str:
        """The real path of the build context, resolved once (when a COPY first needs it)
        following only symlinks of root or this user (:func:`amic.safeopen.resolve_dir`):
        a directory another user can swap for a symlink cannot make it another one."""
        if self._main is None:
            try:
                self._main = safeopen.resolve_dir(self.main_shown)
            except OSError as e:
                what = f"--context {printable(self.main_shown)}" if self.explicit \
                    else f"the build context {printable(self.main_shown)}"
                hint = (" (name the real directory, or own the link)"
                        if e.errno == errno.EPERM else "")
                raise (UsageError if self.explicit else AmifileError)(
                    f"{what}: {e.strerror or e}{hint}") from None
        return self._main[0]

    def for_copy(self, copy: ir.Copy) -> BuildContext:
        here = real_dir(copy.context or ".")
        root, shown, label = self.main, self.main_shown, self.main_label
        identity: tuple[int, int] | None = self._main[1] if self._main else None
        # A stock service outside the build context has its own directory as context.
        for d in ([] if inside(here, self.main) else self.stock):
            if here.startswith(d.rstrip("/") + "/"):
                root, shown, identity = here, copy.context, None
                label = f"{shown} (the stock service's directory)"
                break
        if root not in self.cache:
            self.cache[root] = first_look(root, shown, label, identity)
        return self.cache[root]

    def charge(self, size: int, copy: ir.Copy, index: int) -> None:
        self.used += size
        if self.used > self.limit:
            raise AmifileError(
                f"COPY would read more than {format_size(self.limit)} from the build context "
                "(all COPYs of this build together)", source_pos(copy, index),
                source_line=source_line(copy.pos),
                hint=f"leave large files out with {IGNORE_FILE}, or raise the limit with "
                     f"{LIMIT_ENV}=SIZE (e.g. 8G)")


def real_dir(path: str) -> str:
    """``os.path.realpath``, with a path that changes under it (a symlink swapped for a
    directory while it is read: ``EINVAL``) an error naming it, not a bare errno."""
    try:
        return os.path.realpath(path)
    except OSError as e:
        raise AmifileError(f"{printable(path)}: changed while amic resolved it "
                           f"({e.strerror or e}); compile again") from None


def copy_limit(environ: dict[str, str] | None = None) -> int:
    """The byte limit for COPY: ``$AMIC_COPY_LIMIT`` or :data:`DEFAULT_COPY_LIMIT`."""
    value = (os.environ if environ is None else environ).get(LIMIT_ENV, "").strip()
    if not value:
        return DEFAULT_COPY_LIMIT
    m = re.fullmatch(r"([0-9]+)\s*([KMGT]?)i?B?", value, re.IGNORECASE)
    if m is None:
        raise UsageError(f"{LIMIT_ENV}={value!r}: expected a size such as 2147483648, 512M or 8G")
    return int(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " ")


def format_size(n: int) -> str:
    for unit, size in (("TiB", 1024 ** 4), ("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


# ---- positions -----------------------------------------------------------------------


def instruction_words(pos: Pos) -> list[tuple[str, str, Pos]] | None:
    """(type, value, position) of the words of the instruction whose keyword is at ``pos``,
    re-read from its file (only on error paths); None when it cannot be found."""
    for keyword, words in instructions(pos.file):
        if (keyword.line, keyword.col) == (pos.line, pos.col):
            return words
    return None


def instructions(path: str) -> Iterator[tuple[Pos, list[tuple[str, str, Pos]]]]:
    """Every instruction of the file: (keyword position, [(type, value, position)])."""
    from amic.amifile.lexer import tokenize

    try:
        fd = safeopen.open_side_file(path)
        try:
            text = safeopen.read_at_most(fd, MAX_AMIFILE_BYTES).decode("utf-8", errors="replace")
        finally:
            os.close(fd)
        keyword: Pos | None = None
        words: list[tuple[str, str, Pos]] = []
        for tok in tokenize(text):
            where = Pos(path, tok.line, tok.column)
            if tok.type == "_NL":
                if keyword is not None:
                    yield keyword, words
                keyword, words = None, []
            elif keyword is None:
                keyword = where
                words = [("KEYWORD", str(tok.value).upper(), where)]
            else:
                words.append((tok.type, str(tok.value), where))
    except Exception:  # noqa: BLE001 - positions are a nicety; the error stands anyway
        return


def source_pos(copy: ir.Copy, index: int) -> Pos:
    """Where the ``index``-th source of ``copy`` is written (the COPY keyword if unknown)."""
    words = instruction_words(copy.pos) or []
    paths = [where for kind, _, where in words[1:] if kind != "OPTION"]
    return paths[index] if index < len(paths) else copy.pos


# ---- reading sources -----------------------------------------------------------------


def first_look(root: str, shown: str, label: str,
               identity: tuple[int, int] | None = None) -> BuildContext:
    """Open the context directory ``root`` once: its identity and its ``.amicignore``.
    ``identity``: the (device, inode) it had when it was resolved (it must still be that)."""
    with open_context_dir(root, label, identity) as fd:
        st = os.fstat(fd)
        if identity is None:
            try:
                where = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                where = root   # no /proc: the identity still binds every later open
            if where != root:
                raise AmifileError(f"the build context {label} was replaced while amic read "
                                   f"it (it is now {printable(where)}); compile again")
        return BuildContext(root, shown, label, load_ignore(fd, shown), (st.st_dev, st.st_ino))


@contextlib.contextmanager
def open_context_dir(root: str, shown: str, identity: tuple[int, int] | None = None
                     ) -> Iterator[int]:
    """A descriptor of the context directory (the same directory as ``identity``, if given)."""
    try:
        fd = safeopen.open_dir(root)
    except OSError as e:
        raise AmifileError(f"the build context {shown}: cannot be opened: "
                           f"{e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if identity is not None and (st.st_dev, st.st_ino) != identity:
            raise AmifileError(f"the build context {shown} was replaced while amic read it; "
                               "compile again")
        yield fd
    finally:
        os.close(fd)


def link_digest(target: str) -> str:
    # Same value as plan's digest of (target,), so keys of existing caches stay valid.
    blob = json.dumps([target], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def file_mode(st_mode: int, forced: str | None) -> int:
    """A file's mode in the artifact: ``--mode`` if given, else its permission bits."""
    return int(forced, 8) if forced is not None else stat.S_IMODE(st_mode) & PERMISSION_BITS


# ---- expanding a COPY ----------------------------------------------------------------


@attrs.frozen
class _Entry:
    rel: str
    below: str
    """Path below the context root, no symlink in it."""
    st: os.stat_result
    excluded: bool = False
    target: str = ""


def expand_copy(index: int, copy: ir.Copy, contexts: Contexts) -> CopyPlan:
    """Check every source of ``copy`` against its context, then hash what it copies.

    Every check (confinement, ``.amicignore``, special files, the size limit) runs
    on names and ``lstat`` results before the first byte of any file is read.
    Every read goes through a descriptor of the context directory, below which no
    symlink is followed.
    """
    ctx = contexts.for_copy(copy)
    many = len(copy.sources) > 1
    single = False
    chosen: list[_Entry] = []
    with open_context_dir(ctx.root, ctx.label, ctx.identity) as root_fd:
        for i, src in enumerate(copy.sources):
            below, st = resolve_source(copy, i, src, ctx, root_fd)
            if stat.S_ISDIR(st.st_mode):
                entries = walk(copy, i, below, ctx, root_fd)
            else:
                single = not many and not copy.dest.endswith("/")
                name = "" if single else os.path.basename(os.path.normpath(src))
                entries = [_Entry(name, below, st)]
            contexts.charge(sum(e.st.st_size for e in entries if stat.S_ISREG(e.st.st_mode)),
                            copy, i)
            chosen.extend(entries)
        files = [to_copy_file(e, copy.mode, ctx, root_fd) for e in chosen]
    seen: dict[str, CopyFile] = {}
    for f in files:
        seen[f.rel] = f  # a later source overwrites an earlier one, as cp would
    dest = re.sub("/+", "/", copy.dest)
    dest = dest.rstrip("/") or "/"
    return CopyPlan(index=index, dest=dest, single=single,
                    files=sorted(seen.values(), key=lambda f: f.rel))


_RACE_ERRNOS = (errno.ELOOP, errno.ENOENT, errno.ENOTDIR, errno.EXDEV, errno.EINVAL,
                errno.EISDIR, errno.EIO)
"""What a file renamed, replaced or swapped for a symlink between two looks gives."""


def changed(ctx: BuildContext, below: str, err: OSError | str) -> AmifileError:
    """The error for a context file that is not what amic saw a moment before (a race),
    or that cannot be read at all (a name too long, no permission)."""
    where = printable(os.path.join(ctx.root, below))
    if isinstance(err, OSError) and err.errno not in _RACE_ERRNOS:
        return AmifileError(f"COPY: {where}: cannot be read: {err.strerror or err}")
    why = err if isinstance(err, str) else (err.strerror or str(err))
    return AmifileError(f"COPY: {where} changed while amic read it ({why}); compile again",
                        hint="nothing may rename or replace files of the build context "
                             "while amic compiles")


def printable(name: str) -> str:
    """``name`` with control characters escaped, so a file name cannot drive the terminal."""
    if name.isprintable():
        return name
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def to_copy_file(e: _Entry, forced_mode: str | None, ctx: BuildContext, root_fd: int) -> CopyFile:
    source = os.path.join(ctx.root, e.below)
    if stat.S_ISLNK(e.st.st_mode):
        return CopyFile(e.rel, source, 0o777, "symlink", link_digest(e.target),
                        root=ctx.root, below=e.below, target=e.target)
    if stat.S_ISDIR(e.st.st_mode):
        return CopyFile(e.rel, source, stat.S_IMODE(e.st.st_mode) & PERMISSION_BITS, "dir", "",
                        root=ctx.root, below=e.below)
    try:
        fd = safeopen.open_beneath(root_fd, e.below)
    except OSError as err:
        raise changed(ctx, e.below, err) from None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (e.st.st_dev, e.st.st_ino):
            raise changed(ctx, e.below, "another file took its place")
        digest = safeopen.sha256_of(fd, st.st_size, source)
    except OSError as err:
        raise changed(ctx, e.below, err) from None
    finally:
        os.close(fd)
    return CopyFile(e.rel, source, file_mode(st.st_mode, forced_mode), "file", digest,
                    root=ctx.root, below=e.below, identity=(st.st_dev, st.st_ino, st.st_size))


def inside(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root + "/")


def resolve_source(copy: ir.Copy, i: int, src: str, ctx: BuildContext,
                   root_fd: int) -> tuple[str, os.stat_result]:
    """Where a COPY source is below the context root (no symlink in that path) and its
    ``stat``, once it is known to be allowed."""
    def fail(message: str, hint: str | None = None) -> AmifileError:
        return AmifileError(f"COPY source {src!r} {message}", source_pos(copy, i),
                            source_line=source_line(source_pos(copy, i)), hint=hint)

    joined = os.path.join(copy.context or ".", src)
    try:
        if not inside(os.path.realpath(joined), ctx.root):
            raise fail(f"is outside the build context {ctx.label}",
                       hint="COPY reads only files inside the build context (symlinks and "
                            "'..' resolved); move the file there or name a wider one with "
                            "--context DIR")
        real = os.path.realpath(joined, strict=True)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise fail("is a symlink loop") from None
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise fail(f"does not exist (looked in {copy.context or '.'})") from None
        if e.errno == errno.EINVAL:   # a symlink that was a directory when readlink ran
            raise fail("changed while amic read it (a symlink and a directory swapped); "
                       "compile again") from None
        raise fail(f"cannot be read: {e.strerror or e}") from None
    if not inside(real, ctx.root):  # changed between the two looks
        raise fail(f"is outside the build context {ctx.label}")
    below = os.path.relpath(real, ctx.root)
    if ctx.ignore.excluded(below):
        raise fail(f"is excluded by {os.path.join(ctx.shown, IGNORE_FILE)}")
    # From here on, only the context's descriptor: no symlink below it is followed.
    try:
        st = os.stat(below, dir_fd=root_fd, follow_symlinks=False) if below != "." \
            else os.fstat(root_fd)
    except OSError as e:
        raise changed(ctx, below, e) from None
    if stat.S_ISLNK(st.st_mode):
        raise changed(ctx, below, "it became a symlink")
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise fail(f"is {kind_name(st.st_mode)}; COPY takes regular files, directories "
                   "and symlinks to them")
    return below, st
def walk(copy: ir.Copy, i: int, top: str, ctx: BuildContext, root_fd: int) -> list[_Entry]:
    """Everything below directory ``top`` (a path below the context root) that the COPY
    takes, without reading contents. Each directory is opened below the context's
    descriptor with no symlink on the way, and listed through its own descriptor."""
    negates = ctx.ignore.negates
    out: list[_Entry] = []
    stack = [""]
    while stack:
        sub = stack.pop()
        here = os.path.join(top, sub) if sub else top
        for name, st, target in listing(ctx, here, root_fd):
            rel = f"{sub}/{name}" if sub else name
            below = os.path.normpath(os.path.join(here, name))
            excluded = ctx.ignore.excluded(below)
            if stat.S_ISDIR(st.st_mode):
                if not excluded or negates:
                    out.append(_Entry(rel, below, st, excluded))
                    stack.append(rel)
            elif excluded:
                continue
            elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                out.append(_Entry(rel, below, st, target=target))
            else:
                pos = source_pos(copy, i)
                raise AmifileError(
                    f"COPY source {copy.sources[i]!r}: {printable(rel)} is "
                    f"{kind_name(st.st_mode)}; "
                    "only regular files, directories and symlinks can be copied", pos,
                    source_line=source_line(pos),
                    hint=f"remove it, or leave it out with {IGNORE_FILE}")
    if not negates:
        return out
    # A directory that is excluded stays only when something re-included lives below it.
    needed = {"/".join(e.rel.split("/")[:k]) for e in out if not e.excluded
              for k in range(1, e.rel.count("/") + 1)}
    return [e for e in out if not e.excluded or e.rel in needed]


def listing(ctx: BuildContext, here: str, root_fd: int) -> list[tuple[str, os.stat_result, str]]:
    """(name, lstat, symlink target) of each entry of directory ``here`` (below the root),
    sorted by name, all read through one descriptor of that directory."""
    try:
        fd = safeopen.open_beneath(root_fd, here, directory=True)
    except OSError as e:
        raise changed(ctx, here, e) from None
    out: list[tuple[str, os.stat_result, str]] = []
    try:
        with os.scandir(fd) as it:
            names = sorted(entry.name for entry in it)
        for name in names:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            target = os.readlink(name, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else ""
            out.append((name, st, target))
    except OSError as e:
        raise changed(ctx, here, e) from None
    finally:
        os.close(fd)
    return out

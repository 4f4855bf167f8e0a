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

Modes are the context's permission bits (``0600`` stays ``0600``; setuid,
setgid and sticky are dropped unless ``--mode`` sets them). FIFOs, sockets
and devices are refused, never opened. The regular files all COPYs of one
build read add up to at most :data:`DEFAULT_COPY_LIMIT` bytes
(``$AMIC_COPY_LIMIT`` overrides it). docs/language.md, "COPY", is the user's view.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator

import attrs

from amic.amifile import ir
from amic.amifile.resolve import source_line, stock_service_dirs
from amic.contract import IGNORE_FILE
from amic.errors import AmifileError, Pos, UsageError

DEFAULT_COPY_LIMIT = 2 * 1024 ** 3
"""Bytes of regular files all COPYs of one build may read (2 GiB)."""
LIMIT_ENV = "AMIC_COPY_LIMIT"
"""Overrides :data:`DEFAULT_COPY_LIMIT`: a byte count, or with a K, M, G or T suffix (binary)."""
MAX_IGNORE_BYTES = 1024 * 1024
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


@attrs.frozen
class CopyPlan:
    """A COPY with its sources expanded into files."""

    index: int
    dest: str
    """Absolute destination; a file path for ``single`` copies, else a directory."""
    single: bool
    """True when one regular file is installed as ``dest`` exactly."""
    files: tuple[CopyFile, ...] = attrs.field(converter=tuple)


# ---- .amicignore -------------------------------------------------------------------


@attrs.frozen
class IgnoreRules:
    """The patterns of one ``.amicignore``, in file order: (compiled pattern, is ``!``)."""

    rules: tuple[tuple[re.Pattern[str], bool], ...] = ()

    @property
    def negates(self) -> bool:
        return any(neg for _, neg in self.rules)

    def excluded(self, rel: str) -> bool:
        """Whether ``rel`` (slash-separated, relative to the context) is left out."""
        if not self.rules or rel in ("", "."):
            return False
        parts = rel.split("/")
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        matched = False
        for regex, negated in self.rules:
            if negated != matched:
                continue  # cannot change the answer
            if any(regex.fullmatch(c) for c in candidates):
                matched = not negated
        return matched


def ignore_regex(pattern: str) -> re.Pattern[str]:
    """A dockerignore pattern as a regular expression over a slash path (Go's
    ``filepath.Match`` syntax plus ``**``, as moby's patternmatcher reads it)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 1
                if i + 1 < n and pattern[i + 1] == "/":
                    i += 1
                out.append(".*" if i + 1 == n else "(?:.*/)?")
            else:
                out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("^", "!") else i + 1)
            if end < 0:
                raise ValueError("unterminated '[' in the pattern")
            body = pattern[i + 1:end]
            negate = body[:1] in ("^", "!")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end
        elif c == "\\":
            if i + 1 >= n:
                raise ValueError("a pattern cannot end in '\\'")
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def parse_ignore(text: str, path: str) -> IgnoreRules:
    """The rules of an ``.amicignore`` text; a bad pattern is an error at its line."""
    rules: list[tuple[re.Pattern[str], bool]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.startswith("#"):
            continue
        line = raw.strip()
        negated = line.startswith("!")
        if negated:
            line = line[1:].strip()
        if not line:
            continue
        line = os.path.normpath(line).lstrip("/") or "."
        try:
            rules.append((ignore_regex(line), negated))
        except (ValueError, re.error) as e:
            raise AmifileError(f"bad .amicignore pattern {raw.strip()!r}: {e}",
                               Pos(path, number, 1), source_line=raw) from None
    return IgnoreRules(tuple(rules))


def load_ignore(root: str, shown: str | None = None) -> IgnoreRules:
    """``root/.amicignore`` (none: nothing is ignored). A special file there is an error.

    ``shown``: the directory as messages name it (default: ``root``)."""
    path = os.path.join(root, IGNORE_FILE)
    name = os.path.join(shown if shown is not None else root, IGNORE_FILE)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return IgnoreRules()
    if not stat.S_ISREG(st.st_mode):
        raise AmifileError(f"{name}: is {kind_name(st.st_mode)}, not an ignore file")
    if st.st_size > MAX_IGNORE_BYTES:
        raise AmifileError(f"{name}: larger than {MAX_IGNORE_BYTES} bytes")
    with open_regular(path) as fh:
        text = fh.read(MAX_IGNORE_BYTES + 1).decode("utf-8", errors="replace")
    return parse_ignore(text.removeprefix("\ufeff"), name)


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


class Contexts:
    """The contexts of one plan: the build context, stock service directories, the size budget."""

    def __init__(self, main: str, *, explicit: bool = False, limit: int | None = None) -> None:
        if explicit and not os.path.isdir(main):
            raise UsageError(f"--context {main}: not a directory")
        self.main = os.path.realpath(main or ".")
        self.main_shown = main or "."
        self.main_label = (f"{self.main_shown} (--context)" if explicit
                           else f"{self.main_shown} (the Amifile's directory)")
        self.limit = copy_limit() if limit is None else limit
        self.used = 0
        self.stock = [os.path.realpath(d) for d in stock_service_dirs()]
        self.cache: dict[str, BuildContext] = {}

    def for_copy(self, copy: ir.Copy) -> BuildContext:
        here = os.path.realpath(copy.context or ".")
        root, shown, label = self.main, self.main_shown, self.main_label
        # A stock service outside the build context has its own directory as context.
        for d in ([] if inside(here, self.main) else self.stock):
            if here.startswith(d.rstrip("/") + "/"):
                root, shown = here, copy.context
                label = f"{shown} (the stock service's directory)"
                break
        if root not in self.cache:
            self.cache[root] = BuildContext(root, shown, label, load_ignore(root, shown))
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
        with open_regular(path, follow=True) as fh:
            text = fh.read().decode("utf-8", errors="replace")
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


def open_regular(path: str, *, follow: bool = False):
    """Open ``path`` for reading without blocking on a FIFO (nor following a final
    symlink unless ``follow``); anything but a regular file is an ``OSError``."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(path, flags if follow else flags | os.O_NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open_regular(path) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def link_digest(target: str) -> str:
    # Same value as plan's digest of (target,), so keys of existing caches stay valid.
    blob = json.dumps([target], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def file_mode(st_mode: int, forced: str | None) -> int:
    """A file's mode in the artifact: ``--mode`` if given, else its permission bits."""
    return int(forced, 8) if forced is not None else stat.S_IMODE(st_mode) & PERMISSION_BITS


_SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
            (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def kind_name(st_mode: int) -> str:
    return next((what for test, what in _SPECIAL if test(st_mode)), "not a regular file")


# ---- expanding a COPY ----------------------------------------------------------------


@attrs.frozen
class _Entry:
    rel: str
    path: str
    st: os.stat_result
    excluded: bool = False


def expand_copy(index: int, copy: ir.Copy, contexts: Contexts) -> CopyPlan:
    """Check every source of ``copy`` against its context, then hash what it copies.

    Every check (confinement, ``.amicignore``, special files, the size limit) runs
    on names and ``lstat`` results before the first byte of any file is read.
    """
    ctx = contexts.for_copy(copy)
    many = len(copy.sources) > 1
    single = False
    chosen: list[_Entry] = []
    for i, src in enumerate(copy.sources):
        real, st = resolve_source(copy, i, src, ctx)
        if stat.S_ISDIR(st.st_mode):
            entries = walk(copy, i, real, ctx)
        else:
            single = not many and not copy.dest.endswith("/")
            name = "" if single else os.path.basename(os.path.normpath(src))
            entries = [_Entry(name, real, st)]
        contexts.charge(sum(e.st.st_size for e in entries if stat.S_ISREG(e.st.st_mode)), copy, i)
        chosen.extend(entries)
    files = [to_copy_file(e, copy.mode) for e in chosen]
    seen: dict[str, CopyFile] = {}
    for f in files:
        seen[f.rel] = f  # a later source overwrites an earlier one, as cp would
    dest = re.sub("/+", "/", copy.dest)
    dest = dest.rstrip("/") or "/"
    return CopyPlan(index=index, dest=dest, single=single,
                    files=sorted(seen.values(), key=lambda f: f.rel))


def to_copy_file(e: _Entry, forced_mode: str | None) -> CopyFile:
    try:
        if stat.S_ISLNK(e.st.st_mode):
            return CopyFile(e.rel, e.path, 0o777, "symlink", link_digest(os.readlink(e.path)))
        if stat.S_ISDIR(e.st.st_mode):
            return CopyFile(e.rel, e.path, stat.S_IMODE(e.st.st_mode) & PERMISSION_BITS, "dir", "")
        return CopyFile(e.rel, e.path, file_mode(e.st.st_mode, forced_mode), "file",
                        file_digest(e.path))
    except OSError as err:
        raise AmifileError(f"COPY: cannot read {e.path}: {err.strerror or err}") from None


def inside(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root + "/")


def resolve_source(copy: ir.Copy, i: int, src: str, ctx: BuildContext) -> tuple[str, os.stat_result]:
    """The real path of a COPY source and its ``stat``, once it is known to be allowed."""
    def fail(message: str, hint: str | None = None) -> AmifileError:
        return AmifileError(f"COPY source {src!r} {message}", source_pos(copy, i),
                            source_line=source_line(source_pos(copy, i)), hint=hint)

    joined = os.path.join(copy.context or ".", src)
    if not inside(os.path.realpath(joined), ctx.root):
        raise fail(f"is outside the build context {ctx.label}",
                   hint="COPY reads only files inside the build context (symlinks and '..' "
                        "resolved); move the file there or name a wider one with --context DIR")
    try:
        real = os.path.realpath(joined, strict=True)
        st = os.stat(real)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise fail("is a symlink loop") from None
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise fail(f"does not exist (looked in {copy.context or '.'})") from None
        raise fail(f"cannot be read: {e.strerror or e}") from None
    if not inside(real, ctx.root):  # changed between the two looks
        raise fail(f"is outside the build context {ctx.label}")
    if ctx.ignore.excluded(os.path.relpath(real, ctx.root)):
        raise fail(f"is excluded by {os.path.join(ctx.shown, IGNORE_FILE)}")
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise fail(f"is {kind_name(st.st_mode)}; COPY takes regular files, directories "
                   "and symlinks to them")
    return real, st


def walk(copy: ir.Copy, i: int, top: str, ctx: BuildContext) -> list[_Entry]:
    """Everything below directory ``top`` that the COPY takes, without reading contents."""
    top_rel = os.path.relpath(top, ctx.root)
    negates = ctx.ignore.negates
    out: list[_Entry] = []
    stack = [""]
    while stack:
        sub = stack.pop()
        here = os.path.join(top, sub) if sub else top
        try:
            names = sorted(os.listdir(here))
        except OSError as e:
            raise AmifileError(f"COPY source {copy.sources[i]!r}: cannot read {here}: "
                               f"{e.strerror or e}", source_pos(copy, i),
                               source_line=source_line(copy.pos)) from None
        for name in names:
            rel = f"{sub}/{name}" if sub else name
            full = os.path.join(here, name)
            st = os.lstat(full)
            excluded = ctx.ignore.excluded(rel if top_rel == "." else f"{top_rel}/{rel}")
            if stat.S_ISDIR(st.st_mode):
                if not excluded or negates:
                    out.append(_Entry(rel, full, st, excluded))
                    stack.append(rel)
            elif excluded:
                continue
            elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                out.append(_Entry(rel, full, st))
            else:
                pos = source_pos(copy, i)
                raise AmifileError(
                    f"COPY source {copy.sources[i]!r}: {rel} is {kind_name(st.st_mode)}; "
                    "only regular files, directories and symlinks can be copied", pos,
                    source_line=source_line(pos),
                    hint=f"remove it, or leave it out with {IGNORE_FILE}")
    if not negates:
        return out
    # A directory that is excluded stays only when something re-included lives below it.
    needed = {"/".join(e.rel.split("/")[:k]) for e in out if not e.excluded
              for k in range(1, e.rel.count("/") + 1)}
    return [e for e in out if not e.excluded or e.rel in needed]

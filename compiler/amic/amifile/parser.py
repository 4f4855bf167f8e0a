"""Amifile text -> :class:`amic.amifile.ir.Amifile`: the parser's entry points.

How it works, and why
---------------------

Four small modules, each with one job (like BuildKit's parser /
instructions / dispatch split):

1. ``lexer.py``: a line-oriented pre-lexer plugged into lark as a custom
   lexer. Heredocs, ``\\`` continuations and per-instruction argument rules
   are not context free; a loop over lines handles them and yields tokens
   that keep their original line and column.

2. ``grammar.lark`` (LALR, loaded here) checks the shape of every
   instruction. Because the lexer knows which instruction a token belongs
   to, a parse error is mapped to a message from the instruction table
   (``instructions.py``): "REQUIRES needs at least one service name",
   "usage: COPY [--mode=0644] SRC... DEST". That is more precise than lark's
   ``match_examples`` and needs no example corpus.

3. ``records.py``: a ``Transformer``, run by the LALR parser as it reduces each
   rule (no tree is built), makes typed, positioned instruction records, one
   frozen class per instruction. A line of plain words (``SERVICE web``,
   ``REQUIRES a b``: most of a large Amifile) skips the LALR loop: the lexer makes
   its record with the same method (``records.PLAIN``; :func:`feed_records`), and
   a test parses the same inputs both ways.

4. ``assembly.py`` dispatches on the record classes: it checks where each
   instruction may appear, validates names and options, and builds the
   frozen IR. It takes each record as it is made, so a large file's records and
   tokens are never all held at once (a 4 MiB file peaked at 344 MB, now 255).

Startup (measured on the dev box, Python 3.11): importing lark costs about
20 ms, building the LALR tables about 11 ms, parsing a typical Amifile under
1 ms. The tables are built once per process (:func:`parser` is
``functools.cache``\\ d) and kept in lark's cache format in the user's cache
directory, which brings the build down to about 1 ms
(:func:`grammar_cache_file` says where and why not lark's ``cache=True``).

The only exception this module raises for bad input is
:class:`amic.errors.AmifileError`. Besides its grammar (and the grammar
cache) it reads only the file given to :func:`parse_file`: INCLUDE is
recorded, resolve.py follows it.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence

from lark import Lark, Token
from lark.exceptions import UnexpectedInput

from amic import gcpause
from amic.amifile import ir
from amic.amifile.assembly import Assembler, assemble
from amic.amifile.instructions import DOCKERFILE_HINTS, INSTRUCTIONS
from amic.amifile.lexer import AmifileLexer, LexError, line_text, split_lines, tokenize
from amic.amifile.records import PLAIN, Record, ToRecords
from amic.amifile.source import MAX_AMIFILE_BYTES, amifile_path, read_source
from amic.diagnostics import MAX_SHOWN
from amic.errors import AmifileError, Pos

__all__ = ["MAX_AMIFILE_BYTES", "MAX_LINE_CHARS", "amifile_path", "check_limits",
           "feed_records", "grammar_cache_file", "parse_file", "parse_records", "parse_text",
           "parser", "read_source"]


# --------------------------------------------------------------------------
# The grammar


@functools.cache
def parser() -> Lark:
    """The LALR parser for ``grammar.lark``, built once per process.

    The tables are cached in the user's cache directory (see :func:`grammar_cache_file`);
    lark checks a hash of the grammar, its options, its own version and Python's
    before it trusts the file, and rebuilds (and rewrites) it on any mismatch or
    read error.
    """
    # The records are made as the parser reduces each rule (``transformer=``): no tree is
    # built and walked again, and no tree positions are kept (records take theirs from
    # tokens): a third less parse time on a large file.
    return Lark.open("grammar.lark", rel_to=__file__, parser="lalr", lexer=AmifileLexer,
                     transformer=_transformer(), propagate_positions=False,
                     maybe_placeholders=False, cache=grammar_cache_file() or False)


@functools.cache
def _transformer() -> ToRecords:
    """The parser's transformer (:func:`feed_records` points its ``emit`` at a sink)."""
    return ToRecords()


def grammar_cache_file() -> str | None:
    """``$XDG_CACHE_HOME/amic/grammar-pyXY.lark-cache`` (default ``~/.cache``), or ``None``.

    Not lark's ``cache=True``: that pickles into the shared temporary directory,
    where another local user could plant the file. ``AMIC_NO_GRAMMAR_CACHE=1``
    turns caching off. Nothing is written next to the package (it may be
    read-only), and the cache never reaches an artifact.
    """
    if os.environ.get("AMIC_NO_GRAMMAR_CACHE"):
        return None
    root = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(root):  # unset, or relative (which the XDG spec says to ignore)
        root = os.path.join(os.path.expanduser("~"), ".cache")
        if not os.path.isabs(root):
            return None
    directory = os.path.join(root, "amic")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError:
        return None
    if not os.access(directory, os.W_OK):
        return None
    return os.path.join(directory, "grammar-py%d%d.lark-cache" % sys.version_info[:2])


# --------------------------------------------------------------------------
# Errors from the parse table


def _describe(tok: Token) -> str:
    if tok.type == "KEY":
        return f"'{tok}='"
    if tok.type == "HEREDOC":
        return "a heredoc"
    if tok.type == "TEXT":
        return repr(str(tok).rstrip("\n"))
    return repr(str(tok))


def _syntax_error(err: UnexpectedInput, text: str, path: str,
                  lines: Sequence[str]) -> AmifileError:
    """Map a lark parse error to a message about the instruction it happened in."""
    tok = getattr(err, "token", None)
    keyword = None
    if isinstance(tok, Token):  # lex again (only on this error path) to find the instruction
        for t in tokenize(text):
            if (t.line, t.column) >= (tok.line, tok.column):
                break
            if t.type in INSTRUCTIONS:
                keyword = t
    if not isinstance(tok, Token) or keyword is None:  # cannot happen with our lexer
        line, col = getattr(err, "line", 1), getattr(err, "column", 1)
        return AmifileError("syntax error", Pos(path, max(line, 1), max(col, 1)),
                            source_line=line_text(lines, line))
    spec = INSTRUCTIONS[keyword.type]
    if tok.type == "_NL":
        message = f"{spec.name} needs {spec.needs}"
    elif spec.mode == "pairs" and tok.type == "WORD":
        message = f"expected NAME=value in {spec.name}, found {_describe(tok)}"
    else:
        message = f"unexpected {_describe(tok)} in {spec.name}"
    return AmifileError(message, Pos(path, tok.line, tok.column),
                        source_line=line_text(lines, tok.line), hint=f"usage: {spec.usage}")


# --------------------------------------------------------------------------
# The API

MAX_LINE_CHARS = 64 * 1024
"""The longest physical line; a longer one is an error at its start, not echoed back."""


def check_limits(text: str, path: str, lines: Sequence[str] | None = None) -> None:
    """Size, line length, lone CR and NUL bytes, checked in linear time before parsing.

    ``lines``: ``split_lines(text)`` if the caller has it already.
    """
    if len(text) > MAX_AMIFILE_BYTES:
        raise AmifileError(f"the Amifile is larger than {MAX_AMIFILE_BYTES} bytes",
                           Pos(path, 1, 1), hint="split it with INCLUDE")
    lines = split_lines(text) if lines is None else lines
    if lines and max(map(len, lines)) > MAX_LINE_CHARS:
        number = next(i for i, line in enumerate(lines, 1) if len(line) > MAX_LINE_CHARS)
        raise AmifileError(f"line longer than {MAX_LINE_CHARS} characters", Pos(path, number, 1),
                           hint="long data belongs in a file that COPY installs")
    if "\r" in text and any("\r" in line for line in lines):   # CRLF ends are gone already
        number = next(i for i, line in enumerate(lines, 1) if "\r" in line)
        raise AmifileError("carriage return (CR) without a line feed",
                           Pos(path, number, lines[number - 1].index("\r") + 1),
                           hint="amic reads LF or CRLF line ends, not CR alone (classic Mac "
                                "text): convert the file, e.g. with `dos2unix -c mac`; in a "
                                "script write the character as \\r (printf '\\r')")
    if "\0" in text:
        # The line is not shown: a file with NUL bytes is no text, and may be anything
        # (``INCLUDE /proc/self/environ`` would print the environment).
        number = next(i for i, line in enumerate(lines, 1) if "\0" in line)
        raise AmifileError("NUL byte in an Amifile",
                           Pos(path, number, lines[number - 1].index("\0") + 1),
                           hint="Amifiles are text; a shell would drop NUL bytes silently")


def parse_text(text: str, path: str) -> ir.Amifile:
    """Parse Amifile ``text``; ``path`` is used in positions and for COPY contexts.

    The cyclic garbage collector is paused meanwhile: parsing makes no cycles, and its
    full passes over the growing records would make a large file superlinear.
    """
    path = os.fspath(path)
    lines = split_lines(text)
    check_limits(text, path, lines)
    with gcpause.paused():
        return _parse(text, path, lines)


def feed_records(text: str, feed: Callable[[Record], object]) -> None:
    """Give ``feed`` the records of ``text`` in file order, as they are made: those of the
    lines of plain words (most of a large Amifile) skip lark's LALR loop, the lexer makes
    them (``records.PLAIN``) when it reaches them; lark makes the others as it reduces
    each instruction (``ToRecords.emit``), before the lexer reads on. Errors are lark's on
    the same tokens, raised before any later record is fed."""
    transformer = _transformer()
    transformer.emit = feed   # one parse at a time: amic parses in one thread, none nested
    try:
        parser().parse(tokenize(text, feed, PLAIN))
    finally:
        del transformer.emit   # the class's: records pass through


def parse_records(text: str) -> list[Record]:
    """The records of ``text``, as ``parser().parse(text)`` makes them (by :func:`feed_records`)."""
    records: list[Record] = []
    feed_records(text, records.append)
    return records


def _parse(text: str, path: str, lines: list[str]) -> ir.Amifile:
    assembler = Assembler(path, lines)
    try:
        feed_records(text, assembler.feed)
    except (LexError, UnexpectedInput) as e:
        errors, dropped = _syntax_errors(e, text, path, lines)
        error = AmifileError.collected(errors[:MAX_SHOWN], complete=len(errors) <= MAX_SHOWN)
        if dropped is not None and error.complete:
            error = _next_stage(error, path, lines, dropped)
        raise error from None
    return assembler.finish()


_OPENERS = ("SERVICE", "INCLUDE")
"""Instructions whose loss changes what the lines after them mean."""


def _next_stage(error: AmifileError, path: str, lines: list[str],
                dropped: list[tuple[int, int]]) -> AmifileError:
    """``error`` (the syntax errors) with the placement errors of the file parsed without
    the instructions they are in, or carrying that file's IR for the resolver to check
    (``AmifileError.recovered``). Only when no dropped instruction is a SERVICE or an
    INCLUDE (or a word that may be one mistyped): without one of those, what follows
    would be misplaced or missing for no fault of its own. One more parse, on this
    error path only."""
    import difflib  # only on this error path

    for first, _ in dropped:
        word = lines[first - 1].lstrip(" \t").split(maxsplit=1)[:1]
        if not word or difflib.get_close_matches(word[0], _OPENERS, n=1, cutoff=0.7):
            return error
    kept = list(lines)
    for first, last in dropped:
        kept[first - 1:last] = [""] * (last - first + 1)
    try:
        records = parser().parse("\n".join(kept) + "\n")
        amifile = assemble(records, path, lines)
    except (LexError, UnexpectedInput):
        return error
    except AmifileError as placement:
        joined = error.joined(placement)
        joined.recovered = placement.recovered
        return joined
    error.recovered = amifile
    return error


def _error_from(e: LexError | UnexpectedInput, text: str, path: str,
                lines: Sequence[str]) -> AmifileError:
    if isinstance(e, LexError):
        return AmifileError(e.message, Pos(path, e.line, e.col),
                            source_line=line_text(lines, e.line) if e.quote else None,
                            hint=e.hint)
    return _syntax_error(e, text, path, lines)


def _syntax_errors(first: LexError | UnexpectedInput, text: str, path: str,
                   lines: list[str]) -> tuple[list[AmifileError], list[tuple[int, int]] | None]:
    """The first syntax error, then every later one, each found by parsing again from the
    next instruction after the last error (the grammar is a flat list of instructions, so
    any instruction can start a parse). Only this error path pays for it, at most
    :data:`MAX_SHOWN` parses of the file's tail: still linear in the file.

    Also the line ranges (first, last) of the instructions the errors are in, or None when
    the search could not resume past one (the rest of the file is then unknown)."""
    errors = [_error_from(first, text, path, lines)]
    dropped: list[tuple[int, int]] | None = []
    e: LexError | UnexpectedInput = first
    while len(errors) <= MAX_SHOWN:
        if isinstance(e, LexError) and not e.resumable:
            return errors, None   # not an Amifile, or a heredoc that swallowed the rest
        line = _error_line(e)
        resume = _resume_line(lines, line)
        start = _instruction_start(lines, line)
        if start is None:
            dropped = None
        elif dropped is not None:
            dropped.append((start, (resume - 1) if resume else len(lines)))
        if resume is None:
            break
        # Blank lines keep the numbering; a parse of the tail alone sees the same tokens.
        tail = "\n" * (resume - 1) + "\n".join(lines[resume - 1:]) + "\n"
        try:
            parser().parse(tail)
            break
        except (LexError, UnexpectedInput) as again:
            e = again
            errors.append(_error_from(e, tail, path, lines))
    return errors, dropped


def _instruction_start(lines: Sequence[str], line: int) -> int | None:
    """The line that starts the instruction line ``line`` is in (not a continuation of the
    line before), or None when it is not an instruction's first word that starts it."""
    k = min(line, len(lines))
    while k > 1 and lines[k - 2].rstrip(" \t").endswith("\\"):
        k -= 1
    if k < 1:
        return None
    word = lines[k - 1].lstrip(" \t").split(maxsplit=1)[:1]
    return k if word and _looks_like_instruction(word[0]) else None


def _error_line(e: LexError | UnexpectedInput) -> int:
    if isinstance(e, LexError):
        return e.line
    tok = getattr(e, "token", None)
    return tok.line if isinstance(tok, Token) else getattr(e, "line", 1)


def _resume_line(lines: Sequence[str], after: int) -> int | None:
    """The first line after line ``after`` that starts an instruction, or ``None``.

    It starts one when the line before does not continue onto it and its first word is an
    instruction in capitals, a Dockerfile one or a near miss (those are errors worth
    reporting too). Lower case is not enough: a script body line such as ``env X=1 cmd``
    would start a bogus instruction.
    """
    for k in range(after, len(lines)):
        word = lines[k].lstrip(" \t").split(maxsplit=1)[:1]
        if word and _looks_like_instruction(word[0]) \
                and not lines[k - 1].rstrip(" \t").endswith("\\"):
            return k + 1
    return None


def _looks_like_instruction(word: str) -> bool:
    import difflib  # only on this error path: keeps startup lean

    if not (word.isascii() and word.isalpha() and word.isupper()):
        return False
    return word in INSTRUCTIONS or word in DOCKERFILE_HINTS or bool(
        difflib.get_close_matches(word, INSTRUCTIONS, n=1, cutoff=0.8))


def parse_file(path: str | os.PathLike[str]) -> ir.Amifile:
    """Read and parse one Amifile (UTF-8, optional BOM, LF or CRLF).

    A special file, a file over the size limit
    or with NUL bytes or over-long lines is an ``AmifileError``. A file that cannot
    be read raises ``OSError`` unchanged: that is not a mistake *in* an Amifile,
    and the caller knows the context (resolve.py points at the INCLUDE, the CLI at
    the command line).
    """
    name, data = read_source(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        line_end = data.find(b"\n", e.start)
        raw_line = data[line_start: None if line_end < 0 else line_end]
        line = data.count(b"\n", 0, e.start) + 1
        col = len(data[line_start:e.start].decode("utf-8", "replace")) + 1
        if line == 1 and raw_line.startswith(b"\xef\xbb\xbf"):
            col -= 1
        check_limits(data[:line_start].decode("utf-8", "replace"), name)
        if len(raw_line) > MAX_LINE_CHARS:
            raise AmifileError(f"line longer than {MAX_LINE_CHARS} characters",
                               Pos(name, line, 1)) from None
        # The line is not shown: a file that is not UTF-8 is not an Amifile (a binary, a
        # key), and its bytes are nobody's business in an error.
        raise AmifileError(f"invalid UTF-8 (byte 0x{data[e.start]:02x})", Pos(name, line, col),
                           hint="Amifiles are UTF-8 text") from None
    return parse_text(text, name)

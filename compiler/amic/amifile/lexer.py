"""The line-oriented pre-lexer: Amifile text -> lark tokens for ``grammar.lark``.

An Amifile is line based and its hard parts are not context free: a heredoc
body runs until a terminator chosen on the opener line, ``\\`` joins physical
lines, and each instruction splits its arguments differently (``NAME=value``
only splits in ENV/ARG/LABEL, so ``PACKAGES nginx=1.24`` stays one word; a
one-line INIT is raw shell and is never unquoted). A regular-expression lexer
would need states and lookbehind for all of that; a loop over lines reads like
the rules in ``docs/language.md``.

:func:`tokenize` yields lark ``Token``\\ s that keep the original line and
column (also across continuations), one ``_NL`` per instruction, and never
yields comments or blank lines. A heredoc becomes one :class:`HeredocToken`
whose value is the already dedented body. How each instruction's arguments
are split comes from its ``mode`` in :data:`~amic.amifile.instructions.INSTRUCTIONS`.
The file's bytes have already been decoded; a leading BOM and CRLF line ends
are dropped here (:func:`split_lines`).
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any

import attrs
from lark import Token
from lark.lexer import Lexer

from amic.amifile.instructions import DOCKERFILE_HINTS, INSTRUCTIONS, Instruction

__all__ = ["AmifileLexer", "HeredocToken", "LexError", "line_text", "split_lines", "tokenize"]


class LexError(Exception):
    """A lexing mistake at a 1-based (line, col); the parser adds the file.

    ``quote``: whether the error may show the line. Not when the file is no Amifile at
    all (its first word is no instruction): it may be any file (``INCLUDE /etc/shadow``),
    and an error must not print it.
    """

    def __init__(self, message: str, line: int, col: int, hint: str | None = None, *,
                 quote: bool = True, resumable: bool = True) -> None:
        super().__init__(message)
        self.message, self.line, self.col, self.hint = message, line, col, hint
        self.quote = quote
        self.resumable = resumable and quote
        """Whether the lines after this mistake can still be read as instructions (not
        after a heredoc that never ends: the rest of the file is its body)."""


class HeredocToken(Token):
    """A ``HEREDOC`` token; also knows the Amifile line of the body's first line."""

    body_line: int


_CONTINUATION_RE = re.compile(r"\\[ \t]*$")
_KEYWORD_RE = re.compile(r"[^ \t]+")
_HEREDOC_RE = re.compile(
    r"<<(?P<flavour>[-~]?)"
    r"""(?:'(?P<sq>[^']*)'|"(?P<dq>[^"]*)"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"""
    r"[ \t]*$"
)
_DELIMITER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPECIAL_RE = re.compile(r"""['"\\#]""")
"""What makes a word more than its characters: quotes, escapes, a comment."""
_BLANKS = " \t"


def line_text(lines: Sequence[str], number: int) -> str | None:
    """Physical line ``number`` (1-based) of ``lines`` for the caret display, or None."""
    return lines[number - 1] if 0 < number <= len(lines) else None


def split_lines(text: str) -> list[str]:
    """Physical lines without terminators: LF or CRLF; a final newline adds no line."""
    text = text.removeprefix("\ufeff")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


@attrs.define
class _Logical:
    """One instruction's physical lines joined at ``\\`` continuations.

    Remembers where every character came from, so tokens keep real positions.
    """

    text: str = ""
    """The joined text, once :meth:`seal` was called (joined once: linear in its length)."""
    starts: list[int] = attrs.Factory(list)
    """Index in ``text`` where each piece begins."""
    origins: list[tuple[int, int]] = attrs.Factory(list)
    """(line, col) of each piece's first character."""
    last_line: int = 0
    pieces: list[str] = attrs.Factory(list)
    length: int = 0

    def add(self, piece: str, line: int, col: int) -> None:
        self.starts.append(self.length)
        self.origins.append((line, col))
        self.pieces.append(piece)
        self.length += len(piece)
        self.last_line = line

    def seal(self) -> _Logical:
        self.text = "".join(self.pieces)
        return self

    def end_of_piece(self, index: int) -> int:
        """Index where the physical line holding ``text[index]`` ends."""
        k = bisect.bisect_right(self.starts, index)
        return self.starts[k] if k < len(self.starts) else len(self.text)

    def where(self, index: int) -> tuple[int, int]:
        k = bisect.bisect_right(self.starts, index) - 1
        line, col = self.origins[k]
        return line, col + index - self.starts[k]


class AmifileLexer(Lexer):
    """Lark custom lexer: Amifile text -> tokens for ``grammar.lark``. See the module docstring."""

    def __init__(self, lexer_conf: object = None) -> None:
        pass

    # Lark's original custom-lexer interface (``__future_interface__`` 0) passes
    # the whole text as the only argument; the base class declares the newer
    # (state, parser_state) one, hence the loose signature.
    # Or the tokens themselves: the parser's fast path hands lark ``tokenize``'s generator.
    def lex(self, data: Any, *_: Any) -> Iterator[Token]:
        return tokenize(data) if isinstance(data, str) else data


PlainRule = tuple[int, int, Callable[[list[Token]], Any]]
"""How many words an instruction of plain words takes (fewest, most) and what makes its
record of its tokens (the keyword, then the words): the parser's (``records.PLAIN``)."""


def tokenize(text: str, emit: Callable[[Any], object] | None = None,
             rules: Mapping[str, PlainRule] | None = None) -> Iterator[Token]:
    """Yield the tokens of ``text``; raise ``LexError`` at the first lexing mistake.

    With ``emit`` and ``rules``: a plain line (:func:`_plain_line`) whose instruction has a
    rule and whose words it takes yields no token; its record goes to ``emit`` when the
    lexer reaches it (after every record before it: see ``parser.feed_records``). The
    parser's LALR loop costs about 1.5 us a token, and a large Amifile is mostly such lines
    (``SERVICE web``): they are records at once, made by the method the parser would call
    on the same tokens.
    """
    lines = split_lines(text)
    i, n = 0, len(lines)
    first = True
    while i < n:
        raw = lines[i]
        body = raw.lstrip(_BLANKS)
        if not body or body.startswith("#"):
            i += 1
            continue
        if "\\" not in body:
            col = len(raw) - len(body) + 1
            plain = _plain_line(body, i + 1, col)
            if plain is not None:
                i += 1
                first = False
                if rules is not None:
                    rule = rules.get(plain[0].type)
                    if rule is not None and rule[0] <= len(plain) - 1 <= rule[1]:
                        emit(rule[2](plain))
                        continue
                yield from plain
                end = col + len(body)
                yield _new("_NL", "\n", None, i, end, end)   # (i: this line's number now)
                continue
        logical = _Logical()
        piece, line, col = body, i + 1, len(raw) - len(body) + 1
        while True:
            m = _CONTINUATION_RE.search(piece) if "\\" in piece else None
            if m is None:
                logical.add(piece, line, col)
                i += 1
                break
            logical.add(piece[: m.start()], line, col)
            i += 1
            # Like Dockerfile: comment lines inside a continuation are skipped.
            # Unlike Dockerfile, a blank line (or the end of the file) ends it.
            while i < n and lines[i].lstrip(_BLANKS).startswith("#"):
                i += 1
            if i >= n or not lines[i].strip(_BLANKS):
                break
            piece, line, col = lines[i], i + 1, 1
        i = yield from _instruction_tokens(logical.seal(), lines, i, first)
        first = False


def _plain_line(body: str, line: int, col: int) -> list[Token] | None:
    """The tokens of the most common line but its ``_NL``, or None to take the general path.

    That line (``SERVICE web``, ``REQUIRES db cache``) is one physical line (no ``\\``)
    of an instruction that takes plain words, with no quote or comment: every token
    is a run of non-blanks at its own column. A large Amifile is mostly such lines,
    and the general path's bookkeeping for continuations (an object per line, a
    bisect per token) nearly doubled the lexer's time on them. The tokens are the
    ones the general path makes.
    """
    m = _KEYWORD_RE.match(body)
    word = m.group()
    spec = INSTRUCTIONS.get(word.upper()) if word.isascii() else None
    if spec is None or spec.mode != "words" or _SPECIAL_RE.search(body, m.end()) is not None:
        return None
    tokens = [_new(spec.name, word, 0, line, col, col + len(word))]
    for w in _KEYWORD_RE.finditer(body, m.end()):
        value, start = w.group(), w.start()
        tokens.append(_new("WORD", value, start, line, col + start, col + start + len(value)))
    return tokens


def _new(kind: str, value: str, start_pos: int | None, line: int, col: int,
         end_col: int) -> Token:
    """``Token(kind, value, start_pos, line, col, line, end_col)`` without the keyword
    handling of lark's constructor (two Python frames of the three a token cost on the
    lines :func:`_plain_line` reads)."""
    tok = _str_new(Token, value)
    tok.type, tok.value, tok.start_pos, tok.end_pos = kind, value, start_pos, None
    tok.line, tok.column, tok.end_line, tok.end_column = line, col, line, end_col
    return tok


_str_new = str.__new__


def _instruction_tokens(logical: _Logical, lines: Sequence[str], i: int,
                        first: bool = False) -> Generator[Token, None, int]:
    """Tokens of one logical line; returns the index of the next physical line.

    ``first``: this is the file's first instruction (which tells an Amifile from any file).
    """
    text = logical.text
    m = _KEYWORD_RE.search(text)
    if m is None:  # only `\` and blanks: no instruction
        return i
    word = m.group()
    line, col = logical.where(m.start())
    # ASCII only: str.upper() folds other letters too ('SERVıCE' -> 'SERVICE', dotless i)
    spec = INSTRUCTIONS.get(word.upper()) if word.isascii() else None
    if spec is None:
        if first and not _near_instruction(word):
            raise LexError("not an Amifile: its first line is no instruction", line, col,
                           "an Amifile starts with an instruction such as FROM or SERVICE "
                           "(a line starting with '#' is a comment); the line is not shown",
                           quote=False)
        message, hint = _unknown_instruction(word)
        raise LexError(message, line, col, hint)
    yield _token(spec.name, word, logical, m.start())
    p = m.end()
    if spec.mode == "script":
        rest = text[p:].strip(_BLANKS)
        start = len(text) - len(text[p:].lstrip(_BLANKS))
        if rest.startswith("<<"):
            i = yield from _heredoc(spec, logical, start, lines, i)
        elif rest:
            yield _token("TEXT", rest + "\n", logical, start)
    else:
        yield from _words(spec, logical, p)
    end_line, end_col = logical.where(len(text))
    yield Token("_NL", "\n", line=end_line, column=end_col, end_line=end_line,
                end_column=end_col)
    return i


def _token(kind: str, value: str, logical: _Logical, index: int) -> Token:
    line, col = logical.where(index)
    return Token(kind, value, start_pos=index, line=line, column=col, end_line=line,
                 end_column=col + max(len(value), 1))


def _near_instruction(word: str) -> bool:
    """``word`` is a misspelt instruction or a Dockerfile one (an Amifile with a typo)."""
    import difflib  # only on this error path: keeps startup lean

    if not word.isalpha():
        return False
    upper = word.upper()
    return upper in DOCKERFILE_HINTS or bool(
        difflib.get_close_matches(upper, INSTRUCTIONS, n=1, cutoff=0.6))


def _unknown_instruction(word: str) -> tuple[str, str | None]:
    import difflib  # only on this error path: keeps startup lean

    upper = word.upper()
    if not word.isascii() and upper in INSTRUCTIONS:
        odd = next(c for c in word if not c.isascii())
        return (f"unknown instruction {_shown(word)}: {odd!r} is not an ASCII letter",
                f"instructions are ASCII words: write {upper}")
    if not re.fullmatch(r"[A-Za-z]+", word):
        return (f"expected an instruction (such as SERVICE), found {_shown(word)}",
                "instructions start a line; '#' starts a comment")
    hint = DOCKERFILE_HINTS.get(upper)
    close = difflib.get_close_matches(upper, INSTRUCTIONS, n=1, cutoff=0.6)
    if close and upper != "SERVICES":
        return f"unknown instruction {_shown(word)}; did you mean {close[0]}?", hint
    return f"unknown instruction {_shown(word)}", hint or (
        "instructions are " + ", ".join(INSTRUCTIONS))


def _shown(word: str, most: int = 40) -> str:
    """``word`` quoted for a message, cut to ``most`` characters (a line may be 64 KiB)."""
    return repr(word) if len(word) <= most else repr(word[:most]) + "..."


def _words(spec: Instruction, logical: _Logical, p: int) -> Iterator[Token]:
    """Shell-like words: quotes and backslash escapes removed, KEY/OPTION split by mode."""
    text = logical.text
    n = len(text)
    plain = False  # ENV in legacy form (first word has no `=`): the rest are plain words
    first = True
    options_allowed = spec.mode == "copy"
    while True:
        while p < n and text[p] in _BLANKS:
            p += 1
        if p >= n:
            return
        start = p
        if text[p] == "#":  # a comment, as in sh: to the end of this physical line
            p = logical.end_of_piece(p)
            continue
        buf: list[str] = []
        eq_at: int | None = None  # index in text of the first unquoted '='
        key = ""
        while p < n and text[p] not in _BLANKS:
            c = text[p]
            if c == "'":
                q = text.find("'", p + 1)
                if q < 0:
                    line, col = logical.where(p)
                    raise LexError("unterminated single quote", line, col,
                                   hint="close it with ' on the same instruction")
                buf.append(text[p + 1:q])
                p = q + 1
            elif c == '"':
                p = _double_quoted(logical, p, buf)
            elif c == "\\" and p + 1 < n:
                buf.append(text[p + 1])
                p += 2
            else:
                if c == "=" and eq_at is None:
                    eq_at = p
                    key = "".join(buf)
                buf.append(c)
                p += 1
        value = "".join(buf)
        raw = text[start:p]
        if options_allowed and raw.startswith("--"):
            yield _token("OPTION", value, logical, start)
            continue
        options_allowed = False
        if spec.mode == "pairs" and first and spec.name == "ENV" and eq_at is None:
            plain = True
        first = False
        if spec.mode == "pairs" and not plain and eq_at is not None:
            yield _token("KEY", key, logical, start)
            yield _token("WORD", value[len(key) + 1:], logical, eq_at + 1)
        else:
            yield _token("WORD", value, logical, start)


def _double_quoted(logical: _Logical, opened: int, buf: list[str]) -> int:
    """Append the inside of the ``"..."`` at ``opened`` to ``buf``; return the index after it.

    Only ``\\"`` and ``\\\\`` are escapes inside; any other backslash is kept.
    """
    text, n = logical.text, len(logical.text)
    p = opened + 1
    while True:
        if p >= n:
            line, col = logical.where(opened)
            raise LexError("unterminated double quote", line, col,
                           hint='close it with " on the same instruction')
        c = text[p]
        if c == '"':
            return p + 1
        if c == "\\" and p + 1 < n and text[p + 1] in '"\\':
            buf.append(text[p + 1])
            p += 2
        else:
            buf.append(c)
            p += 1


def _heredoc(spec: Instruction, logical: _Logical, start: int, lines: Sequence[str],
             i: int) -> Generator[Token, None, int]:
    """Read a heredoc body from ``lines[i:]``; yield its token; return the next line index."""
    opener = logical.text[start:]
    line, col = logical.where(start)
    m = _HEREDOC_RE.match(opener)
    if m is None:
        tail = re.match(r"<<[-~]?(?:'[^']*'|\"[^\"]*\"|[A-Za-z_][A-Za-z0-9_]*)", opener)
        if tail is not None:
            message = f"unexpected text after the heredoc delimiter in {spec.name}"
            hint = ("the heredoc opener must end the line; to pipe it through a program, "
                    "put the whole script in the heredoc")
        else:
            message = f"bad heredoc opener in {spec.name}"
            hint = "write <<EOF, <<-EOF (strip tabs) or <<~EOF (strip indentation)"
        raise LexError(message, line, col, hint=hint)
    flavour = m.group("flavour")
    delimiter = next(g for g in (m.group("sq"), m.group("dq"), m.group("bare")) if g is not None)
    if not _DELIMITER_RE.fullmatch(delimiter):
        raise LexError(f"bad heredoc delimiter {delimiter!r}", line, col,
                       hint="use a word of letters, digits and '_', like EOF")
    body_start = i
    while i < len(lines):
        candidate = lines[i]
        if flavour == "-":
            candidate = candidate.lstrip("\t")
        elif flavour == "~":
            candidate = candidate.strip(_BLANKS)
        if candidate == delimiter:
            break
        i += 1
    else:
        hint = f"end it with a line containing only {delimiter}"
        for k in range(body_start, len(lines)):
            if lines[k].strip(_BLANKS) == delimiter:
                hint = (f"line {k + 1} has {delimiter} indented; only <<~{delimiter} allows an "
                        f"indented terminator (<<-{delimiter} allows tabs)")
                break
        raise LexError(f"unterminated heredoc: no line {delimiter!r} after {spec.name} <<",
                       line, col, hint=hint, resumable=False)
    body = list(lines[body_start:i])
    if flavour == "-":
        body = [b.lstrip("\t") for b in body]
    elif flavour == "~":
        body = _dedent(body)
    if not any(b.strip() for b in body):
        raise LexError(f"empty heredoc in {spec.name}", line, col,
                       hint=f"remove the {spec.name}, or give it a command")
    token = HeredocToken("HEREDOC", "\n".join(body) + "\n", start_pos=start, line=line,
                          column=col, end_line=i + 1, end_column=len(lines[i]) + 1)
    token.body_line = body_start + 1
    yield token
    return i + 1


def _dedent(body: list[str]) -> list[str]:
    """Strip the common leading whitespace of the non-blank lines (blank lines are ignored)."""
    indents = [b[: len(b) - len(b.lstrip(_BLANKS))] for b in body if b.strip(_BLANKS)]
    if not indents:
        return body
    prefix = os.path.commonprefix(indents)
    return [b[len(prefix):] if b.startswith(prefix) else b.lstrip(_BLANKS) for b in body]



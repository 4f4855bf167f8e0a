"""Amifile text -> :class:`amic.amifile.ir.Amifile`.

How it works, and why
---------------------

Three small stages, each with one job (like BuildKit's parser / instructions
split):

1. :class:`AmifileLexer` is a line-oriented pre-lexer plugged into lark as a
   custom lexer. An Amifile is line based and its hard parts are not context
   free: a heredoc body runs until a terminator chosen on the opener line,
   ``\\`` joins physical lines, and each instruction splits its arguments
   differently (``NAME=value`` only splits in ENV/ARG/LABEL, so
   ``PACKAGES nginx=1.24`` stays one word; a one-line INIT is raw shell and is
   never unquoted). A regular-expression lexer would need states and
   lookbehind for all of that; a loop over lines reads like the rules in
   ``docs/language.md``. It yields lark ``Token``\\ s that keep the original
   line and column (also across continuations), one ``_NL`` per instruction,
   and never yields comments or blank lines. A heredoc becomes one ``HEREDOC``
   token whose value is the already dedented body.

2. ``grammar.lark`` (LALR) checks the shape of every instruction. Because the
   lexer knows which instruction a token belongs to, a parse error is mapped
   to a message from :data:`INSTRUCTIONS` ("REQUIRES needs at least one
   service name", "usage: COPY [--mode=0644] SRC... DEST"). That is more
   precise than lark's ``match_examples`` and needs no example corpus.

3. :class:`_ToInstructions` (a ``Transformer`` with ``v_args(meta=True)``)
   turns the tree into flat, positioned instruction records, and
   :func:`_assemble` checks where each may appear, validates names and
   options, and builds the frozen IR.

Startup (measured on the dev box, Python 3.11): importing lark costs about
20 ms, building the LALR tables about 11 ms, parsing a typical Amifile under
1 ms. The tables are built once per process (:func:`parser` is
``lru_cache``\\ d) and kept in lark's cache format in the user's cache
directory, which brings the build down to about 1 ms (:func:`_cache_file`
says where and why not lark's ``cache=True``).

The only exception this module raises for bad input is
:class:`amic.errors.AmifileError`. Besides its grammar (and the grammar
cache) it reads only the file given to :func:`parse_file`: INCLUDE is
recorded, resolve.py follows it.
"""

from __future__ import annotations

import bisect
import functools
import os
import re
import sys
from collections.abc import Iterator, Sequence

import attrs
from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedInput, VisitError
from lark.lexer import Lexer

from amic.amifile import ir
from amic.errors import AmifileError, Pos

__all__ = ["INSTRUCTIONS", "Instruction", "parse_file", "parse_text", "parser"]


# --------------------------------------------------------------------------
# The instruction table: drives the lexer, placement checks, error messages
# and the reference in docs/language.md.


@attrs.frozen
class Instruction:
    """One Amifile instruction."""

    name: str
    scope: str
    """``global`` (before the first SERVICE), ``service`` (inside a block) or ``any``."""
    mode: str
    """How arguments are lexed: ``words``, ``pairs`` (``NAME=value`` splits), ``copy``
    (leading ``--options``) or ``script`` (raw rest of line, or a heredoc)."""
    usage: str
    needs: str
    """Completes "<NAME> needs ..." when the arguments are missing."""
    summary: str


INSTRUCTIONS: dict[str, Instruction] = {
    i.name: i
    for i in (
        Instruction("FROM", "global", "words", "FROM IMAGE",
                    "a base image (a name like debian:12, an ami-... id, or an AMI filter)",
                    "The base image."),
        Instruction("ARG", "global", "pairs", "ARG NAME[=default]...",
                    "a variable name", "A build-time input; never stored in the image."),
        Instruction("ENV", "any", "pairs", "ENV NAME=value... (or ENV NAME value)",
                    "NAME=value", "An environment variable baked into the artifact."),
        Instruction("LABEL", "global", "pairs", "LABEL key=value...",
                    "key=value", "An image tag."),
        Instruction("INCLUDE", "global", "words", "INCLUDE NAME-OR-PATH...",
                    "a stock service name or a path", "Services from another Amifile."),
        Instruction("ENABLE", "global", "words", "ENABLE SERVICE...",
                    "at least one service name", "Services the image runs by default."),
        Instruction("SERVICE", "any", "words", "SERVICE NAME",
                    "a service name", "Starts a service block."),
        Instruction("REQUIRES", "service", "words", "REQUIRES SERVICE...",
                    "at least one service name", "Services this one depends on."),
        Instruction("PACKAGES", "service", "words", "PACKAGES PACKAGE...",
                    "at least one package name", "OS packages to install."),
        Instruction("COPY", "service", "copy", "COPY [--mode=0644] SRC... DEST",
                    "at least one source and a destination", "Files from the build context."),
        Instruction("INIT", "service", "script", "INIT COMMAND, or INIT <<EOF ... EOF",
                    "a command or a heredoc (<<EOF)", "Runs once, when the image is baked."),
        Instruction("UPDATE", "service", "script", "UPDATE COMMAND, or UPDATE <<EOF ... EOF",
                    "a command or a heredoc (<<EOF)", "Runs at every boot."),
    )
}

_DOCKERFILE_HINTS = {
    "RUN": "RUN is a Dockerfile instruction; use INIT (once, at bake time) "
           "or UPDATE (at every boot) inside a SERVICE",
    "ADD": "ADD is a Dockerfile instruction; use COPY",
    "CMD": "amic images run services, not one command; put boot-time commands in UPDATE",
    "ENTRYPOINT": "amic images run services, not one command; put boot-time commands in UPDATE",
    "WORKDIR": "scripts run with /bin/sh; use cd inside INIT or UPDATE",
    "SERVICES": "each service is its own SERVICE block; to run several by default use ENABLE",
}


# --------------------------------------------------------------------------
# Stage 1: the pre-lexer


class _LexError(Exception):
    """A lexing mistake at a 1-based (line, col); parse_text adds the file."""

    def __init__(self, message: str, line: int, col: int, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.line, self.col, self.hint = message, line, col, hint


class _HeredocToken(Token):
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
_BLANKS = " \t"


def split_lines(text: str) -> list[str]:
    """Physical lines without terminators: LF or CRLF; a final newline adds no line."""
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


@attrs.define
class _Logical:
    """One instruction's physical lines joined at ``\\`` continuations.

    Remembers where every character came from, so tokens keep real positions.
    """

    text: str = ""
    starts: list[int] = attrs.Factory(list)
    """Index in ``text`` where each piece begins."""
    origins: list[tuple[int, int]] = attrs.Factory(list)
    """(line, col) of each piece's first character."""
    last_line: int = 0

    def add(self, piece: str, line: int, col: int) -> None:
        self.starts.append(len(self.text))
        self.origins.append((line, col))
        self.text += piece
        self.last_line = line

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

    def lex(self, data: str) -> Iterator[Token]:  # type: ignore[override]  # lark's interface 0
        return tokenize(data)


def tokenize(text: str) -> Iterator[Token]:
    """Yield the tokens of ``text``; raise ``_LexError`` at the first lexing mistake."""
    lines = split_lines(text)
    i, n = 0, len(lines)
    while i < n:
        raw = lines[i]
        body = raw.lstrip(_BLANKS)
        if not body or body.startswith("#"):
            i += 1
            continue
        logical = _Logical()
        piece, line, col = body, i + 1, len(raw) - len(body) + 1
        while True:
            m = _CONTINUATION_RE.search(piece)
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
        i = yield from _instruction_tokens(logical, lines, i)


def _instruction_tokens(logical: _Logical, lines: Sequence[str], i: int) -> Iterator[Token]:
    """Tokens of one logical line; returns the index of the next physical line."""
    text = logical.text
    m = _KEYWORD_RE.search(text)
    if m is None:  # only `\` and blanks: no instruction
        return i
    word = m.group()
    line, col = logical.where(m.start())
    spec = INSTRUCTIONS.get(word.upper())
    if spec is None:
        message, hint = _unknown_instruction(word)
        raise _LexError(message, line, col, hint)
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


def _unknown_instruction(word: str) -> tuple[str, str | None]:
    import difflib  # only on this error path: keeps startup lean

    upper = word.upper()
    if not re.fullmatch(r"[A-Za-z]+", word):
        return (f"expected an instruction (such as SERVICE), found {word!r}",
                "instructions start a line; '#' starts a comment")
    hint = _DOCKERFILE_HINTS.get(upper)
    close = difflib.get_close_matches(upper, INSTRUCTIONS, n=1, cutoff=0.6)
    if close and upper != "SERVICES":
        return f"unknown instruction {word!r}; did you mean {close[0]}?", hint
    return f"unknown instruction {word!r}", hint or (
        "instructions are " + ", ".join(INSTRUCTIONS))


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
                    raise _LexError("unterminated single quote", line, col,
                                    hint="close it with ' on the same instruction")
                buf.append(text[p + 1:q])
                p = q + 1
            elif c == '"':
                opened = p
                p += 1
                while True:
                    if p >= n:
                        line, col = logical.where(opened)
                        raise _LexError("unterminated double quote", line, col,
                                        hint='close it with " on the same instruction')
                    c = text[p]
                    if c == '"':
                        p += 1
                        break
                    if c == "\\" and p + 1 < n and text[p + 1] in '"\\':
                        buf.append(text[p + 1])
                        p += 2
                    else:
                        buf.append(c)
                        p += 1
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


def _heredoc(spec: Instruction, logical: _Logical, start: int, lines: Sequence[str],
             i: int) -> Iterator[Token]:
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
        raise _LexError(message, line, col, hint=hint)
    flavour = m.group("flavour")
    delimiter = next(g for g in (m.group("sq"), m.group("dq"), m.group("bare")) if g is not None)
    if not _DELIMITER_RE.fullmatch(delimiter):
        raise _LexError(f"bad heredoc delimiter {delimiter!r}", line, col,
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
        raise _LexError(f"unterminated heredoc: no line {delimiter!r} after {spec.name} <<",
                        line, col, hint=hint)
    body = list(lines[body_start:i])
    if flavour == "-":
        body = [b.lstrip("\t") for b in body]
    elif flavour == "~":
        body = _dedent(body)
    if not any(b.strip() for b in body):
        raise _LexError(f"empty heredoc in {spec.name}", line, col,
                        hint=f"remove the {spec.name}, or give it a command")
    token = _HeredocToken("HEREDOC", "\n".join(body) + "\n", start_pos=start, line=line,
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


# --------------------------------------------------------------------------
# Stage 2: the grammar


@functools.lru_cache(maxsize=None)
def parser() -> Lark:
    """The LALR parser for ``grammar.lark``, built once per process.

    The tables are cached in the user's cache directory (see :func:`_cache_file`);
    lark checks a hash of the grammar, its options, its own version and Python's
    before it trusts the file, and rebuilds (and rewrites) it on any mismatch or
    read error.
    """
    return Lark.open("grammar.lark", rel_to=__file__, parser="lalr", lexer=AmifileLexer,
                     propagate_positions=True, maybe_placeholders=False,
                     cache=_cache_file() or False)


def _cache_file() -> str | None:
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
# Stage 3: tree -> positioned instruction records -> IR


@attrs.frozen
class _Item:
    """One instruction: its keyword token and its typed arguments."""

    name: str
    keyword: Token
    args: tuple[object, ...]


@v_args(meta=True)
class _ToInstructions(Transformer):
    """Tree -> list of :class:`_Item`; pairs become ``(KEY token, WORD token)``."""

    def start(self, meta: object, children: list[_Item]) -> list[_Item]:
        return children

    def pair(self, meta: object, children: list[Token]) -> tuple[Token, Token]:
        return children[0], children[1]

    def name(self, meta: object, children: list[Token]) -> tuple[Token, None]:
        return children[0], None

    def env_legacy(self, meta: object, children: list[object]) -> _Item:
        keyword, (name, _), *words = children
        value = " ".join(str(w) for w in words)
        return _Item("ENV", keyword, ((name, Token("WORD", value, line=words[0].line,
                                                   column=words[0].column)),))

    def __default__(self, data: object, children: list[object], meta: object) -> _Item:
        keyword = children[0]
        assert isinstance(keyword, Token)
        return _Item(keyword.type, keyword, tuple(children[1:]))


def _assemble(items: list[_Item], path: str, lines: Sequence[str]) -> ir.Amifile:
    """Check placement, names and options; build the IR."""

    def pos(tok: Token) -> Pos:
        return Pos(path, tok.line, tok.column)

    def fail(message: str, tok: Token, hint: str | None = None) -> AmifileError:
        return AmifileError(message, pos(tok), source_line=_line(lines, tok.line), hint=hint)

    def service_name(tok: Token, what: str) -> str:
        name = str(tok)
        if not ir.SERVICE_NAME_RE.match(name):
            raise fail(f"invalid {what} {name!r}", tok, hint=(
                "service names are 1-63 characters: lowercase letters, digits, '-' and '_', "
                "starting with a letter"))
        return name

    def var_name(tok: Token, what: str) -> str:
        name = str(tok)
        if not ir.VAR_NAME_RE.match(name):
            raise fail(f"invalid {what} name {name!r}", tok, hint=(
                "use letters, digits and '_', not starting with a digit"))
        return name

    context = os.path.dirname(path) or "."
    base: ir.BaseImage | None = None
    base_tok: Token | None = None
    args: list[ir.Arg] = []
    envs: list[ir.Env] = []
    labels: list[ir.Label] = []
    includes: list[ir.Include] = []
    enables: list[ir.Requirement] = []
    services: list[ir.Service] = []
    service_toks: dict[str, Token] = {}
    current: dict[str, object] | None = None  # the open SERVICE block's fields
    first_service: tuple[str, Token] | None = None

    def close() -> None:
        if current is not None:
            services.append(ir.Service(**current))  # type: ignore[arg-type]

    for item in items:
        kw = item.keyword
        spec = INSTRUCTIONS[item.name]
        if spec.scope == "global" and first_service is not None:
            name, tok = first_service
            raise fail(f"{item.name} must come before the first SERVICE "
                       f"(service {name!r} starts at {path}:{tok.line})", kw)
        if spec.scope == "service" and current is None:
            raise fail(f"{item.name} must be inside a SERVICE block", kw,
                       hint=f"start a block with SERVICE NAME before this {item.name}")

        if item.name == "FROM":
            if base_tok is not None:
                raise fail(f"FROM given twice (first at {path}:{base_tok.line})", kw,
                           hint="an Amifile has one base image")
            base = ir.BaseImage(" ".join(str(w) for w in item.args), pos(kw))
            base_tok = kw
        elif item.name == "ARG":
            for name_tok, default in item.args:  # type: ignore[misc]
                args.append(ir.Arg(var_name(name_tok, "ARG"),
                                   None if default is None else str(default), pos(name_tok)))
        elif item.name == "ENV":
            target = envs if current is None else current["envs"]
            for name_tok, value in item.args:  # type: ignore[misc]
                target.append(ir.Env(var_name(name_tok, "ENV"), str(value),  # type: ignore[union-attr]
                                     pos(name_tok)))
        elif item.name == "LABEL":
            for key_tok, value in item.args:  # type: ignore[misc]
                if not str(key_tok):
                    raise fail("empty LABEL key", key_tok)
                labels.append(ir.Label(str(key_tok), str(value), pos(key_tok)))
        elif item.name == "INCLUDE":
            for tok in item.args:
                if not str(tok):
                    raise fail("empty INCLUDE reference", tok)  # type: ignore[arg-type]
                includes.append(ir.Include(str(tok), pos(tok)))  # type: ignore[arg-type]
        elif item.name == "ENABLE":
            for tok in item.args:
                enables.append(ir.Requirement(service_name(tok, "service name"),  # type: ignore[arg-type]
                                              pos(tok)))  # type: ignore[arg-type]
        elif item.name == "SERVICE":
            (name_tok,) = item.args
            name = service_name(name_tok, "service name")  # type: ignore[arg-type]
            if name in service_toks:
                first = service_toks[name]
                raise fail(f"service {name!r} is declared twice (first at {path}:{first.line})",
                           name_tok, hint="merge the two blocks, or rename one")  # type: ignore[arg-type]
            service_toks[name] = kw
            if first_service is None:
                first_service = (name, kw)
            close()
            current = {"name": name, "pos": pos(kw), "requires": [], "packages": [],
                       "copies": [], "envs": [], "inits": [], "updates": []}
        else:
            assert current is not None
            if item.name == "REQUIRES":
                current["requires"].extend(  # type: ignore[attr-defined]
                    ir.Requirement(service_name(t, "service name"), pos(t))  # type: ignore[arg-type]
                    for t in item.args)
            elif item.name == "PACKAGES":
                for tok in item.args:
                    if not str(tok):
                        raise fail("empty package name", tok)  # type: ignore[arg-type]
                current["packages"].extend(str(t) for t in item.args)  # type: ignore[attr-defined]
                current.setdefault("packages_pos", pos(kw))
            elif item.name == "COPY":
                current["copies"].append(_copy(item, pos(kw), context, fail))  # type: ignore[attr-defined]
            else:  # INIT / UPDATE
                (tok,) = item.args
                body_line = getattr(tok, "body_line", tok.line)  # type: ignore[attr-defined]
                script = ir.Script(str(tok), pos(kw), body_line=body_line)
                current["inits" if item.name == "INIT" else "updates"].append(script)  # type: ignore[attr-defined]
    close()
    return ir.Amifile(path=path, base=base, args=args, envs=envs, labels=labels,
                      includes=includes, enables=enables, services=services)


_MODE_RE = re.compile(r"[0-7]{3,4}")


def _copy(item: _Item, where: Pos, context: str, fail: object) -> ir.Copy:
    mode: str | None = None
    words: list[Token] = []
    for tok in item.args:
        assert isinstance(tok, Token)
        if tok.type == "OPTION":
            opt, eq, value = str(tok).partition("=")
            if opt != "--mode":
                raise fail(f"unknown COPY option {opt!r}", tok,  # type: ignore[operator]
                           hint="COPY takes only --mode=OCTAL (e.g. --mode=0644)")
            if mode is not None:
                raise fail("--mode given twice", tok)  # type: ignore[operator]
            if not eq or not _MODE_RE.fullmatch(value):
                raise fail(f"bad --mode {value!r}: expected an octal mode like 0644", tok)  # type: ignore[operator]
            mode = value.rjust(4, "0")
        else:
            if not str(tok):
                raise fail("empty path in COPY", tok)  # type: ignore[operator]
            words.append(tok)
    *sources, dest = words
    if not str(dest).startswith("/"):
        raise fail(f"COPY destination {str(dest)!r} must be an absolute path", dest,  # type: ignore[operator]
                   hint="the last argument of COPY is where the files go on the machine")
    return ir.Copy(sources=tuple(str(s) for s in sources), dest=str(dest), mode=mode,
                   context=context, pos=where)


# --------------------------------------------------------------------------
# Errors from the parse table


def _line(lines: Sequence[str], number: int) -> str | None:
    return lines[number - 1] if 0 < number <= len(lines) else None


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
                            source_line=_line(lines, line))
    spec = INSTRUCTIONS[keyword.type]
    if tok.type == "_NL":
        message = f"{spec.name} needs {spec.needs}"
    elif spec.mode == "pairs" and tok.type == "WORD":
        message = f"expected NAME=value in {spec.name}, found {_describe(tok)}"
    else:
        message = f"unexpected {_describe(tok)} in {spec.name}"
    return AmifileError(message, Pos(path, tok.line, tok.column),
                        source_line=_line(lines, tok.line), hint=f"usage: {spec.usage}")


# --------------------------------------------------------------------------
# The API


def parse_text(text: str, path: str) -> ir.Amifile:
    """Parse Amifile ``text``; ``path`` is used in positions and for COPY contexts."""
    path = os.fspath(path)
    lines = split_lines(text)
    try:
        tree = parser().parse(text)
    except _LexError as e:
        raise AmifileError(e.message, Pos(path, e.line, e.col),
                           source_line=_line(lines, e.line), hint=e.hint) from None
    except UnexpectedInput as e:
        raise _syntax_error(e, text, path, lines) from None
    try:
        items = _ToInstructions().transform(tree)
    except VisitError as e:  # only our own bugs end up here
        raise e.orig_exc from None
    return _assemble(items, path, lines)


def parse_file(path: str | os.PathLike[str]) -> ir.Amifile:
    """Read and parse one Amifile (UTF-8, optional BOM, LF or CRLF).

    A file that cannot be read raises ``OSError`` unchanged: that is not a
    mistake *in* an Amifile, and the caller knows the context (resolve.py
    points at the INCLUDE, the CLI at the command line).
    """
    name = os.fspath(path)
    with open(name, "rb") as f:
        data = f.read()
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
        raise AmifileError(f"invalid UTF-8 (byte 0x{data[e.start]:02x})", Pos(name, line, col),
                           source_line=raw_line.decode("utf-8", "replace").rstrip("\r"),
                           hint="Amifiles are UTF-8 text") from None
    return parse_text(text, name)

"""Typed instruction records: the parse tree as one frozen value per instruction.

Like BuildKit's ``instructions`` package, this sits between the untyped tree
(lark's, shaped by ``grammar.lark``) and the step that gives it meaning
(``assembly.py``). :class:`ToRecords` turns the tree into a flat list of
records, one class per row of the instruction table. The fields hold lark
``Token``\\ s, not plain strings: a token is a ``str`` that also knows its
line and column, so every later error can still point at the exact word.

Nothing is checked here beyond what the grammar already guarantees; names,
options and placement are the assembly step's job.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import attrs
from lark import Token, Transformer

from amic.amifile.lexer import HeredocToken

__all__ = [
    "Arg", "ArgDef", "Copy", "Enable", "Env", "From", "Include", "Init", "Label", "Name", "Packages",
    "Pair", "Record", "Requires", "Secret", "Service", "ToRecords", "Update",
]


@attrs.frozen
class Pair:
    """``KEY=value`` in ENV or LABEL."""

    key: Token
    value: Token


@attrs.frozen
class ArgDef:
    """``NAME`` or ``NAME=default`` in ARG."""

    name: Token
    default: Token | None


@attrs.frozen
class From:
    keyword: Token
    words: tuple[Token, ...]
    """The image reference; more than one word for an AMI filter."""


@attrs.frozen
class Name:
    keyword: Token
    word: Token


@attrs.frozen
class Arg:
    keyword: Token
    defs: tuple[ArgDef, ...]


@attrs.frozen
class Secret:
    keyword: Token
    names: tuple[Token, ...]


@attrs.frozen
class Env:
    keyword: Token
    pairs: tuple[Pair, ...]
    """The legacy form ``ENV NAME some value`` is one pair whose value is the joined words."""


@attrs.frozen
class Label:
    keyword: Token
    pairs: tuple[Pair, ...]


@attrs.frozen
class Include:
    keyword: Token
    refs: tuple[Token, ...]


@attrs.frozen
class Enable:
    keyword: Token
    names: tuple[Token, ...]


@attrs.frozen
class Service:
    keyword: Token
    name: Token


@attrs.frozen
class Requires:
    keyword: Token
    names: tuple[Token, ...]


@attrs.frozen
class Packages:
    keyword: Token
    names: tuple[Token, ...]


@attrs.frozen
class Copy:
    keyword: Token
    options: tuple[Token, ...]
    """``--name=value`` words; the grammar puts them all before the paths."""
    paths: tuple[Token, ...]
    """Sources, then the destination (at least two)."""


@attrs.frozen
class Init:
    keyword: Token
    body: Token
    """The one-line command, or the dedented heredoc body; ends in a newline."""
    body_line: int
    """Amifile line of the body's first line."""


@attrs.frozen
class Update:
    keyword: Token
    body: Token
    body_line: int


Record = (From | Arg | Secret | Env | Label | Name | Include | Enable | Service | Requires | Packages | Copy
          | Init | Update)
"""One instruction; the class name is the instruction's name (``From`` is FROM)."""


def _keyword(children: Sequence[object]) -> Token:
    keyword = children[0]
    assert isinstance(keyword, Token)
    return keyword


def _pairs(children: Sequence[object]) -> tuple[Pair, ...]:
    return tuple(c for c in children if isinstance(c, Pair))


def _body_line(body: Token) -> int:
    """A heredoc's body starts on the line after its opener; a one-line script on its own."""
    return body.body_line if isinstance(body, HeredocToken) else body.line


class ToRecords(Transformer[Token, list[Record]]):
    """The tree of ``grammar.lark`` -> a list of :data:`Record`, in file order.

    One method per grammar rule; children arrive as lark builds them (the
    keyword token first), so each method is where untyped becomes typed.
    No ``v_args(meta=True)``: every position a record needs is on its tokens,
    and lark wraps a ``v_args`` method anew on every call, which made this
    step about a fifth slower.
    """

    @staticmethod
    def emit(record: Record) -> Record:
        """Each instruction's record as lark reduces it, in file order (an instruction is
        reduced before the ``_NL`` after it is shifted, so before the lexer reads on). The
        parser sets a sink here (an instance attribute) to assemble records as they come,
        rather than hold a large file's all at once."""
        return record

    def start(self, children: list[Record]) -> list[Record]:
        return children

    def pair(self, children: list[Token]) -> Pair:
        return Pair(children[0], children[1])

    def name(self, children: list[Token]) -> Token:
        return children[0]

    def from_(self, children: list[Token]) -> From:
        return self.emit(From(children[0], tuple(children[1:])))

    def arg(self, children: list[Token | Pair]) -> Arg:
        defs = tuple(ArgDef(c.key, c.value) if isinstance(c, Pair) else ArgDef(c, None)
                     for c in children[1:])
        return self.emit(Arg(_keyword(children), defs))

    def secret(self, children: list[Token]) -> Secret:
        return self.emit(Secret(children[0], tuple(children[1:])))

    def env(self, children: list[Token | Pair]) -> Env:
        return self.emit(Env(_keyword(children), _pairs(children)))

    def env_legacy(self, children: list[Token]) -> Env:
        keyword, name, *words = children
        value = Token("WORD", " ".join(words), line=words[0].line, column=words[0].column)
        return self.emit(Env(keyword, (Pair(name, value),)))

    def label(self, children: list[Token | Pair]) -> Label:
        return self.emit(Label(_keyword(children), _pairs(children)))

    def image_name(self, children: list[Token]) -> Name:
        return self.emit(Name(children[0], children[1]))

    def include(self, children: list[Token]) -> Include:
        return self.emit(Include(children[0], tuple(children[1:])))

    def enable(self, children: list[Token]) -> Enable:
        return self.emit(Enable(children[0], tuple(children[1:])))

    def service(self, children: list[Token]) -> Service:
        return self.emit(Service(children[0], children[1]))

    def requires(self, children: list[Token]) -> Requires:
        return self.emit(Requires(children[0], tuple(children[1:])))

    def packages(self, children: list[Token]) -> Packages:
        return self.emit(Packages(children[0], tuple(children[1:])))

    def copy(self, children: list[Token]) -> Copy:
        words = children[1:]
        return self.emit(Copy(children[0], tuple(w for w in words if w.type == "OPTION"),
                              tuple(w for w in words if w.type != "OPTION")))

    def init(self, children: list[Token]) -> Init:
        keyword, body = children
        return self.emit(Init(keyword, body, _body_line(body)))

    def update(self, children: list[Token]) -> Update:
        keyword, body = children
        return self.emit(Update(keyword, body, _body_line(body)))


_MAKE = ToRecords()
PLAIN: dict[str, tuple[int, int, Callable[[list[Token]], Record]]] = {
    "FROM": (1, sys.maxsize, _MAKE.from_), "INCLUDE": (1, sys.maxsize, _MAKE.include),
    "ENABLE": (1, sys.maxsize, _MAKE.enable), "NAME": (1, 1, _MAKE.image_name),
    "SECRET": (1, sys.maxsize, _MAKE.secret), "SERVICE": (1, 1, _MAKE.service),
    "REQUIRES": (1, sys.maxsize, _MAKE.requires), "PACKAGES": (1, sys.maxsize, _MAKE.packages),
}
"""The instructions of plain words, with how many words ``grammar.lark`` lets each take
and the method lark calls when it reduces one: the lexer makes the record of such a line
itself (``lexer.tokenize``), and the parser sees only the other lines. A test checks the
counts against the grammar, and both ways against each other on the same inputs."""

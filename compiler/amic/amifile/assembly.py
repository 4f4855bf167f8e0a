"""Instruction records -> :class:`amic.amifile.ir.Amifile`.

The last step of parsing, and the one that gives the records meaning: it
checks where each instruction may appear (``scope`` in the instruction
table), validates names and COPY options, and collects everything into the
frozen IR. It dispatches on the record's class (:data:`_STEPS`) to one
small method per instruction, so each rule reads on its own; what is open
while the file is read (the current SERVICE block, the first FROM) lives in
one mutable :class:`_Assembly`.

Checks that need more than one file (unknown services, cycles, INCLUDE)
are ``resolve.py``'s.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn, get_args

import attrs
from lark import Token

from amic.amifile import ir, packages
from amic.amifile import records as r
from amic.amifile.instructions import INSTRUCTIONS
from amic.amifile.lexer import line_text
from amic.contract import SERVICE_NAME_RULE
from amic.errors import AmifileError, Pos

__all__ = ["Assembler", "assemble"]

_MODE_RE = re.compile(r"[0-7]{3,4}")
_RESERVED = frozenset({"PATH", "HOME", "SHELL", "IFS", "PWD", "OLDPWD", "ENV", "PS1", "PS4",
                       "LANG", "TERM", "USER", "LOGNAME"})
"""Names a SECRET may not take: the INIT's shell and its commands need their own values."""


def assemble(records: Iterable[r.Record], path: str, lines: Sequence[str]) -> ir.Amifile:
    """Check placement, names and options; build the IR. ``lines`` are for error carets."""
    assembler = Assembler(path, lines)
    for record in records:
        assembler.feed(record)
    return assembler.finish()


class Assembler:
    """:func:`assemble` one record at a time (the parser feeds records as they are made:
    a large file's records and tokens are not all held at once)."""

    def __init__(self, path: str, lines: Sequence[str]) -> None:
        self.state = _Assembly(path, lines)
        self.errors: list[AmifileError] = []
        self.graph_safe = True   # no SERVICE or INCLUDE refused: the services stand as written

    def feed(self, record: r.Record) -> r.Record:
        try:   # free when nothing is raised (zero-cost exceptions); a mistake skips its instruction
            self.state.place(record.keyword)
            _STEPS[type(record)](self.state, record)
        except AmifileError as exc:
            self.errors.append(exc)
            if type(record) is r.Service:
                self.state.stand_in(record)
            self.graph_safe = self.graph_safe and type(record) not in (r.Service, r.Include)
        return record

    def finish(self) -> ir.Amifile:
        if self.errors:
            error = AmifileError.collected(self.errors)
            if self.graph_safe:   # the resolver checks the rest: its errors come in the same run
                error.recovered = self.state.finish()
            raise error
        return self.state.finish()


@attrs.define
class _Block:
    """The SERVICE block being read."""

    name: str
    pos: Pos
    requires: list[ir.Requirement] = attrs.Factory(list)
    packages: list[str] = attrs.Factory(list)
    copies: list[ir.Copy] = attrs.Factory(list)
    envs: list[ir.Env] = attrs.Factory(list)
    args: list[ir.Arg] = attrs.Factory(list)
    secrets: list[ir.Secret] = attrs.Factory(list)
    inits: list[ir.Script] = attrs.Factory(list)
    updates: list[ir.Script] = attrs.Factory(list)
    packages_pos: Pos | None = None
    names: dict[str, tuple[str, int]] = attrs.Factory(dict)
    """ARG, ENV and SECRET names of this block: name -> (instruction, line)."""

    def service(self) -> ir.Service:
        return ir.Service(name=self.name, pos=self.pos, requires=self.requires,
                          packages=self.packages, copies=self.copies, envs=self.envs,
                          args=self.args, secrets=self.secrets,
                          inits=self.inits, updates=self.updates,
                          packages_pos=self.packages_pos)


@attrs.define
class _Assembly:
    """What has been read so far, and the open SERVICE block."""

    path: str
    lines: Sequence[str]
    base: ir.BaseImage | None = None
    base_tok: Token | None = None
    args: list[ir.Arg] = attrs.Factory(list)
    secrets: list[ir.Secret] = attrs.Factory(list)
    names: dict[str, tuple[str, int]] = attrs.Factory(dict)
    """Global ARG, ENV and SECRET names: name -> (instruction, line)."""
    envs: list[ir.Env] = attrs.Factory(list)
    labels: list[ir.Label] = attrs.Factory(list)
    name: ir.ImageName | None = None
    includes: list[ir.Include] = attrs.Factory(list)
    enables: list[ir.Requirement] = attrs.Factory(list)
    services: list[ir.Service] = attrs.Factory(list)
    service_lines: dict[str, int] = attrs.Factory(dict)
    """The SERVICE line of each block so far, by name (the first one is where globals end);
    a line, not the keyword's token: a large file's tokens are not all kept."""
    block: _Block | None = None

    # ---------------------------------------------------------------- helpers

    def pos(self, tok: Token) -> Pos:
        return Pos(self.path, tok.line, tok.column)

    def fail(self, message: str, tok: Token, hint: str | None = None) -> NoReturn:
        raise AmifileError(message, self.pos(tok), source_line=line_text(self.lines, tok.line),
                           hint=hint)

    def service_name(self, tok: Token) -> str:
        if not ir.SERVICE_NAME_RE.match(tok):
            self.fail(f"invalid service name {str(tok)!r}", tok, hint=SERVICE_NAME_RULE)
        return str(tok)

    def var_name(self, tok: Token, what: str) -> str:
        if not ir.VAR_NAME_RE.match(tok):
            self.fail(f"invalid {what} name {str(tok)!r}", tok, hint=(
                "use letters, digits and '_', not starting with a digit"))
        return str(tok)

    def claim(self, kind: str, tok: Token) -> str:
        """The ARG, ENV or SECRET name at ``tok``, checked against the names already visible
        where it is: a SECRET shares its name with nothing (an ENV or ARG of that name would
        replace its value in the INIT's environment), and an ARG in a block does not redeclare
        a global one (two defaults, one name)."""
        name = self.var_name(tok, kind)
        if name.startswith(ir.RESERVED_PREFIX):
            self.fail(f"{kind} name {name!r} is reserved: names starting with "
                      f"{ir.RESERVED_PREFIX} are amic's own", tok,
                      hint="the runner takes its state, log and stage2 directories from "
                           f"{ir.RESERVED_PREFIX}* variables; choose another name")
        if kind == "SECRET" and name in _RESERVED:
            self.fail(f"{kind} name {name!r} is reserved", tok,
                      hint="amic and the shell set it; choose another name")
        own = self.names if self.block is None else self.block.names
        seen = own.get(name) or (self.names.get(name) if self.block is not None else None)
        if seen is not None:
            other, line = seen
            where = "" if seen is own.get(name) else "global "
            if "SECRET" in (kind, other):
                article = "a" if where or other == "SECRET" else "an"
                self.fail(f"{kind} {name}: {name} is already {article} {where}{other} "
                          f"(at {self.path}:{line})", tok,
                          hint="a SECRET shares its name with no ARG, ENV or other SECRET")
            if kind == other == "ARG" and where:
                self.fail(f"ARG {name} is already a global ARG (at {self.path}:{line})", tok,
                          hint="a global ARG is seen by every service; drop one of the two")
        own.setdefault(name, (kind, tok.line))
        return name

    def open_block(self) -> _Block:
        assert self.block is not None  # place() let only a SERVICE-scoped record through
        return self.block

    def stand_in(self, record: r.Service) -> None:
        """Open a block for a SERVICE line that was refused, so that its instructions are
        still checked and none is reported again as outside a SERVICE block."""
        if self.block is not None:
            self.services.append(self.block.service())
        self.block = _Block(str(record.name), self.pos(record.keyword))

    # ---------------------------------------------------------------- steps

    def place(self, kw: Token) -> None:
        """Fail if the instruction at ``kw`` is not allowed where it is."""
        spec = INSTRUCTIONS[kw.type]
        if spec.scope == "global" and self.service_lines:
            name, line = next(iter(self.service_lines.items()))
            self.fail(f"{spec.name} must come before the first SERVICE "
                      f"(service {name!r} starts at {self.path}:{line})", kw)
        if spec.scope == "service" and self.block is None:
            self.fail(f"{spec.name} must be inside a SERVICE block", kw,
                      hint=f"start a block with SERVICE NAME before this {spec.name}")

    def finish(self) -> ir.Amifile:
        if self.block is not None:
            self.services.append(self.block.service())
        return ir.Amifile(path=self.path, base=self.base, args=self.args, secrets=self.secrets,
                          envs=self.envs,
                          labels=self.labels, name=self.name, includes=self.includes, enables=self.enables,
                          services=self.services)

    # ---------------------------------------------------------------- one per instruction

    def from_(self, record: r.From) -> None:
        if self.base_tok is not None:
            self.fail(f"FROM given twice (first at {self.path}:{self.base_tok.line})",
                      record.keyword, hint="an Amifile has one base image")
        self.base = ir.BaseImage(" ".join(record.words), self.pos(record.keyword))
        self.base_tok = record.keyword

    def arg(self, record: r.Arg) -> None:
        target = self.args if self.block is None else self.block.args
        target.extend(ir.Arg(self.claim("ARG", d.name),
                             None if d.default is None else str(d.default), self.pos(d.name))
                      for d in record.defs)

    def secret(self, record: r.Secret) -> None:
        target = self.secrets if self.block is None else self.block.secrets
        for tok in record.names:
            if "=" in tok:
                name = tok.split("=", 1)[0]
                self.fail(f"SECRET takes names only, not a value: {str(tok)!r}", tok, hint=(
                    f"write SECRET {name}; give the value at build time with "
                    f"amic build --secret id={name},src=FILE (or env=VAR)"))
            target.append(ir.Secret(self.claim("SECRET", tok), self.pos(tok)))

    def env(self, record: r.Env) -> None:
        target = self.envs if self.block is None else self.block.envs
        target.extend(ir.Env(self.claim("ENV", p.key), str(p.value), self.pos(p.key))
                      for p in record.pairs)

    def label(self, record: r.Label) -> None:
        for p in record.pairs:
            if not p.key:
                self.fail("empty LABEL key", p.key)
            self.labels.append(ir.Label(str(p.key), str(p.value), self.pos(p.key)))

    def image_name(self, record: r.Name) -> None:
        if self.name is not None:
            self.fail(f"NAME given twice (first at {self.name.pos.line})", record.keyword,
                      hint="an Amifile has one image name")
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", record.word):
            self.fail(f"invalid image name {str(record.word)!r}", record.word,
                      hint="use letters, digits, '.', '_' and '-', starting with a letter or digit")
        self.name = ir.ImageName(str(record.word), self.pos(record.keyword))

    def include(self, record: r.Include) -> None:
        for tok in record.refs:
            if not tok:
                self.fail("empty INCLUDE reference", tok)
            self.includes.append(ir.Include(str(tok), self.pos(tok)))

    def enable(self, record: r.Enable) -> None:
        self.enables.extend(ir.Requirement(self.service_name(t), self.pos(t))
                            for t in record.names)

    def service(self, record: r.Service) -> None:
        name = self.service_name(record.name)
        first = self.service_lines.get(name)
        if first is not None:
            self.fail(f"service {name!r} is declared twice (first at {self.path}:{first})",
                      record.name, hint="merge the two blocks, or rename one")
        self.service_lines[name] = record.keyword.line
        if self.block is not None:
            self.services.append(self.block.service())
        self.block = _Block(name, self.pos(record.keyword))

    def requires(self, record: r.Requires) -> None:
        self.open_block().requires.extend(ir.Requirement(self.service_name(t), self.pos(t))
                                          for t in record.names)

    def packages(self, record: r.Packages) -> None:
        block = self.open_block()
        for tok in record.names:
            why = packages.problem(str(tok))   # the empty word too
            if why is not None:
                self.fail(why, tok, hint=packages.HINT)
        block.packages.extend(str(t) for t in record.names)
        if block.packages_pos is None:
            block.packages_pos = self.pos(record.keyword)

    def copy(self, record: r.Copy) -> None:
        mode: str | None = None
        for tok in record.options:
            opt, eq, value = tok.partition("=")
            if opt != "--mode":
                self.fail(f"unknown COPY option {opt!r}", tok,
                          hint="COPY takes only --mode=OCTAL (e.g. --mode=0644)")
            if mode is not None:
                self.fail("--mode given twice", tok)
            if not eq or not _MODE_RE.fullmatch(value):
                self.fail(f"bad --mode {value!r}: expected an octal mode like 0644", tok)
            mode = value.rjust(4, "0")
        for tok in record.paths:
            if not tok:
                self.fail("empty path in COPY", tok)
        *sources, dest = record.paths
        if not dest.startswith("/"):
            self.fail(f"COPY destination {str(dest)!r} must be an absolute path", dest,
                      hint="the last argument of COPY is where the files go on the machine")
        self.open_block().copies.append(ir.Copy(
            sources=tuple(str(s) for s in sources), dest=str(dest), mode=mode,
            context=os.path.dirname(self.path) or ".", pos=self.pos(record.keyword)))

    def init(self, record: r.Init) -> None:
        self.open_block().inits.append(self.script(record))

    def update(self, record: r.Update) -> None:
        self.open_block().updates.append(self.script(record))

    def script(self, record: r.Init | r.Update) -> ir.Script:
        return ir.Script(str(record.body), self.pos(record.keyword), body_line=record.body_line)


# A table rather than ``match``: one dict lookup per instruction instead of up to
# twelve isinstance checks, which showed in the parse time of large files.
_STEPS: dict[type, Callable[[_Assembly, Any], None]] = {
    r.From: _Assembly.from_, r.Arg: _Assembly.arg, r.Secret: _Assembly.secret, r.Env: _Assembly.env,
    r.Label: _Assembly.label, r.Name: _Assembly.image_name, r.Include: _Assembly.include, r.Enable: _Assembly.enable,
    r.Service: _Assembly.service, r.Requires: _Assembly.requires,
    r.Packages: _Assembly.packages, r.Copy: _Assembly.copy, r.Init: _Assembly.init,
    r.Update: _Assembly.update,
}
"""The step for each record class; :data:`~amic.amifile.records.Record` lists them all."""
assert set(_STEPS) == set(get_args(r.Record)), "every instruction record needs a step"

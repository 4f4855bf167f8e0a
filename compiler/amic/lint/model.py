"""Values shared by the linter: severities, rules, findings and the per-file context."""

from __future__ import annotations

import bisect
import collections
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import attrs

from amic.amifile import ir
from amic.errors import Pos

SEVERITIES = ("error", "warning", "info", "style")
"""Most severe first. ``--failure-threshold`` picks one of these (or ``none``)."""

_RANK = {name: rank for rank, name in enumerate(reversed(SEVERITIES))}

DOCS_URL = "https://github.com/amic-build/amic/blob/main/docs/lint-rules.md"
"""Where the rule catalogue is published; rule help links are ``DOCS_URL#<anchor>``."""


def severity_rank(severity: str) -> int:
    """Higher is more severe: style 0, info 1, warning 2, error 3."""
    return _RANK[severity]


@attrs.frozen
class Finding:
    """One problem found in one file."""

    code: str
    """Rule id, ``AM3001`` or ``SC2086``."""
    severity: str
    """One of :data:`SEVERITIES`."""
    message: str
    pos: Pos
    hint: str | None = None
    source_line: str | None = None
    """The line at ``pos`` for the caret display, when it may be shown (the engine fills it
    in from a file that parsed; a file that did not parse shows only what its parse error
    allows)."""

    def full_message(self) -> str:
        """The message with its hint, for the formats that have no hint line."""
        return self.message + (f" (hint: {self.hint})" if self.hint else "")


@attrs.frozen
class Rule:
    """A lint rule: one row of :data:`amic.lint.RULES`."""

    id: str
    severity: str = attrs.field(validator=attrs.validators.in_(SEVERITIES))
    summary: str
    """One line, shown by ``--list-rules`` and as the SARIF short description."""
    doc_anchor: str
    """Anchor of the rule's section in ``docs/lint-rules.md``."""
    check: Callable[[Context], Iterable[tuple[Pos, str]]] | None = attrs.field(eq=False)
    """Yields ``(position, message)`` for each problem; ``None`` for rules the engine reports
    itself (parse errors, resolver errors)."""

    @property
    def help_uri(self) -> str:
        return f"{DOCS_URL}#{self.doc_anchor}"


@attrs.frozen
class ScriptRef:
    """One INIT or UPDATE script, with the service and phase it belongs to."""

    service: ir.Service
    phase: str
    """``init`` or ``update``."""
    script: ir.Script


@attrs.define
class Context:
    """What a rule check sees: the parsed file, its raw text, and what the resolver knew."""

    amifile: ir.Amifile
    text: str
    path: str
    external: dict[str, ir.Service] = attrs.Factory(dict)
    """Services known only through INCLUDE (from the resolver), by name."""
    includes_resolved: bool = True
    """False when the file INCLUDEs something the linter could not resolve, so names that are
    not declared here may still exist."""
    fragment: bool = False
    """The file is meant to be INCLUDEd (a stock service, or named ``*.amifile``): it cannot
    have FROM, ENABLE or LABEL."""

    lines: list[str] = attrs.field(init=False)
    """``text`` split into lines (index 0 is line 1)."""
    _services: dict[str, ir.Service] | None = attrs.field(init=False, default=None)
    _closures: dict[str, list[str]] = attrs.field(init=False, factory=dict)
    _commands: dict[int, list] = attrs.field(init=False, factory=dict)
    _maps: dict[int, object] = attrs.field(init=False, factory=dict)
    _starts: list[int] | None = attrs.field(init=False, default=None)
    _scripts: list[ScriptRef] | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.lines = self.text.splitlines()

    @property
    def base_dir(self) -> Path:
        return Path(self.path).parent

    def source_line(self, line: int) -> str:
        lines = self.lines
        return lines[line - 1] if 1 <= line <= len(lines) else ""

    def commands(self, script: ir.Script) -> list:
        """``shell.commands(script.text)``, split once for all the rules that look at it."""
        found = self._commands.get(id(script))
        if found is None:
            from amic.lint.shell import commands

            self._commands[id(script)] = found = commands(script.text)
        return found

    def script_map(self, script: ir.Script):
        """The :class:`~amic.lint.shell.ScriptMap` of ``script``, built once."""
        found = self._maps.get(id(script))
        if found is None:
            from amic.lint.shell import ScriptMap

            self._maps[id(script)] = found = ScriptMap(script, self.lines)
        return found

    def service_end(self, svc: ir.Service) -> int | None:
        """Last line before the next service declared after ``svc`` (``None`` for the last)."""
        if self._starts is None:
            self._starts = sorted({s.pos.line for s in self.amifile.services})
        k = bisect.bisect_right(self._starts, svc.pos.line)
        return self._starts[k] - 1 if k < len(self._starts) else None

    def scripts(self) -> Iterator[ScriptRef]:
        """Every INIT and UPDATE of this file's services, in order (listed once per lint)."""
        if self._scripts is None:
            self._scripts = [ScriptRef(svc, phase, script) for svc in self.amifile.services
                             for phase, group in (("init", svc.inits), ("update", svc.updates))
                             for script in group]
        return iter(self._scripts)

    def services(self) -> dict[str, ir.Service]:
        """Every known service by name; this file's declarations (first one wins) shadow
        included ones."""
        if self._services is None:
            own: dict[str, ir.Service] = {}
            for svc in self.amifile.services:
                own.setdefault(svc.name, svc)
            self._services = {**self.external, **own}
        return self._services

    def requirement_closure(self, name: str) -> list[str]:
        """Names of every service ``name`` requires, directly or not, nearest first.

        Cycle-safe, and memoised: rules ask for the closure of every service,
        and a 1,000-service file must not cost a million walks.
        """
        cached = self._closures.get(name)
        if cached is not None:
            return cached
        known = self.services()
        seen: dict[str, None] = {}
        queue = collections.deque(r.name for r in known[name].requires) if name in known else ()
        while queue:
            dep = queue.popleft()
            if dep in seen or dep == name or dep not in known:
                continue
            seen[dep] = None
            queue.extend(r.name for r in known[dep].requires)
        self._closures[name] = result = list(seen)
        return result

    def required_by_any(self, roots: Iterable[str]) -> list[str]:
        """``roots`` and every service they require, directly or not: one walk for all."""
        known = self.services()
        seen: dict[str, None] = {}
        queue = collections.deque(roots)
        while queue:
            name = queue.popleft()
            if name in seen:
                continue
            seen[name] = None
            if name in known:
                queue.extend(r.name for r in known[name].requires if r.name not in seen)
        return list(seen)

    def reaches(self, start: str, goal: str) -> bool:
        """Does ``start`` require ``goal``, directly or not? (A walk that stops at ``goal``.)"""
        known = self.services()
        seen = {start}
        stack = [start]
        while stack:
            name = stack.pop()
            for req in known[name].requires if name in known else ():
                if req.name == goal:
                    return True
                if req.name not in seen:
                    seen.add(req.name)
                    stack.append(req.name)
        return False

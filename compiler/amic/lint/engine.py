"""The lint pipeline: read, parse, resolve, run the rules and shellcheck, apply ignores, render.

Files are independent: each parse error in one becomes an AM1000 finding and the others are
still linted. shellcheck runs once over the scripts of every file (batched, one process per
CPU, cached by body: amic.lint.shellcheck) while the rules run. Every step is linear in the
input (tests/unit/test_lint_scale.py holds it to that).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TextIO

import attrs

from amic.amifile import ir
from amic.amifile.lexer import split_lines
from amic.errors import AmifileError, Pos, UsageError
from amic.lint import formats
from amic.lint.model import SEVERITIES, Context, Finding, severity_rank
from amic.lint.pragmas import Ignores, read_pragmas
from amic.lint.rules import RULES, RULES_BY_ID
from amic.lint.shellcheck import Shellcheck, check_scripts, find_shellcheck, shell_of, too_large

THRESHOLDS = (*SEVERITIES, "none")
DEFAULT_THRESHOLD = "warning"


@attrs.define
class _Unit:
    """One file being linted."""

    path: str
    text: str
    amifile: ir.Amifile | None
    findings: list[Finding] = attrs.Factory(list)
    context: Context | None = None
    include_error: Finding | None = None
    """Why an INCLUDE could not be followed (reported instead of the resolver's verdict)."""
    partial: bool = False
    """``amifile`` is what parsed without broken instructions (``AmifileError.recovered``):
    only the resolver's errors are asked of it, as compile asks; the rules would report
    what the missing instructions leave out."""


def _finding(code: str, message: str, pos: Pos) -> Finding:
    return Finding(code, RULES_BY_ID[code].severity, message, pos)


def _included(amifile: ir.Amifile) -> tuple[dict[str, ir.Service], Finding | None]:
    """Services the file's INCLUDEs bring in, by name (or the error that stops resolving them)."""
    from amic.amifile import resolve

    own = {s.name for s in amifile.services}
    try:
        included = resolve.resolve_amifile(ir.Amifile(path=amifile.path,
                                                      includes=amifile.includes))
    except AmifileError as exc:
        return {}, _from_error("AM1001", exc, amifile.path)[0]
    return {s.name: s for s in included.services if s.name not in own}, None


def _resolver_errors(amifile: ir.Amifile, found: list[Finding]) -> list[Finding]:
    """What the resolver rejects, but for what a finding on the same line already says."""
    from amic.amifile import resolve

    try:
        resolve.resolve_amifile(amifile)
    except AmifileError as exc:
        lines = {(f.pos.file, f.pos.line) for f in found}
        codes = {f.code for f in found}
        return [error for one, error in zip(exc.all(), _from_error("AM1001", exc, amifile.path))
                if (error.pos.file, error.pos.line) not in lines
                and not any(code in codes and words in one.message
                            for code, words in _RESOLVER_SAYS.items())]
    return []


_RESOLVER_SAYS = {"AM4001": "unknown service", "AM4002": "cycle", "AM3008": "COPY"}
"""Resolver messages that a rule already reports (at a position of its own choosing)."""


def _from_error(code: str, exc: AmifileError, path: str) -> list[Finding]:
    """One finding per error ``exc`` carries, each with its hint and the source line it may
    show (none when the parser would not quote the file)."""
    found = [Finding(code, RULES_BY_ID[code].severity, e.message, e.pos or Pos(path, 1, 1),
                     hint=e.hint, source_line=e.source_line) for e in exc.all()]
    if not exc.complete:
        last = found[-1].pos
        found.append(_finding(code, f"more errors after line {last.line} not checked "
                              f"(amic stops looking after {len(found)}; fix these first)", last))
    return found


def check(amifile: ir.Amifile, text: str, path: str | None = None, *,
          external: dict[str, ir.Service] | None = None, includes_resolved: bool = True,
          shellcheck: bool = True, ignore: Collection[str] = ()) -> list[Finding]:
    """Lint an already parsed Amifile whose source is ``text``.

    ``external`` are services known from INCLUDEs (by name). Pragmas in ``text`` and the
    ``ignore`` ids apply; findings come back sorted by position.
    """
    unit = _Unit(path or amifile.path, text, amifile)
    unit.context = Context(amifile, text, unit.path, dict(external or {}), includes_resolved)
    unit.findings = _rule_findings(unit.context)
    checker = _checker(shellcheck)
    if checker is not None:
        unit.findings.extend(_shellcheck([unit], checker).get(0, []))
    return _finish(unit, set(ignore))


def _checker(shellcheck: bool | Shellcheck) -> Shellcheck | None:
    """The shellcheck to run (``True``: the one :func:`find_shellcheck` picks)."""
    if isinstance(shellcheck, Shellcheck):
        return shellcheck
    return find_shellcheck() if shellcheck else None


def _rule_findings(ctx: Context) -> list[Finding]:
    found: list[Finding] = []
    for rule in RULES:
        if rule.check is None:
            continue
        for pos, message in rule.check(ctx):
            found.append(Finding(rule.id, rule.severity, message, pos))
    return found


def _load(path: str, text: str | None = None, *, resolve: bool) -> _Unit:
    from amic.amifile import parser

    try:
        if text is None:
            # the parser's reader: a FIFO or device is refused before it is opened, and
            # never more than the size limit is read
            text = parser.read_source(path)[1].decode("utf-8", errors="replace")
            text = text.removeprefix("\ufeff")
            amifile = parser.parse_file(path)
        else:
            amifile = parser.parse_text(text, path)
    except OSError as exc:
        return _Unit(path, "", None, [_finding("AM1000", f"cannot read {path}: "
                                               f"{exc.strerror or exc}", Pos(path, 1, 1))])
    except AmifileError as exc:
        if exc.recovered is None:
            return _Unit(path, text or "", None, _from_error("AM1000", exc, path))
        # what parsed without the broken instructions is checked too, as compile does
        unit = _Unit(path, text or "", exc.recovered, _from_error("AM1000", exc, path),
                     partial=True)
        amifile = exc.recovered
    else:
        unit = _Unit(path, text, amifile)
    ctx = Context(amifile, text, path,
                  includes_resolved=not amifile.includes, fragment=_is_fragment(path))
    if resolve and amifile.includes:
        ctx.external, unit.include_error = _included(amifile)
        ctx.includes_resolved = unit.include_error is None
    unit.context = ctx
    return unit


def _analyse(unit: _Unit, *, resolve: bool) -> None:
    """Run the AM rules (and the resolver) on a loaded unit."""
    if unit.context is None:
        return
    if unit.partial:
        if resolve and not unit.amifile.includes:
            unit.findings.extend(_resolver_errors(unit.amifile, unit.findings))
        return
    findings = _rule_findings(unit.context)
    if unit.include_error is not None:
        findings.append(unit.include_error)
    elif resolve:
        findings += _resolver_errors(unit.context.amifile, findings)
    unit.findings.extend(findings)


def _is_fragment(path: str) -> bool:
    """An Amifile made to be INCLUDEd: ``*.amifile``, or a stock service."""
    from amic.amifile import resolve

    if path.endswith(".amifile"):
        return True
    where = Path(path).resolve()
    return any(where.is_relative_to(d.resolve()) for d in resolve.stock_service_dirs())


def _shellcheck(units: Sequence[_Unit], checker: Shellcheck) -> dict[int, list[Finding]]:
    """shellcheck findings (and AM3012 for bodies too large for it) by unit index."""
    found: dict[int, list[Finding]] = {}
    scripts: dict[tuple[int, int], str] = {}
    refs = {}
    for u, unit in enumerate(units):
        if unit.context is None:
            continue
        for s, ref in enumerate(unit.context.scripts()):
            text = ref.script.text
            if shell_of(text) is not None and too_large(text):
                lines = text.count("\n")
                found.setdefault(u, []).append(_finding("AM3012", (
                    f"{ref.phase.upper()} of {ref.service.name!r} has {lines} lines "
                    f"({len(text)} characters): too large for shellcheck, not checked; "
                    "split it or move it into a file you COPY"), ref.script.pos))
                continue
            scripts[(u, s)] = text
            refs[(u, s)] = ref
    if not scripts:
        return found
    results = check_scripts(checker, scripts)
    given: dict[int, set[str]] = {}
    for (u, s), comments in results.items():
        if not comments:
            continue
        unit, ref = units[u], refs[(u, s)]
        smap = unit.context.script_map(ref.script)
        env = given.get(id(ref.service))
        if env is None:
            env = given[id(ref.service)] = _environment(unit.context.amifile, ref.service)
        for c in comments:
            unassigned = _UNASSIGNED_RE.match(c.message)
            if c.code == "SC2154" and unassigned and (
                    unassigned.group(1) in env or not unit.context.amifile.includes):
                continue  # ENV and ARG values are in the script's environment; AM3015
                #           (which knows SECRETs too) decides in a file without INCLUDE
            level = c.level if c.level in SEVERITIES else "warning"
            found.setdefault(u, []).append(Finding(c.code, level, c.message,
                                                   smap.pos(c.index, c.col)))
    return found


def _lint_units(units: list[_Unit], *, checker: Shellcheck | None, resolve: bool) -> None:
    """Rules and shellcheck for every unit; shellcheck's processes run meanwhile."""
    if checker is None:
        for unit in units:
            _analyse(unit, resolve=resolve)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_shellcheck, units, checker)
        for unit in units:
            _analyse(unit, resolve=resolve)
        for u, extra in pending.result().items():
            units[u].findings.extend(extra)


_UNASSIGNED_RE = re.compile(r"^(\w+) is referenced but not assigned")


def _environment(amifile: ir.Amifile, service: ir.Service) -> set[str]:
    """Variables a script of ``service`` gets from amic: ENV (global and its own) and ARG."""
    return {e.name for e in amifile.envs + service.envs} | {a.name for a in amifile.args}


def _finish(unit: _Unit, ignore: set[str]) -> list[Finding]:
    pragmas = read_pragmas(unit.text, unit.amifile) if unit.text else Ignores()
    kept = {f for f in unit.findings
            if f.code not in ignore
            and not (f.pos.file == unit.path and pragmas.suppresses(f.code, f.pos.line))}
    if unit.amifile is not None:   # it parsed: an Amifile, whose lines may be shown
        lines = split_lines(unit.text)
        kept = {f if f.source_line is not None or f.pos.file != unit.path
                or not 0 < f.pos.line <= len(lines)
                else attrs.evolve(f, source_line=lines[f.pos.line - 1]) for f in kept}
    return sorted(kept, key=lambda f: (f.pos.file != unit.path, f.pos.file, f.pos.line,
                                       f.pos.col, f.code, f.message))


def lint_text(text: str, path: str = "Amifile", *, ignore: Collection[str] = (),
              shellcheck: bool | Shellcheck = True, resolve: bool = True) -> list[Finding]:
    """Lint Amifile source ``text`` as if read from ``path`` (COPY and INCLUDE are relative
    to its directory). ``shellcheck=True`` runs the one :func:`find_shellcheck` picks (and
    raises :class:`~amic.lint.shellcheck.ShellcheckError` without one)."""
    unit = _load(path, text, resolve=resolve)
    _lint_units([unit], checker=_checker(shellcheck), resolve=resolve)
    return _finish(unit, {i.upper() for i in ignore})


def lint_paths(paths: Iterable[str], *, ignore: Collection[str] = (),
               shellcheck: bool | Shellcheck = True, resolve: bool = True) -> list[Finding]:
    """Lint files (a directory means its ``Amifile``); findings grouped by file, in order."""
    checker = _checker(shellcheck)
    units = [_load(_amifile_path(p), resolve=resolve) for p in paths]
    _lint_units(units, checker=checker, resolve=resolve)
    ignore = {i.upper() for i in ignore}
    return [f for unit in units for f in _finish(unit, ignore)]


def _amifile_path(path: str) -> str:
    return str(Path(path) / "Amifile") if Path(path).is_dir() else path


def exit_code(findings: Iterable[Finding], threshold: str) -> int:
    """1 when a finding is at or above ``threshold`` (``none`` never fails), else 0."""
    if threshold == "none":
        return 0
    bar = severity_rank(threshold)
    return int(any(severity_rank(f.severity) >= bar for f in findings))


def run(paths: list[str], *, fmt: str = "text", threshold: str = DEFAULT_THRESHOLD,
        ignore: set[str] = frozenset(), out: TextIO, err: TextIO | None = None,
        shellcheck: bool = True, verbose: bool = False) -> int:
    """``amic lint``: lint ``paths`` (default ``Amifile``), write ``fmt`` to ``out``, return the
    exit code (0 clean below ``threshold``, 1 otherwise). A missing or broken shellcheck
    raises :class:`~amic.lint.shellcheck.ShellcheckError` (exit 2) unless ``shellcheck`` is
    false. The text format notes on ``err`` which shellcheck ran when it is not the one
    installed with amic (results depend on the version), or when ``verbose``."""
    if fmt not in formats.FORMATS:
        raise UsageError(f"unknown lint format {fmt!r} (choose from {', '.join(formats.FORMATS)})")
    if threshold not in THRESHOLDS:
        raise UsageError(f"unknown failure threshold {threshold!r} "
                         f"(choose from {', '.join(THRESHOLDS)})")
    unknown = {i for i in ignore if i.upper() not in RULES_BY_ID and not _is_shellcheck_id(i)}
    if unknown:
        raise UsageError(f"unknown rule id(s) to ignore: {', '.join(sorted(unknown))} "
                         "(see amic lint --list-rules)")
    paths = list(paths) or ["Amifile"]
    checker = find_shellcheck() if shellcheck else None
    unpinned = checker is not None and checker.source != "venv"
    if err is not None and fmt == "text" and (verbose or unpinned):
        used = f"using {checker.describe()}" if checker else "shellcheck not run (--no-shellcheck)"
        err.write(f"amic lint: note: {used}\n")
    findings = lint_paths(paths, ignore=ignore, shellcheck=checker or False)
    out.write(formats.render(findings, fmt, files=len(paths), shellcheck=checker))
    return exit_code(findings, threshold)


def _is_shellcheck_id(code: str) -> bool:
    return code.upper().startswith("SC") and code[2:].isdigit()

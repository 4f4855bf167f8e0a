"""Check of the variables INIT/UPDATE bodies read: AM3015 (a variable nothing sets).

A script's environment is known: the ENV, ARG and SECRET names in scope, amic's own
``AMIC_*`` variables, and what every POSIX shell and the boot environment set. A
``$NAME`` that is none of those, and that the script never sets itself, expands to
nothing: most often a typo, or an ARG never declared. shellcheck does not say so for
upper-case names (it takes them for environment variables), which is exactly how ARG
and ENV names are written.

False positives are the cost to avoid, so the check stays out of what it cannot see:
a script that sources a file (``.``/``source``) or runs ``eval`` may set anything, and a
file with INCLUDE may get ENV and ARG from files lint did not read. Every assignment form
counts wherever it is (``NAME=``, ``read``, ``for NAME in``, ``getopts``, ``printf -v``,
``export``/``local``/``readonly``, ``${NAME:=...}``), and a reference with a default
(``${NAME:-x}``, ``${NAME-x}``, ``${NAME+x}``, ``${NAME?}``) is deliberate.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from amic.amifile import ir
from amic.lint.facts import Found
from amic.lint.model import Context, ScriptRef

SHELL_VARIABLES = frozenset({
    "HOME", "PATH", "PWD", "OLDPWD", "IFS", "PS1", "PS2", "PS4", "PPID", "LINENO", "OPTARG",
    "OPTIND", "RANDOM", "SHELL", "USER", "LOGNAME", "TERM", "LANG", "LANGUAGE", "TZ",
    "HOSTNAME", "UID", "EUID", "GROUPS", "SECONDS", "TMPDIR", "MAIL", "ENV", "COLUMNS",
    "LINES", "SHLVL", "REPLY", "PIPESTATUS", "FUNCNAME", "HOSTTYPE", "MACHTYPE", "OSTYPE",
    "INVOCATION_ID", "NOTIFY_SOCKET", "JOURNAL_STREAM", "SSH_CONNECTION", "SSH_CLIENT",
})
"""Set by the shell, or by every environment a script runs in (LC_* and BASH* too)."""

_SOURCING_RE = re.compile(r"(?:^|[;&|(!{]|\bthen|\bdo|\belse)[ \t]*(?:\.|source|eval)\s",
                          re.MULTILINE)
_ASSIGN_RE = re.compile(
    r"(?:^|[\s;&|(`{])(?:(?:export|local|readonly|declare|typeset)(?:\s+-\w+)*\s+)?"
    r"([A-Za-z_]\w*)\+?=")
_SETTER_RE = re.compile(
    r"\b(?:read|export|local|readonly|declare|typeset|getopts\s+\S+|mapfile|readarray"
    r"|for|select|printf\s+-v)((?:\s+(?:-\w+|[A-Za-z_]\w*))+)")
_DEFAULT_ASSIGN_RE = re.compile(r"\$\{([A-Za-z_]\w*):?=")
_REFERENCE_RE = re.compile(r"\$(?:\{([A-Za-z_]\w*)([^}]?)|([A-Za-z_]\w*))")
_HEREDOC_RE = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_]\w*)\1")


def check_undefined_variable(ctx: Context) -> Found:
    """AM3015: ``$NAME`` in an INIT or UPDATE that nothing sets (see the module docstring)."""
    if ctx.amifile.includes:
        return
    af = ctx.amifile
    common = {v.name for v in [*af.args, *af.envs, *af.secrets]}
    for ref in ctx.scripts():
        svc = ref.service
        known = common | {v.name for v in [*svc.args, *svc.envs, *svc.secrets]}
        yield from _undefined_in(ctx, ref, known)


def _undefined_in(ctx: Context, ref: ScriptRef, known: set[str]) -> Found:
    text = ref.script.text
    if _SOURCING_RE.search(text):
        return
    assigned = _assigned(text)
    smap = ctx.script_map(ref.script)
    reported: set[str] = set()
    for index, col, name in _references(smap.text_lines):
        if name in reported or name in known or name in assigned or _well_known(name):
            continue
        reported.add(name)
        yield smap.pos(index, col), (
            f"${name} is never set: not an ARG, ENV or SECRET of {ref.service.name!r}, and "
            f"its {ref.phase.upper()} does not assign it (it expands to nothing; write "
            f"${{{name}:-}} where empty is meant)")


def _well_known(name: str) -> bool:
    return (name in SHELL_VARIABLES or name.startswith(ir.RESERVED_PREFIX)
            or name.startswith(("LC_", "BASH", "XDG_")) or name == "_")


def _assigned(text: str) -> set[str]:
    """Every name the script may set, wherever it does (one pass per pattern)."""
    names = {m[1] for m in _ASSIGN_RE.finditer(text)}
    names.update(m[1] for m in _DEFAULT_ASSIGN_RE.finditer(text))
    for m in _SETTER_RE.finditer(text):
        names.update(w for w in m[1].split() if not w.startswith("-"))
    return names


def _references(lines: list[str]) -> Iterator[tuple[int, int, str]]:
    """``(line index, column, name)`` of each expansion that reads a plain ``$NAME``.

    Skips what the shell does not expand: single quotes (across lines too), comments,
    backslash-escaped ``$``, and the bodies of quoted heredocs (``<<'EOF'``); in an
    unquoted heredoc body quotes are text, so only ``$`` counts there.
    """
    quote = ""          # "'" or '"' while inside one
    heredocs: list[tuple[str, bool]] = []   # opened on this line: (delimiter, expands)
    body: tuple[str, bool] | None = None    # the heredoc body being read
    pending: list[tuple[str, bool]] = []
    for index, line in enumerate(lines):
        if body is not None:
            if line.strip("\t ") == body[0]:
                body = pending.pop(0) if pending else None
            elif body[1]:
                yield from _plain_references(index, line, 0)
            continue
        quote = yield from _scan_line(index, line, quote, heredocs)
        if heredocs:
            body, pending = heredocs[0], heredocs[1:]
            heredocs = []


def _scan_line(index: int, line: str, quote: str,
               heredocs: list[tuple[str, bool]]) -> Iterator[tuple[int, int, str]]:
    """References on one line outside heredoc bodies; returns the open quote at its end."""
    k, n = 0, len(line)
    while k < n:
        c = line[k]
        if quote == "'":
            if c == "'":
                quote = ""
        elif c == "\\":
            k += 1
        elif c == "'" and quote == "":
            quote = "'"
        elif c == '"':
            quote = "" if quote == '"' else '"'
        elif c == "#" and quote == "" and (k == 0 or line[k - 1] in " \t;&|("):
            break
        elif c == "<" and quote == "" and (m := _HEREDOC_RE.match(line, k)):
            heredocs.append((m[2], not m[1]))
            k = m.end()
            continue
        elif c == "$":
            m = _REFERENCE_RE.match(line, k)
            if m and _reads_plainly(m):
                yield index, k + 1, m[1] or m[3]
        k += 1
    return quote


def _plain_references(index: int, line: str, start: int) -> Iterator[tuple[int, int, str]]:
    for m in _REFERENCE_RE.finditer(line, start):
        if _reads_plainly(m) and (m.start() == 0 or line[m.start() - 1] != "\\"):
            yield index, m.start() + 1, m[1] or m[3]


def _reads_plainly(m: re.Match[str]) -> bool:
    """``$NAME``, ``${NAME}`` (or ``${NAME%...}``, ...), not ``${NAME:-x}`` and the like,
    which say what an unset NAME means."""
    return m[3] is not None or m[2] not in (":", "-", "+", "=", "?")

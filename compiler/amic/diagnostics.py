"""Diagnostics as a user reads them: ``file:line:col: message``, the line, a caret, a hint.

One renderer for every command that points into an Amifile: ``amic compile`` (and build,
which prints an :class:`amic.errors.AmifileError` through it) and ``amic lint``'s text
format, so the same mistake looks the same, at the same position with the same hint,
whichever command found it. Imports nothing of amic (errors.py builds on it).

What may be shown: the message, and the offending line of the Amifile when the caller
has it and may quote it (a file that is no Amifile, or has NUL bytes or invalid UTF-8,
is never quoted: whoever made the diagnostic passes no line). Every character a terminal
would act on is escaped, and the caret stays under the column the escapes shift.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import attrs

MAX_SHOWN = 20
"""At most this many diagnostics of one report are shown in full; the rest are counted.
After twenty, later errors are mostly echoes of earlier ones, and a broken (or hostile)
file must not flood a terminal."""

_UNSAFE = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))
"""Unicode categories never written to a terminal as they are: controls (ESC starts a
terminal escape sequence), format characters (bidi overrides reorder what is shown),
surrogates, private use, unassigned, line and paragraph separators."""


def escape_controls(text: str) -> str:
    """``text`` with every character a terminal would act on (not show) written as
    ``\\xNN``/``\\uNNNN``, as ``repr`` does; everything printable stays as it is."""
    if text.isprintable():
        return text
    return "".join(_escaped(c) for c in text)


def _escaped(c: str) -> str:
    if c == " " or unicodedata.category(c) not in _UNSAFE:
        return c
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 \
        else f"\\U{code:08x}"


@attrs.frozen
class Diagnostic:
    """One thing to tell the user about one place in a file."""

    file: str | None
    """``None``: the diagnostic has no position (then line and col are ignored)."""
    line: int
    col: int
    message: str
    label: str = ""
    """Put between position and message: lint's ``AM4001 error``; empty for compile."""
    source_line: str | None = None
    """The line at ``line``, when it may be shown."""
    hint: str | None = None


def render(d: Diagnostic) -> str:
    """The diagnostic as lines of text (no final newline)."""
    label = f"{d.label}: " if d.label else ""
    head = f"{d.file}:{d.line}:{d.col}: {label}{d.message}" if d.file is not None \
        else f"{label}{d.message}"
    parts = [escape_controls(head)]
    if d.source_line is not None and d.file is not None:
        line = d.source_line.rstrip("\r\n").replace("\t", " ")
        before = escape_controls(line[:max(d.col - 1, 0)])
        parts.append(f"    {escape_controls(line)}")
        parts.append("    " + " " * len(before) + "^")
    if d.hint:
        parts.append(escape_controls(f"hint: {d.hint}"))
    return "\n".join(parts)


def render_all(diagnostics: Sequence[Diagnostic], *, most: int = MAX_SHOWN,
               complete: bool = True) -> str:
    """The first ``most`` diagnostics, then how many more there are (``complete``: all were
    found; otherwise the search stopped early and only says that there are more)."""
    shown = [render(d) for d in diagnostics[:most]]
    left = len(diagnostics) - len(shown)
    if left > 0 and complete:
        shown.append(f"... and {left} more error{'s' if left != 1 else ''} "
                     f"(only the first {most} are shown)")
    elif left > 0 or not complete:
        shown.append(f"... and more errors (amic stops looking after {most}; fix these first)")
    return "\n".join(shown)

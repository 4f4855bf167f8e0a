"""The errors users see, under one root, each kind with the exit code it means.

Every mistake in an Amifile (syntax, unknown service, cycle, missing COPY
source, ...) is raised as :class:`AmifileError`; the CLI prints it as
``file:line:col: message`` followed by the offending line and a caret, and
exits 1. A command-line mistake is a :class:`UsageError` (exit 2), a build
that failed for a reason outside the Amifile a :class:`BuildError` (exit 1).
The CLI catches :class:`AmicError` alone; anything else escaping is a bug.
"""

from __future__ import annotations

import unicodedata

import attrs

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
class Pos:
    """A position in an Amifile. Lines and columns count from 1."""

    file: str
    """Path as the user gave it (or as an INCLUDE resolved it)."""
    line: int
    col: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class AmicError(Exception):
    """Root of every error amic reports to a user (never with a traceback)."""

    exit_code = 1

    def render(self) -> str:
        """The whole text the command line prints for this error."""
        return f"amic: error: {self}"


class AmifileError(AmicError):
    """A user mistake in an Amifile, pointing at where it is."""

    def __init__(self, message: str, pos: Pos | None = None, *, source_line: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos
        self.source_line = source_line
        self.hint = hint

    def render(self) -> str:
        """``file:line:col: message``, then the line and a caret under the column.

        Control characters are escaped everywhere (the line comes from a file someone
        else wrote), and the caret stays under the column they shift.
        """
        head = f"{self.pos}: {self.message}" if self.pos else self.message
        parts = [escape_controls(head)]
        if self.source_line is not None and self.pos is not None:
            line = self.source_line.rstrip("\r\n").replace("\t", " ")
            before = escape_controls(line[:max(self.pos.col - 1, 0)])
            parts.append(f"    {escape_controls(line)}")
            parts.append("    " + " " * len(before) + "^")
        if self.hint:
            parts.append(escape_controls(f"hint: {self.hint}"))
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.render()


class UsageError(AmicError):
    """A mistake on the command line (exit code 2)."""

    exit_code = 2


class BaseRefError(UsageError):
    """A target cannot use the base image a ``FROM`` names; the engine reports it at the
    FROM line (targets never see positions)."""

    exit_code = 1


class BuildError(AmicError):
    """A build failed for a reason outside the Amifile (target, network, a failing INIT), or
    another command (run, export, prune, gc, ...) could not do its work."""

    def render(self, command: str = "build") -> str:
        """``amic: COMMAND failed: ...``: the CLI names the command that ran (a refused prune
        is no failed build)."""
        return f"amic: {command} failed: {self}"

"""The errors users see, under one root, each kind with the exit code it means.

Every mistake in an Amifile (syntax, unknown service, cycle, missing COPY
source, ...) is raised as :class:`AmifileError`; the CLI prints it as
``file:line:col: message`` followed by the offending line and a caret, and
exits 1. A command-line mistake is a :class:`UsageError` (exit 2), a build
that failed for a reason outside the Amifile a :class:`BuildError` (exit 1).
The CLI catches :class:`AmicError` alone; anything else escaping is a bug.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from amic.diagnostics import Diagnostic, escape_controls, render_all

__all__ = ["AmicError", "AmifileError", "BaseRefError", "BuildError", "Pos", "UsageError",
           "escape_controls"]


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
        self.more: tuple[AmifileError, ...] = ()
        """Further independent errors of the same run (the parser and the resolver report
        every one they find, this one first); :meth:`render` shows them all, capped."""
        self.complete = True
        """False when the search stopped at the cap: there may be more errors than these."""
        self.recovered: object | None = None
        """The Amifile's IR (``ir.Amifile``) parsed without the lines these errors are on,
        when dropping them cannot make errors of its own (no SERVICE or INCLUDE among
        them): the next stage (the resolver) checks it, so its errors come in the same run."""

    @classmethod
    def collected(cls, errors: Sequence[AmifileError], *, complete: bool = True) -> AmifileError:
        """The first of ``errors``, carrying the others in :attr:`more`."""
        first = errors[0]
        first.more = tuple(errors[1:])
        first.complete = complete
        return first

    def joined(self, later: AmifileError) -> AmifileError:
        """These errors and ``later``'s (a later stage's, on :attr:`recovered`), in file
        order, capped as one report."""
        from amic.diagnostics import MAX_SHOWN

        every = sorted((*self.all(), *later.all()),
                       key=lambda e: (e.pos.line, e.pos.col) if e.pos else (0, 0))
        for e in every:
            e.more = ()
        return AmifileError.collected(every[:MAX_SHOWN], complete=self.complete
                                      and later.complete and len(every) <= MAX_SHOWN)

    def all(self) -> tuple[AmifileError, ...]:
        """This error and the others found with it, in the order found."""
        return (self, *self.more)

    def diagnostic(self) -> Diagnostic:
        pos = self.pos
        return Diagnostic(pos.file if pos else None, pos.line if pos else 0,
                          pos.col if pos else 0, self.message,
                          source_line=self.source_line, hint=self.hint)

    def render(self) -> str:
        """``file:line:col: message``, then the line and a caret under the column, for this
        error and each one in :attr:`more` (at most :data:`amic.diagnostics.MAX_SHOWN`)."""
        return render_all([e.diagnostic() for e in self.all()], complete=self.complete)

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

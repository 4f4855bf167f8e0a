"""Package names of a resolved service, checked again before a plan is made.

The grammar is :mod:`amic.amifile.packages` (the parser checks every PACKAGES word
at its position as it reads the file); this second check covers an IR made by other
means, and points at the word's PACKAGES line when it can.
"""

from __future__ import annotations

from amic.amifile import ir
from amic.amifile.packages import HINT, problem
from amic.amifile.resolve import source_line
from amic.compile.context import instructions
from amic.errors import AmifileError, Pos


def check_packages(svc: ir.Service) -> None:
    """Raise an AmifileError at the first bad PACKAGES word of ``svc``."""
    for word in svc.packages:
        why = problem(word)
        if why is not None:
            pos = word_pos(svc, word)
            raise AmifileError(why, pos, source_line=source_line(pos) if pos else None,
                               hint=HINT)


def word_pos(svc: ir.Service, word: str) -> Pos | None:
    """Where ``word`` is written in one of ``svc``'s PACKAGES (else the first PACKAGES)."""
    started = False
    for keyword, words in instructions(svc.pos.file):
        if (keyword.line, keyword.col) == (svc.pos.line, svc.pos.col):
            started = True
            continue
        if not started:
            continue
        if words and words[0][1] == "SERVICE":
            break
        if words and words[0][1] == "PACKAGES":
            for _, value, where in words[1:]:
                if value == word:
                    return where
    return svc.packages_pos or svc.pos

"""Inline ignores, read from the raw text (comments are not in the IR).

* ``# amic ignore=AM3001,SC2086`` applies to the next instruction: its line, its ``\\``
  continuation lines and its heredoc body. Comment and blank lines may sit in between, and
  several pragmas may stack before one instruction.
* ``# amic global ignore=AM4004`` anywhere (outside heredoc bodies) applies to the whole file.

Inside a heredoc body, shellcheck's own ``# shellcheck disable=SC2086`` works as usual.
"""

from __future__ import annotations

import bisect
import re

import attrs

from amic.amifile import ir
from amic.lint.shell import is_heredoc

PRAGMA_RE = re.compile(r"^\s*#\s*amic\s+(global\s+)?ignore\s*=\s*([A-Za-z0-9_,\s]+?)\s*$")


@attrs.frozen
class Ignores:
    """What the pragmas of one file switch off."""

    file: frozenset[str] = frozenset()
    spans: tuple[tuple[int, int, frozenset[str]], ...] = ()
    """``(first_line, last_line, ids)`` per instruction preceded by a pragma."""

    def suppresses(self, code: str, line: int) -> bool:
        if code in self.file:
            return True
        # Spans are in line order and do not overlap: a binary search per finding.
        k = bisect.bisect_right(self.spans, (line, float("inf"))) - 1
        if k < 0:
            return False
        first, last, ids = self.spans[k]
        return first <= line <= last and code in ids


def _ids(text: str) -> frozenset[str]:
    return frozenset(part.strip().upper() for part in text.split(",") if part.strip())


def _heredoc_bodies(amifile: ir.Amifile | None) -> dict[int, int]:
    """Instruction line -> last line of its heredoc (the terminator)."""
    bodies: dict[int, int] = {}
    if amifile is None:
        return bodies
    for svc in amifile.services:
        for script in svc.inits + svc.updates:
            if is_heredoc(script):
                end = script.body_line + script.text.count("\n")
                bodies[script.pos.line] = max(end, bodies.get(script.pos.line, 0))
    return bodies


def read_pragmas(text: str, amifile: ir.Amifile | None) -> Ignores:
    lines = text.splitlines()
    bodies = _heredoc_bodies(amifile)
    file_ids: set[str] = set()
    spans: list[tuple[int, int, frozenset[str]]] = []
    pending: set[str] = set()
    n = 0
    while n < len(lines):
        line_no = n + 1
        stripped = lines[n].strip()
        if not stripped or stripped.startswith("#"):
            match = PRAGMA_RE.match(lines[n])
            if match and match.group(1):
                file_ids |= _ids(match.group(2))
            elif match:
                pending |= _ids(match.group(2))
            n += 1
            continue
        # An instruction: extend over continuation lines and heredoc bodies.
        last = line_no
        while lines[last - 1].rstrip().endswith("\\") and last < len(lines):
            last += 1
        for start in range(line_no, last + 1):
            last = max(last, bodies.get(start, last))
        if pending:
            spans.append((line_no, last, frozenset(pending)))
            pending = set()
        n = last
    return Ignores(frozenset(file_ids), tuple(spans))

"""``.amicignore`` patterns, matched in time linear in the path (no backtracking).

dockerignore syntax (Go's ``filepath.Match`` plus ``**``, as moby's patternmatcher
reads it): ``*`` (no ``/``), ``?`` (one character but ``/``), ``[...]`` (``^`` or
``!`` negates), ``**/`` (any number of leading directories), a final ``**``
(anything), ``\\`` escapes. A pattern is compiled to a list of steps and matched
by simulating the set of steps reached (a Thompson NFA): each character of the
path moves every state at most once, so a pattern of ``m`` steps against a path
of ``n`` characters costs ``O(n * m)`` whatever the pattern, where a regular
expression built from it could backtrack exponentially (``**/**/**/…``).

A path is excluded when the pattern matches it or any directory above it; one
pass over the path answers that for every prefix at once.
"""

from __future__ import annotations

import os
import re
import stat

import attrs

from amic import safeopen
from amic.contract import IGNORE_FILE
from amic.errors import AmifileError, Pos
from amic.safeopen import kind_name

MAX_IGNORE_BYTES = 1024 * 1024

# Step kinds. ``LIT``: one given character; ``ONE``: any character but '/';
# ``CLASS``: one character of a bracket expression; ``STAR``: any run without '/';
# ``ANY``: any run; ``DIRS``: nothing, or any run ending in '/'.
LIT, ONE, CLASS, STAR, ANY, DIRS = range(6)


@attrs.frozen
class Pattern:
    """One compiled pattern: its steps (kind, argument)."""

    steps: tuple[tuple[int, object], ...]
    regex: re.Pattern[str] | None = attrs.field(default=None, eq=False)
    """The pattern or any leading directories of a path as a regular expression, when it
    has at most one run (``*``, ``**``): then ``re`` cannot backtrack more than linearly,
    and it is faster than the set of states in Python."""
    moves: dict = attrs.field(factory=dict, eq=False, hash=False, repr=False)
    literals: tuple[str, ...] = attrs.field(default=(), eq=False)
    """The runs of literal characters, in order: a path holding them not in that order
    cannot match (checked with ``str.find`` first, which is fast)."""

    def _close(self, states: set[int]) -> set[int]:
        """Add every state reachable without reading a character."""
        todo = list(states)
        while todo:
            i = todo.pop()
            if 0 <= i < len(self.steps) and self.steps[i][0] in (STAR, ANY, DIRS):
                # these may match nothing: step over them (DIRS also enters its group)
                for nxt in (i + 1,) + ((-(i + 1),) if self.steps[i][0] == DIRS else ()):
                    if nxt not in states:
                        states.add(nxt)
                        todo.append(nxt)
        return states

    def _step(self, states: set[int], c: str) -> set[int]:
        out: set[int] = set()
        for i in states:
            if i < 0:   # inside the group of DIRS step -i-1: any character; '/' may end it
                out.add(i)
                if c == "/":
                    out.add(-i)
                continue
            if i == len(self.steps):
                continue
            kind, arg = self.steps[i]
            if kind == LIT:
                if c == arg:
                    out.add(i + 1)
            elif kind == ONE:
                if c != "/":
                    out.add(i + 1)
            elif kind == CLASS:
                if arg.fullmatch(c):
                    out.add(i + 1)
            elif kind == STAR:
                if c != "/":
                    out.add(i)
            elif kind == ANY:
                out.add(i)
        return self._close(out)

    def _start(self) -> frozenset[int]:
        return frozenset(self._close({0}))

    def _next(self, states: frozenset[int], c: str) -> frozenset[int]:
        # The sets met so far and their moves, kept (a DFA built lazily): a path costs one
        # dictionary look-up per character once its sets have been seen.
        key = (states, c)
        nxt = self.moves.get(key)
        if nxt is None:
            if len(self.moves) > MAX_MOVES:
                self.moves.clear()
            nxt = self.moves[key] = frozenset(self._step(set(states), c))
        return nxt

    def _may_match(self, path: str) -> bool:
        at = 0
        for text in self.literals:
            at = path.find(text, at)
            if at < 0:
                return False
            at += len(text)
        return True

    def matches_prefix(self, path: str) -> bool:
        """Whether the pattern matches ``path`` or one of its leading directories."""
        if not self._may_match(path):
            return False
        if self.regex is not None:
            return self.regex.fullmatch(path) is not None
        end = len(self.steps)
        states = self._start()
        for c in path:
            if c == "/" and end in states:
                return True
            states = self._next(states, c)
            if not states:
                return False
        return end in states


MAX_MOVES = 65536
"""Cached moves per pattern before the cache starts over (bounded memory)."""


def compile_pattern(pattern: str) -> Pattern:
    """A dockerignore pattern as steps; a malformed one is ``ValueError``."""
    steps: list[tuple[int, object]] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 1
                if i + 1 < n and pattern[i + 1] == "/":
                    i += 1
                steps.append((ANY, None) if i + 1 == n else (DIRS, None))
            else:
                steps.append((STAR, None))
        elif c == "?":
            steps.append((ONE, None))
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("^", "!") else i + 1)
            if end < 0:
                raise ValueError("unterminated '[' in the pattern")
            body = pattern[i + 1:end]
            negate = body[:1] in ("^", "!")
            body = body[1:] if negate else body
            if not body:
                raise ValueError("empty '[]' in the pattern")
            # One bracket expression matches one character: no backtracking possible.
            steps.append((CLASS, re.compile("[" + ("^" if negate else "")
                                            + body.replace("\\", "\\\\") + "]", re.DOTALL)))
            i = end
        elif c == "\\":
            if i + 1 >= n:
                raise ValueError("a pattern cannot end in '\\'")
            i += 1
            steps.append((LIT, pattern[i]))
        else:
            steps.append((LIT, c))
        i += 1
    steps = _merge(steps)
    runs = sum(kind in (STAR, ANY, DIRS) for kind, _ in steps)
    return Pattern(steps, _regex(steps) if runs <= 1 else None, literals=_literals(steps))


def _literals(steps: tuple[tuple[int, object], ...]) -> tuple[str, ...]:
    out, run = [], ""
    for kind, arg in steps:
        if kind == LIT:
            run += arg
        elif run:
            out.append(run)
            run = ""
    return tuple(out + [run] if run else out)


_REGEX = {ONE: "[^/]", STAR: "[^/]*", ANY: ".*", DIRS: "(?:.*/)?"}


def _regex(steps: tuple[tuple[int, object], ...]) -> re.Pattern[str]:
    # what follows the match is nothing, or '/' and anything (a directory's contents)
    return re.compile("".join(re.escape(arg) if kind == LIT else arg.pattern if kind == CLASS
                              else _REGEX[kind] for kind, arg in steps) + "(?:/.*)?", re.DOTALL)


def _merge(steps: list[tuple[int, object]]) -> tuple[tuple[int, object], ...]:
    # Runs of '**/' (and '*' next to '**') match what one of them matches: keep one, so
    # the number of states does not grow with the repetition.
    out: list[tuple[int, object]] = []
    for step in steps:
        if out and step[0] == DIRS and out[-1][0] == DIRS:
            continue
        if out and step[0] == ANY and out[-1][0] == ANY:
            continue
        out.append(step)
    return tuple(out)


@attrs.frozen
class IgnoreRules:
    """The patterns of one ``.amicignore``, in file order: (pattern, is ``!``)."""

    rules: tuple[tuple[Pattern, bool], ...] = ()

    @property
    def negates(self) -> bool:
        return any(neg for _, neg in self.rules)

    def excluded(self, rel: str) -> bool:
        """Whether ``rel`` (slash-separated, relative to the context) is left out."""
        if not self.rules or rel in ("", "."):
            return False
        matched = False
        for pattern, negated in self.rules:
            if negated != matched:
                continue  # cannot change the answer
            if pattern.matches_prefix(rel):
                matched = not negated
        return matched


def parse_ignore(text: str, path: str) -> IgnoreRules:
    """The rules of an ``.amicignore`` text; a bad pattern is an error at its line."""
    rules: list[tuple[str, Pattern, bool]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.startswith("#"):
            continue
        line = raw.strip()
        negated = line.startswith("!")
        if negated:
            line = line[1:].strip()
        if not line:
            continue
        line = os.path.normpath(line).lstrip("/") or "."
        try:
            rules.append((line, compile_pattern(line), negated))
        except (ValueError, re.error) as e:
            raise AmifileError(f"bad .amicignore pattern {raw.strip()!r}: {e}",
                               Pos(path, number, 1), source_line=raw) from None
    # The last matching line wins, so of lines with the same pattern only the last counts:
    # a file of one line repeated costs what that line costs.
    last = {text: i for i, (text, _, _) in enumerate(rules)}
    return IgnoreRules(tuple((pattern, negated) for i, (text, pattern, negated)
                             in enumerate(rules) if last[text] == i))


def load_ignore(root_fd: int, shown: str) -> IgnoreRules:
    """The ``.amicignore`` in directory ``root_fd`` (none: nothing is ignored). A special
    file or a symlink there is an error. ``shown``: the directory as messages name it."""
    name = os.path.join(shown, IGNORE_FILE)
    try:
        st = os.stat(IGNORE_FILE, dir_fd=root_fd, follow_symlinks=False)
    except FileNotFoundError:
        return IgnoreRules()
    except OSError as e:
        raise AmifileError(f"{name}: cannot be read: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise AmifileError(f"{name}: is {kind_name(st.st_mode)}, not an ignore file")
    if st.st_size > MAX_IGNORE_BYTES:
        raise AmifileError(f"{name}: larger than {MAX_IGNORE_BYTES} bytes")
    try:
        fd = safeopen.open_beneath(root_fd, IGNORE_FILE)
        try:
            data = safeopen.read_at_most(fd, MAX_IGNORE_BYTES)
        finally:
            os.close(fd)
    except OSError as e:
        raise AmifileError(f"{name}: cannot be read: {e.strerror or e}") from None
    if len(data) > MAX_IGNORE_BYTES:
        raise AmifileError(f"{name}: larger than {MAX_IGNORE_BYTES} bytes")
    return parse_ignore(data.decode("utf-8", errors="replace").removeprefix("\ufeff"), name)

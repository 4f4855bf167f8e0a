"""Shell scripts in an Amifile: where their lines are, what commands they run, and shellcheck.

Three jobs, all approximate by design (a linter, not a shell):

* :class:`ScriptMap` maps a (line, column) inside an INIT/UPDATE body back to the Amifile.
  Heredoc bodies map line by line from ``Script.body_line``; the column adds back the
  indentation that ``<<~``/``<<-`` stripped, found by locating the script line inside the
  raw source line. Inline scripts (``INIT cmd``) map to the instruction's line.
* :func:`commands` splits a script into simple commands (words, leading ``NAME=value``
  assignments, wrappers such as ``sudo``/``env``, and the command it is piped from), which
  is what the AM3xxx rules look at. Quotes are honoured; ``$(...)`` and backticks start a
  new command; heredoc contents inside a script are skipped; comments are dropped.

Running shellcheck itself is :mod:`amic.lint.shellcheck`.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator, Sequence

import attrs

from amic.amifile import ir
from amic.errors import Pos

# --------------------------------------------------------------------------- positions


def is_heredoc(script: ir.Script) -> bool:
    return bool(script.body_line) and script.body_line != script.pos.line


@attrs.frozen
class ScriptMap:
    """Maps positions in a script's text to positions in the Amifile."""

    script: ir.Script
    source_lines: Sequence[str]
    text_lines: list[str] = attrs.field(init=False, eq=False, repr=False)
    """The script's own lines, split once (a 200,000-line body is mapped many times)."""
    pieces: list[tuple[int, int, int]] | None = attrs.field(init=False, eq=False, repr=False)
    """:meth:`_inline_pieces`, once computed."""

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "text_lines", self.script.text.splitlines())
        object.__setattr__(self, "pieces", None)

    def _source(self, line: int) -> str:
        return self.source_lines[line - 1] if 1 <= line <= len(self.source_lines) else ""

    def pos(self, index: int, col: int = 1) -> Pos:
        """Amifile position of column ``col`` (1-based) on script line ``index`` (0-based)."""
        script = self.script
        text_lines = self.text_lines
        text = text_lines[index] if 0 <= index < len(text_lines) else ""
        if is_heredoc(script):
            line = script.body_line + index
            return Pos(script.pos.file, line, _offset(self._source(line), text) + col)
        # Inline script: the parser joins `\` continuation lines, so rebuild the pieces.
        if index == 0:
            if self.pieces is None:
                object.__setattr__(self, "pieces", self._inline_pieces())
            for start, line, source_col in reversed(self.pieces):
                if start <= col - 1:
                    return Pos(script.pos.file, line, source_col + col - 1 - start)
        for line in (script.pos.line + index, script.pos.line):
            src = self._source(line)
            if text.strip() and text in src:
                return Pos(script.pos.file, line, src.find(text) + col)
        return script.pos

    def _inline_pieces(self) -> list[tuple[int, int, int]]:
        """``(offset in the script, Amifile line, column)`` for each physical piece of a
        one-line script; empty when the text cannot be matched to the source."""
        script = self.script
        text = script.text.rstrip("\n")
        first = self._source(script.pos.line)
        keyword = re.match(r"\S+[ \t]+", first[script.pos.col - 1:])
        if keyword is None:
            return []
        pieces: list[tuple[int, int, int]] = []
        joined = ""
        line, begin = script.pos.line, script.pos.col - 1 + keyword.end()
        while line <= len(self.source_lines):
            src = self._source(line)[begin:]
            pieces.append((len(joined), line, begin + 1))
            if not src.endswith("\\"):
                joined += src
                break
            joined += src[:-1]
            line, begin = line + 1, 0
        return pieces if joined.rstrip() == text.rstrip() else []


def _offset(source: str, text: str) -> int:
    """How many characters precede ``text`` in its raw source line (the stripped indentation)."""
    if not text:
        return 0
    if source.endswith(text):
        return len(source) - len(text)
    found = source.find(text)
    return found if found >= 0 else 0


# --------------------------------------------------------------------------- commands

WRAPPERS = {"sudo", "env", "exec", "command", "nohup", "nice", "time", "doas", "eatmydata"}
KEYWORDS = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}",
            "case", "esac", "for", "in"}
_ASSIGN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_HEREDOC_RE = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")
_OPERATORS = ("&&", "||", ";;", "$(", "|", ";", "&", "(", ")", "`")


@attrs.frozen
class Word:
    text: str
    """The word with quotes removed."""
    index: int
    """Script line (0-based)."""
    col: int
    """Column (1-based) in that script line."""


@attrs.frozen
class Command:
    """One simple command inside a script."""

    words: tuple[Word, ...]
    """The command and its arguments, after assignments and wrappers."""
    assigns: tuple[str, ...]
    """``NAME=value`` prefixes (including ones given to ``env``)."""
    wrappers: tuple[Word, ...]
    """``sudo``, ``env``, ... in front of the command."""
    piped_from: Command | None
    """The command whose output is piped into this one (``a | b``: b.piped_from is a)."""
    name: str = attrs.field(init=False, eq=False)
    """The command's basename (``/usr/bin/apt-get`` -> ``apt-get``); every rule asks."""

    def __attrs_post_init__(self) -> None:
        name = self.words[0].text.rpartition("/")[2] if self.words else ""
        object.__setattr__(self, "name", name)

    @property
    def args(self) -> list[str]:
        return [w.text for w in self.words[1:]]

    @property
    def first(self) -> Word:
        return (self.wrappers or self.words)[0]

    def verb(self, takes_arg: frozenset[str] = frozenset()) -> str | None:
        """First argument that is not an option (nor the value of an option in ``takes_arg``)."""
        skip = False
        for arg in self.args:
            if skip:
                skip = False
            elif arg.startswith("-"):
                skip = arg in takes_arg
            else:
                return arg
        return None


def _logical_lines(text: str) -> Iterator[tuple[str, list[tuple[int, int, int]]]]:
    """Join backslash continuations and skip heredoc contents.

    Yields ``(line, segments)`` where each segment ``(start, index, shift)`` says that
    characters from ``start`` in the logical line come from script line ``index``, with
    column = offset - start + 1 + shift.
    """
    physical = text.splitlines()
    i = 0
    while i < len(physical):
        logical = ""
        segments: list[tuple[int, int, int]] = []
        while True:
            raw = physical[i]
            segments.append((len(logical), i, 0))
            if raw.endswith("\\") and i + 1 < len(physical):
                logical += raw[:-1] + " "
                i += 1
                continue
            logical += raw
            i += 1
            break
        yield logical, segments
        for match in _HEREDOC_RE.finditer(_strip_comment(logical)) if "<<" in logical else ():
            terminator = match.group(2)
            while i < len(physical) and physical[i].strip() != terminator:
                i += 1
            i += 1


def _strip_comment(line: str) -> str:
    if "#" not in line:
        return line
    quote = None
    for k, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
            elif ch == "\\" and quote == '"':
                continue
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1] in " \t;&|("):
            return line[:k]
    return line


_PLAIN_RE = re.compile(r"[^ \t'\"\\&|;$()`]+")
"""A run of characters that are neither blanks, quotes, escapes nor operator starts."""
_DOUBLE_RE = re.compile(r'[^"\\]+')


def _quoted(line: str, k: int, quote: str) -> tuple[str, int, bool]:
    """The quoted text from ``k`` (after the opening quote): ``(text, next offset, closed)``.
    Inside double quotes a backslash escapes the next character."""
    if quote == "'":
        end = line.find("'", k)
        return (line[k:], len(line), False) if end < 0 else (line[k:end], end + 1, True)
    text = ""
    while k < len(line):
        match = _DOUBLE_RE.match(line, k)
        if match:
            text += match.group()
            k = match.end()
        elif line[k] == '"':
            return text, k + 1, True
        elif k + 1 < len(line):  # a backslash
            text += line[k + 1]
            k += 2
        else:
            text += line[k]
            k += 1
    return text, k, False


def _split(line: str) -> list[tuple[str, list[tuple[str, int]]]]:
    """Split a logical line into ``(separator_before, [(word, offset), ...])`` per command.

    Runs of ordinary characters and quoted strings are taken whole (a regex or a find), so
    the cost is linear in the line with a small constant."""
    parts: list[tuple[str, list[tuple[str, int]]]] = []
    sep = ""
    words: list[tuple[str, int]] = []
    word = None
    start = 0
    k = 0
    line = _strip_comment(line)
    n = len(line)
    while k < n:
        ch = line[k]
        plain = _PLAIN_RE.match(line, k)
        if plain or ch in "'\"" or (ch == "\\" and k + 1 < n):
            if word is None:
                word, start = "", k
            if plain:
                word += plain.group()
                k = plain.end()
            elif ch == "\\":
                word += line[k + 1]
                k += 2
            else:
                text, k, _ = _quoted(line, k + 1, ch)
                word += text
            continue
        op = next((o for o in _OPERATORS if line.startswith(o, k)), None) \
            if ch in "&|;$()`" else None
        if op == "(" and word is not None:
            op = None  # part of a word, e.g. an array or a function name
        if ch in " \t" or op:
            if word is not None:
                words.append((word, start))
                word = None
            if op:
                parts.append((sep, words))
                sep, words = op, []
                k += len(op)
            else:
                k += 1
            continue
        if word is None:
            word, start = "", k
        word += ch
        k += 1
    if word is not None:
        words.append((word, start))
    parts.append((sep, words))
    return parts


def commands(text: str) -> list[Command]:
    """The simple commands of a script, in order."""
    found: list[Command] = []
    for logical, segments in _logical_lines(text):
        previous: Command | None = None
        for sep, raw_words in _split(logical):
            located = [Word(w, *_locate(segments, off)) for w, off in raw_words]
            cmd = _command(located, previous if sep == "|" else None)
            if cmd is not None:
                found.append(cmd)
            previous = cmd
    return found


def _locate(segments: list[tuple[int, int, int]], offset: int) -> tuple[int, int]:
    # Segments are sorted by start: a binary search, not a scan (a logical line can join
    # thousands of continuation lines).
    k = max(bisect.bisect_right(segments, (offset, float("inf"), 0)) - 1, 0)
    start, index, shift = segments[k]
    return index, offset - start + 1 + shift


def _command(words: list[Word], piped_from: Command | None) -> Command | None:
    assigns: list[str] = []
    wrappers: list[Word] = []
    k = 0
    while k < len(words):
        text = words[k].text
        if text in KEYWORDS and not wrappers:
            k += 1
        elif _ASSIGN_RE.match(text):
            assigns.append(text)
            k += 1
        elif text in WRAPPERS:
            wrappers.append(words[k])
            k += 1
            while k < len(words) and words[k].text.startswith("-"):
                k += 2 if words[k].text in ("-u", "-g", "-n", "-C") else 1
        else:
            break
    rest = tuple(words[k:])
    if not rest and not wrappers:
        return None
    return Command(rest, tuple(assigns), tuple(wrappers), piped_from)

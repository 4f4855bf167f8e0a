"""Line tracking for INIT/UPDATE scripts: which Amifile line was running when one failed.

``$LINENO`` is no help: Debian's dash (the ``/bin/sh`` of Debian and Ubuntu)
leaves it empty, busybox and bash disagree about it in an EXIT trap. So the
artifact's copy of a script gets a marker line before every command that starts
at the top level of the script::

    __amic_at() { { printf '%s\\n' "$1" >&8; } 2>/dev/null; return "$2"; }
    __amic_at 12 "$?" && :
    apt-get install -y nginx

The marker writes the Amifile line to descriptor 8 (the runner points it at a
file and reads its last line when the script fails) and hands back the status
it found, so ``$?`` is what the script's previous command left; ``&& :`` keeps
``sh -e`` from exiting on that status (POSIX: ``-e`` is ignored for all but the
last command of an AND-OR list). Without descriptor 8 (a script run by hand)
the marker does nothing.

Markers go only where a new top-level command starts: never inside a heredoc
body, a quoted string, a command substitution, a continued line (``\\``, a
trailing ``|``, ``&&`` or ``||``) or a compound command (``if``...``fi``,
loops, ``case``, ``{ }``, ``( )``, function bodies: a failure there reports the
line the compound command starts on). A script this scanner cannot follow to
a clean end (an unterminated quote or heredoc, an unbalanced keyword), or one
with a ``#!`` line for another interpreter, is shipped unchanged and a failure
names its INIT line, as before.
"""

from __future__ import annotations

import re

PROLOGUE = ("# shellcheck disable=SC2320 # (amic's line markers pass $? on)\n"
            "__amic_at() { { printf '%s\\n' \"$1\" >&8; } 2>/dev/null; return \"$2\"; }\n")
SH_SHEBANGS = ("#!/bin/sh", "#!/usr/bin/env sh", "#!/bin/dash")

_OPENERS = {"if": "fi", "case": "esac", "for": "done", "while": "done", "until": "done", "{": "}"}
_CLOSERS = {"fi", "esac", "done", "}"}
_KEEP_CMDPOS = {"then", "do", "else", "elif", "if", "while", "until", "!", "{"}
_WORD_END = set(" \t\n;&|<>()")


class _Unfollowable(Exception):
    pass


class _Scan:
    """State carried from one line to the next."""

    def __init__(self) -> None:
        self.stack: list[list[str]] = []
        """Open compound commands and substitutions: [kind] or ['case', state]."""
        self.lex: list[str] = []
        """Open lexical contexts: ' " ` ${ $(( (inside words)."""
        self.heredocs: list[tuple[str, bool]] = []
        self.cmdpos = True
        self.continued = False
        self.body_pending = False

    def at_boundary(self) -> bool:
        return not self.stack and not self.lex and not self.continued

    def line(self, text: str) -> None:
        """Scan one physical line (without its newline)."""
        self.continued = False
        i, n = 0, len(text)
        last_op = ""
        while i < n:
            c = text[i]
            if self.lex:
                i = self._in_lex(text, i)
                continue
            if c == "\\":
                if i + 1 >= n:
                    self.continued = True
                    return
                i += 2
                last_op = ""
                self.cmdpos = False
                continue
            if c in " \t":
                i += 1
                continue
            if c == "#" and (i == 0 or text[i - 1] in _WORD_END):
                break
            if c in ";&|":
                op = c
                if text[i:i + 2] in (";;", "&&", "||"):
                    op = text[i:i + 2]
                i += len(op)
                self._operator(op)
                last_op = op
                continue
            last_op = ""
            if c == "<" and text[i:i + 2] == "<<" and text[i:i + 3] != "<<<":
                i = self._heredoc_op(text, i + 2)
                continue
            if c in "<>":
                i += 1
                continue
            if c == "(":
                i = self._open_paren(text, i)
                continue
            if c == ")":
                self._close_paren()
                i += 1
                continue
            i = self._word(text, i)
        self.continued = self.continued or self.body_pending or last_op in ("|", "&&", "||")
        if not self.lex:
            self._operator("\n")

    # -- words and keywords -------------------------------------------------

    def _word(self, text: str, i: int) -> int:
        start, n = i, len(text)
        plain = True
        while i < n and text[i] not in _WORD_END:
            c = text[i]
            if c == "\\":
                if i + 1 >= n:
                    self.continued = True
                i += 2
                plain = False
                continue
            if text[i:i + 2] == "$(" and text[i:i + 3] != "$((":
                self.stack.append(["$("])
                self.cmdpos = True
                return i + 2
            if c in "'\"`" or text[i:i + 2] == "${" or text[i:i + 3] == "$((":
                plain = False
                if c == "$":
                    i = self._dollar(text, i)
                else:
                    self.lex.append(c)
                    i += 1
                while self.lex and i < n:
                    i = self._in_lex(text, i)
                if self.lex or self._in_quoted_subst():
                    self.cmdpos = self.cmdpos and not self.lex
                    return i if not self.lex else n
                continue
            i += 1
        if plain:
            self._keyword(text[start:i])
        else:
            self.cmdpos = False
        return i

    def _in_quoted_subst(self) -> bool:
        return bool(self.stack) and self.stack[-1][0] == "$(" and len(self.stack[-1]) > 1

    def _keyword(self, word: str) -> None:
        self.body_pending = False
        top = self.stack[-1] if self.stack else None
        if top is not None and top[0] == "case":
            if top[1] == "word":
                if word == "in":
                    top[1] = "pattern"
                return
            if top[1] == "pattern":
                if word == "esac":
                    self.stack.pop()
                    self.cmdpos = False
                return
        if not self.cmdpos:
            return
        if word in _CLOSERS:
            if not self.stack or _OPENERS.get(self.stack[-1][0]) != word:
                raise _Unfollowable(word)
            self.stack.pop()
            self.cmdpos = False
            return
        if word in _OPENERS:
            self.stack.append(["case", "word"] if word == "case" else [word])
        self.cmdpos = word in _KEEP_CMDPOS

    def _operator(self, op: str) -> None:
        top = self.stack[-1] if self.stack else None
        if top is not None and top[0] == "case" and op == ";;":
            top[1] = "pattern"
        self.cmdpos = True

    def _open_paren(self, text: str, i: int) -> int:
        top = self.stack[-1] if self.stack else None
        if top is not None and top[0] == "case" and top[1] == "pattern":
            return i + 1
        if self.cmdpos:
            self.body_pending = False
            self.stack.append(["("])
            return i + 1
        rest = text[i + 1:].lstrip(" \t")
        if rest.startswith(")"):  # name() : a function definition; its body may follow on the next line
            self.cmdpos = True
            self.body_pending = True
            return len(text) - len(rest) + 1
        raise _Unfollowable("(")

    def _close_paren(self) -> None:
        top = self.stack[-1] if self.stack else None
        if top is not None and top[0] == "case" and top[1] == "pattern":
            top[1] = "body"
            self.cmdpos = True
            return
        if top is None or top[0] not in ("(", "$("):
            raise _Unfollowable(")")
        self.stack.pop()
        self.cmdpos = False
        if top[0] == "$(" and len(top) > 1:
            self.lex = top[1]  # type: ignore[assignment]

    # -- quotes and substitutions -----------------------------------------------

    def _dollar(self, text: str, i: int) -> int:
        if text[i + 1:i + 3] == "((":
            self.lex.append("$((")
            self.lex.append("0")
            return i + 3
        self.lex.append("${")
        return i + 2

    def _in_lex(self, text: str, i: int) -> int:
        kind = self.lex[-1]
        c = text[i]
        if kind == "'":
            if c == "'":
                self.lex.pop()
            return i + 1
        if c == "\\":
            return i + 2
        if kind == '"' or kind == "${":
            if c == ('"' if kind == '"' else "}"):
                self.lex.pop()
                return i + 1
            if kind == "${" and c in "'\"":
                self.lex.append(c)
                return i + 1
            if c == "`":
                self.lex.append("`")
                return i + 1
            if c == "$" and text[i + 1:i + 2] in ("(", "{"):
                return self._dollar_in_lex(text, i)
            return i + 1
        if kind == "`":
            if c == "`":
                self.lex.pop()
            return i + 1
        return self._in_arith(text, i)

    def _dollar_in_lex(self, text: str, i: int) -> int:
        if text[i + 1:i + 3] == "((" or text[i + 1] == "{":
            return self._dollar(text, i)
        # $( inside quotes: its commands are scanned like any others until its ')'.
        saved = self.lex
        self.lex = []
        self.stack.append(["$(", saved])  # type: ignore[list-item]
        self.cmdpos = True
        return i + 2

    def _in_arith(self, text: str, i: int) -> int:
        depth = int(self.lex[-1])
        c = text[i]
        if c == "(":
            self.lex[-1] = str(depth + 1)
        elif c == ")":
            if depth == 0:
                if text[i:i + 2] != "))":
                    raise _Unfollowable("$((")
                self.lex.pop()
                self.lex.pop()
                return i + 2
            self.lex[-1] = str(depth - 1)
        return i + 1

    def _heredoc_op(self, text: str, i: int) -> int:
        strip = text[i:i + 1] == "-"
        if strip:
            i += 1
        while i < len(text) and text[i] in " \t":
            i += 1
        m = re.match(r"""(?:[^\s;&|<>()'"\\]|\\.|'[^']*'|"[^"]*")+""", text[i:])
        if not m:
            raise _Unfollowable("<<")
        delim = re.sub(r"""\\(.)|'([^']*)'|"([^"]*)\"""",
                       lambda g: g.group(1) or g.group(2) or g.group(3) or "", m.group(0))
        self.heredocs.append((delim, strip))
        self.cmdpos = False
        return i + m.end()


def top_level_lines(text: str) -> list[int] | None:
    """0-based indexes of the lines where a top-level command starts; None if unfollowable."""
    scan = _Scan()
    out: list[int] = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    pending: list[tuple[str, bool]] = []
    try:
        for index, line in enumerate(lines):
            if pending:
                delim, strip = pending[0]
                if (line.lstrip("\t") if strip else line) == delim:
                    pending.pop(0)
                continue
            stripped = line.strip()
            if scan.at_boundary() and stripped and not stripped.startswith("#"):
                out.append(index)
            scan.line(line)
            pending, scan.heredocs = scan.heredocs, []
    except (_Unfollowable, IndexError, ValueError):
        return None
    if pending or not scan.at_boundary():
        return None
    return out


def instrument(text: str, first_line: int) -> str:
    """The script with a marker before each top-level command; body line k is Amifile line
    ``first_line + k``. Unchanged when it cannot be followed (see the module doc)."""
    head = text.split("\n", 1)[0]
    shebang = head.startswith("#!")
    if shebang and head.strip() not in SH_SHEBANGS:
        return text
    starts = top_level_lines(text)
    if not starts:
        return text
    lines = text.split("\n")
    marks = set(starts)
    out = [lines[0] + "\n", PROLOGUE] if shebang else [PROLOGUE]
    for k, line in enumerate(lines[1:] if shebang else lines, 1 if shebang else 0):
        if k in marks:
            out.append(f'__amic_at {first_line + k} "$?" && :\n')
        out.append(line + "\n")
    return "".join(out)[:-1]

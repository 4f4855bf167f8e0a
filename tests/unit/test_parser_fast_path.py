"""The parser's fast path for lines of plain words gives lark's records, positions and errors.

``parser.parse_records`` lets the lexer make the record of a line such as ``SERVICE web``
or ``REQUIRES a b`` itself (``records.PLAIN``) and gives lark only the other lines. Here
the same inputs go both ways, lark alone (``parser().parse(text)``) and the fast path,
and every record must agree field by field, every token in type, value and position
(file:line:col), and every error in class and position.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lark import Token
from lark.exceptions import UnexpectedInput

from amic.amifile import parser
from amic.amifile.instructions import INSTRUCTIONS
from amic.amifile.lexer import LexError
from amic.amifile.records import PLAIN

DATA = Path(__file__).parents[1] / "data"
REPO = Path(__file__).parents[2]


def described(value):
    """A record, token or tuple of them as plain data: tokens with every position."""
    if isinstance(value, Token):
        return ("Token", value.type, str(value), value.start_pos, value.line, value.column,
                value.end_line, value.end_column, getattr(value, "body_line", None))
    if isinstance(value, (list, tuple)):
        return [described(v) for v in value]
    if attrs.has(type(value)):
        return (type(value).__name__,
                {f.name: described(getattr(value, f.name)) for f in attrs.fields(type(value))})
    return value


def both_ways(text: str):
    """(lark's outcome, the fast path's): the records described, or the error's class and
    position."""
    outcomes = []
    for parse in (parser.parser().parse, parser.parse_records):
        try:
            outcomes.append(described(parse(text)))
        except LexError as e:
            outcomes.append(("LexError", e.message, e.line, e.col))
        except UnexpectedInput as e:
            tok = getattr(e, "token", None)
            outcomes.append((type(e).__name__, described(tok) if tok is not None else None,
                             getattr(e, "line", None), getattr(e, "column", None)))
    return outcomes


def corpus() -> list[Path]:
    files = [*DATA.rglob("*Amifile*"), *DATA.rglob("*.amifile"),
             *(REPO / "examples").rglob("Amifile"), *(REPO / "services").rglob("Amifile"),
             REPO / "Amifile.example"]
    return sorted({f for f in files if f.is_file()})


def test_the_corpus_is_there():
    assert len(corpus()) > 20


@pytest.mark.parametrize("path", corpus(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_amifile_of_the_repository_parses_the_same_both_ways(path):
    text = path.read_bytes().decode("utf-8", "replace")
    lark_alone, fast = both_ways(text)
    assert fast == lark_alone


LINES = st.sampled_from([
    "SERVICE web", "SERVICE", "SERVICE a b", "  service\tweb  ", "REQUIRES a b-c d_e",
    "REQUIRES", "PACKAGES curl apt:jq", "FROM debian:12", "FROM owner=1 name=x-*",
    "NAME my-app", "NAME a b", "ENABLE web", "SECRET TOKEN", "INCLUDE ./x.amifile httpd",
    "ENV A=1", "ARG X", "LABEL a=b", "COPY a /b", "INIT echo hi", "UPDATE <<EOF", "echo body",
    "EOF", "# comment", "", "SERVICE 'quoted'", "REQUIRES a # c", "PACKAGES a \\", "  b",
    "RUN nope", "SERVıCE dotless", "REQUIRES a\\", "SERVICE x\\", "INIT <<~E", "  E",
])


@settings(max_examples=600, deadline=None)
@given(st.lists(LINES, max_size=12))
def test_any_mix_of_lines_parses_the_same_both_ways(lines):
    lark_alone, fast = both_ways("\n".join(lines) + "\n")
    assert fast == lark_alone


def test_a_large_file_of_plain_lines_keeps_every_position():
    text = "FROM debian:12\n" + "".join(
        f"SERVICE s{i}\n    REQUIRES s{i - 1}\n" if i % 3 else f"  SERVICE s{i}\nINIT echo {i}\n"
        for i in range(1, 300))
    lark_alone, fast = both_ways(text)
    assert fast == lark_alone
    assert fast[-2] == ("Service", {
        "keyword": ("Token", "SERVICE", "SERVICE", 0, 598, 1, 598, 8, None),
        "name": ("Token", "WORD", "s299", 8, 598, 9, 598, 13, None)})


@pytest.mark.parametrize("name", sorted(INSTRUCTIONS))
def test_the_word_counts_of_the_fast_path_are_the_grammars(name):
    """For each instruction of plain words, lark accepts k words exactly when the fast
    path takes the line (and no other instruction has a fast path)."""
    spec = INSTRUCTIONS[name]
    if spec.mode != "words":
        assert name not in PLAIN
        return
    low, high, _ = PLAIN[name]
    prefix = "SERVICE s\n" if spec.scope == "service" else ""
    for k in range(4):
        text = prefix + name + "".join(f" w{i}" for i in range(k)) + "\n"
        try:
            parser.parser().parse(text)
            accepted = True
        except UnexpectedInput:
            accepted = False
        assert accepted == (low <= k <= high), (name, k)

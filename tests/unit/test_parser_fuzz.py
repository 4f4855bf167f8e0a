"""Property tests: whatever the input, the parser returns an Amifile or raises AmifileError.

Anything else escaping (IndexError, lark's own exceptions, ...) is a bug: a
user would see a traceback. Inputs are random text built from Amifile-ish
pieces, and valid Amifiles mutated line by line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amic.amifile import ir

from amic.amifile import parser
from amic.errors import AmifileError

DATA = Path(__file__).parents[1] / "data" / "parser"
SEEDS = [p.read_bytes().decode("utf-8-sig").replace("\r\n", "\n")
         for p in sorted(DATA.glob("*.Amifile"))]

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

PIECES = [
    "FROM", "ARG", "ENV", "LABEL", "INCLUDE", "ENABLE", "SERVICE", "REQUIRES", "PACKAGES",
    "COPY", "INIT", "UPDATE", "from", "Service", "RUN", "web", "db", "A=1", "=", "a=b",
    "--mode=0644", "--mode=9", "--", "<<", "<<EOF", "<<-EOF", "<<~EOF", "<<'EOF'", '<<"X"',
    "EOF", "X", "\tEOF", "  EOF", "'", '"', "\\", "#", "# c", " ", "\t", "\n", "\r\n", "\r",
    "\ufeff", "é", "/srv/app", "debian:12", "\x00", "\x0b", "\u2028",
]

amifile_ish = st.lists(st.sampled_from(PIECES) | st.text(max_size=5), max_size=40).map("".join)


def check(text: str) -> None:
    try:
        result = parser.parse_text(text, "Amifile")
    except AmifileError as e:
        assert e.pos is not None and e.pos.line >= 1 and e.pos.col >= 1
        assert e.message
        e.render()
        return
    assert isinstance(result, ir.Amifile)
    for svc in result.services:
        assert ir.SERVICE_NAME_RE.match(svc.name)
        for script in (*svc.inits, *svc.updates):
            assert script.text.endswith("\n") and script.body_line >= script.pos.line


@FUZZ
@given(st.text())
def test_random_text(text: str) -> None:
    check(text)


@FUZZ
@given(amifile_ish)
def test_amifile_like_text(text: str) -> None:
    check(text)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    lines = draw(st.sampled_from(SEEDS)).split("\n")
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "duplicate", "insert", "chars", "swap"]))
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        if kind == "delete" and lines:
            del lines[i]
        elif kind == "duplicate" and lines:
            lines.insert(i, lines[i])
        elif kind == "insert":
            lines.insert(i, draw(amifile_ish))
        elif kind == "swap" and len(lines) > 1:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif lines:
            line = lines[i]
            at = draw(st.integers(0, len(line)))
            cut = draw(st.integers(0, 3))
            lines[i] = line[:at] + draw(st.sampled_from(PIECES) | st.text(max_size=3)) + \
                line[at + cut:]
    return "\n".join(lines)


@FUZZ
@given(mutated())
def test_mutated_amifiles(text: str) -> None:
    check(text)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "Amifile"


@FUZZ
@given(data=st.binary(max_size=200) | mutated().map(lambda t: t.encode("utf-8")) |
       st.builds(lambda a, b: a + b, mutated().map(str.encode), st.binary(max_size=4)))
def test_bytes_through_parse_file(scratch: Path, data: bytes) -> None:
    scratch.write_bytes(data)
    try:
        parser.parse_file(scratch)
    except AmifileError as e:
        assert e.pos is not None
        e.render()


def test_seeds_parse() -> None:
    assert len(SEEDS) >= 4
    for text in SEEDS:
        parser.parse_text(text, "Amifile")

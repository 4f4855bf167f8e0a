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


# ---------------------------------------------------------------- limits and the resolver

FEW = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

@FEW
@given(mutated(), st.integers(0, 10_000), st.sampled_from(["\0", "x" * 70_000, "\0" * 3]))
def test_nul_and_long_lines_anywhere_are_errors_with_a_position(text: str, at: int,
                                                                 bad: str) -> None:
    at = at % (len(text) + 1)
    try:
        parser.parse_text(text[:at] + bad + text[at:], "Amifile")
    except AmifileError as e:
        assert e.pos is not None and e.pos.line >= 1
        assert len(e.render()) < 2000  # never echoes a long line
        return
    raise AssertionError("a NUL byte or an over-long line was accepted")


NAMES = st.sampled_from(["a", "b", "c", "d", "e", "web", "db", "x-y", "Bad", "a b", ""])


@st.composite
def service_graphs(draw: st.DrawFn) -> str:
    """Amifiles built from services, REQUIRES (unknown, self, cycles), ENABLE, ARG and ENV."""
    out: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        out.append(f"ARG {draw(st.sampled_from(['A', 'B', 'A=1', 'A=2', 'B=x']))}")
    if draw(st.booleans()):
        out.append("ENABLE " + " ".join(draw(st.lists(NAMES, min_size=0, max_size=3))))
    for _ in range(draw(st.integers(0, 6))):
        out.append(f"SERVICE {draw(NAMES)}")
        reqs = draw(st.lists(NAMES, max_size=3))
        if reqs or draw(st.booleans()):
            out.append("    REQUIRES " + " ".join(reqs))
        if draw(st.booleans()):
            out.append(f"    ENV {draw(st.sampled_from(['K=v', 'K=w', 'L=1']))}")
        out.append("    INIT true")
    return "\n".join(out) + "\n"


@FEW
@given(service_graphs())
def test_resolver_returns_an_order_or_an_amifile_error(text: str) -> None:
    from amic.amifile import resolve

    try:
        root = parser.parse_text(text, "Amifile")
        resolved = resolve.resolve_amifile(root, loader=lambda path: parser.parse_file(path))
    except AmifileError as e:
        assert e.message
        assert len(e.render()) < 5000
        return
    position = {s.name: i for i, s in enumerate(resolved.services)}
    assert sorted(position) == sorted(s.name for s in root.services)
    for svc in resolved.services:  # every requirement comes first
        assert all(position[r.name] < position[svc.name] for r in svc.requires)
    assert set(resolved.enabled) <= set(position)
    assert resolved.closure(resolved.enabled) == resolved.enabled


@settings(FEW, max_examples=40)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=12),
       st.integers(1, 3))
def test_resolver_on_include_graphs(tmp_path_factory: pytest.TempPathFactory,
                                    edges: list[tuple[int, int]], depth: int) -> None:
    """Files including each other (cycles, repeats, self-includes) on disk."""
    from amic.amifile import resolve

    d = tmp_path_factory.mktemp("inc")
    includes: dict[int, list[int]] = {}
    for a, b in edges:
        includes.setdefault(a, []).append(b)
    for i in range(6):
        body = "".join(f"INCLUDE ./f{j}.amifile\n" for j in includes.get(i, []))
        body += "".join(f"SERVICE s{i}x{k}\n    INIT true\n" for k in range(depth))
        (d / f"f{i}.amifile").write_text(body)
    (d / "Amifile").write_text("INCLUDE ./f0.amifile\n")
    try:
        resolved = resolve.load(d)
    except AmifileError as e:
        assert e.pos is not None and "INCLUDE" in e.render()
        return
    assert len({s.name for s in resolved.services}) == len(resolved.services)

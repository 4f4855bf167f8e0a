"""Several cases per lint rule, hadolint style: ``tests/data/lint-rules/AMxxxx.cases``.

Each file holds cases for one rule, each starting with a header line:

- ``=== bad L:C[,L:C...]: what`` — the rule reports exactly these positions;
- ``=== good: what`` — the rule reports nothing.

Case text is linted as ``Amifile`` in a directory that also holds ``nginx.conf`` and
``app/main.py`` (so COPY sources can exist), without shellcheck. A rule is a file; a
regression is one more case.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from amic import lint
from amic.lint.rules import RULES

CASES_DIR = Path(__file__).parents[1] / "data" / "lint-rules"
HEADER = re.compile(r"^=== (bad (?P<pos>\d+:\d+(?:,\d+:\d+)*)|good): (?P<what>.+)$")
# Rules whose cases need generated input (a 4,000-line script) stay in test_lint.py.
GENERATED = {"AM3012"}
# Rules with one way to be broken: one bad case and several good ones.
ONE_BAD_CASE = {"AM4004", "AM4005"}


def cases() -> list[tuple[str, str, tuple[str, ...] | None, str]]:
    found = []
    for path in sorted(CASES_DIR.glob("AM*.cases")):
        rule, header, body = path.stem, None, []
        for line in path.read_text().splitlines() + ["=== end"]:
            if line.startswith("=== "):
                if header is not None:
                    found.append((rule, header["what"],
                                  tuple(header["pos"].split(",")) if header["pos"] else None,
                                  "\n".join(body) + "\n"))
                header, body = HEADER.match(line), []
                assert header or line == "=== end", f"{path.name}: bad header {line!r}"
            else:
                body.append(line)
    return found


CASES = cases()


@pytest.mark.parametrize("rule,what,positions,text", CASES,
                         ids=[f"{c[0]}-{'bad' if c[2] else 'good'}-{i}"
                              for i, c in enumerate(CASES)])
def test_case(tmp_path: Path, rule: str, what: str, positions, text: str) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('hi')\n")
    (tmp_path / "nginx.conf").write_text("events {}\n")
    (tmp_path / "Amifile").write_text(text)
    found = [f for f in lint.lint_paths([str(tmp_path / "Amifile")], shellcheck=False)
             if f.code == rule]
    got = tuple(f"{f.pos.line}:{f.pos.col}" for f in found)
    assert got == (positions or ()), f"{rule} {what}: {[(f.pos.line, f.pos.col, f.message) for f in found]}"


def test_every_rule_has_two_bad_cases_and_a_good_one() -> None:
    for rule in RULES:
        if rule.id in GENERATED:
            continue
        mine = [c for c in CASES if c[0] == rule.id]
        bad = sum(1 for c in mine if c[2])
        good = len(mine) - bad
        assert (bad >= 2 or rule.id in ONE_BAD_CASE) and good >= 1, (
            f"{rule.id}: {bad} bad and {good} good cases in tests/data/lint-rules")

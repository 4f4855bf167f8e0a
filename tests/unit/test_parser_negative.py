"""Amifiles that must not compile, as data (BuildKit's ``testfiles-negative``).

``tests/data/parser-negative/NAME.Amifile`` is a broken Amifile; ``NAME.err`` holds the
first line of the error amic gives for it, without the file name: ``LINE:COL: message``
(``{path}`` stands for the file's path where the message names it again).
A regression is one more pair of files. Parsing and resolving run as ``amic compile``
runs them (``amifile.resolve.load``); the error must be an :class:`AmicError` (a clear
message, exit 1), never another exception.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from amic.amifile import resolve
from amic.errors import AmicError

DATA = Path(__file__).parents[1] / "data" / "parser-negative"
CASES = sorted(DATA.glob("*.Amifile"))


def test_every_case_has_its_expected_error() -> None:
    assert len(CASES) >= 20
    missing = [c.name for c in CASES if not c.with_suffix(".err").exists()]
    assert not missing, missing


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_broken_amifile_gives_its_error(case: Path) -> None:
    with pytest.raises(AmicError) as raised:
        resolve.load(case)
    first = str(raised.value).splitlines()[0]
    assert first.startswith(f"{case}:"), first
    want = case.with_suffix(".err").read_text().strip().replace("{path}", str(case))
    assert first[len(f"{case}:"):] == want

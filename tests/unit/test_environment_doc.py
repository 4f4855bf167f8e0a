"""docs/environment.md lists every ``AMIC_*`` variable the code names.

The code is compiler/amic (Python) and runtime/amic (the POSIX sh runner); a
variable read, set or exported there and missing from the page fails this test,
naming the files. The page is linked from README.md's documentation table."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "environment.md"
NAME = re.compile(r"\bAMIC_[A-Z0-9_]*[A-Z0-9]\b")
NOT_VARIABLES: dict[str, str] = {}
"""Names the code mentions that are no variable (none today; the page explains any it lists)."""


def code_names() -> dict[str, set[str]]:
    files = [*sorted((REPO / "compiler" / "amic").rglob("*.py")), REPO / "runtime" / "amic"]
    found: dict[str, set[str]] = {}
    for path in files:
        for name in NAME.findall(path.read_text()):
            found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return found


def documented() -> set[str]:
    return set(re.findall(r"`(AMIC_[A-Z0-9_]+)`", DOC.read_text()))


def test_every_amic_variable_in_the_code_is_on_the_page():
    names = code_names()
    assert len(names) > 30 and "AMIC_CACHE_DIR" in names and "AMIC_DATA_DIR" in names
    missing = {n: sorted(where) for n, where in names.items()
               if n not in documented() and n not in NOT_VARIABLES}
    assert not missing, f"add these to docs/environment.md: {missing}"


def test_the_page_lists_no_variable_the_code_does_not_know():
    stale = documented() - set(code_names())
    assert not stale, f"docs/environment.md lists names the code never uses: {sorted(stale)}"


def test_host_and_guest_sections_and_cache_locations():
    text = DOC.read_text()
    for heading in ("## Host side", "## Guest side", "## Where amic keeps things"):
        assert heading in text
    for path in ("/var/cache/amic", "$XDG_CACHE_HOME/amic/lint", "$XDG_CACHE_HOME/amic/memo.key",
                 "$AMIC_CACHE_DIR/memo/", "grammar-py"):
        assert path in text, path


def test_linked_from_the_readme():
    assert "[docs/environment.md](docs/environment.md)" in (REPO / "README.md").read_text()

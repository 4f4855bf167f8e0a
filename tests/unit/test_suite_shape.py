"""The suite's own shape: what pytest needs to collect it, and what keeps tests apart."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
MODULES = sorted(TESTS.rglob("test_*.py"))


def test_test_module_basenames_are_unique() -> None:
    # The test folders are not packages: pytest imports each module by its basename, and
    # a second module of the same name fails the whole collection.
    twice = [name for name, n in Counter(m.name for m in MODULES).items() if n > 1]
    assert len(MODULES) > 50 and not twice, twice

"""The suite's own shape: what pytest needs to collect it, and what keeps tests apart."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
MODULES = sorted(TESTS.rglob("test_*.py"))
BASENAMES = {m.stem for m in MODULES}


def test_test_module_basenames_are_unique() -> None:
    # The test folders are not packages: pytest imports each module by its basename, and
    # a second module of the same name fails the whole collection.
    twice = [name for name, n in Counter(m.name for m in MODULES).items() if n > 1]
    assert len(MODULES) > 50 and not twice, twice


def imported_test_modules(path: Path) -> list[str]:
    """The test modules `path` imports: `tests.*` outside the harness, or a bare basename
    (pytest's rootdir-relative sys.path makes `import test_engine` work too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if (parts[0] == "tests" and parts[1:2] != ["harness"]) or parts[0] in BASENAMES:
                found.append(name)
    return found


def test_test_modules_do_not_import_each_other() -> None:
    # Shared pieces live in tests/harness/: a test module importing another runs the
    # other's module-level code, couples their edits, and hides where a helper lives.
    offenders = {
        str(m.relative_to(TESTS)): names for m in MODULES if (names := imported_test_modules(m))
    }
    assert not offenders, offenders


def test_harness_modules_stay_small() -> None:
    # One module per concern (the EC2 stand-in is a package of them): a module past
    # ~500 lines is doing two things, and the next helper would make it worse.
    harness = sorted((TESTS / "harness").rglob("*.py"))
    long = {str(m.relative_to(TESTS)): n for m in harness
            if (n := len(m.read_text().splitlines())) > 500}
    assert len(harness) > 15 and not long, long


# Ways a test could name the amic executable itself (tests/harness/cli.py is the one place
# that does: tests run it with `run_amic`, or hold the process with `cli.AMIC`).
OWN_EXECUTABLE = re.compile(r"""which\(\s*["']amic["']|with_name\(\s*["']amic["']\)"""
                            r"""|bin\s*/\s*["']amic["']|bin/amic["']""", re.IGNORECASE)


def own_executables(text: str) -> list[str]:
    return [m.group(0) for m in OWN_EXECUTABLE.finditer(text)]


def test_only_the_cli_harness_finds_the_amic_executable() -> None:
    assert own_executables('AMIC = shutil.which("amic", path=bin)') \
        and own_executables('str(VENV_BIN / "amic")') and own_executables('".venv/bin/amic"') \
        and own_executables("Path(sys.executable).with_name('amic')") \
        and not own_executables('run_amic("build")') \
        and not own_executables('root / "var" / "lib" / "amic"')
    offenders = {str(m.relative_to(TESTS)): found for m in sorted(TESTS.rglob("*.py"))
                 if m not in (TESTS / "harness" / "cli.py", Path(__file__).resolve())
                 and (found := own_executables(m.read_text()))}
    assert not offenders, offenders

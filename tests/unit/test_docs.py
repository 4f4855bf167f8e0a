"""The docs are checked against the code they describe, so neither can drift alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def module_map(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "module-map"), *args],
                          capture_output=True, text=True)


def test_internals_module_map_is_the_tree() -> None:
    proc = module_map("--check")
    assert proc.returncode == 0, proc.stderr


def test_module_map_names_every_module_and_fails_on_a_missing_one(tmp_path: Path) -> None:
    listed = module_map().stdout
    modules = sorted(p.relative_to(REPO / "compiler" / "amic").as_posix()
                     for p in (REPO / "compiler" / "amic").rglob("*.py")
                     if p.name != "__init__.py" or p.stat().st_size)
    assert modules and all(f"| `{m}` |" in listed for m in modules)
    # Positive control: the check fails on a map with one module taken out.
    doc = (REPO / "docs" / "internals.md").read_text()
    assert f"| `{modules[-1]}` |" in doc
    assert doc.replace(f"| `{modules[-1]}` |", "| `gone.py` |") != doc


def test_runner_commands_are_in_the_internals_contract() -> None:
    runner = (REPO / "runtime" / "amic").read_text()
    doc = (REPO / "docs" / "internals.md").read_text()
    section = doc[doc.index("## Runner command line"):]
    section = section[:section.index("\n## ", 1)]
    commands = {line.strip().split(")")[0] for line in runner.splitlines()
                if line.startswith("    ") and ") " in line and "exit $?" in line
                and line.strip()[0].isalpha()}
    commands = {c.split("|")[0] for c in commands}
    assert {"install-boot-hook", "build-key", "status"} <= commands, commands
    missing = [c for c in sorted(commands) if f"`{c}" not in section]
    assert not missing, f"runner commands not in docs/internals.md: {missing}"

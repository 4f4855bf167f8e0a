"""The package builds without a setuptools warning and ships every data folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_every_runtime_and_service_folder_is_a_listed_package() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = {f"amic.{top}.{d.relative_to(REPO / src).as_posix().replace('/', '.')}"
               for top, src in (("_runtime", "runtime"), ("_services", "services"))
               for d in (REPO / src).rglob("*") if d.is_dir() and d.name != "__pycache__"}
    assert folders and folders <= listed, sorted(folders - listed)


@pytest.mark.slow
def test_wheel_builds_without_a_setuptools_warning(tmp_path: Path) -> None:
    # From a copy of what the package is made of: setuptools builds in the source tree.
    source = tmp_path / "src"
    source.mkdir()
    for part in ("pyproject.toml", "README.md", "compiler", "runtime", "services"):
        if (REPO / part).is_dir():
            shutil.copytree(REPO / part, source / part,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / part, source / part)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v",
                           "-w", str(tmp_path), str(source)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    warnings = [line for line in output.splitlines()
                if "Warning" in line or "deprecated" in line.lower()]
    assert not warnings, "\n".join(warnings)
    assert list(tmp_path.glob("amic-*.whl"))

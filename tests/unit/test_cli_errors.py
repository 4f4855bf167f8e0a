"""What the command line says when a command other than ``build`` fails: the error names the
command that ran (issue 18, item 11: a refused ``prune`` said "build failed"). Through the real
``amic`` executable, on a local store made in a temporary directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from pathlib import Path

import pytest

from amic.cli.common import command_name, error_text
from amic.errors import BuildError, UsageError

from tests.harness.cli import run_amic


def amic(store: Path, *args: str) -> subprocess.CompletedProcess:
    return run_amic(*args, cwd=store.parent, timeout=120,
                    env={**os.environ, "AMIC_CACHE_DIR": str(store)})


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A local store holding one image whose parent is missing (every use of it fails)."""
    image = tmp_path / "cache" / "local" / "images" / ("a" * 12)
    image.mkdir(parents=True)
    (image / "meta.json").write_text(json.dumps({"id": "a" * 64, "key": "k" * 64,
                                                 "parent": "b" * 64, "tags": {}, "created": 1}))
    return tmp_path / "cache"


def test_prune_refused_names_prune(store: Path) -> None:
    with open(store / "local" / "builds.lock", "a") as held:   # a build running
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = amic(store, "prune")
    assert proc.returncode == 1
    assert "amic: prune failed: a build is running" in proc.stderr, proc.stderr
    assert "build failed" not in proc.stderr
    assert (store / "local" / "images" / ("a" * 12) / "meta.json").exists()
    # the control: without the lock the same command goes through
    assert amic(store, "prune", "--dry-run").returncode == 0


@pytest.mark.parametrize("command", [["run"], ["export", "-o", "out.tar"]])
def test_run_and_export_failures_name_their_command(store: Path, command: list[str]) -> None:
    proc = amic(store, command[0], "a" * 12, *command[1:])
    assert proc.returncode == 1
    assert f"amic: {command[0]} failed: " in proc.stderr, proc.stderr
    assert "build failed" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_error_text_per_command() -> None:
    from amic.cli.main import build_parser

    parser = build_parser()
    err = BuildError("no")
    assert error_text(err, parser.parse_args(["build", "--dry-run"])) == "amic: build failed: no"
    args = parser.parse_args(["ami", "prune"])
    assert command_name(args) == "ami prune"
    assert error_text(err, args) == "amic: ami prune failed: no"
    # other errors keep their own rendering
    assert error_text(UsageError("bad"), args) == "amic: error: bad"


@pytest.mark.parametrize("name", ["aB", "aé", "1a", "a" * 64, "web;x"])
def test_run_refuses_a_service_name_an_amifile_refuses(store: Path, tmp_path: Path,
                                                       name: str) -> None:
    """``amic run --service`` takes the Amifile's rule and its words (it took ``aB`` and
    ``aé`` before), as a usage error before anything boots."""
    (tmp_path / "Amifile").write_text(f"SERVICE {name}\n    INIT true\n")
    compiled = amic(store, "compile", "--print", "Amifile")
    assert compiled.returncode == 1
    said = [line for line in compiled.stderr.splitlines()
            if "invalid service name" in line or line.startswith("hint: ")]
    assert len(said) == 2, compiled.stderr
    proc = amic(store, "run", "a" * 12, "--service", "ok", "--service", name)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"amic: error: --service: {said[0].split(': ', 1)[1]}",
                                        said[1]]


def test_run_takes_every_name_an_amifile_takes(store: Path) -> None:
    """The control: valid names (the longest too) pass the check and the run fails later,
    on the image this store cannot boot."""
    proc = amic(store, "run", "a" * 12, "--service", "a" * 63, "--service", "b-2_c")
    assert proc.returncode == 1
    assert "amic: run failed: " in proc.stderr and "invalid service name" not in proc.stderr


@pytest.mark.parametrize("argv, words", [
    (["prune", "--keep", "-1"], "'-1': give 0 or more"),
    (["prune", "--keep", "two"], "'two' is not a whole number"),
    (["ami", "prune", "--keep", "-3"], "'-3': give 0 or more"),
    (["launch", "ami-0123456789abcdef0", "--boot-timeout", "inf"],
     "'inf': give a finite number of seconds above 0"),
    (["launch", "ami-0123456789abcdef0", "--boot-timeout", "-5"],
     "'-5': give a finite number of seconds above 0"),
])
def test_counts_and_timeouts_are_refused_before_anything_runs(store: Path, argv: list[str],
                                                              words: str) -> None:
    proc = amic(store, *argv)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert (store / "local" / "images" / ("a" * 12) / "meta.json").exists()


def test_a_valid_keep_still_runs(store: Path) -> None:
    proc = amic(store, "prune", "--keep", "0", "--dry-run")
    assert proc.returncode == 0, proc.stderr

"""``amic init`` (a starter Amifile that lints clean, never overwritten without --force)
and ``amic completion`` (generated from the parser: a real bash completes with it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.harness.cli import run_amic


def amic(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMIC_")}
    return run_amic(*args, cwd=cwd, env=env, timeout=120)


def test_init_writes_a_starter_that_lints_clean(tmp_path: Path) -> None:
    folder = tmp_path / "My Shop"
    folder.mkdir()
    proc = amic("init", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    text = (folder / "Amifile").read_text()
    assert "NAME my-shop" in text and text.count("\n#") >= 10     # named, and commented
    lint = amic("lint", cwd=folder)
    assert lint.returncode == 0 and "no problems found" in lint.stdout + lint.stderr, lint
    compiled = amic("compile", "--print", "Amifile", cwd=folder)
    assert compiled.returncode == 0, compiled.stderr
    # never over an existing file unless --force
    (folder / "Amifile").write_text("# mine\n")
    proc = amic("init", cwd=folder)
    assert proc.returncode == 2 and "exists; pass --force" in proc.stderr
    assert (folder / "Amifile").read_text() == "# mine\n"
    assert amic("init", "--force", cwd=folder).returncode == 0
    assert (folder / "Amifile").read_text() == text
    # a directory argument; a planted symlink is refused, not written through
    other = tmp_path / "other"
    other.mkdir()
    assert amic("init", str(other), cwd=tmp_path).returncode == 0
    assert (other / "Amifile").exists()
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "Amifile").symlink_to(victim)
    proc = amic("init", "--force", "linked", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert victim.read_text() == "keep\n"


def complete(script: str, *words: str) -> list[str]:
    """What a real bash offers for ``words`` (the last one being completed)."""
    program = (f"source {script}\n"
               f"COMP_WORDS=({' '.join(repr(w) for w in words)}); "
               f"COMP_CWORD={len(words) - 1}; _amic; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def test_bash_completion_from_the_option_table(tmp_path: Path) -> None:
    proc = amic("completion", "bash", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    script = tmp_path / "amic.bash"
    script.write_text(proc.stdout)
    assert complete(str(script), "amic", "bu") == ["build"]
    assert complete(str(script), "amic", "build", "--ta") == ["--target"]
    assert complete(str(script), "amic", "ami", "") == ["ls", "prune"]
    assert complete(str(script), "amic", "ami", "prune", "--ke") == ["--keep"]
    assert complete(str(script), "amic", "export", "x", "--format", "q") == ["qcow2"]
    assert complete(str(script), "amic", "completion", "") == ["bash", "zsh", "fish"]
    # ec2's option table rows complete too (rows, not a hand-written list)
    assert "--instance-type" in complete(str(script), "amic", "build", "--ins")


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts(tmp_path: Path, shell: str) -> None:
    proc = amic("completion", shell, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    if shell == "zsh":
        assert "bashcompinit" in proc.stdout and "complete -o filenames -F _amic amic" in proc.stdout
    else:
        lines = proc.stdout.splitlines()
        assert any(ln.startswith("complete -c amic -n __fish_use_subcommand -a build -d ")
                   for ln in lines)
        assert any("__fish_seen_subcommand_from build" in ln and "-l target -r" in ln
                   for ln in lines)
        assert any("-l format -x -a 'tar raw qcow2 oci'" in ln for ln in lines)


def test_completion_refuses_other_shells(tmp_path: Path) -> None:
    proc = amic("completion", "tcsh", cwd=tmp_path)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr

"""Outputs amic writes beside paths others can write to, through the real CLI (issue 18).

- A link planted at any name amic could use beside ``-o`` is never written through: the
  staging directory has a random name (``mkdir`` fails on anything already there) and the
  file in it is created ``O_EXCL|O_NOFOLLOW``.
- A link at the output name is followed only when root or the caller owns it.
- A FIFO without a reader is an error after ``fsutil.FIFO_WAIT`` seconds, never a hang.
- A full disk is an error naming the output (a tmpfs in a private mount namespace).
- Numbers and paths on the command line are checked: ``run --timeout inf|nan|-5``,
  ``prune --keep -1``, ``build --manifest ""`` are usage errors (exit 2).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time

import pytest

from amic.fsutil import FIFO_WAIT, STAGING_MARK

from tests.harness.cli import AMIC
from tests.harness.hostile import clean, run

SIMPLE = "SERVICE web\n    INIT echo hi\n"
NOBODY = 65534


def predictable_names(out: str) -> list[str]:
    """Every name beside ``out`` a staging scheme could pick without randomness (the one
    issue 18 exploited: ``.NAME.part``), and the random pattern's prefix with nothing after."""
    return [f".{out}.part", f"{out}.part", f".{out}.tmp", f"{out}.tmp", f".{out}.amic-part",
            f".{out}{STAGING_MARK}", f".{out}{STAGING_MARK}0000000000000000", ".amic-part", "output.part"]


@pytest.mark.root
def test_links_planted_at_every_predictable_name_are_not_written_through(tmp_path):
    (tmp_path / "Amifile").write_text(SIMPLE)
    victims = tmp_path / "victims"
    victims.mkdir()
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)              # like /tmp: anyone may plant a link here
    planted = {}
    for i, name in enumerate(predictable_names("dev.tar")):
        victim = victims / f"victim{i}"
        victim.write_text("precious\n")
        victim.chmod(0o644)
        os.symlink(victim, shared / name)
        os.lchown(shared / name, NOBODY, NOBODY)    # planted by another user
        planted[name] = victim
    proc = run("compile", "-o", str(shared / "dev.tar"), cwd=tmp_path)
    clean(proc, 0)
    for name, victim in planted.items():
        assert victim.read_text() == "precious\n", f"written through {name}"
        assert victim.stat().st_mode & 0o777 == 0o644, f"chmod'ed through {name}"
        assert (shared / name).is_symlink()
    out = shared / "dev.tar"
    assert not out.is_symlink() and out.read_bytes()[257:262] == b"ustar"
    assert sorted(p.name for p in shared.iterdir()) == sorted([*planted, "dev.tar"])


@pytest.mark.root
def test_a_link_at_the_output_name_is_refused_unless_root_or_the_caller_owns_it(tmp_path):
    (tmp_path / "Amifile").write_text(SIMPLE)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "out.tar"
    os.symlink(victim, link)
    os.lchown(link, NOBODY, NOBODY)
    for args in (["compile", "-o", "out.tar"],
                 ["build", "--target", "nosuchtarget", "--manifest", "out.tar"]):
        proc = run(*args, cwd=tmp_path)
        clean(proc, 2, "cannot write out.tar: it is a symbolic link that neither root nor you "
                       "own")
        assert victim.read_text() == "precious\n" and link.is_symlink()
    # a link of the caller's own (root here) is followed: the file it names is written
    os.lchown(link, 0, 0)
    clean(run("compile", "-o", "out.tar", cwd=tmp_path), 0)
    assert link.is_symlink() and victim.read_bytes()[257:262] == b"ustar"


def test_a_link_to_a_device_planted_at_the_output_name_is_refused(tmp_path):
    """Before: a link to a device at the output name was followed (``stat``), so a planted
    ``out.tar -> /dev/sdX`` got the tarball written onto the disk."""
    if os.geteuid() != 0:
        pytest.skip("needs root to own the link as someone else")
    (tmp_path / "Amifile").write_text(SIMPLE)
    os.symlink("/dev/null", tmp_path / "out.tar")     # /dev/null: harmless if it went wrong
    os.lchown(tmp_path / "out.tar", NOBODY, NOBODY)
    clean(run("compile", "-o", "out.tar", cwd=tmp_path), 2, "symbolic link")


def test_a_fifo_with_no_reader_is_an_error_not_a_hang(tmp_path):
    (tmp_path / "Amifile").write_text(SIMPLE)
    os.mkfifo(tmp_path / "out")
    t0 = time.monotonic()
    proc = run("compile", "-o", "out", cwd=tmp_path, timeout=FIFO_WAIT + 30)
    took = time.monotonic() - t0
    clean(proc, 2, f"cannot write out: the FIFO has no reader (waited {FIFO_WAIT:g}s)")
    assert FIFO_WAIT <= took < FIFO_WAIT + 20, took
    assert (tmp_path / "out").is_fifo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Amifile", "out"]


def test_a_fifo_whose_reader_comes_late_is_written(tmp_path):
    (tmp_path / "Amifile").write_text(SIMPLE)
    os.mkfifo(tmp_path / "out")
    proc = subprocess.Popen([AMIC, "compile", "-o", "out"], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(2)                      # amic waits for its reader, no busy error
    data = (tmp_path / "out").read_bytes()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert data[257:262] == b"ustar"


@pytest.mark.root
def test_a_full_disk_is_an_error_naming_the_output(tmp_path):
    """A 1-page tmpfs in a private mount namespace, filled before amic writes to it."""
    (tmp_path / "Amifile").write_text(SIMPLE)
    small = tmp_path / "small"
    small.mkdir()
    script = f"""
mount -t tmpfs -o size=4k tmpfs {shlex.quote(str(small))} || exit 99
head -c 4096 /dev/zero > {shlex.quote(str(small))}/filler 2>/dev/null
cd {shlex.quote(str(tmp_path))} && {shlex.quote(str(AMIC))} compile -o {shlex.quote(str(small))}/out.tar
echo "rc=$?"
echo "left=$(ls -A {shlex.quote(str(small))} | tr '\\n' ' ')"
"""
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert out["rc"] == "1", proc.stderr
    assert f"cannot write {small}/out.tar: No space left on device" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert out["left"].split() == ["filler"]       # no staging directory left behind


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "-5", "0", "soon"])
def test_run_timeout_must_be_finite_and_positive(tmp_path, value):
    proc = run("run", "latest", f"--timeout={value}", cwd=tmp_path,
               env={"AMIC_CACHE_DIR": str(tmp_path / "cache")})
    clean(proc, 2, "--timeout", repr(value))
    assert not (tmp_path / "cache").exists()        # refused before anything is made


def test_prune_keep_must_not_be_negative(tmp_path):
    proc = run("prune", "--keep", "-1", cwd=tmp_path,
               env={"AMIC_CACHE_DIR": str(tmp_path / "cache")})
    clean(proc, 2, "argument --keep: '-1': give 0 or more")
    assert not (tmp_path / "cache").exists()


def test_build_manifest_must_not_be_empty(tmp_path):
    (tmp_path / "Amifile").write_text(SIMPLE)
    proc = run("build", "--target", "nosuchtarget", "--manifest", "", cwd=tmp_path)
    clean(proc, 2, "--manifest: the path is empty")
    assert "unknown target" not in proc.stderr


def test_compile_output_must_not_be_empty(tmp_path):
    (tmp_path / "Amifile").write_text(SIMPLE)
    clean(run("compile", "-o", "", cwd=tmp_path), 2, "the output path is empty")

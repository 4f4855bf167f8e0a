"""Hostile inputs on the local target, through the real CLI: ARG values never reach the host's
processes, prune never removes an image in use, export -o never clobbers a device.

One module-scoped store (the debootstrap base shared with every test run on this machine).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.harness.cli import AMIC, run_amic

pytestmark = [pytest.mark.slow, pytest.mark.root]

EVIL_C = r"""
#include <stdio.h>
__attribute__((constructor)) static void hit(void) {
    FILE *f = fopen(MARKER, "a");
    if (f) { fputs("loaded\n", f); fclose(f); }
}
"""


@pytest.fixture(scope="module")
def store(local_store):
    return local_store


@pytest.fixture(scope="module")
def evil(tmp_path_factory) -> tuple[Path, Path]:
    """A real shared object that appends to a marker file when any process loads it."""
    d = tmp_path_factory.mktemp("evil")
    marker = d / "marker"
    (d / "evil.c").write_text(EVIL_C)
    subprocess.run(["cc", "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(d / "evil.so"),
                    str(d / "evil.c")], check=True)
    # The control: it does write the marker when a host process loads it.
    subprocess.run(["/bin/true"], env={"LD_PRELOAD": str(d / "evil.so")}, check=True)
    assert marker.read_text() == "loaded\n"
    marker.unlink()
    return d / "evil.so", marker


def amic(store: Path, cwd: Path, *args: str,
         env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "AMIC_CACHE_DIR": str(store), "AMIC_TARGET": "local", **(env or {})}
    return run_amic(*args, cwd=cwd, env=full, timeout=900)


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr


AMIFILE = """\
FROM debian:12
ARG LD_PRELOAD
ARG PATH
SERVICE web
    INIT printf '%s\\n%s\\n' "$LD_PRELOAD" "$PATH" > /etc/amic-seen
"""


@pytest.fixture(scope="module")
def fake_bin(tmp_path_factory) -> tuple[Path, Path]:
    """A directory of fake host tools (unshare, mount, chroot, tar, sh) that leave a marker."""
    d = tmp_path_factory.mktemp("fakebin")
    marker = d / "ran"
    for tool in ("unshare", "mount", "chroot", "tar", "sh", "systemd-nspawn"):
        (d / tool).write_text(f"#!/bin/sh\necho {tool} >> {shlex.quote(str(marker))}\nexit 0\n")
        (d / tool).chmod(0o755)
    return d, marker


@pytest.fixture(scope="module")
def built(store, evil, fake_bin, tmp_path_factory) -> str:
    """``ARG LD_PRELOAD`` = a real .so that marks its loading, ``ARG PATH`` starting with a
    directory of fake host tools: the build works, neither reaches a host process."""
    so, marker = evil
    fakes, ran = fake_bin
    project = tmp_path_factory.mktemp("project")
    (project / "Amifile").write_text(AMIFILE)
    # `amic build DIR` (a directory means its Amifile), run from elsewhere
    proc = amic(store, project.parent, "build", "-q", str(project), "--build-arg",
                f"LD_PRELOAD={so}",
                "--build-arg", f"PATH={fakes}:/nonexistent:/usr/sbin:/usr/bin:/sbin:/bin")
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), "an ARG named LD_PRELOAD was loaded by a host process"
    assert not ran.exists(), f"a host helper was taken from ARG PATH: {ran.read_text()}"
    return proc.stdout.strip()


def test_arg_values_reach_only_the_machine(store, evil, fake_bin, built, tmp_path):
    so, marker = evil
    out = tmp_path / "root.tar"
    proc = amic(store, tmp_path, "export", built, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(out) as tar:
        seen = tar.extractfile("./etc/amic-seen").read().decode()
    # The INIT saw both values (inside the machine, where ./evil.so does not exist).
    assert seen.splitlines()[0] == str(so)
    assert "/nonexistent" in seen.splitlines()[1].split(":")
    assert seen.splitlines()[1].startswith(f"{fake_bin[0]}:")
    assert not marker.exists()
    assert out.stat().st_mode & 0o777 == 0o600


def test_arg_path_nonexistent_fails_in_the_machine_not_on_the_host(store, evil, tmp_path):
    """``--build-arg PATH=/nonexistent``: the host helpers still run (before: FileNotFoundError
    traceback), and the machine's runner still finds its tools after the ARG's directories."""
    so, marker = evil
    (tmp_path / "Amifile").write_text(AMIFILE.replace("amic-seen", "amic-seen2"))
    proc = amic(store, tmp_path, "build", "-q", "--build-arg", f"LD_PRELOAD={so}",
                "--build-arg", "PATH=/nonexistent")
    no_traceback(proc)
    assert "FileNotFoundError" not in proc.stderr
    assert not marker.exists()
    # the runner keeps the system's directories after the ARG's PATH: the build works
    assert proc.returncode == 0, proc.stderr


def test_export_to_a_missing_directory_or_a_fifo(store, built, tmp_path):
    proc = amic(store, tmp_path, "export", built, "-o", str(tmp_path / "missing" / "x.tar"))
    no_traceback(proc)
    assert proc.returncode == 2
    assert f"directory {tmp_path / 'missing'} does not exist" in proc.stderr
    assert list(tmp_path.iterdir()) == []
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got = tmp_path / "got.tar"
    cat = subprocess.Popen(f"cat {fifo} > {got}", shell=True)
    proc = amic(store, tmp_path, "export", built, "-o", str(fifo))
    assert cat.wait(timeout=120) == 0
    assert proc.returncode == 0, proc.stderr
    assert fifo.is_fifo()  # written through, not renamed over
    with tarfile.open(got) as tar:
        assert "./etc/amic-seen" in tar.getnames()
    assert not list(tmp_path.glob(".amic-*"))


def test_prune_skips_an_image_a_shell_uses(store, built, tmp_path):
    env = {**os.environ, "AMIC_CACHE_DIR": str(store), "AMIC_TARGET": "local"}
    shell = subprocess.Popen([AMIC, "shell", built, "-c", "touch /tmp/x && sleep 5"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = store / "local" / "locks" / f"{built[:12]}.lock"
        deadline = time.monotonic() + 60
        while not _held(lock) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _held(lock), "amic shell took no use-lock"
        proc = amic(store, tmp_path, "prune", "--all", "--force")
        no_traceback(proc)
        assert proc.returncode == 0, proc.stderr
        assert f"kept final {built[:12]}: in use" in proc.stderr
        assert built[:12] not in proc.stdout  # not listed as removed
        assert (store / "local" / "images" / built[:12] / "meta.json").exists()
    finally:
        out, err = shell.communicate(timeout=120)
    assert shell.returncode == 0, err
    # Once the shell is gone, prune removes it.
    proc = amic(store, tmp_path, "prune", "--all", "--force")
    assert proc.returncode == 0, proc.stderr
    assert f"final {built[:12]}" in proc.stdout
    assert not (store / "local" / "images" / built[:12]).exists()


def _held(lock: Path) -> bool:
    import fcntl

    if not lock.exists():
        return False
    with open(lock) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False



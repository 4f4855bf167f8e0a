"""The runner waits while another process holds dpkg's lock (``dpkg_locked``, ``pm_wait_dpkg``),
under dash, busybox sh and bash --posix.

The functions are taken from ``runtime/amic`` as they are, with the lock file's path moved
into a temporary directory; a real fcntl lock (what apt and unattended-upgrades take) is
held by this process, so ``/proc/locks`` lists it as it would on an instance.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.harness.roots import SHELLS

RUNTIME = Path(__file__).resolve().parents[2] / "runtime" / "amic"


def functions(lock: Path) -> str:
    text = RUNTIME.read_text()
    out = []
    for name in ("say", "dpkg_locked", "pm_wait_dpkg"):
        found = re.search(rf"^{name}\(\) {{.*?^}}\n", text, re.MULTILINE | re.DOTALL)
        assert found, name
        out.append(found.group(0))
    return "\n".join(out).replace("/var/lib/dpkg/lock-frontend", str(lock))


@pytest.fixture(params=["dash", "busybox", "bash-posix"])
def shell(request):
    argv = SHELLS[request.param].split()
    if subprocess.run(["sh", "-c", f"command -v {argv[0]}"], capture_output=True).returncode:
        pytest.fail(f"{argv[0]} is missing (apt-get install {argv[0]})")
    return argv


def run(shell, script: Path, command: str) -> subprocess.CompletedProcess:
    return subprocess.run([*shell, "-c", f". {script}; {command}"], capture_output=True,
                          text=True, timeout=60)


def test_a_held_lock_is_seen_and_waited_for(shell, tmp_path):
    lock = tmp_path / "lock-frontend"
    lock.write_text("")
    other = tmp_path / "other"        # a lock on another file is not dpkg's
    other.write_text("")
    script = tmp_path / "fns.sh"
    script.write_text("SELF=amic\n" + functions(lock))
    assert run(shell, script, "dpkg_locked").returncode == 1
    with open(other, "r+") as fh:
        fcntl.lockf(fh, fcntl.LOCK_EX)
        assert run(shell, script, "dpkg_locked").returncode == 1
    fh = open(lock, "r+")  # noqa: SIM115 - let go of from the thread
    fcntl.lockf(fh, fcntl.LOCK_EX)
    try:
        # the lock must be held by another process than the shell's: it is (this one)
        assert run(shell, script, "dpkg_locked").returncode == 0
        threading.Timer(1.5, fh.close).start()
        t0 = time.monotonic()
        waited = run(shell, script, "pm_wait_dpkg; echo done")
        assert time.monotonic() - t0 >= 1.0
        assert waited.returncode == 0 and waited.stdout.strip().endswith("done"), waited
        assert "let go of dpkg's lock" in waited.stdout + waited.stderr, waited
    finally:
        fh.close()
    assert run(shell, script, "dpkg_locked").returncode == 1

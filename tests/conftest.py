"""Shared test setup.

Tests marked ``root`` need root (mount namespaces, chroot, systemd-nspawn).
Outside CI, a non-root run skips them with a reason; in CI (``CI=true``) a
missing privilege is a failure, so end-to-end coverage can never silently
disappear.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.harness.cli import run_amic

REPO = Path(__file__).resolve().parent.parent

# A real sshd whose sessions land in a throwaway root (fixtures sshd_root, sshd_factory, ...),
# and every target behind one interface for the contract suite (fixtures <target>_subject).
pytest_plugins = ["tests.harness.sshd", "tests.harness.targets"]


def pytest_configure(config):
    # Tests assert that amic leaves no temporary file behind (``amic-stage2-*`` in the temp
    # directory). Each pytest process gets a temp directory of its own, so that check sees
    # only this process's builds: not another xdist worker's, nor another run on the host.
    if os.environ.get("AMIC_TEST_TMPDIR_OF") == str(os.getpid()):
        return
    # pytest's own tmp_path tree stays where it was (PYTEST_DEBUG_TEMPROOT), not under the
    # private directory: unix socket paths in it (QMP, sshd) must stay under 108 bytes.
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
    private = tempfile.mkdtemp(prefix="amt", dir=os.environ.get("TMPDIR", "/tmp"))
    os.chmod(private, 0o755)   # unprivileged helpers (sshd users, QEMU's user) read beneath it
    os.environ["TMPDIR"] = private
    os.environ["AMIC_TEST_TMPDIR_OF"] = str(os.getpid())
    tempfile.tempdir = None
    config.add_cleanup(lambda: shutil.rmtree(private, ignore_errors=True))


def pytest_runtest_setup(item):
    if item.get_closest_marker("root") and os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("this test needs root and CI runs as root: the CI setup is broken")
        pytest.skip("needs root (run: sudo tools/test)")


@pytest.fixture
def amic_cli():
    """Run the real ``amic`` console script; returns CompletedProcess (text). ``env`` adds
    to this process's environment."""

    def run(*args: str, cwd: str | os.PathLike | None = None, env: dict | None = None,
            input: str | None = None, check: bool = False) -> subprocess.CompletedProcess:
        return run_amic(*args, cwd=cwd, env={**os.environ, **(env or {})}, input=input,
                        check=check)

    return run


@pytest.fixture
def write_tree(tmp_path):
    """Write {relative path: text} under a fresh directory; returns the directory."""

    def write(files: dict[str, str], root: Path | None = None) -> Path:
        root = root or tmp_path
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return root

    return write

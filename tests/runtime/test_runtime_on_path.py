"""``amic`` by plain name in every image: ``amic install`` writes /usr/local/bin/amic, a
wrapper that runs the installed stage2 (the runner finds its stage2 by ``$0``, so a symlink
would not do), under dash and busybox sh, in a throwaway root; a file there that is not
amic's wrapper (a developer's amic on an SSH host) is left alone."""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

import pytest

from tests.harness.roots import RUNNER, SHELLS, Root, compile_stage2

pytestmark = pytest.mark.root

WRAPPER = str(PurePosixPath("/usr/local/bin") / "amic")   # in the root, not the tests' amic
AMIFILE = """
SERVICE app
    INIT echo init >> /root/app-log
"""


@pytest.mark.parametrize("shell", ["dash", "busybox sh"])
def test_install_puts_amic_on_path(tmp_path: Path, shell: str) -> None:
    root = Root(tmp_path)
    if shell.startswith("busybox"):
        root.put("/usr/bin/busybox", Path(shutil.which("busybox")).read_bytes(), 0o755)
    root.install_stage2(compile_stage2(tmp_path / "ctx", AMIFILE), shell)
    wrapper = root.read(WRAPPER)
    assert "# amic runtime wrapper" in wrapper and RUNNER in wrapper, wrapper
    assert root.file(WRAPPER).stat().st_mode & 0o777 == 0o755
    rc, out = root.run("cd / && amic init && amic status", check=None)
    assert rc == 0, out
    assert "app" in out and "stage2" in out, out
    # installed again: the wrapper is kept as it is, no note
    rc, out = root.run(f"{shell} {RUNNER} install", check=None)
    assert rc == 0 and "not amic's wrapper" not in out, out


def test_someone_elses_amic_is_left_alone(tmp_path: Path) -> None:
    root = Root(tmp_path)
    root.put(WRAPPER, "#!/bin/sh\necho the developer's compiler\n", 0o755)
    out = root.install_stage2(compile_stage2(tmp_path / "ctx", AMIFILE), "dash")
    assert "/usr/local/bin/amic is not amic's wrapper, left as it is" in out, out
    assert root.read(WRAPPER) == "#!/bin/sh\necho the developer's compiler\n"

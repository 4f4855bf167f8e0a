"""A local store on overlayfs (a container's own root) is refused up front, clearly.

overlayfs cannot take an upper or work directory on overlayfs, so every layer would end in
mount's "wrong fs type"; the tests' own container run (tools/test-in-container) met this.
The overlay here is mounted in a private mount namespace that ends with the command.
"""

from __future__ import annotations

import os
import subprocess

from tests.harness.cli import AMIC

AMIFILE = "FROM debian:12\nSERVICE web\n    INIT echo hi\n"


def test_a_store_on_overlayfs_is_refused_before_anything_is_made(tmp_path):
    for d in ("lower", "upper", "work", "merged", "project"):
        (tmp_path / d).mkdir()
    (tmp_path / "project" / "Amifile").write_text(AMIFILE)
    cache = tmp_path / "merged" / "cache"
    script = ('mount -t overlay overlay -o "lowerdir=$1/lower,upperdir=$1/upper,workdir=$1/work" '
              '"$1/merged" && cd "$1/project" && exec "$2" build --target local')
    env = {**os.environ, "AMIC_CACHE_DIR": str(cache)}
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                           "sh", str(tmp_path), AMIC], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"the local store {cache}/local is on overlayfs" in proc.stderr
    assert "AMIC_CACHE_DIR" in proc.stderr and "Traceback" not in proc.stderr
    # refused before a debootstrap or a layer: only the build lock landed in the overlay
    made = sorted(str(p.relative_to(tmp_path / "upper")) for p in (tmp_path / "upper").rglob("*")
                  if p.is_file())
    assert made == ["cache/local/builds.lock"], made

"""The local target's package cache: downloads shared across layers, never baked.

Like BuildKit's cache mounts. Every command a build runs in a root gets its
own directory of hard links to the cached ``.deb`` files, bind-mounted at
``/var/cache/apt/archives`` inside the root's namespace (:mod:`rootfs`), so
apt finds what an earlier layer downloaded and never downloads it again.
The mount lives and dies with the command's mount namespace: the layer's
upper directory never sees those files, so no image carries them. When the
command ends, the ``.deb`` files it downloaded are linked into the shared
directory (``link(2)``: atomic, and two builds adding the same file is
harmless); its own directory goes with the command's scratch directory.
Concurrent builds never share apt's lock or ``partial/`` directory, and the
directory has the modes apt's own has (``0755``, ``partial/`` ``0700``), so apt
keeps its sandbox (downloads as ``_apt``) under any umask.

The shared directory is ``$AMIC_CACHE_DIR/local/packages``; it only grows
(``rm -rf`` it at will). ``AMIC_PACKAGE_CACHE=off`` turns the cache off.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def enabled() -> bool:
    return os.environ.get("AMIC_PACKAGE_CACHE", "on").lower() not in ("off", "0", "no")


def link_debs(src: Path, dst: Path) -> int:
    """Hard-link every ``*.deb`` of ``src`` missing from ``dst``; return how many."""
    n = 0
    for entry in os.scandir(src):
        if not entry.name.endswith(".deb") or not entry.is_file(follow_symlinks=False):
            continue
        try:
            os.link(entry.path, dst / entry.name)
            n += 1
        except FileExistsError:
            pass
    return n


@contextlib.contextmanager
def for_run(shared: Path, scratch: Path) -> Iterator[Path | None]:
    """A per-command archives directory seeded from ``shared`` (None when off or impossible)."""
    if not enabled():
        yield None
        return
    run_dir = scratch / "apt-archives"
    try:
        shared.mkdir(parents=True, exist_ok=True)
        (run_dir / "partial").mkdir(parents=True)
        # The modes apt's own directories have, whatever amic's umask: apt downloads as the
        # unprivileged _apt user into partial/ (which apt, as root, hands to _apt), and falls
        # back to downloading unsandboxed as root, with a warning, when _apt cannot get there.
        os.chmod(run_dir, 0o755)
        os.chmod(run_dir / "partial", 0o700)
        link_debs(shared, run_dir)
    except OSError:     # another file system (no hard links), read-only cache: no cache
        yield None
        return
    try:
        yield run_dir
    finally:
        with contextlib.suppress(OSError):
            link_debs(run_dir, shared)

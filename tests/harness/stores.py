"""Snapshots of the stores a build may write, to show a dry run wrote none of them."""

from __future__ import annotations

import os
from pathlib import Path


def listing(*dirs: Path) -> dict[str, tuple]:
    """Every entry under ``dirs`` (not following symlinks) with its type, size and mtime."""
    out: dict[str, tuple] = {}
    for top in dirs:
        if not os.path.lexists(top):
            continue
        for root, dirnames, files in os.walk(top):
            for name in dirnames + files:
                p = os.path.join(root, name)
                st = os.lstat(p)
                out[p] = (st.st_mode, 0 if name in dirnames else st.st_size, st.st_mtime_ns)
    return out


def watched_dirs(amic_cache: Path) -> list[Path]:
    # the module's AMIC_CACHE_DIR (local store, memo, ec2 key files) and the shared bases'
    # top level (walking a Debian root twice per step would be slow; its stamp is there)
    bases = Path("/var/cache/amic/bases")
    return [amic_cache] + ([p for p in bases.iterdir() if p.is_file()] if bases.is_dir() else [])

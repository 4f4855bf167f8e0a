"""The paths a kept disk must change to go from one image to the next (``disk_reuse``).

The kept disk's root file system holds the merged tree of the image it was last written
from and the disk's own files, exactly (``mke2fs -d`` or ``rsync -aHAX`` of that tree). The
next image shares its bottom layers with that one (the cloud base, the unchanged
services), and two overlay stacks over the same lower layers differ only at the paths some
upper layer above them names: a file or directory written there, a whiteout, or anything
beneath an opaque directory (one made anew over a deleted one: it hides what the layers
below hold there). So instead of ``rsync`` walking both whole trees (~14,000 files, most
of the disk step), only those paths are handed to ``rsync --files-from``: those of the old
chain's own layers, of the new chain's own layers, and the disk's own files
(``reuse-root.sh``'s upper: fstab, grub.cfg, the removed archives). An opaque directory is
listed with a trailing ``/``: everything beneath it, on the disk or in the new tree.

One difference from a walk of the whole tree: a listed file hard-linked in the new tree to
a file no layer of either image names (overlayfs copies a file up unlinked, so this is
only a file an old layer changed and a new one left alone) lands as a copy of the same
content, not a link (``rsync -H`` links only what it transfers).

What this cannot follow answers ``None``, and the whole tree is compared as before: no
shared bottom layer, or a redirected directory or a metadata-only copy (overlay features
amic's mounts do not turn on), whose effect no path in the layer names.

Run as a script inside ``reuse-root.sh``'s mount namespace (``python -I -S disk_delta.py
MERGED DEST UPPER LIST OUT``; UPPER, that script's own layer, is added to LIST),
:func:`safe_paths` keeps only paths no ``rsync`` would reach through a link: ``rsync
--files-from`` resolves each listed path's directories as paths, so a directory that is a
link in the image (or on the disk, which holds the previous image) would have it read or
delete the host's files. A path below a non-directory, or below nothing in the new tree,
is dropped (that path is listed itself, and replacing or deleting it takes what was
below); a directory the disk does not have as a directory is listed with everything
beneath it, since nothing else names its contents. Only the standard library: nothing of
amic is imported where the script runs.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

UNFOLLOWED = (b"overlay.redirect", b"overlay.metacopy")
"""Overlay attributes (``trusted.`` or ``user.``) whose effect no path in the layer names."""
OPAQUE = b"overlay.opaque"
SKIPPED = ("lost+found",)
"""Top-level names the disk has of its own (what the full ``rsync`` excludes)."""
SUBTREE = "/"
"""The suffix of a listed directory whose whole subtree is compared."""


def own_layers(old: Sequence[Path], new: Sequence[Path]) -> list[Path] | None:
    """The layers of either chain (top-most first) above the bottom layers both share;
    ``None`` when they share none."""
    shared = 0
    while shared < min(len(old), len(new)) and old[-1 - shared] == new[-1 - shared]:
        shared += 1
    if shared == 0:
        return None
    return [*old[:len(old) - shared], *new[:len(new) - shared]]


def _overlay_attrs(path: str) -> set[bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return set()
    return {n.encode().split(b".", 1)[-1] for n in names if ".overlay." in n}


def layer_paths(layer: Path) -> list[str] | None:
    """Every path ``layer`` (an upper directory) names, relative to the root, an opaque
    directory's with :data:`SUBTREE` after it; ``None`` when an entry changes what the
    merged tree holds in a way no path names."""
    top = str(layer)
    stack = [top]
    found: list[str] = []
    while stack:
        here = stack.pop()
        with os.scandir(here) as entries:
            for entry in entries:
                rel = os.path.relpath(entry.path, top)
                attrs = _overlay_attrs(entry.path) \
                    if entry.is_dir(follow_symlinks=False) or \
                    entry.is_file(follow_symlinks=False) else set()
                if attrs & set(UNFOLLOWED):
                    return None
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                found.append(rel + SUBTREE if OPAQUE in attrs else rel)
    return found


def changed_paths(old: Sequence[Path], new: Sequence[Path]) -> list[str] | None:
    """The paths where the merged trees of the ``old`` and ``new`` chains can differ, sorted;
    ``None`` when that cannot be told from the layers (see the module's docstring)."""
    layers = own_layers(old, new)
    if layers is None:
        return None
    paths: set[str] = set()
    for layer in layers:
        named = layer_paths(layer)
        if named is None:
            return None
        paths.update(named)
    return sorted(paths)


def _kind(path: str) -> int | None:
    """The file type at ``path`` (not followed), ``None`` when there is nothing."""
    try:
        return stat.S_IFMT(os.lstat(path).st_mode)
    except FileNotFoundError:
        return None


def _walk(root: str, rel: str) -> Iterator[str]:
    """Everything beneath ``rel`` in ``root`` (a directory reached through no link), links
    not followed."""
    for here, dirs, files in os.walk(os.path.join(root, rel), followlinks=False):
        for name in (*dirs, *files):
            yield os.path.relpath(os.path.join(here, name), root)


def safe_paths(merged: str, dest: str, paths: Iterable[str]) -> Iterator[str]:
    """``paths`` as ``rsync --files-from`` may take them from ``merged`` to ``dest``: none
    through a link or a file on either side; a directory ``dest`` lacks, with its contents;
    a :data:`SUBTREE`, with everything beneath it on either side."""
    in_merged: dict[str, bool] = {"": True}
    in_dest: dict[str, bool] = {"": True}

    def merged_dir(d: str) -> bool:
        """``d`` is a directory in ``merged``, and so is each directory on its way (each
        looked at only once its parent is known to be one: no link is ever resolved)."""
        if d not in in_merged:
            in_merged[d] = merged_dir(os.path.dirname(d)) and \
                _kind(os.path.join(merged, d)) == stat.S_IFDIR
        return in_merged[d]

    def dest_passable(d: str) -> bool:
        """``d`` is a directory or nothing in ``dest``, and so is each one on its way."""
        if d not in in_dest:
            in_dest[d] = dest_passable(os.path.dirname(d)) and \
                _kind(os.path.join(dest, d)) in (None, stat.S_IFDIR)
        return in_dest[d]

    def expanded(rel: str, subtree: bool) -> Iterator[str]:
        yield rel
        into_merged = merged_dir(rel)
        into_dest = dest_passable(rel) and _kind(os.path.join(dest, rel)) == stat.S_IFDIR
        if into_merged and (subtree or not into_dest):
            # what is beneath is a new directory's, or the opaque one's: all of it
            yield from _walk(merged, rel)
        if subtree and into_dest:
            # what the disk holds beneath, to be deleted where the new tree has nothing
            for path in _walk(dest, rel):
                if merged_dir(os.path.dirname(path)):
                    yield path

    seen: set[str] = set()
    for listed in paths:
        subtree = listed.endswith(SUBTREE)
        rel = listed.rstrip(SUBTREE)
        parts = rel.split("/")
        if not rel or parts[0] in SKIPPED or any(p in ("", ".", "..") for p in parts):
            continue
        parent = os.path.dirname(rel)
        if not (merged_dir(parent) and dest_passable(parent)):
            continue
        for path in expanded(rel, subtree):
            if path not in seen:
                seen.add(path)
                yield path


def _read_list(path: str) -> list[str]:
    with open(path, "rb") as fh:
        return [os.fsdecode(p) for p in fh.read().split(b"\0") if p]


CANNOT_TELL = 3
"""The script's exit status when the delta cannot be told after all (``reuse-root.sh``
then compares every file)."""


def main(argv: list[str]) -> int:
    merged, dest, upper, listed, out = argv
    own = layer_paths(Path(upper))          # the disk's own files: fstab, grub.cfg, ...
    if own is None:
        return CANNOT_TELL
    with open(out, "wb") as fh:
        fh.write(b".\0")      # the root directory's own attributes
        for path in safe_paths(merged, dest, [*_read_list(listed), *own]):
            fh.write(os.fsencode(path) + b"\0")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The raw disk of an image for an EBS upload, made by changing the project's previous disk.

``disk.write_disk`` makes a root file system afresh (``mke2fs -d``): every build lays out
its files anew, so nearly every 512 KiB block differs from the last build's even when one
file changed, and an upload over the previous snapshot would send the whole disk again.
Here the previous disk of the same project is kept (in the local store, ``vmdisks.ec2_disk_dir``;
``amic prune --all`` removes it); the next disk is that disk, whose root file system is
loop-mounted in a private mount namespace and brought to the new image with ``rsync
--inplace --delete`` (``local/scripts/reuse-root.sh``): unchanged files keep their blocks,
a changed file is rewritten in its own, so the blocks that differ are those of the files
that changed and a little ext4 metadata. rsync compares only the paths where the new
image's layers differ from those of the image the disk holds (``disk_delta``: the kept
facts name that image, stamped with the disk file they describe), not every file of both
trees, where that can be told from the layers. The partition layout, the root's UUID and
size stay those of the first disk; when the new image does not fit in it any more (or there is
no previous disk, or anything fails) the disk is made afresh, and kept for next time.

No copy of the ~1 GB disk is made on the way: the build that holds the project's disk lock
(:func:`project_disk`, for its disk's making and upload) moves the kept disk into its
scratch, changes it there and keeps it again as a hard link. A build killed meanwhile
leaves the disk in its scratch (prune's), and the next one makes the disk afresh. A
second build of the project at the same time changes a copy, and keeps nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from amic.errors import BuildError
from amic.fsutil import LockBusy, file_lock, write_atomic
from amic.targets.base import Image
from amic.targets.ec2 import disk_delta
from amic.targets.local import disk, rootfs, vmdisks
from amic.targets.scripts import script

Log = Callable[[str], None]
FILL_LIMIT = 0.85
"""Above this share of the root file system used, the disk is made afresh (bigger)."""
IMAGE_ID = re.compile(r"[0-9a-f]{64}")


def kept_dir(store, project: str) -> Path:
    return vmdisks.ec2_disk_dir(store, project)


def _copy(src: Path, dst: Path) -> None:
    proc = subprocess.run(["cp", "--reflink=auto", "--sparse=always", str(src), str(dst)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"cannot copy {src}: {proc.stderr.strip()}")


def _facts(kept: Path) -> dict | None:
    try:
        facts = json.loads((kept / "disk.json").read_text())
        uuid.UUID(facts["uuid"])
        int(facts["root_mib"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return facts if (kept / "disk.raw").is_file() else None


def _take(src: Path, dst: Path) -> None:
    """``src`` moved to ``dst`` (copied where they are on two file systems)."""
    try:
        os.replace(src, dst)
    except OSError:
        _copy(src, dst)
        src.unlink()


def _stamp(path: Path) -> list[int]:
    """What ties the kept facts to one written disk file: inode, size, last change."""
    st = os.stat(path)
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def delta_since(store, facts: dict, previous: Path, lowers: list[Path]) -> list[str] | None:
    """The paths where ``previous`` (the kept disk) can differ from the image of ``lowers``
    (``disk_delta``), when its facts name the image it holds and were written with this
    very file; else ``None``: every file is compared."""
    held = facts.get("image")
    if not isinstance(held, str) or not IMAGE_ID.fullmatch(held) or \
            facts.get("stamp") != _stamp(previous):
        return None
    try:
        with store.use(held) as held_lowers:     # not pruned while its layers are read
            return disk_delta.changed_paths(held_lowers, lowers)
    except (BuildError, OSError):
        return None


def reuse_command(lowers: list[Path], scratch: Path, raw: Path, root_uuid: str,
                  root_bytes: int, delta: str = "", *, shell: str = "sh") -> list[str]:
    """``reuse-root.sh`` (after ``sync-root.sh``) as a command line, for a mount namespace of
    its own: ``lowers`` written over the root of ``raw``, in ``scratch``'s upper, work,
    merged, mnt and out directories; ``delta``: the file of paths to compare, or ""."""
    return [shell, "-c", script(disk.__package__, "sync-root.sh") +
            disk.root_script("reuse-root.sh"), "amic-disk-reuse",
            ":".join(str(p) for p in lowers),
            *(str(scratch / d) for d in ("upper", "work", "merged")), str(raw), root_uuid,
            str(disk.ROOT_START), str(root_bytes), str(scratch / "mnt"), str(scratch / "out"),
            delta, sys.executable, disk_delta.__file__]


def reuse(store, vm_image: Image, previous: Path, facts: dict, out: Path, *,
          move: bool = False, log: Log | None = None) -> dict:
    """``out``: ``previous`` (moved there, or a copy of it) whose root file system now holds
    ``vm_image``. Moved (the caller holds the project's disk lock), only the paths where
    the two images differ are compared, when that can be told (:func:`delta_since`)."""
    disk.check_tools("raw")
    if shutil.which("rsync") is None:
        raise BuildError("rsync is missing (apt-get install rsync)")
    lowers = store.lowers(vm_image.id)
    delta = delta_since(store, facts, previous, lowers) if move else None
    if log is not None:
        log("disk: every file compared" if delta is None else
            f"disk: {len(delta)} paths of the image's own layers compared")
    (_take if move else _copy)(previous, out)
    with store.scratch("disk-reuse-") as scratch:
        for d in ("upper", "work", "merged", "mnt", "out"):
            (scratch / d).mkdir()
        listed = ""
        if delta is not None:
            listed = str(scratch / "delta")
            write_atomic(Path(listed), b"".join(os.fsencode(p) + b"\0" for p in delta),
                         mode=0o600)
        argv = ["unshare", "--mount", "--propagation", "private",
                *reuse_command(lowers, scratch, out, facts["uuid"],
                               int(facts["root_mib"]) * disk.MIB, listed)]
        disk.run(argv, env=rootfs.CLEAN_ENV)
        o = scratch / "out"
        used = int((o / "used-kib").read_text())
        disk.install_bios(out, (o / "boot.img").read_bytes(), (o / "core.img").read_bytes())
        disk.install_esp(out, o / "BOOTX64.EFI")
    return {**facts, "used_kib": used}


@contextlib.contextmanager
def project_disk(target, vm_image: Image, project: str, out: Path, *, log: Log | None = None
                 ) -> Iterator[tuple[dict, bool]]:
    """:func:`make_disk` under the project's disk lock, held for the block (the upload of
    ``out``: the kept disk is ``out``'s inode until the next build of the project)."""
    kept = kept_dir(target.store, project)
    kept.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(kept / "lock", wait=False))
            owned = True
        except LockBusy:
            owned = False
            if log is not None:
                log("another build of this project holds its previous disk: this one changes "
                    "a copy of it and keeps nothing")
        yield make_disk(target, vm_image, project, out, log=log, owned=owned)


def make_disk(target, vm_image: Image, project: str, out: Path, *, log: Log | None = None,
              owned: bool = True) -> tuple[dict, bool]:
    """The raw disk of ``vm_image`` (an image with the VM layer, use-locked by the caller) at
    ``out``; (its facts, whether it was made over the previous disk). ``owned``: no other
    build uses the project's disk (:func:`project_disk`), which is then moved to ``out``,
    changed there, and ``out`` kept (linked) as the project's previous disk; else the disk
    is made from a copy and not kept."""
    kept = kept_dir(target.store, project)
    facts = _facts(kept)
    reused = False
    if facts is not None:
        fits = True
        with contextlib.suppress(KeyError, ValueError, TypeError):
            fits = int(facts["used_kib"]) < FILL_LIMIT * int(facts["root_mib"]) * 1024
        if fits:
            try:
                facts = reuse(target.store, vm_image, kept / "disk.raw", facts, out,
                              move=owned, log=log)
                reused = facts["used_kib"] < FILL_LIMIT * int(facts["root_mib"]) * 1024
            except BuildError as exc:
                if log is not None:
                    log(f"cannot change the previous disk in place ({exc}); making it afresh")
    if not reused:
        with contextlib.suppress(FileNotFoundError):
            out.unlink()
        facts = disk.write_disk(target.store, vm_image, out, fmt="raw")
    facts = {**facts, "image": vm_image.id}      # what the disk's root holds, exactly
    if owned:
        keep(kept, out, facts)
    return facts, reused


def keep(kept: Path, raw: Path, facts: dict) -> None:
    """``raw`` as the project's previous disk (replaced whole: a reader sees one or the other),
    a hard link where it can be (``raw`` is not written after this). The facts go first
    and come back last, stamped with the file they describe: a build killed in between
    leaves a disk with no facts (made afresh next time), never one with another's."""
    kept.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        (kept / "disk.json").unlink()
    tmp = kept / f".disk-{uuid.uuid4().hex}.raw"
    try:
        try:
            os.link(raw, tmp)
        except OSError:
            _copy(raw, tmp)
        os.replace(tmp, kept / "disk.raw")
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    stamped = {**facts, "stamp": _stamp(kept / "disk.raw")}
    write_atomic(kept / "disk.json", json.dumps(stamped), mode=0o600)

"""The raw disk of an image for an EBS upload, made by changing the project's previous disk.

``disk.write_disk`` makes a root file system afresh (``mke2fs -d``): every build lays out
its files anew, so nearly every 512 KiB block differs from the last build's even when one
file changed, and an upload over the previous snapshot would send the whole disk again.
Here the previous disk of the same project is kept (in the local store, ``vmdisks.ec2_disk_dir``;
``amic prune --all`` removes it); the next disk is that disk, whose root file system is
loop-mounted in a private mount namespace and brought to the new image with ``rsync
--inplace --delete`` (``local/scripts/reuse-root.sh``): unchanged files keep their blocks,
a changed file is rewritten in its own, so the blocks that differ are those of the files
that changed and a little ext4 metadata. The partition layout, the root's UUID and size
stay those of the first disk; when the new image does not fit in it any more (or there is
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
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from amic.errors import BuildError
from amic.fsutil import LockBusy, file_lock, write_atomic
from amic.targets.base import Image
from amic.targets.local import disk, rootfs, vmdisks

Log = Callable[[str], None]
FILL_LIMIT = 0.85
"""Above this share of the root file system used, the disk is made afresh (bigger)."""


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


def reuse(store, vm_image: Image, previous: Path, facts: dict, out: Path, *,
          move: bool = False) -> dict:
    """``out``: ``previous`` (moved there, or a copy of it) whose root file system now holds
    ``vm_image``."""
    disk.check_tools("raw")
    if shutil.which("rsync") is None:
        raise BuildError("rsync is missing (apt-get install rsync)")
    (_take if move else _copy)(previous, out)
    with store.scratch("disk-reuse-") as scratch:
        for d in ("upper", "work", "merged", "mnt", "out"):
            (scratch / d).mkdir()
        lowers = ":".join(str(p) for p in store.lowers(vm_image.id))
        root_bytes = int(facts["root_mib"]) * disk.MIB
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                disk.root_script("reuse-root.sh"), "amic-disk-reuse", lowers,
                str(scratch / "upper"), str(scratch / "work"), str(scratch / "merged"),
                str(out), facts["uuid"], str(disk.ROOT_START), str(root_bytes),
                str(scratch / "mnt"), str(scratch / "out")]
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
                              move=owned)
                reused = facts["used_kib"] < FILL_LIMIT * int(facts["root_mib"]) * 1024
            except BuildError as exc:
                if log is not None:
                    log(f"cannot change the previous disk in place ({exc}); making it afresh")
    if not reused:
        with contextlib.suppress(FileNotFoundError):
            out.unlink()
        facts = disk.write_disk(target.store, vm_image, out, fmt="raw")
    if owned:
        keep(kept, out, facts)
    return facts, reused


def keep(kept: Path, raw: Path, facts: dict) -> None:
    """``raw`` as the project's previous disk (replaced whole: a reader sees one or the other),
    a hard link where it can be (``raw`` is not written after this)."""
    kept.mkdir(parents=True, exist_ok=True, mode=0o700)
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
    write_atomic(kept / "disk.json", json.dumps(facts), mode=0o600)

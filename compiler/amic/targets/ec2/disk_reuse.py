"""The raw disk of an image for an EBS upload, made by changing the project's previous disk.

``disk.write_disk`` makes a root file system afresh (``mke2fs -d``): every build lays out
its files anew, so nearly every 512 KiB block differs from the last build's even when one
file changed, and an upload over the previous snapshot would send the whole disk again.
Here the previous disk of the same project is kept (in the local store, ``vmdisks.ec2_disk_dir``;
``amic prune --all`` removes it); the
next disk is a copy of it (reflinked where the file system can) whose root file system is
loop-mounted in a private mount namespace and brought to the new image with ``rsync
--inplace --delete`` (``local/scripts/reuse-root.sh``): unchanged files keep their blocks,
a changed file is rewritten in its own, so the blocks that differ are those of the files
that changed and a little ext4 metadata. The partition layout, the root's UUID and size
stay those of the first disk; when the new image does not fit in it any more (or there is
no previous disk, or anything fails) the disk is made afresh, and kept for next time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

from amic.errors import BuildError
from amic.fsutil import write_atomic
from amic.targets.base import Image
from amic.targets.local import disk, rootfs, vmdisks
from amic.targets.scripts import script

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


def reuse(store, vm_image: Image, previous: Path, facts: dict, out: Path) -> dict:
    """``out``: a copy of ``previous`` whose root file system now holds ``vm_image``."""
    disk.check_tools("raw")
    if shutil.which("rsync") is None:
        raise BuildError("rsync is missing (apt-get install rsync)")
    _copy(previous, out)
    with store.scratch("disk-reuse-") as scratch:
        for d in ("upper", "work", "merged", "mnt", "out"):
            (scratch / d).mkdir()
        lowers = ":".join(str(p) for p in store.lowers(vm_image.id))
        root_bytes = int(facts["root_mib"]) * disk.MIB
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                script("amic.targets.local", "reuse-root.sh"), "amic-disk-reuse", lowers,
                str(scratch / "upper"), str(scratch / "work"), str(scratch / "merged"),
                str(out), facts["uuid"], str(disk.ROOT_START), str(root_bytes),
                str(scratch / "mnt"), str(scratch / "out")]
        disk.run(argv, env=rootfs.CLEAN_ENV)
        o = scratch / "out"
        used = int((o / "used-kib").read_text())
        disk.install_bios(out, (o / "boot.img").read_bytes(), (o / "core.img").read_bytes())
        disk.install_esp(out, o / "BOOTX64.EFI")
    return {**facts, "used_kib": used}


def make_disk(target, vm_image: Image, project: str, out: Path, *, log: Log | None = None
              ) -> tuple[dict, bool]:
    """The raw disk of ``vm_image`` (an image with the VM layer, use-locked by the caller) at
    ``out``; (its facts, whether it was made over the previous disk). The result is kept
    as the project's previous disk."""
    kept = kept_dir(target.store, project)
    facts = _facts(kept)
    reused = False
    if facts is not None:
        fits = True
        with contextlib.suppress(KeyError, ValueError, TypeError):
            fits = int(facts["used_kib"]) < FILL_LIMIT * int(facts["root_mib"]) * 1024
        if fits:
            try:
                facts = reuse(target.store, vm_image, kept / "disk.raw", facts, out)
                reused = facts["used_kib"] < FILL_LIMIT * int(facts["root_mib"]) * 1024
            except BuildError as exc:
                if log is not None:
                    log(f"cannot change the previous disk in place ({exc}); making it afresh")
    if not reused:
        with contextlib.suppress(FileNotFoundError):
            out.unlink()
        facts = disk.write_disk(target.store, vm_image, out, fmt="raw")
    keep(kept, out, facts)
    return facts, reused


def keep(kept: Path, raw: Path, facts: dict) -> None:
    """``raw`` as the project's previous disk (replaced whole: a reader sees one or the other)."""
    kept.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = kept / f".disk-{uuid.uuid4().hex}.raw"
    try:
        _copy(raw, tmp)
        os.replace(tmp, kept / "disk.raw")
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    write_atomic(kept / "disk.json", json.dumps(facts), mode=0o600)

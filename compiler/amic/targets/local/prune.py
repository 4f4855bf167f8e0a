"""``amic prune`` and ``amic rmi`` on the local target: what goes, and every byte it frees.

Everything prune removes is counted as ``du`` counts it (:func:`store.tree_size`: blocks
allocated, each inode once, the directory itself included), so the total it prints is what
the store's file system gets back: image directories with their key files, the VM layer
of an image that goes and its cached disk (``vm/<id12>.qcow2``, about 500 MB), machine
directories of crashed builds, scratch directories whose owner is gone (``tmp/``), and
directories of kept VMs and kept ``amic run --keep`` machines that stopped.

The VM layer (:mod:`amic.targets.local.disk`) follows its image: kept while the image is
kept, removed with it. Nothing a running shell, run, export or VM uses is removed
(``IN_USE`` entries say what stayed); ``rmi --force`` removes it anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import attrs

from amic.contract import (KIND_BASE, KIND_FINAL, TAG_AMIFILE, TAG_KIND, TAG_NAME, TAG_PROJECT,
                           TAG_SERVICE, TAG_SOURCE)
from amic.errors import BuildError, UsageError
from amic.fsutil import LockBusy, file_lock
from amic.targets.local import vmdisks
from amic.targets.local.store import IN_USE, SHORT, ImageStore, human, tree_size

VM_SERVICE = "vm-kernel"
"""``amic.targets.local.disk.VM_SERVICE`` (not imported: that module pulls in the disk tools)."""


@attrs.frozen
class Removal:
    """What a prune or rmi removed (would remove, in a dry run)."""

    removed: tuple[str, ...]
    """One line per thing removed, ``IN_USE``-prefixed for what stayed because it is used."""
    freed: int
    """Bytes given back (``du`` of what went)."""


@attrs.define
class Tally:
    store: ImageStore
    dry_run: bool
    removed: list[str] = attrs.Factory(list)
    freed: list[int] = attrs.Factory(list)

    def went(self, what: str, size: int) -> None:
        self.removed.append(f"{what} ({human(size)})")
        self.freed.append(size)

    def busy(self, what: str, by: str = "a running shell, run or export") -> None:
        self.removed.append(f"{IN_USE}{what}: in use by {by}")

    def tree(self, path: Path, what: str) -> None:
        """Remove the directory ``path`` (counted first)."""
        self.went(what, tree_size(path))
        if not self.dry_run:
            shutil.rmtree(path, ignore_errors=True)

    def result(self) -> Removal:
        return Removal(tuple(self.removed), sum(self.freed))


def is_vm_layer(meta: dict) -> bool:
    return meta["tags"].get(TAG_SERVICE) == VM_SERVICE and meta["tags"].get(TAG_KIND) != KIND_FINAL


def image_bytes(store: ImageStore, image_id: str) -> int:
    """Bytes removing the image frees: its directory (not a base's debootstrap root, which
    stays) and its key file."""
    size = tree_size(store.image_dir(image_id))
    meta = store.meta(image_id) or {}
    if meta.get("key"):
        keyfile = store.keys_dir / meta["key"]
        with contextlib.suppress(OSError):
            if keyfile.read_text().strip() == meta["id"]:
                size += os.lstat(keyfile).st_blocks * 512
    return size


def vm_busy(store: ImageStore, metas: dict[str, dict]) -> dict[str, str]:
    """Image id -> the running VM using it (its VM layer's cached disk, and all below)."""
    users = vmdisks.disk_users(store)
    busy: dict[str, str] = {}
    for image_id, meta in metas.items():
        if is_vm_layer(meta):
            dirs = users.get(vmdisks.disk_path(store, image_id), [])
            if dirs:
                for below in store.chain_ids(image_id):
                    what = "a dev VM" if dirs[0].parent.name == "vms" else "a running VM"
                    busy.setdefault(below, f"{what} ({dirs[0]})")
    return busy


def remove_image(store: ImageStore, tally: Tally, image_id: str, kind: str, *,
                 force: bool = False) -> bool:
    """Remove one image (``store.lock`` held) unless it is in use (``force``: anyway)."""
    size = image_bytes(store, image_id)
    if force:
        if not tally.dry_run:
            store.remove_locked(image_id)
            store.use_lock_path(image_id).unlink(missing_ok=True)
    elif not store.remove_unused(image_id, dry_run=tally.dry_run):
        tally.busy(f"{kind} {image_id[:SHORT]}")
        return False
    tally.went(f"{kind} {image_id[:SHORT]}", size)
    return True


def remove_disk(store: ImageStore, tally: Tally, disk: Path) -> None:
    """Remove a cached VM disk unless it is being written (its lock is held)."""
    try:
        with file_lock(disk.with_suffix(".lock"), wait=False):
            size = os.lstat(disk).st_blocks * 512
            if not tally.dry_run:
                disk.unlink(missing_ok=True)
                disk.with_suffix(".lock").unlink(missing_ok=True)
    except LockBusy:
        tally.busy(f"VM disk {disk.name}", "amic run --vm writing it")
        return
    except FileNotFoundError:
        return
    tally.went(f"VM disk {disk.relative_to(store.root)}", size)


def stopped_vms(store: ImageStore, tally: Tally) -> None:
    """Directories of kept VMs whose QEMU is gone, and of stopped ``run --keep`` machines
    (each holds an ``flock`` on its directory while it runs, as scratch directories do)."""
    for workdir in vmdisks.dead_runs(store):
        tally.tree(workdir, f"stopped VM {workdir.relative_to(store.root)}")
    kept = store.root / "kept"
    for entry in sorted(kept.iterdir()) if kept.is_dir() else ():
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue                    # running: not prune's to report
        else:
            tally.tree(entry, f"stopped machine {entry.relative_to(store.root)}")
        finally:
            os.close(fd)


def prune(store: ImageStore, *, keep: int = 1, everything: bool = False, dry_run: bool = False,
          project: str | None = None, force: bool = False,
          legacy_name: str | None = None) -> Removal:
    """Remove leftovers of dead builds and images no kept image needs; return what went.

    Kept: the ``keep`` newest final images per project (``amic:project``), every image below
    them (their layer checkpoints and base) and above them (their VM layer, and its cached
    disk). ``everything`` removes all images (bases' debootstrap roots stay in
    ``cache_dir()/bases``) and the previous EC2 disks of ``--bake local``. With ``project`` only that project's images go (``everything``:
    all of them that no other project's image sits on). Images without ``amic:project``
    (built before it, or without an identity) are never removed unless ``force``: then they
    are grouped by ``amic:name`` (older ones: ``amic:source``), and with ``project`` those
    named ``legacy_name`` are that project's.
    """
    if keep < 0:
        raise UsageError(f"--keep {keep}: keep 0 or more final images per project")
    tally = Tally(store, dry_run)
    with store.exclusive_builds():
        if store.machines_dir.is_dir():
            for m in sorted(store.machines_dir.iterdir()):
                tally.tree(m, f"machine {m.name}")
        with store.lock("store.lock"):
            store.sweep_tmp(tally.removed, tally.freed, dry_run=dry_run)
            stopped_vms(store, tally)
            metas = sweep(store, tally)
            select = Selection(project=project, force=force, legacy_name=legacy_name)
            keep_ids = kept_ids(metas, select.group,
                                lambda group: select.keep(group, keep, everything))
            busy = vm_busy(store, metas)
            gone: set[str] = set()
            for image_id, meta in metas.items():
                kind = meta["tags"].get(TAG_KIND, "?")
                if is_vm_layer(meta) or image_id in keep_ids:
                    continue        # a VM layer follows its image (below)
                if (kind == KIND_BASE and not everything) or not select.candidate(meta["tags"]):
                    continue
                if image_id in busy:
                    tally.busy(f"{kind} {image_id[:SHORT]}", busy[image_id])
                elif remove_image(store, tally, image_id, kind):
                    gone.add(image_id)
            for image_id, meta in metas.items():
                parent = meta.get("parent")
                if is_vm_layer(meta) and (parent not in metas or parent in gone):
                    if image_id in busy:
                        tally.busy(f"VM layer {image_id[:SHORT]}", busy[image_id])
                    elif remove_image(store, tally, image_id, "VM layer"):
                        gone.add(image_id)
            left = {i[:SHORT] for i in metas if i not in gone}
            for disk in vmdisks.cached_disks(store):
                if disk.name[:SHORT] not in left:
                    remove_disk(store, tally, disk)
            stale_keys(store, tally)
            if everything:
                previous_ec2_disks(store, tally, select)
    return tally.result()


def previous_ec2_disks(store: ImageStore, tally: Tally, select: Selection) -> None:
    """``--all``: the previous EC2 disks ``--bake local`` keeps per project (the next bake
    then writes its disk afresh; the upload stays incremental, by the block manifest)."""
    if select.project is None:
        dirs = vmdisks.ec2_disk_dirs(store)
    else:
        names = [select.project] + ([select.legacy_name] if select.force and select.legacy_name
                                     else [])
        dirs = [d for d in (vmdisks.ec2_disk_dir(store, n) for n in names) if d.is_dir()]
    for d in dirs:
        tally.tree(d, f"previous EC2 disk {d.name[:SHORT]}")


def stale_keys(store: ImageStore, tally: Tally) -> None:
    """Key files that name no image any more (removed with their image, or left by a crash)."""
    for keyfile in sorted(store.keys_dir.iterdir()) if store.keys_dir.is_dir() else ():
        with contextlib.suppress(OSError):
            if store.meta(keyfile.read_text().strip()) is None:
                size = os.lstat(keyfile).st_blocks * 512
                if not tally.dry_run:
                    keyfile.unlink()
                if size:
                    tally.freed.append(size)


def sweep(store: ImageStore, tally: Tally) -> dict[str, dict]:
    """Remove temporary and broken image directories (counted in ``tally``); return the
    metadata of every sound image by id."""
    metas = {}
    for entry in sorted(store.images_dir.iterdir()) if store.images_dir.is_dir() else ():
        meta = None if entry.name.startswith(".") else store.meta(entry.name)
        if meta is None:
            tally.tree(entry, f"{'temporary' if entry.name.startswith('.') else 'broken'} "
                       f"{entry.name}")
            continue
        metas[meta["id"]] = meta
    return metas


# -- amic rmi ------------------------------------------------------------------------------

def users(store: ImageStore, image_id: str, metas: dict[str, dict]) -> list[str]:
    """What uses the image now: a shell, run, export or kept machine (its use-lock), a
    build's machine, a running VM booted from its VM layer."""
    found = []
    path = store.use_lock_path(image_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with file_lock(path, wait=False):
            pass
    except LockBusy:
        found.append("a running shell, run, export or kept machine")
    upper = str(store.image_dir(image_id) / "upper")
    for machine in sorted(store.machines_dir.iterdir()) if store.machines_dir.is_dir() else ():
        with contextlib.suppress(OSError, ValueError):
            if upper in (machine / "machine.json").read_text():
                found.append(f"the build machine {machine.name}")
    busy = vm_busy(store, metas)
    for vm_layer in [i for i, m in metas.items() if m.get("parent") == image_id and is_vm_layer(m)]:
        if vm_layer in busy:
            found.append(busy[vm_layer])
    return found


def remove(store: ImageStore, image_id: str, *, force: bool = False,
           dry_run: bool = False) -> Removal:
    """``amic rmi``: remove one image with its VM layers and their cached disks. Refuses
    (BuildError, as prune during a build) while something uses it unless ``force``, and
    always (UsageError) while other images are built on it (remove those first)."""
    tally = Tally(store, dry_run)
    with store.lock("store.lock"):
        metas = sweep(store, Tally(store, dry_run=True))
        meta = metas.get(image_id)
        if meta is None:
            raise UsageError(f"no local image {image_id[:SHORT]}")
        above = [i for i, m in metas.items() if m.get("parent") == image_id and not is_vm_layer(m)]
        if above:
            raise UsageError(f"image {image_id[:SHORT]} has {len(above)} image(s) built on it "
                             f"({', '.join(i[:SHORT] for i in above[:8])}): remove those first, "
                             "or let `amic prune` decide")
        using = users(store, image_id, metas)
        if using and not force:
            raise BuildError(f"image {image_id[:SHORT]} is in use by {'; '.join(using)}: stop "
                             "that first, or pass --force")
        for vm_layer in [i for i, m in metas.items()
                         if m.get("parent") == image_id and is_vm_layer(m)]:
            remove_image(store, tally, vm_layer, "VM layer", force=True)
            disk = vmdisks.disk_path(store, vm_layer)
            if disk.exists():
                remove_disk(store, tally, disk)
        remove_image(store, tally, image_id, meta["tags"].get(TAG_KIND, "?"), force=True)
    return tally.result()


# -- which images a prune keeps ------------------------------------------------------------

SELECTED = "\0selected"
"""The group of the project a prune is about."""
ALL = 1 << 30
"""``keep`` of a group prune leaves alone."""


@attrs.frozen
class Selection:
    """Which images a prune may remove, and how their finals are grouped into projects."""

    project: str | None = None
    """Only this project's images (``amic:project``); None = every project's."""
    force: bool = False
    """Images without ``amic:project`` too (grouped by their readable name)."""
    legacy_name: str | None = None
    """With ``project`` and ``force``: the readable name that makes an older image its."""

    def group(self, tags: dict) -> str | None:
        if self.selected(tags):
            return SELECTED
        if TAG_PROJECT in tags:
            return tags[TAG_PROJECT]
        if not self.force:
            return None
        return "legacy\0" + (tags.get(TAG_NAME) or tags.get(TAG_SOURCE)
                              or tags.get(TAG_AMIFILE, ""))

    def selected(self, tags: dict) -> bool:
        if self.project is None:
            return False
        if TAG_PROJECT in tags:
            return tags[TAG_PROJECT] == self.project
        return (self.force and self.legacy_name is not None
                and tags.get(TAG_NAME) == self.legacy_name)

    def candidate(self, tags: dict) -> bool:
        if self.project is not None:
            return self.selected(tags)
        return self.force or TAG_PROJECT in tags or tags.get(TAG_KIND) == KIND_BASE

    def keep(self, group: str | None, keep: int, everything: bool) -> int:
        """How many finals of ``group`` stay (a group prune may not touch: all)."""
        if group is None or (self.project is not None and group != SELECTED):
            return ALL
        return 0 if everything else keep


def kept_ids(metas: dict[str, dict], group_of: Callable[[dict], str | None],
             keep_of: Callable[[str | None], int]) -> set[str]:
    """The ``keep_of(group)`` newest finals of each group and every image below them."""
    finals: dict[str | None, list[dict]] = {}
    for meta in metas.values():
        tags = meta["tags"]
        if tags.get(TAG_KIND) == KIND_FINAL:
            finals.setdefault(group_of(tags), []).append(meta)
    keep_ids: set[str] = set()
    for group, members in finals.items():
        members.sort(key=lambda m: m.get("created") or "", reverse=True)
        for meta in members[:max(keep_of(group), 0)]:
            current = meta["id"]
            while current and current not in keep_ids:
                keep_ids.add(current)
                current = (metas.get(current) or {}).get("parent")
    return keep_ids

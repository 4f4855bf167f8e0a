"""The local target's image store: metadata, cache keys, lookup (:mod:`.refs`) and prune
(:mod:`.prune`).

Layout under ``rootfs.cache_dir()/local`` (``$AMIC_CACHE_DIR``, default
``/var/cache/amic``)::

    images/<id12>/meta.json   id, key, parent id, tags, created (and ``root`` for bases)
    images/<id12>/upper/      the layer: an overlayfs upper directory (diff over its parent)
    keys/<key>                the full id of the image recorded under a cache key
    machines/<build-id>/      a running build: upper/ (its writes) + machine.json
    tmp/<what>-XXXXXXXX/      scratch of a run, shell or export, flock'ed by its owner while it
                              lives (:meth:`ImageStore.scratch`); prune removes unlocked ones
    store.lock                exclusive while an image is committed or pruned
    builds.lock               shared by every running build, exclusive for prune
    locks/<id12>.lock         shared while shell/run/export uses the image; prune skips it
    kept/<id12>-XXXX/         a machine of ``amic run --keep``, flock'ed while it runs
    vm/                       ``amic run --vm``'s cached disks and kept VMs (:mod:`.vmdisks`)

A base image (``FROM debian:12``) is a debootstrap root made once by
:func:`rootfs.ensure_base`; its meta.json names that directory as ``root``.
Every other image is an upper directory over its parent's chain, so an image
costs only what its layer changed.

Writes are atomic: an image directory is complete under a temporary name before it is
renamed into place, and a key file is written last, so a crashed build leaves at worst an
orphan machine directory (``amic prune`` removes those), never a half image under a key.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from amic.contract import KIND_BASE, TAG_BASE, TAG_KIND
from amic.errors import BuildError
from amic.fsutil import LockBusy, file_lock, remove_recorded_staging, write_atomic
from amic.targets.base import Image

IN_USE = "in use: "
"""Prefix of a :meth:`ImageStore.prune` entry for an image kept because it is in use."""

MAX_LOWERS = 80
"""overlayfs takes lowerdir as one mount option (a page); this keeps well under it."""

SHORT = 12
"""Hex digits of an image id that name its directory (and that the user sees)."""


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def image_from_meta(meta: dict) -> Image:
    return Image(id=meta["id"], key=meta.get("key"), tags=meta.get("tags", {}),
                 created=meta.get("created"))


LEGACY_TMP = (".export-", ".oci-", ".disk-", ".run-", ".shell-")
"""Scratch directories amic made in the store's root before ``tmp/`` (swept by prune)."""


def tree_size(path: Path) -> int:
    """Bytes allocated to the directory ``path`` and everything under it, each inode once
    and links not followed: what ``du -sB1`` counts, so what prune says it freed is what
    the disk gets back."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        names = dirnames + filenames if dirpath != os.fspath(path) else ["", *dirnames, *filenames]
        for name in names:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def human(n: float) -> str:
    """``n`` bytes as ``12.3 MB`` (powers of 1000, as ``amic images`` prints sizes)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class ImageStore:
    """The images of one store directory (see the module docstring for the layout)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def machines_dir(self) -> Path:
        return self.root / "machines"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def ensure_dirs(self) -> None:
        for d in (self.images_dir, self.keys_dir, self.machines_dir):
            d.mkdir(parents=True, exist_ok=True)

    def image_dir(self, image_id: str) -> Path:
        return self.images_dir / image_id[:SHORT]

    def lock(self, name: str, *, shared: bool = False):
        self.root.mkdir(parents=True, exist_ok=True)
        return file_lock(self.root / name, shared=shared)

    def meta(self, image_id: str) -> dict | None:
        try:
            with open(self.image_dir(image_id) / "meta.json") as fh:
                meta = json.load(fh)
        except (OSError, ValueError):
            return None
        return meta if meta.get("id", "").startswith(image_id) else None

    # -- adding images -----------------------------------------------------------

    def commit(self, meta: dict, upper: Path | None) -> Image:
        """Move ``upper`` (may be None for bases) and ``meta`` into the store under a new id."""
        body = json.dumps(meta, sort_keys=True)
        meta = {"id": hashlib.sha256(body.encode()).hexdigest(), **meta}
        self.ensure_dirs()
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=self.images_dir))
        try:
            if upper is not None:
                os.rename(upper, tmp / "upper")
            write_atomic(tmp / "meta.json", json.dumps(meta, indent=1, sort_keys=True))
            with self.lock("store.lock"):
                os.rename(tmp, self.image_dir(meta["id"]))
                if meta.get("key"):
                    write_atomic(self.keys_dir / meta["key"], meta["id"] + "\n")
        except BaseException:
            if upper is not None and (tmp / "upper").exists() and not upper.exists():
                os.rename(tmp / "upper", upper)  # give the machine its layer back
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return image_from_meta(meta)

    def record_base(self, ref: str, root: Path) -> Image:
        """The base image for the debootstrap ``root`` of ``ref``, recorded once."""
        stamp = root / ".amic-base-complete"
        # The base's identity changes when it is re-bootstrapped, which
        # changes every key above it.
        meta = {"key": None, "parent": None, "root": str(root), "created": None,
                "tags": {TAG_KIND: KIND_BASE, TAG_BASE: ref,
                         "amic:stamp": str(stamp.stat().st_mtime_ns)}}
        base_id = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
        existing = self.meta(base_id)
        if existing is not None:
            return image_from_meta(existing)
        meta["created"] = now()
        self.ensure_dirs()
        with self.lock("store.lock"):
            final = self.image_dir(base_id)
            if not final.exists():
                tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=self.images_dir))
                write_atomic(tmp / "meta.json", json.dumps({"id": base_id, **meta}, indent=1,
                                                            sort_keys=True))
                os.rename(tmp, final)
        return image_from_meta(self.meta(base_id))

    # -- reading -------------------------------------------------------------------

    def lowers(self, image_id: str) -> list[Path]:
        """The overlay lower chain of an image, top-most first."""
        chain: list[Path] = []
        current: str | None = image_id
        while current:
            meta = self.meta(current)
            if meta is None:
                raise BuildError(f"local image {current[:SHORT]} is missing from {self.images_dir}")
            if meta.get("root"):
                chain.append(Path(meta["root"]))
                break
            chain.append(self.image_dir(meta["id"]) / "upper")
            current = meta.get("parent")
        if len(chain) > MAX_LOWERS:
            raise BuildError(f"image {image_id[:SHORT]} has {len(chain)} layers, more than overlayfs "
                             f"takes ({MAX_LOWERS}); build with --checkpoint=last or none")
        return chain

    def find(self, key: str) -> Image | None:
        # Plain string paths here and in images(): a dry run asks once per layer, and
        # pathlib's joins cost more than the lookups themselves.
        try:
            with open(os.path.join(self.root, "keys", key)) as fh:
                image_id = fh.read().strip()
        except OSError:
            return None
        meta = self.meta(image_id)
        return image_from_meta(meta) if meta else None

    def key_names(self) -> frozenset[str] | None:
        """Every cache key the store holds an image for (None: the list cannot be read)."""
        try:
            return frozenset(os.listdir(os.path.join(self.root, "keys")))
        except FileNotFoundError:
            return frozenset()
        except OSError:
            return None

    def images(self) -> Iterator[Image]:
        if not os.path.isdir(os.path.join(self.root, "images")):
            return
        for entry in sorted(self.images_dir.iterdir()):
            if entry.name.startswith("."):
                continue
            meta = self.meta(entry.name)
            if meta is not None:
                yield image_from_meta(meta)

    def lookup(self, ref: str, project=None) -> Image:
        """The image ``ref`` names (:func:`amic.targets.local.refs.resolve`: ``latest`` is
        ``project``'s newest, ``NAME:latest``, ``NAME@ID``, an id prefix or a cache key)."""
        from amic.targets.local import refs

        return refs.resolve(list(self.images()), ref, project=project, find_key=self.find)

    def size(self, image_id: str) -> int:
        """Bytes the image's own layer takes; for a base, its debootstrap root (kept under
        ``cache_dir()/bases`` and shared by every store there, not under ``images/``)."""
        meta = self.meta(image_id) or {}
        if meta.get("root"):
            return tree_size(Path(meta["root"]))
        return tree_size(self.image_dir(image_id) / "upper")

    # -- scratch directories: found by prune after a kill -9, never while in use ---------

    @contextlib.contextmanager
    def scratch(self, prefix: str) -> Iterator[Path]:
        """A temporary directory ``tmp/<prefix>XXXXXXXX`` for the block, removed after it.

        Its owner holds an ``flock`` on the directory itself, taken under ``store.lock``
        (which prune holds while it sweeps ``tmp/``), so prune never sees a live one
        unlocked; the kernel drops the lock of an owner killed with ``kill -9``, and the
        next prune removes what it left (:meth:`sweep_tmp`).
        """
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        with self.lock("store.lock"):
            path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp_dir))
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            os.close(fd)

    def sweep_tmp(self, removed: list[str], freed: list[int], *, dry_run: bool) -> None:
        """Remove the scratch directories no live owner holds (``store.lock`` held), the
        staging directories beside outputs their owners noted in them, and the scratch
        directories older versions left in the store's root (``.export-*``, ``.oci-*``)."""
        entries = sorted(self.tmp_dir.iterdir()) if self.tmp_dir.is_dir() else []
        entries += sorted(p for p in self.root.glob(".*-*") if p.name.startswith(LEGACY_TMP))
        for entry in entries:
            try:
                fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:       # not a directory (nothing amic makes there): left alone
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                removed.append(f"{IN_USE}temporary {entry.relative_to(self.root)}")
                os.close(fd)
                continue
            try:        # and the staging directory of an output it was writing, if any
                size = tree_size(entry) + remove_recorded_staging(entry, dry_run=dry_run)
                removed.append(f"temporary {entry.relative_to(self.root)} ({human(size)})")
                freed.append(size)
                if not dry_run:
                    shutil.rmtree(entry, ignore_errors=True)
            finally:
                os.close(fd)

    # -- removing ------------------------------------------------------------------

    def remove(self, image_id: str) -> None:
        with self.lock("store.lock"):
            self.remove_locked(image_id)

    # -- use locks: prune never removes an image a shell, run or export is using ---------

    def use_lock_path(self, image_id: str) -> Path:
        return self.root / "locks" / f"{image_id[:SHORT]}.lock"

    @contextlib.contextmanager
    def use(self, image_id: str) -> Iterator[list[Path]]:
        """Hold a shared use-lock on the image and every image below it; yield its lowers.

        Taken by ``amic shell``, ``run`` and ``export`` (builds hold ``builds.lock``);
        :meth:`remove_unused` (prune) skips an image while any holder is left. The chain
        is read again once the locks are held, so an image pruned meanwhile is an error.
        """
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            for current in self.chain_ids(image_id):
                stack.enter_context(file_lock(self.use_lock_path(current), shared=True))
            yield self.lowers(image_id)

    def chain_ids(self, image_id: str) -> list[str]:
        """The image and every image below it, top-most first (as far as metadata goes)."""
        ids: list[str] = []
        current: str | None = image_id
        while current:
            ids.append(current)
            meta = self.meta(current) or {}
            current = None if meta.get("root") else meta.get("parent")
        return ids

    def remove_unused(self, image_id: str, *, dry_run: bool = False) -> bool:
        """Remove an image (``store.lock`` held) unless it is in use; False if it is."""
        path = self.use_lock_path(image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with file_lock(path, wait=False):
                if not dry_run:
                    self.remove_locked(image_id)
                    # Unlinked while held and after the image went: a later user that
                    # makes a new lock file finds the image gone, not half removed.
                    path.unlink(missing_ok=True)
        except LockBusy:
            return False
        return True

    def remove_locked(self, image_id: str) -> None:
        """Remove an image while ``store.lock`` is held: its key first, then its directory."""
        meta = self.meta(image_id)
        if meta and meta.get("key"):
            keyfile = self.keys_dir / meta["key"]
            with contextlib.suppress(OSError):
                if keyfile.read_text().strip() == meta["id"]:
                    keyfile.unlink()
        d = self.image_dir(image_id)
        if d.exists():
            trash = self.images_dir / f".trash-{d.name}-{uuid.uuid4().hex[:8]}"
            os.rename(d, trash)  # gone from the store at once; deleting may take a while
            shutil.rmtree(trash, ignore_errors=True)

    @contextlib.contextmanager
    def exclusive_builds(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            with file_lock(self.root / "builds.lock", wait=False):
                yield
        except LockBusy:
            raise BuildError("a build is running on the local target; prune after it ends") \
                from None

"""The ``local`` target: images are root filesystems on this machine.

The images live in an :class:`~amic.targets.local.store.ImageStore` (layout
and atomicity there). A machine is a fresh empty upper directory over an
image's chain; commands run in it with :func:`rootfs.run_in_root` (overlay +
chroot in a private mount and PID namespace, nothing mounted on the host,
everything killed with amic), and a snapshot is a ``rename(2)`` of the
machine's upper directory into the store (no copying). ``amic run``,
``shell`` and ``export`` are in :mod:`amic.targets.local.boot`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import attrs

from amic.contract import KIND_BASE, TAG_BASE, TAG_KIND
from amic.errors import BuildError, UsageError
from amic.fsutil import LockBusy, file_lock, write_atomic
from amic.targets.base import Image, Machine, Target
from amic.targets.local import boot as booting
from amic.targets.local import rootfs
from amic.targets.local.store import ImageStore, image_from_meta, now


@attrs.define
class LocalMachine(Machine):
    """A writable upper directory over an image's lower chain."""

    target: LocalTarget
    dir: Path
    lowers: list[Path]
    """Top-most first, ending with the base root."""
    image_id: str

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    takes_stdin = True
    """``run(stdin_path=...)`` works: the engine pipes the stage2 in instead of copying it."""

    def run(self, command: str, *, env: Mapping[str, str] | None = None,
            on_output=None, timeout: float | None = None, stdin_path: Path | None = None) -> int:
        return rootfs.run_in_root(self.lowers, self.upper, command, env=env,
                                  on_output=on_output, timeout=timeout, stdin_path=stdin_path)

    def put(self, local: Path, remote: str, *, mode: int = 0o600) -> None:
        q = shlex.quote(remote)
        command = (f"mkdir -p \"$(dirname {q})\" && cat > {q}.amic-part && chmod {mode:o} {q}.amic-part"
                   f" && mv -f {q}.amic-part {q}")
        out: list[str] = []
        rc = rootfs.run_in_root(self.lowers, self.upper, command, on_output=out.append,
                                stdin_path=local)
        if rc != 0:
            raise BuildError(f"could not copy {local} to {remote} (exit {rc}): {' '.join(out[-5:])}")

    def describe(self) -> str:
        return f"amic shell {self.dir}    (remove it afterwards: rm -rf {self.dir})"

    def save(self) -> None:
        write_atomic(self.dir / "machine.json", json.dumps({
            "pid": os.getpid(), "image": self.image_id,
            "lowers": [str(p) for p in self.lowers]}, indent=1))


def default_store() -> ImageStore:
    """The local store when none is named: ``local/`` under the cache directory."""
    return ImageStore(rootfs.cache_dir() / "local")


class LocalTarget(Target):
    name = "local"
    default_checkpoint = "all"
    snapshot_seconds = 0.05
    fast_rebuild = True

    def __init__(self, spec: str = "", *, store: Path | None = None) -> None:
        if spec:
            raise UsageError(f"the local target takes no argument (got {spec!r})")
        self.store = ImageStore(store) if store else default_store()
        self.superseded: list[Image] = []
        """Images a snapshot replaced under their key (``--no-cache``): see remove_superseded."""
        self._keys: frozenset[str] | None = None
        """The store's cache keys as :meth:`plan_lookups` listed them (None: look each up)."""

    def build_lock(self):
        return self.store.lock("builds.lock", shared=True)

    @contextlib.contextmanager
    def lease(self, key: str, *, build_id: str = "?") -> Iterator[str]:
        """A file lock per key (``<store>/leases/<key[:32]>.lock``): a second build of the same
        key waits here, then finds the image; the kernel lets go of a dead build's lock."""
        self._keys = None   # from now on every look-up is fresh: the holder may have made it
        path = self.store.root / "leases" / f"{key[:32]}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(file_lock(path, wait=False))
            except LockBusy:
                self.log(f"waiting for another build (lease {path})")
                held.enter_context(file_lock(path))
            yield str(path)

    def lowers(self, image_id: str) -> list[Path]:
        """The overlay lower chain of an image, top-most first."""
        return self.store.lowers(image_id)

    # -- Target ----------------------------------------------------------

    def resolve_base(self, base_ref: str | None) -> Image:
        rootfs.require_layerable(self.store.root)    # before a debootstrap that would be in vain
        ref = base_ref or rootfs.DEFAULT_BASE
        return self.store.record_base(ref, rootfs.ensure_base(ref, log=self.log))

    def peek_base(self, base_ref: str | None) -> Image | None:
        """The base ``resolve_base`` would give, if it is bootstrapped (else None); nothing is
        written. A base not recorded in this store yet gets the id ``record_base`` would give
        it (the same digest of the same fields)."""
        ref = base_ref or rootfs.DEFAULT_BASE
        suite = rootfs.DEBIAN_SUITES.get(ref)
        if suite is None:
            return self.resolve_base(ref)     # refuses the name before it makes anything
        root = rootfs.cache_dir() / "bases" / f"{suite}-minbase"
        try:
            stamp = str((root / ".amic-base-complete").stat().st_mtime_ns)
        except OSError:
            return None
        meta = {"key": None, "parent": None, "root": str(root), "created": None,
                "tags": {TAG_KIND: KIND_BASE, TAG_BASE: ref, "amic:stamp": stamp}}
        base_id = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
        recorded = self.store.meta(base_id)
        return image_from_meta(recorded) if recorded else Image(id=base_id, tags=meta["tags"])

    def memo_paths(self, base: Image, image: Image) -> list[str]:
        meta = self.store.meta(base.id) or {}
        paths = [str(self.store.image_dir(image.id) / "meta.json")]
        if image.key:
            paths.append(str(self.store.keys_dir / image.key))
        if meta.get("root"):
            paths.append(str(Path(meta["root"]) / ".amic-base-complete"))
        return paths

    def plan_lookups(self, keys, services, *, project=None) -> None:
        """The store's keys, listed once for the look-ups before the first lease (the
        longest cached prefix, the final image): a large Amifile has a layer per service,
        and an open per key cost a dry run more than its plan. A lease forgets the list."""
        self._keys = self.store.key_names()

    def find_image(self, key: str) -> Image | None:
        if self._keys is not None and key not in self._keys:
            return None
        return self.store.find(key)

    @contextlib.contextmanager
    def launch(self, image: Image, *, build_id: str) -> Iterator[LocalMachine]:
        rootfs.require_layerable(self.store.root)
        self.store.ensure_dirs()
        mdir = self.store.machines_dir / build_id
        mdir.mkdir(parents=True)
        (mdir / "upper").mkdir()
        machine = LocalMachine(target=self, dir=mdir, lowers=self.lowers(image.id),
                               image_id=image.id)
        machine.save()
        try:
            yield machine
        except BaseException as exc:
            # --on-error=abort keeps a failed machine; Ctrl-C always cleans up
            if not (self.keep_on_error and isinstance(exc, Exception)):
                shutil.rmtree(mdir, ignore_errors=True)
            raise
        shutil.rmtree(mdir, ignore_errors=True)

    def snapshot(self, machine: LocalMachine, *, key: str, final: bool,
                 tags: Mapping[str, str]) -> Image:
        meta = {"key": key, "parent": machine.image_id, "created": now(),
                "tags": dict(tags), "build": machine.dir.name}
        old = self.store.find(key)
        image = self.store.commit(meta, machine.upper)
        if old is not None and old.id != image.id:
            self.superseded.append(old)
        machine.upper.mkdir()
        machine.lowers.insert(0, self.store.image_dir(image.id) / "upper")
        machine.image_id = image.id
        machine.save()
        return image

    def list_images(self) -> Iterator[Image]:
        return self.store.images()

    def parent_of(self, image: Image) -> str | None:
        return (self.store.meta(image.id) or {}).get("parent")

    def remove_image(self, image: Image) -> None:
        self.store.remove(image.id)

    def remove_superseded(self) -> list[str]:
        """The images this target's snapshots replaced under their keys go, top-most first,
        each one no other image sits on and nothing uses, and only while no build runs (a
        running build's machine may have one as a lower); what stays, ``amic prune`` takes
        (no key names it any more)."""
        old, self.superseded = self.superseded, []
        removed: list[str] = []
        try:
            with self.store.exclusive_builds(), self.store.lock("store.lock"):
                for image in reversed(old):
                    parents = {(self.store.meta(other.id) or {}).get("parent")
                               for other in self.store.images()}
                    if image.id not in parents and self.store.remove_unused(image.id):
                        removed.append(image.id[:12])
        except BuildError:      # another build is running
            pass
        if not old:
            return []
        return [f"--no-cache replaced {len(old)} image(s) under the same keys; removed the old "
                f"ones: {', '.join(removed) or 'none'}"
                + ("" if len(removed) == len(old) else " (the rest: amic prune)")]

    # -- the local target's own commands (amic images / run / export / shell / prune) ------

    def lookup(self, ref: str, project=None) -> Image:
        """The image ``ref`` names; ``latest`` is ``project``'s newest (:mod:`.refs`)."""
        return self.store.lookup(ref, project)

    def image_size(self, image: Image) -> int:
        return self.store.size(image.id)

    def prune(self, *, keep: int = 1, everything: bool = False, dry_run: bool = False) -> list[str]:
        """See :func:`amic.targets.local.prune.prune`."""
        from amic.targets.local import prune

        return list(prune.prune(self.store, keep=keep, everything=everything,
                                dry_run=dry_run).removed)

    def export(self, image: Image, out: Path) -> None:
        booting.export(self.store, image, out)

    def shell(self, what: str, command: str | None = None, project=None) -> int:
        return booting.shell(self.store, what, command, project)

    def run_image(self, image: Image, services=(), *, interactive: bool = False,
                  keep: bool = False, timeout: float = 600.0, on_output=None,
                  log=print) -> booting.RunOutcome:
        """``amic run``: see :func:`amic.targets.local.boot.run`."""
        return booting.run(self.store, image, services, interactive=interactive, keep=keep,
                           timeout=timeout, on_output=on_output, log=log)

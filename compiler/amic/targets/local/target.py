"""The ``local`` target: images are root filesystems on this machine.

Store layout under ``rootfs.cache_dir()/local`` (``$AMIC_CACHE_DIR``, default
``/var/cache/amic``)::

    images/<id12>/meta.json   id, key, parent id, tags, created (and ``root`` for bases)
    images/<id12>/upper/      the layer: an overlayfs upper directory (diff over its parent)
    keys/<key>                the full id of the image recorded under a cache key
    machines/<build-id>/      a running build: upper/ (its writes) + machine.json
    store.lock                exclusive while an image is committed or pruned
    builds.lock               shared by every running build, exclusive for prune

A base image (``FROM debian:12``) is a debootstrap root made once by
:func:`rootfs.ensure_base`; its meta.json names that directory as ``root``.
Every other image is an upper directory over its parent's chain, so an image
costs only what its layer changed, and a snapshot is a ``rename(2)`` of the
machine's upper directory into the store (no copying). A machine is a fresh
empty upper over the image's chain; commands run in it with
:func:`rootfs.run_in_root` (overlay + chroot in a private mount and PID
namespace, nothing mounted on the host, everything killed with amic).
``amic run`` boots an image for real with ``systemd-nspawn -b``.

Writes are atomic: an image directory is complete under a temporary name
before it is renamed into place, and a key file is written last, so a
crashed build leaves at worst an orphan machine directory (``amic prune``
removes those), never a half image under a key.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import attrs

from amic.errors import BuildError, UsageError
from amic.fsutil import LockBusy, file_lock, write_atomic
from amic.targets.local import rootfs
from amic.contract import KIND_BASE, TAG_AMIFILE, TAG_BASE, TAG_KIND, TAG_SOURCE
from amic.targets.base import Image, Target

MAX_LOWERS = 80
"""overlayfs takes lowerdir as one mount option (a page); this keeps well under it."""

SHORT = 12


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


@attrs.define
class LocalMachine:
    """A writable upper directory over an image's lower chain."""

    target: LocalTarget
    dir: Path
    lowers: list[Path]
    """Top-most first, ending with the base root."""
    image_id: str

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    def run(self, command: str, *, env: Mapping[str, str] | None = None,
            on_output=None, timeout: float | None = None) -> int:
        return rootfs.run_in_root(self.lowers, self.upper, command, env=env,
                                  on_output=on_output, timeout=timeout)

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


class LocalTarget(Target):
    name = "local"
    default_checkpoint = "all"
    snapshot_seconds = 0.05
    fast_rebuild = True

    def __init__(self, spec: str = "", *, store: Path | None = None) -> None:
        if spec:
            raise UsageError(f"the local target takes no argument (got {spec!r})")
        self.store = store or rootfs.cache_dir() / "local"

    # -- store layout ---------------------------------------------------

    @property
    def images_dir(self) -> Path:
        return self.store / "images"

    @property
    def keys_dir(self) -> Path:
        return self.store / "keys"

    @property
    def machines_dir(self) -> Path:
        return self.store / "machines"

    def _ensure_dirs(self) -> None:
        for d in (self.images_dir, self.keys_dir, self.machines_dir):
            d.mkdir(parents=True, exist_ok=True)

    def _image_dir(self, image_id: str) -> Path:
        return self.images_dir / image_id[:SHORT]

    def _lock(self, name: str, *, shared: bool = False):
        self.store.mkdir(parents=True, exist_ok=True)
        return file_lock(self.store / name, shared=shared)

    def build_lock(self):
        return self._lock("builds.lock", shared=True)

    def _meta(self, image_id: str) -> dict | None:
        try:
            with open(self._image_dir(image_id) / "meta.json") as fh:
                meta = json.load(fh)
        except (OSError, ValueError):
            return None
        return meta if meta.get("id", "").startswith(image_id) else None

    @staticmethod
    def _image(meta: dict) -> Image:
        return Image(id=meta["id"], key=meta.get("key"), tags=meta.get("tags", {}),
                     created=meta.get("created"))

    def _commit(self, meta: dict, upper: Path | None) -> Image:
        """Move ``upper`` (may be None for bases) and ``meta`` into the store under a new id."""
        body = json.dumps(meta, sort_keys=True)
        meta = {"id": hashlib.sha256(body.encode()).hexdigest(), **meta}
        self._ensure_dirs()
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=self.images_dir))
        try:
            if upper is not None:
                os.rename(upper, tmp / "upper")
            write_atomic(tmp / "meta.json", json.dumps(meta, indent=1, sort_keys=True))
            with self._lock("store.lock"):
                final = self._image_dir(meta["id"])
                os.rename(tmp, final)
                if meta.get("key"):
                    write_atomic(self.keys_dir / meta["key"], meta["id"] + "\n")
        except BaseException:
            if upper is not None and (tmp / "upper").exists() and not upper.exists():
                os.rename(tmp / "upper", upper)  # give the machine its layer back
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self._image(meta)

    def lowers(self, image_id: str) -> list[Path]:
        """The overlay lower chain of an image, top-most first."""
        chain: list[Path] = []
        current: str | None = image_id
        while current:
            meta = self._meta(current)
            if meta is None:
                raise BuildError(f"local image {current[:SHORT]} is missing from {self.images_dir}")
            if meta.get("root"):
                chain.append(Path(meta["root"]))
                break
            chain.append(self._image_dir(meta["id"]) / "upper")
            current = meta.get("parent")
        if len(chain) > MAX_LOWERS:
            raise BuildError(f"image {image_id[:SHORT]} has {len(chain)} layers, more than overlayfs "
                             f"takes ({MAX_LOWERS}); build with --checkpoint=last or none")
        return chain

    # -- Target ----------------------------------------------------------

    def resolve_base(self, base_ref: str | None) -> Image:
        ref = base_ref or rootfs.DEFAULT_BASE
        root = rootfs.ensure_base(ref, log=self.log)
        stamp = root / ".amic-base-complete"
        # The base's identity changes when it is re-bootstrapped, which
        # changes every key above it.
        meta = {"key": None, "parent": None, "root": str(root), "created": None,
                "tags": {TAG_KIND: KIND_BASE, TAG_BASE: ref,
                         "amic:stamp": str(stamp.stat().st_mtime_ns)}}
        base_id = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
        existing = self._meta(base_id)
        if existing is not None:
            return self._image(existing)
        meta["created"] = _now()
        self._ensure_dirs()
        with self._lock("store.lock"):
            final = self._image_dir(base_id)
            if not final.exists():
                tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=self.images_dir))
                write_atomic(tmp / "meta.json", json.dumps({"id": base_id, **meta}, indent=1,
                                                            sort_keys=True))
                os.rename(tmp, final)
        return self._image(self._meta(base_id))

    def memo_paths(self, base: Image, image: Image) -> list[str]:
        meta = self._meta(base.id) or {}
        paths = [str(self._image_dir(image.id) / "meta.json")]
        if image.key:
            paths.append(str(self.keys_dir / image.key))
        if meta.get("root"):
            paths.append(str(Path(meta["root"]) / ".amic-base-complete"))
        return paths

    def find_image(self, key: str) -> Image | None:
        try:
            image_id = (self.keys_dir / key).read_text().strip()
        except OSError:
            return None
        meta = self._meta(image_id)
        return self._image(meta) if meta else None

    @contextlib.contextmanager
    def launch(self, image: Image, *, build_id: str) -> Iterator[LocalMachine]:
        self._ensure_dirs()
        mdir = self.machines_dir / build_id
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
        meta = {"key": key, "parent": machine.image_id, "created": _now(),
                "tags": dict(tags), "build": machine.dir.name}
        image = self._commit(meta, machine.upper)
        machine.upper.mkdir()
        machine.lowers.insert(0, self._image_dir(image.id) / "upper")
        machine.image_id = image.id
        machine.save()
        return image

    def list_images(self) -> Iterator[Image]:
        if not self.images_dir.is_dir():
            return
        for entry in sorted(self.images_dir.iterdir()):
            if entry.name.startswith("."):
                continue
            meta = self._meta(entry.name)
            if meta is not None:
                yield self._image(meta)

    def parent_of(self, image: Image) -> str | None:
        return (self._meta(image.id) or {}).get("parent")

    def remove_image(self, image: Image) -> None:
        with self._lock("store.lock"):
            self._remove_locked(image.id)

    def _remove_locked(self, image_id: str) -> None:
        meta = self._meta(image_id)
        if meta and meta.get("key"):
            keyfile = self.keys_dir / meta["key"]
            with contextlib.suppress(OSError):
                if keyfile.read_text().strip() == meta["id"]:
                    keyfile.unlink()
        d = self._image_dir(image_id)
        if d.exists():
            trash = self.images_dir / f".trash-{d.name}-{uuid.uuid4().hex[:8]}"
            os.rename(d, trash)  # gone from the store at once; deleting may take a while
            shutil.rmtree(trash, ignore_errors=True)

    # -- user-facing helpers (amic images / run / export / shell / prune) -------

    def lookup(self, ref: str) -> Image:
        """An image by id prefix (at least 4 hex), full cache key, or ``latest``."""
        images = list(self.list_images())
        if ref == "latest":
            finals = [i for i in images if i.tags.get(TAG_KIND) == "final"]
            if not finals:
                raise UsageError("no local images yet; run `amic build` first")
            return max(finals, key=lambda i: i.created or "")
        by_key = self.find_image(ref) if len(ref) == 64 else None
        if by_key:
            return by_key
        ref = ref.removeprefix("sha256:")
        matches = [i for i in images if len(ref) >= 4 and i.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise UsageError(f"no local image {ref!r} (see `amic images`)")
        raise UsageError(f"image id {ref!r} is ambiguous ({len(matches)} images)")

    def image_size(self, image: Image) -> int:
        meta = self._meta(image.id) or {}
        if meta.get("root"):
            return 0
        total = 0
        for dirpath, dirnames, filenames in os.walk(self._image_dir(image.id) / "upper"):
            for name in dirnames + filenames:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
        return total

    def export(self, image: Image, out: Path) -> None:
        """Write the image's whole root filesystem to ``out`` as a tarball."""
        with tempfile.TemporaryDirectory(prefix=".export-", dir=self.store) as tmp:
            scratch = Path(tmp)
            argv = rootfs.chroot_argv(self.lowers(image.id), scratch / "upper", scratch / "s",
                                      ["tar", "--one-file-system", "--numeric-owner", "--xattrs",
                                       "-cpf", "-", "-C", "/", "."])
            with open(out, "wb") as fh:
                proc = subprocess.run(argv, stdout=fh, stderr=subprocess.PIPE, text=False,
                                      env=rootfs.CLEAN_ENV, preexec_fn=rootfs.die_with_parent)
            if proc.returncode not in (0, 1):  # 1: a file changed while read (cannot here)
                raise BuildError(f"export failed: {proc.stderr.decode(errors='replace')[-500:]}")

    def shell(self, what: str, command: str | None = None) -> int:
        """Interactive shell in a kept machine directory (``--on-error=abort``) or a throwaway copy of an image."""
        path = Path(what)
        if (path / "machine.json").exists():
            info = json.loads((path / "machine.json").read_text())
            return rootfs.run_in_root([Path(p) for p in info["lowers"]], path / "upper",
                                      command or "exec /bin/bash -l || exec /bin/sh",
                                      interactive=True)
        image = self.lookup(what)
        with tempfile.TemporaryDirectory(prefix=".shell-", dir=self.store) as tmp:
            return rootfs.run_in_root(self.lowers(image.id), Path(tmp) / "upper",
                                      command or "exec /bin/bash -l || exec /bin/sh",
                                      interactive=True)

    def boot(self, image: Image, *, services: list[str], interactive: bool,
             timeout: float, on_output=None, prepare=None) -> tuple[int, str]:
        """Boot ``image`` with ``systemd-nspawn -b`` on a throwaway upper; return (exit, report).

        ``prepare(lowers, upper)`` may write files into the boot's root first
        (extra services requested). Unless ``interactive``, a oneshot unit
        shuts the machine down once the boot hook has finished and writes
        ``amic status`` into the report.
        """
        if shutil.which("systemd-nspawn") is None:
            raise BuildError("systemd-nspawn is not installed (apt-get install systemd-container)")
        self._ensure_dirs()
        with tempfile.TemporaryDirectory(prefix="run-", dir=self.machines_dir) as tmp:
            scratch = Path(tmp)
            upper = scratch / "upper"
            upper.mkdir()
            lowers = self.lowers(image.id)
            if prepare:
                prepare(lowers, upper)
            if not interactive:
                unit = _REPORT_UNIT
                rc = rootfs.run_in_root(
                    lowers, upper,
                    "mkdir -p /etc/systemd/system/multi-user.target.wants && "
                    "cat > /etc/systemd/system/amic-run-report.service && "
                    "ln -sf ../amic-run-report.service "
                    "/etc/systemd/system/multi-user.target.wants/amic-run-report.service",
                    stdin_path=_tmpfile(scratch, unit))
                if rc != 0:
                    raise BuildError("could not install the report unit for `amic run`")
            merged, work = scratch / "merged", scratch / "work"
            merged.mkdir()
            work.mkdir()
            lowerdir = ":".join(str(p) for p in lowers)
            nspawn = ["systemd-nspawn", "--register=no", "--keep-unit", "-q", "-D", str(merged),
                      "--machine", f"amic-{image.id[:SHORT]}", "-b"]
            if not interactive:
                nspawn.insert(-1, "--console=pipe")
            script = ('mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4" '
                      '&& shift 4 && exec "$@"')
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "amic-boot",
                    lowerdir, str(upper), str(work), str(merged), *nspawn]
            if interactive:
                rc = subprocess.run(argv, preexec_fn=rootfs.die_with_parent).returncode
            else:
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, text=True, errors="replace",
                                        preexec_fn=rootfs.die_with_parent)
                timer = threading.Timer(timeout, proc.kill)
                timer.start()
                try:
                    assert proc.stdout is not None
                    for line in proc.stdout:
                        if on_output:
                            on_output(line.rstrip("\n"))
                    rc = proc.wait()
                except BaseException:
                    proc.kill()
                    proc.wait()
                    raise
                finally:
                    timer.cancel()
            report_file = upper / "var/lib/amic-run-report"
            report = report_file.read_text(errors="replace") if report_file.exists() else ""
            return rc, report

    def prune(self, *, keep: int = 1, everything: bool = False, dry_run: bool = False) -> list[str]:
        """Remove leftovers of dead builds and images no kept image needs; return what went.

        Kept: the ``keep`` newest final images per Amifile (``amic:source``) and every image
        below them (their layer checkpoints and base). ``everything`` removes
        all images (bases' debootstrap roots stay in ``cache_dir()/bases``).
        """
        removed: list[str] = []
        with self._try_exclusive_builds():
            if self.machines_dir.is_dir():
                for m in self.machines_dir.iterdir():
                    removed.append(f"machine {m.name}")
                    if not dry_run:
                        shutil.rmtree(m, ignore_errors=True)
            with self._lock("store.lock"):
                metas = {}
                for entry in self.images_dir.iterdir() if self.images_dir.is_dir() else ():
                    if entry.name.startswith("."):
                        removed.append(f"temporary {entry.name}")
                        if not dry_run:
                            shutil.rmtree(entry, ignore_errors=True)
                        continue
                    meta = self._meta(entry.name)
                    if meta is None:
                        removed.append(f"broken {entry.name}")
                        if not dry_run:
                            shutil.rmtree(entry, ignore_errors=True)
                        continue
                    metas[meta["id"]] = meta
                keep_ids: set[str] = set()
                if not everything:
                    finals: dict[str, list[dict]] = {}
                    for meta in metas.values():
                        tags = meta["tags"]
                        if tags.get(TAG_KIND) == "final":
                            project = tags.get(TAG_SOURCE) or tags.get(TAG_AMIFILE, "")
                            finals.setdefault(project, []).append(meta)
                    for group in finals.values():
                        group.sort(key=lambda m: m.get("created") or "", reverse=True)
                        for meta in group[:max(keep, 0)]:
                            current = meta["id"]
                            while current and current not in keep_ids:
                                keep_ids.add(current)
                                current = (metas.get(current) or {}).get("parent")
                for image_id, meta in metas.items():
                    if image_id in keep_ids:
                        continue
                    kind = meta["tags"].get(TAG_KIND, "?")
                    if kind == "base" and not everything:
                        continue
                    removed.append(f"{kind} {image_id[:SHORT]}")
                    if not dry_run:
                        self._remove_locked(image_id)
                if not dry_run and self.keys_dir.is_dir():
                    for keyfile in self.keys_dir.iterdir():
                        with contextlib.suppress(OSError):
                            if self._meta(keyfile.read_text().strip()) is None:
                                keyfile.unlink()
        return removed

    @contextlib.contextmanager
    def _try_exclusive_builds(self) -> Iterator[None]:
        self.store.mkdir(parents=True, exist_ok=True)
        try:
            with file_lock(self.store / "builds.lock", wait=False):
                yield
        except LockBusy:
            raise BuildError("a build is running on the local target; prune after it ends") \
                from None


_REPORT_UNIT = """\
[Unit]
Description=amic run: report status and power off once the boot hook is done
After=amic.service multi-user.target
DefaultDependencies=no

[Service]
Type=oneshot
ExecStart=/bin/sh -c '/var/lib/amic/stage2/amic status > /var/lib/amic-run-report 2>&1; \
echo "exit $?" >> /var/lib/amic-run-report; systemctl poweroff --no-block'

[Install]
WantedBy=multi-user.target
"""


def _tmpfile(directory: Path, text: str) -> Path:
    path = directory / f"in-{uuid.uuid4().hex[:8]}"
    path.write_text(text)
    return path

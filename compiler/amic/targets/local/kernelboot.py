"""A dev VM's first boot without GRUB: QEMU loads the VM layer's kernel and initramfs itself.

Under TCG, GRUB reading the kernel and initramfs through the emulated BIOS's disk calls
takes seconds; QEMU's ``-kernel``/``-initrd`` hands them over through fw_cfg at once. The
files come from the image's layers in the store (the VM layer installed them, but the
user's INIT scripts wrote the layers below and could have planted anything in ``/boot``),
so they are read as hostile: ``/boot`` is resolved through the overlay chain as overlayfs
would (top layer first, whiteouts and opaque directories honoured), no symlink at any
level below a layer's root, a regular file of bounded size, copied into the VM's own
directory (QEMU then opens amic's copy, never a path the image chose). Anything unusual
(an overlay redirect or metacopy, a missing initramfs, a link) is not worked around: the
VM boots from its disk through GRUB, as before, and the reason is said.

No initramfs at all when the kernel can mount the root by itself: its ``modules.builtin``
lists the NVMe driver and ext4 (Debian's cloud kernel: both built in, virtio-blk a
module). The disk is then attached as an NVMe drive and the kernel finds the root by
its partition name; the initramfs (unpacking it, its udev, loading virtio-blk) took
about three seconds of the boot under TCG.

Only a fresh disk boots this way: the disk's ``/lib/modules`` is then the layer's. A
stopped dev VM started again boots its own disk (its kernel may have been upgraded in
it), and the disk keeps GRUB for ``amic export`` and any other machine.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

import attrs

from amic import safeopen
from amic.targets.local.vmfiles import create_fresh

MAX_KERNEL = 128 << 20
MAX_INITRD = 1 << 30
"""Bytes a kernel or an initramfs may have (Debian's cloud kernel: 14 MB and 6 MB)."""
CONSOLE = ("console=ttyS0,115200n8 quiet sysctl.net.ipv6.conf.default.dad_transmits=0 "
           "random.trust_cpu=on")
"""The dev-VM kernel's arguments after the root, as ``scripts/make-root.sh`` writes them
into the disk's grub.cfg for the devvm profile (tests/unit/test_kernelboot.py holds both
equal): the serial console, quiet, no IPv6 duplicate address detection, and the CRNG
seeded from the CPU's RDRAND whatever the kernel's default (make-root.sh)."""
OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")
CHANGES_LOOKUP = ("redirect", "metacopy")
"""overlayfs marks that make a name's content come from elsewhere (a renamed directory, a
file whose data is in a lower layer): refused, not followed. Others (origin, impure)
only keep inode numbers stable."""
FIRST_BOOT = "fsck.mode=skip systemd.mask=amic-growroot.service"
"""Only on a direct boot, which only a fresh overlay of a cached disk gets, of the disk's
own size: its root file system was made by ``mke2fs -d`` to fill its partition and never
mounted read-write, so a check cannot find anything and there is nothing to grow (the
check and ``resize2fs`` took 1.4 and 2.6-5.3 s of the boot under TCG). A dev VM started
again boots its disk through GRUB, and its root is checked and grown as usual."""
BUILTIN = ("kernel/drivers/nvme/host/nvme.ko", "kernel/fs/ext4/ext4.ko")
"""What ``modules.builtin`` must list for a boot without initramfs (from an NVMe drive)."""
MAX_BUILTIN = 4 << 20
KERNEL = re.compile(r"vmlinuz-([A-Za-z0-9][A-Za-z0-9._+~-]{0,200})")


class Unusable(Exception):
    """Why the layers' kernel is not booted directly (the disk's GRUB boots it instead)."""


@attrs.frozen
class DirectBoot:
    """The kernel, initramfs (amic's copies) and command line QEMU boots directly;
    ``initrd`` None: none, the kernel mounts the root itself, from an NVMe drive."""

    kernel: Path
    initrd: Path | None
    append: str

    @property
    def nvme(self) -> bool:
        return self.initrd is None

    def qemu_args(self) -> list[str]:
        initrd = ["-initrd", str(self.initrd)] if self.initrd is not None else []
        return ["-kernel", str(self.kernel), *initrd, "-append", self.append]

    def remove(self) -> None:
        """Remove the copies (QEMU read them when it started; a guest's reboot ends QEMU)."""
        for path in (self.kernel, self.initrd):
            if path is not None:
                path.unlink(missing_ok=True)


def version_key(version: str) -> list:
    """``sort -V``'s order for Debian's kernel versions (6.1.0-9 before 6.1.0-10)."""
    return [int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", version))]


def overlay_marks(fd: int) -> set[str]:
    """The overlayfs marks (``opaque``, ``redirect``...) on the file ``fd``."""
    try:
        names = os.listxattr(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENODATA):
            return set()
        raise
    return {n.split(".overlay.", 1)[1] for n in names if n.startswith(OVERLAY_XATTRS)}


def boot_entries(layer_fds: list[int]) -> dict[str, int]:
    """The union view of ``/boot``: name -> index of the layer its entry comes from."""
    seen: dict[str, int | None] = {}
    for i, lfd in enumerate(layer_fds):
        try:
            bfd = safeopen.open_beneath(lfd, "boot", directory=True)
        except FileNotFoundError:
            continue
        except OSError as exc:      # a link, a whiteout or a file where /boot is
            raise Unusable(f"/boot in a layer: {exc.strerror}") from None
        try:
            marks = overlay_marks(bfd)
            if marks.intersection(CHANGES_LOOKUP):
                raise Unusable(f"/boot in a layer is an overlay {'/'.join(sorted(marks))}")
            with os.scandir(bfd) as entries:
                for entry in entries:
                    if entry.name in seen:
                        continue
                    st = entry.stat(follow_symlinks=False)
                    whiteout = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
                    seen[entry.name] = None if whiteout else i
        finally:
            os.close(bfd)
        if "opaque" in marks:       # the layers below have no say in /boot
            break
    return {name: i for name, i in seen.items() if i is not None}


def copy_out(layer_fd: int, name: str, dest: Path, limit: int) -> None:
    """``/boot/name`` of the layer (a regular file, no link at any level) into ``dest``."""
    try:
        src = safeopen.open_beneath(layer_fd, f"boot/{name}")
    except OSError as exc:
        raise Unusable(f"/boot/{name}: {exc.strerror}") from None
    try:
        if overlay_marks(src).intersection(CHANGES_LOOKUP):
            raise Unusable(f"/boot/{name} is an overlay metacopy or redirect")
        if os.fstat(src).st_size > limit:
            raise Unusable(f"/boot/{name} is over {limit >> 20} MiB")
        dest.unlink(missing_ok=True)
        out = create_fresh(dest)
        try:
            copied = 0
            while chunk := os.read(src, 1 << 20):
                copied += len(chunk)
                if copied > limit:      # it grew while it was read
                    raise Unusable(f"/boot/{name} is over {limit >> 20} MiB")
                os.write(out, chunk)
        finally:
            os.close(out)
    finally:
        os.close(src)


def builtin(layer_fds: list[int], version: str) -> set[str]:
    """The modules built into kernel ``version``: its ``modules.builtin`` in the top layer
    that has it (under /usr/lib: /lib is a link on Debian 12, and no link is followed)."""
    for base in ("usr/lib/modules", "lib/modules"):
        for fd in layer_fds:
            try:
                f = safeopen.open_beneath(fd, f"{base}/{version}/modules.builtin")
            except OSError:
                continue
            try:
                data = safeopen.read_at_most(f, MAX_BUILTIN)
            finally:
                os.close(f)
            return set(data[:MAX_BUILTIN].decode(errors="replace").split())
    return set()


def extract(layers: list[Path], workdir: Path, root_partlabel: str) -> DirectBoot:
    """The newest kernel of the overlay chain ``layers`` (top first) and its initramfs,
    copied into ``workdir``; Unusable (with why) when they cannot be taken safely."""
    fds: list[int] = []
    try:
        for layer in layers:
            fds.append(os.open(layer, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        entries = boot_entries(fds)
        versions = [m.group(1) for n in entries if (m := KERNEL.fullmatch(n))]
        if not versions:
            raise Unusable("no /boot/vmlinuz-* in the image")
        version = max(versions, key=version_key)     # the one make-root.sh's grub.cfg boots
        initrd = f"initrd.img-{version}"
        kernel_copy, initrd_copy = workdir / "vmlinuz", None
        copy_out(fds[entries[f"vmlinuz-{version}"]], f"vmlinuz-{version}", kernel_copy,
                 MAX_KERNEL)
        if not set(BUILTIN) <= builtin(fds, version):
            if initrd not in entries:
                raise Unusable(f"no /boot/{initrd}")
            initrd_copy = workdir / "initrd.img"
            copy_out(fds[entries[initrd]], initrd, initrd_copy, MAX_INITRD)
    except OSError as exc:
        raise Unusable(f"{exc.filename or 'a layer'}: {exc.strerror}") from None
    finally:
        for fd in fds:
            os.close(fd)
    # by the partition's GPT name (make_raw's): the disk's file system UUID is per disk;
    # without initramfs the kernel waits for the drive (probed asynchronously) itself
    root = f"root=PARTLABEL={root_partlabel}" + (" rootfstype=ext4 rootwait"
                                                  if initrd_copy is None else "")
    return DirectBoot(kernel_copy, initrd_copy, f"{root} ro {CONSOLE} {FIRST_BOOT}")

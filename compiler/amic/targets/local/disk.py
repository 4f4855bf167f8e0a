"""``amic export --format raw|qcow2``: a bootable disk of a local image (BIOS and UEFI).

Two steps:

1. **The VM layer** (:func:`vm_layer`): a layer over the image with what a
   root filesystem for nspawn lacks to boot on (virtual) hardware: Debian's
   cloud kernel (virtio, NVMe, ENA), initramfs-tools, GRUB's BIOS and UEFI
   modules, sshd (host keys removed: amic's boot units make them at first
   boot), DHCP on the first NIC with systemd-networkd, a unit that grows the
   root partition and file system to the disk at every boot, and two GRUB
   core images (``/usr/lib/amic-vm/core.img`` for BIOS, ``BOOTX64.EFI`` for
   UEFI) that find the root file system by its label. It is recorded in the
   store under a key made of the image's key and this module's script, so it
   is built once per image, like any other layer.
2. **The disk** (:func:`write_disk`), made without loop devices or mounts on
   the host: a sparse file with a GPT (BIOS boot partition, ESP, root), the
   root ext4 written straight from the overlay with ``mke2fs -d`` at its
   partition's offset, the ESP (FAT) with ``mkfs.fat --offset`` and mtools,
   GRUB's ``boot.img`` patched into the MBR and ``core.img`` into the BIOS
   boot partition (what ``grub-bios-setup`` does). Per-disk files (fstab and
   grub.cfg naming the root's UUID, the developer's authorised key) are
   written into the throwaway upper of that overlay, never into a layer.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import struct
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from amic.contract import KIND_LAYER, TAG_BASE, TAG_KIND, TAG_PARENT_KEY, TAG_SERVICE
from amic.errors import BuildError, UsageError
from amic.fsutil import staged_output
from amic.targets.base import Image, terminal_line
from amic.targets.local import rootfs
from amic.targets.scripts import script

ROOT_LABEL = "amic-root"
VM_SERVICE = "vm-kernel"
"""The service name the VM layer is tagged with (``amic images --all`` shows it)."""
MIB = 1024 * 1024
BIOS_START, BIOS_SIZE = 1 * MIB, 1 * MIB
ESP_START, ESP_SIZE = 2 * MIB, 32 * MIB
ROOT_START = ESP_START + ESP_SIZE
TAIL = 1 * MIB
"""Room after the root partition for the backup GPT."""
"""Root file system size = used * 1.25 + 256 MiB (grown to the disk at first boot)."""

NO_KEY_WARNING = ("no --authorized-key: nobody can log in to this disk over SSH (amic authorises "
                  "no key of its own, and root has no password for the console) unless the image "
                  "itself authorises one; pass --authorized-key ~/.ssh/id_ed25519.pub, or "
                  "--no-authorized-key to say this is meant")
"""``amic export --format raw|qcow2`` without a key: said before the disk is written."""

VM_SCRIPT = script(__package__, "vm-layer.sh")
"""What the VM layer runs (as root, in the image's chroot): the kernel, GRUB, sshd, and the
files it installs (DHCP network, the growroot script and unit, GRUB's early config that
finds the root by ``ROOT_LABEL``). Its text is part of the VM layer's key, so the file has
no header comment: any change to it, a comment included, makes every image's VM layer anew
(tests/unit/test_shipped_scripts.py pins it)."""


def vm_layer_key(image: Image) -> str:
    parent = image.key or image.id
    return hashlib.sha256(f"amic-vm-layer\0{parent}\0{VM_SCRIPT}".encode()).hexdigest()


@contextlib.contextmanager
def vm_layer_in_use(target, image: Image, *, log=None) -> Iterator[Image]:
    """The image plus the VM layer (:func:`vm_layer`), held with the store's use-lock for the
    block. Found or built under the build lock, so ``amic prune`` neither removes the machine
    that builds it nor the new layer before the use-lock holds it."""
    with contextlib.ExitStack() as stack:
        with target.build_lock():
            vm_image = vm_layer(target, image, log=log)
            stack.enter_context(target.store.use(vm_image.id))
        yield vm_image


def made_once(target, key: str, make: Callable[[], Image]) -> Image:
    """The image recorded under ``key``, else ``make()``'s, made under the key's lease.

    The build lock is shared (it only keeps ``amic prune`` out), so two builds may want
    the same VM or EC2 layer at once. Without the lease each made its own, and the
    second build's layers then sat on a parent the first build's did not: its next
    build found "base image changed" and ran every layer again. The second waits here,
    then finds the first's image."""
    found = target.find_image(key)
    if found is not None:
        return found
    with target.lease(key, build_id=f"layer-{key[:12]}"):
        found = target.find_image(key)
        return found if found is not None else make()


def vm_layer(target, image: Image, *, log=None) -> Image:
    """The image plus the VM layer (built once, then found in the store by its key); call it
    under the build lock (:func:`vm_layer_in_use`)."""
    return made_once(target, vm_layer_key(image), lambda: _make_vm_layer(target, image, log))


def _make_vm_layer(target, image: Image, log) -> Image:
    key = vm_layer_key(image)
    if image.tags.get(TAG_BASE, "debian").split(":")[0] not in ("debian", ""):
        raise UsageError(f"--format raw/qcow2 needs a Debian image (base {image.tags[TAG_BASE]!r})")
    if log:
        log("adding the VM layer (kernel, GRUB, sshd); this happens once per image")
    tail: list[str] = []

    def out(line: str) -> None:
        line = terminal_line(line)   # not the engine's router: shown as a terminal would
        tail.append(line)
        del tail[:-30]
        if log:
            log(f"vm-kernel | {line}")

    with target.launch(image, build_id=f"vm-{uuid.uuid4().hex[:12]}") as machine:
        rc = machine.run(VM_SCRIPT, on_output=out)
        if rc != 0:
            raise BuildError(f"the VM layer failed (exit {rc}):\n" + "\n".join(tail))
        tags = {TAG_KIND: KIND_LAYER, TAG_SERVICE: VM_SERVICE,
                TAG_BASE: image.tags.get(TAG_BASE, ""), TAG_PARENT_KEY: image.key or ""}
        return target.snapshot(machine, key=key, final=False, tags=tags)


def partition(disk: Path, root_mib: int) -> None:
    """GPT: 1 BIOS boot (1 MiB at 1 MiB), 2 ESP (32 MiB at 2 MiB), 3 root (the rest)."""
    s = 512
    argv = ["sgdisk", "-Z", "-a", "2048",
            "-n", f"1:{BIOS_START // s}:{(BIOS_START + BIOS_SIZE) // s - 1}", "-t", "1:ef02",
            "-c", "1:bios",
            "-n", f"2:{ESP_START // s}:{(ESP_START + ESP_SIZE) // s - 1}", "-t", "2:ef00",
            "-c", "2:esp",
            "-n", f"3:{ROOT_START // s}:{(ROOT_START + root_mib * MIB) // s - 1}",
            "-t", "3:8304", "-c", f"3:{ROOT_LABEL}", str(disk)]
    run(argv)


def install_bios(disk: Path, boot_img: bytes, core_img: bytes) -> None:
    """What ``grub-bios-setup`` does for a GPT disk with a BIOS boot partition.

    ``boot.img`` goes into the MBR's code area (the protective MBR's partition
    table is kept) and loads the first sector of ``core.img`` from the sector
    written at 0x5c; that sector's block list (its last 12 bytes) says where
    the rest of ``core.img`` is: right after it, with segment 0x820.
    """
    sectors = (len(core_img) + 511) // 512
    if sectors * 512 > BIOS_SIZE:
        raise BuildError(f"GRUB's core.img ({len(core_img)} bytes) does not fit the BIOS boot partition")
    first = BIOS_START // 512
    core = bytearray(core_img.ljust(sectors * 512, b"\0"))
    struct.pack_into("<QHH", core, 500, first + 1, sectors - 1, 0x820)
    with open(disk, "r+b") as fh:
        mbr = bytearray(fh.read(512))
        boot = bytearray(boot_img[:512])
        boot[0x1B8:0x1FE] = mbr[0x1B8:0x1FE]          # disk signature + partition table
        boot[0x3:0x5A] = mbr[0x3:0x5A]                # the (empty) BPB
        struct.pack_into("<Q", boot, 0x5C, first)     # kernel_sector
        boot[0x64] = 0xFF                             # boot drive: the one the BIOS booted
        boot[0x66:0x68] = b"\x90\x90"                 # hard disk: skip the drive check
        fh.seek(0)
        fh.write(boot)
        fh.seek(BIOS_START)
        fh.write(core)


def install_esp(disk: Path, efi: Path) -> None:
    """A FAT ESP at its partition's offset with GRUB at the removable path EFI/BOOT/BOOTX64.EFI."""
    run(["mkfs.fat", "-F", "16", "-n", "AMIC-ESP", "--offset", str(ESP_START // 512),
         str(disk), str(ESP_SIZE // 1024)])
    img = f"{disk}@@{ESP_START}"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    run(["mmd", "-i", img, "::/EFI", "::/EFI/BOOT"], env=env)
    run(["mcopy", "-i", img, str(efi), "::/EFI/BOOT/BOOTX64.EFI"], env=env)


def run(argv: list[str], **kw) -> None:
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if proc.returncode != 0:
        raise BuildError(f"{argv[0]} failed (exit {proc.returncode}): {proc.stdout[-1500:]}")


def check_tools(fmt: str) -> None:
    need = ["sgdisk", "mke2fs", "mkfs.fat", "mmd", "mcopy", "unshare"]
    if fmt == "qcow2":
        need.append("qemu-img")
    missing = [t for t in need if shutil.which(t) is None]
    if missing:
        raise BuildError(f"export --format {fmt} needs {', '.join(missing)} "
                         "(apt-get install gdisk e2fsprogs dosfstools mtools qemu-utils)")


def write_disk(store, vm_image: Image, out: Path, *, fmt: str = "raw",
               authorized_key: Path | None = None, compress: bool = False,
               devvm: bool = False) -> dict:
    """Write a bootable disk of ``vm_image`` (an image with the VM layer, use-locked by the
    caller) to ``out``.

    ``compress`` (qcow2 only): zlib-compressed clusters (``qemu-img convert -c``), which
    every qcow2 reader takes; written clusters are stored uncompressed, as usual. ``devvm``:
    a dev VM's disk (``amic run --vm``, ``amic up``, an export without ``--for``): a quiet
    kernel on the serial console only and the units a dev VM has no use for masked
    (``scripts/make-root.sh``); without it (EC2) the disk boots as the image says. The disk
    is made in a staging file (:func:`amic.fsutil.staged_output`: a private directory
    beside ``out``, nothing opened by a predictable name), the scratch in the store's
    ``tmp/``, so a failed, interrupted or killed export leaves nothing prune cannot find.

    Returns facts about it: the root's UUID, the root size in MiB, used KiB.
    """
    check_tools(fmt)
    if authorized_key is not None and not authorized_key.is_file():
        raise UsageError(f"--authorized-key {authorized_key}: no such file")
    root_uuid = str(uuid.uuid4())
    with store.scratch("disk-") as scratch, \
            staged_output(out, scratch=scratch, mode=0o644) as part:
        for d in ("upper", "work", "merged", "out"):
            (scratch / d).mkdir()
        raw = str(scratch / "disk.raw") if fmt != "raw" else part
        try:
            make_raw(store, vm_image, scratch, raw, root_uuid, authorized_key, devvm=devvm)
            if fmt == "qcow2":
                run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2",
                     *(["-c"] if compress else []), raw, part])
        except BuildError as exc:
            raise BuildError(f"cannot write {out}: {exc}") from None
        o = scratch / "out"
        return {"uuid": root_uuid, "root_mib": int((o / "root-mib").read_text()),
                "used_kib": int((o / "used-kib").read_text())}


def root_script(name: str) -> str:
    """``scripts/<name>`` (make-root.sh, reuse-root.sh) after ``scripts/beneath.sh``: the
    checks with which they write into an image's root from the host's mount namespace, where
    a link in the image would resolve against the host's ``/``."""
    return script(__package__, "beneath.sh") + script(__package__, name)


def make_raw(store, vm_image: Image, scratch: Path, raw: str, root_uuid: str,
             authorized_key: Path | None, *, devvm: bool = False) -> None:
    """The raw disk at ``raw``: root file system, GPT, BIOS and UEFI boot loaders."""
    lowers = ":".join(str(p) for p in store.lowers(vm_image.id))
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            root_script("make-root.sh"), "amic-disk",
            lowers, str(scratch / "upper"), str(scratch / "work"), str(scratch / "merged"),
            raw, root_uuid, str(authorized_key.resolve()) if authorized_key else "",
            str(scratch / "out"), str(ROOT_START // MIB), str(TAIL), "devvm" if devvm else ""]
    run(argv, env=rootfs.CLEAN_ENV)
    o = scratch / "out"
    partition(Path(raw), int((o / "root-mib").read_text()))
    install_bios(Path(raw), (o / "boot.img").read_bytes(), (o / "core.img").read_bytes())
    install_esp(Path(raw), o / "BOOTX64.EFI")

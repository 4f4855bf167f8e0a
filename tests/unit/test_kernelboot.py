"""A fresh dev VM's kernel taken from the image's layers (amic.targets.local.kernelboot).

The layers are real directories as the store keeps them (overlayfs uppers: whiteouts are
0/0 character devices, an opaque directory carries ``trusted.overlay.opaque``), the
``/boot`` the user's INIT scripts could have filled with links. Whatever is refused, the
VM still boots (from its disk, through GRUB); these check that nothing outside the layers
is ever read, and that the kernel command line is the disk's own for a dev VM.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from amic.targets.local import kernelboot, vm
from amic.targets.local.kernelboot import BUILTIN, Unusable, extract
from amic.targets.scripts import script

V = "6.1.0-10-cloud-amd64"


def layer(root: Path, files: dict[str, bytes | str]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    root.mkdir(parents=True, exist_ok=True)
    return root


def builtin(version: str, lines=BUILTIN) -> dict[str, str]:
    return {f"usr/lib/modules/{version}/modules.builtin": "\n".join(lines) + "\n"}


def test_a_kernel_with_nvme_and_ext4_built_in_boots_without_initramfs(tmp_path: Path) -> None:
    top = layer(tmp_path / "vm", {f"boot/vmlinuz-{V}": b"KERNEL", f"boot/initrd.img-{V}": b"RD",
                                  **builtin(V)})
    out = tmp_path / "out"
    out.mkdir()
    got = extract([top], out, "amic-root")
    assert got.initrd is None and got.nvme
    assert got.kernel.read_bytes() == b"KERNEL" and not (out / "initrd.img").exists()
    assert got.append.startswith("root=PARTLABEL=amic-root rootfstype=ext4 rootwait ro ")
    # a fresh overlay of the disk's size: no check, nothing to grow
    assert got.append.endswith(" fsck.mode=skip systemd.mask=amic-growroot.service")
    argv = vm.QemuVm(tmp_path / "d.qcow2", out, kvm=False, direct=got).argv()
    assert "-initrd" not in argv and argv[argv.index("-kernel") + 1] == str(got.kernel)
    assert not any("if=virtio" in a for a in argv)
    assert argv[argv.index("-device", argv.index("-drive")) + 1].startswith("nvme,drive=disk0")
    got.remove()
    assert not got.kernel.exists()


def test_a_modular_kernel_gets_its_initramfs_from_a_lower_layer(tmp_path: Path) -> None:
    # the initramfs from the layer below, the newest kernel (sort -V: 10 after 9) above it
    low = layer(tmp_path / "base", {"boot/vmlinuz-6.1.0-9-cloud-amd64": b"OLD",
                                    f"boot/initrd.img-{V}": b"INITRD"})
    top = layer(tmp_path / "vm", {f"boot/vmlinuz-{V}": b"NEW",
                                  **builtin(V, ["kernel/fs/ext4/ext4.ko"])})
    out = tmp_path / "out"
    out.mkdir()
    got = extract([top, low], out, "amic-root")
    assert got.kernel.read_bytes() == b"NEW" and got.initrd.read_bytes() == b"INITRD"
    assert not got.nvme and "rootwait" not in got.append
    argv = vm.QemuVm(tmp_path / "d.qcow2", out, kvm=False, direct=got).argv()
    assert argv[argv.index("-initrd") + 1] == str(got.initrd)
    assert any(a.endswith(",if=virtio") for a in argv)


def test_no_initramfs_for_a_modular_kernel_is_refused(tmp_path: Path) -> None:
    top = layer(tmp_path / "vm", {f"boot/vmlinuz-{V}": b"K"})
    with pytest.raises(Unusable, match="initrd.img"):
        extract([top], tmp_path, "amic-root")


@pytest.mark.parametrize("where", ["kernel", "initrd", "boot", "usr"])
def test_links_planted_in_the_image_are_never_followed(tmp_path: Path, where: str) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("SECRET")
    files = {f"boot/vmlinuz-{V}": b"K", f"boot/initrd.img-{V}": b"R"}
    if where == "usr":      # modules.builtin through a linked /usr: taken as not built in
        files = {**files, **builtin(V)}
    top = layer(tmp_path / "vm", files)
    if where == "kernel":
        (top / "boot" / f"vmlinuz-{V}").unlink()
        (top / "boot" / f"vmlinuz-{V}").symlink_to(secret)
    elif where == "initrd":
        (top / "boot" / f"initrd.img-{V}").unlink()
        (top / "boot" / f"initrd.img-{V}").symlink_to(secret)
    elif where == "boot":
        real = tmp_path / "elsewhere"
        (top / "boot").rename(real)
        (top / "boot").symlink_to(real)
    else:
        (tmp_path / "usr-elsewhere").mkdir()
        (top / "usr").rename(tmp_path / "usr-elsewhere" / "usr")
        (top / "usr").symlink_to(tmp_path / "usr-elsewhere" / "usr")
    out = tmp_path / "out"
    out.mkdir()
    if where == "usr":
        got = extract([top], out, "amic-root")
        assert got.initrd is not None and got.initrd.read_bytes() == b"R"
        return
    with pytest.raises(Unusable):
        extract([top], out, "amic-root")
    assert all(b"SECRET" not in p.read_bytes() for p in out.iterdir())


def test_a_whiteout_or_an_opaque_boot_hides_the_layers_below(tmp_path: Path) -> None:
    low = layer(tmp_path / "base", {"boot/vmlinuz-9.9.9": b"HIDDEN",
                                    "boot/initrd.img-9.9.9": b"HIDDEN", f"boot/vmlinuz-{V}": b"K",
                                    f"boot/initrd.img-{V}": b"R"})
    top = layer(tmp_path / "vm", {"etc/x": ""})
    (top / "boot").mkdir()
    os.mknod(top / "boot" / "vmlinuz-9.9.9", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    out = tmp_path / "out"
    out.mkdir()
    assert extract([top, low], out, "amic-root").kernel.read_bytes() == b"K"
    os.setxattr(top / "boot", "trusted.overlay.opaque", b"y")
    with pytest.raises(Unusable, match="no /boot/vmlinuz"):
        extract([top, low], out, "amic-root")


def test_an_overlay_redirect_or_a_special_file_is_refused(tmp_path: Path) -> None:
    top = layer(tmp_path / "vm", {f"boot/initrd.img-{V}": b"R"})
    os.mkfifo(top / "boot" / f"vmlinuz-{V}")      # never opened: no wait on a FIFO
    with pytest.raises(Unusable):
        extract([top], tmp_path, "amic-root")
    (top / "boot" / f"vmlinuz-{V}").unlink()
    (top / "boot" / f"vmlinuz-{V}").write_bytes(b"K")
    os.setxattr(top / "boot" / f"vmlinuz-{V}", "trusted.overlay.metacopy", b"")
    with pytest.raises(Unusable, match="metacopy"):
        extract([top], tmp_path, "amic-root")


def test_a_kernel_over_the_size_bound_is_refused(tmp_path: Path) -> None:
    top = layer(tmp_path / "vm", {f"boot/initrd.img-{V}": b"R"})
    with open(top / "boot" / f"vmlinuz-{V}", "wb") as fh:     # sparse: no disk used
        fh.truncate(kernelboot.MAX_KERNEL + 1)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(Unusable, match="over 128 MiB"):
        extract([top], out, "amic-root")


def test_the_direct_boot_command_line_is_the_dev_vm_disks_own() -> None:
    # make-root.sh's grub.cfg for a dev VM and a direct boot: one kernel command line
    text = script("amic.targets.local", "make-root.sh")
    devvm = text[text.index('if [ "$profile" = devvm ]'):]
    console = re.search(r'console="([^"]*)"', devvm).group(1)
    assert console == kernelboot.CONSOLE

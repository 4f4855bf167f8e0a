"""A disk's own files are written into the image's root through no link the image holds.

make-root.sh and reuse-root.sh run in the host's mount namespace (not chrooted), so a link
an INIT planted in the image (``/etc/fstab -> /etc/shadow``, ``/boot/grub -> /boot/grub``)
would resolve against the host's ``/``: root wrote the host's file. Each case plants such
a link to a file or directory of this test's, outside the image, and checks that it is left
as it was, and that the disk is either written (a file amic owns is made anew) or refused
with a message naming the image's path.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from amic.targets.ec2 import disk_reuse
from amic.targets.local import disk, rootfs
from tests.harness import tools
from tests.harness.diskroot import SHELLS, debugfs, make_root, run_make_root

pytestmark = pytest.mark.root

VICTIM = "the host's own content\n"


def victim_file(tmp_path: Path, name: str = "victim") -> Path:
    path = tmp_path / "host" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(VICTIM)
    return path


def link(lower: Path, rel: str, target: Path) -> None:
    path = lower / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.symlink_to(target)


@pytest.mark.parametrize("shell", SHELLS)
def test_a_planted_fstab_link_is_replaced_not_written_through(shell: str, tmp_path: Path) -> None:
    victim = victim_file(tmp_path)
    proc, _, raw, root_uuid = make_root(shell, tmp_path, plant=lambda lower: link(
        lower, "etc/fstab", victim))
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == VICTIM
    assert debugfs(raw, "cat /etc/fstab") == f"UUID={root_uuid} / ext4 defaults,errors=remount-ro 0 1\n"


@pytest.mark.parametrize("rel, planted, named", [
    ("boot/grub", "dir", "/boot/grub is a link"),
    ("etc", "dir", "/etc is a link"),
    ("root/.ssh", "dir", "/root/.ssh is a link"),
    ("root/.ssh/authorized_keys", "file", "/root/.ssh/authorized_keys is not a regular file"),
    ("var/cache/apt/archives", "dir", "/var/cache/apt/archives is a link"),
    ("usr/lib/amic-vm/boot.img", "file", "/usr/lib/amic-vm/boot.img is not a regular file"),
    ("usr/lib/amic-vm", "dir", "/usr/lib/amic-vm is a link"),
    ("boot", "dir", "/boot is a link"),
])
def test_a_link_on_the_way_is_refused_and_the_host_untouched(rel: str, planted: str, named: str,
                                                              tmp_path: Path) -> None:
    victim = victim_file(tmp_path, "victim.deb")
    host_dir = victim.parent
    for name in ("grub.cfg", "fstab", "authorized_keys", "boot.img", "vmlinuz-6.1.0-99-x"):
        (host_dir / name).write_text(VICTIM)
    target = host_dir if planted == "dir" else victim
    proc, scratch, _, _ = make_root("dash", tmp_path, plant=lambda lower: link(lower, rel, target))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"amic: the image's {named}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and VICTIM.strip() not in proc.stderr
    assert sorted(p.name for p in host_dir.iterdir()) == sorted(
        ["victim.deb", "grub.cfg", "fstab", "authorized_keys", "boot.img", "vmlinuz-6.1.0-99-x"])
    assert all(p.read_text() == VICTIM for p in host_dir.iterdir())
    assert not (scratch / "out" / "boot.img").exists() or (
        scratch / "out" / "boot.img").read_text() != VICTIM


def test_a_directory_where_fstab_belongs_is_refused(tmp_path: Path) -> None:
    def plant(lower: Path) -> None:
        (lower / "etc/fstab").mkdir(parents=True)
    proc, _, _, _ = make_root("dash", tmp_path, plant=plant)
    assert proc.returncode == 1 and "amic: the image's /etc/fstab is a directory" in proc.stderr


def reuse_root(tmp_path: Path, lower: Path, raw: Path, root_uuid: str
               ) -> subprocess.CompletedProcess:
    """reuse-root.sh as disk_reuse.reuse runs it: ``lower`` written over ``raw``'s root."""
    scratch = tmp_path / "reuse"
    for d in ("upper", "work", "merged", "mnt", "out"):
        (scratch / d).mkdir(parents=True)
    size = raw.stat().st_size - disk.ROOT_START - disk.TAIL
    return subprocess.run(
        [tools.require("unshare"), "--mount", "--propagation", "private",
         *disk_reuse.reuse_command([lower], scratch, raw, root_uuid, size, shell="dash")],
        env=rootfs.CLEAN_ENV, capture_output=True, text=True, timeout=120)


def test_reuse_root_replaces_a_planted_fstab_and_refuses_a_linked_grub(tmp_path: Path) -> None:
    _, raw, root_uuid = run_make_root("dash", tmp_path / "first")
    lower = tmp_path / "first" / "lower"
    victim = victim_file(tmp_path)
    link(lower, "etc/fstab", victim)
    proc = reuse_root(tmp_path / "a", lower, raw, root_uuid)
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == VICTIM
    assert debugfs(raw, "cat /etc/fstab") == f"UUID={root_uuid} / ext4 defaults,errors=remount-ro 0 1\n"

    link(lower, "boot/grub", victim.parent)
    proc = reuse_root(tmp_path / "b", lower, raw, root_uuid)
    assert proc.returncode == 1 and "amic: the image's /boot/grub is a link" in proc.stderr
    assert victim.read_text() == VICTIM and not (victim.parent / "grub.cfg").exists()

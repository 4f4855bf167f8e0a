"""make-root.sh as ``disk.make_raw`` runs it, over a stand-in VM layer in a test's tree.

The unit tests of the disk-writing scripts share it (test_shipped_scripts.py,
test_disk_files_beneath.py): a small lower layer with two kernels and the boot loaders'
files, the key and the disk under a hostile name, in a mount namespace of its own.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from amic.targets.local import disk, rootfs
from tests.harness import tools

SHELLS = {"dash": ["dash"], "busybox": ["busybox", "sh"]}
HOSTILE_NAME = "a b'c\"$(touch pwned)`x`;\n*"


def run_make_root(shell: str, tmp_path: Path, *profile: str) -> tuple[Path, Path, str]:
    """make-root.sh as disk.make_raw runs it, over a stand-in VM layer (two kernels, the boot
    loaders' files), the key and the disk under a hostile name (overlay's options cannot
    take one), in a mount namespace of its own; (scratch, raw disk, root UUID)."""
    proc, scratch, raw, root_uuid = make_root(shell, tmp_path, *profile)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return scratch, raw, root_uuid


def make_root(shell: str, tmp_path: Path, *profile: str, plant=None
              ) -> tuple[subprocess.CompletedProcess, Path, Path, str]:
    """:func:`run_make_root`, ``plant(lower)`` called on the VM layer first, whatever the
    result: (the process, scratch, raw disk, root UUID)."""
    tools.require(SHELLS[shell][0])
    lower = tmp_path / "lower"
    for name in ("boot/vmlinuz-6.1.0-9-cloud-amd64", "boot/vmlinuz-6.1.0-28-cloud-amd64",
                 "etc/hostname", "etc/systemd/system/multi-user.target.wants/ssh.service",
                 "usr/lib/amic-vm/boot.img", "usr/lib/amic-vm/core.img",
                 "usr/lib/amic-vm/BOOTX64.EFI", "var/cache/apt/archives/jq.deb"):
        (lower / name).parent.mkdir(parents=True, exist_ok=True)
        (lower / name).write_text(name + "\n")
    if plant is not None:
        plant(lower)
    scratch = tmp_path / "scratch"
    for d in ("upper", "work", "merged", "out"):
        (scratch / d).mkdir(parents=True)
    hostile = tmp_path / HOSTILE_NAME
    hostile.mkdir()
    key = hostile / HOSTILE_NAME
    key.write_text("ssh-ed25519 AAAA test\n")
    raw, root_uuid = hostile / "disk.raw", "0b6f3f9e-5b5c-4a43-9d3e-2f1f6a0c1d2e"
    proc = subprocess.run(
        [tools.require("unshare"), "--mount", "--propagation", "private", *SHELLS[shell], "-c",
         disk.root_script("make-root.sh"), "amic-disk", str(lower),
         *(str(scratch / d) for d in ("upper", "work", "merged")), str(raw), root_uuid,
         str(key), str(scratch / "out"), str(disk.ROOT_START // disk.MIB), str(disk.TAIL),
         *profile],
        env=rootfs.CLEAN_ENV, capture_output=True, text=True, timeout=120)
    return proc, scratch, raw, root_uuid


def debugfs(raw: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, f"{raw}?offset={disk.ROOT_START}"],
                          capture_output=True, text=True).stdout



"""A dev VM's SSH host key: made by amic, handed over as SMBIOS credentials, checked by ``amic ssh``.

The guest's side (``/usr/lib/amic-vm/hostkey`` from ``scripts/vm-layer.sh``) runs here
under dash and busybox sh over a stand-in root: the credentials systemd imported, the
DMI table read by hand, none (keys made as before) and a credential that is not a key.
The booted case is ``tests/e2e/test_devvm_up.py``.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
from pathlib import Path

import pytest

from amic.errors import UsageError
from amic.targets.local import disk, vm, vmhostkey
from tests.harness import tools
from tests.harness.diskroot import SHELLS
from tests.harness.heredocs import heredocs

SCRIPT = heredocs(disk.VM_SCRIPT)["/usr/lib/amic-vm/hostkey"]


def guest_script(root: Path) -> Path:
    """The script with its absolute paths moved under ``root``."""
    text = SCRIPT
    for path in ("/etc/ssh", "/run/credentials/@system", "/sys/firmware/dmi/entries",
                 "/run/amic-hostkey"):
        text = text.replace(path, f"{root}{path}")
    (root / "etc/ssh").mkdir(parents=True)
    out = root / "hostkey.sh"
    out.write_text(text)
    return out


def run(shell: str, script: Path) -> subprocess.CompletedProcess:
    tools.require(SHELLS[shell][0])
    return subprocess.run([*SHELLS[shell], "-eu", str(script)], capture_output=True, text=True)


def credential_strings(vdir: Path) -> dict[str, bytes]:
    """name -> decoded value of the credential files :func:`vmhostkey.make` wrote."""
    out = {}
    for name in vmhostkey.CREDENTIALS:
        text = (vdir / name).read_text()
        head, _, value = text.partition("=")
        assert head.startswith("io.systemd.credential.binary:amic.ssh-host-key")
        out[head.split(":", 1)[1]] = base64.b64decode(value)
    return out


@pytest.mark.parametrize("shell", sorted(SHELLS))
@pytest.mark.parametrize("source", ["systemd", "dmi"])
def test_the_guest_installs_the_key_amic_made(tmp_path: Path, shell: str, source: str) -> None:
    vdir = tmp_path / "vdir"
    vdir.mkdir()
    vmhostkey.make(vdir, "dev")
    creds = credential_strings(vdir)
    root = tmp_path / "root"
    script = guest_script(root)
    if source == "systemd":         # what systemd puts in /run/credentials/@system
        cdir = root / "run/credentials/@system"
        cdir.mkdir(parents=True)
        for name, value in creds.items():
            (cdir / name).write_bytes(value)
    else:       # raw type 11 tables (NUL-separated strings); one without ours comes after
        strings = [b"junk"] + [(vdir / n).read_bytes() for n in vmhostkey.CREDENTIALS]
        for n, table in enumerate((strings, [b"io.systemd.credential:other=1"])):
            entry = root / f"sys/firmware/dmi/entries/11-{n}"
            entry.mkdir(parents=True)
            (entry / "raw").write_bytes(b"\x0b\x05\x00\x00\x02" + b"\0".join(table) + b"\0\0")
    proc = run(shell, script)
    assert proc.returncode == 0, proc.stderr
    key = root / "etc/ssh/ssh_host_ed25519_key"
    assert key.read_bytes() == creds["amic.ssh-host-key"]
    assert (root / "etc/ssh/ssh_host_ed25519_key.pub").read_bytes() == creds["amic.ssh-host-key.pub"]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "etc/ssh/ssh_host_ed25519_key.pub").stat().st_mode) == 0o644
    assert sorted(p.name for p in (root / "etc/ssh").iterdir()) == [
        "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]     # no ECDSA key made
    assert not (root / "run/amic-hostkey").exists()
    # the key sshd will load is the one amic pinned for `amic ssh`
    pub = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True)
    known = (vdir / vmhostkey.KNOWN_HOSTS).read_text().split()
    assert known[0] == "amic-vm-dev" and pub.stdout.split()[:2] == known[1:3]


@pytest.mark.parametrize("shell", sorted(SHELLS))
@pytest.mark.parametrize("private", [None, b"not a key\n", b""])
def test_without_a_usable_credential_the_guest_makes_its_keys(tmp_path: Path, shell: str,
                                                              private: bytes | None) -> None:
    root = tmp_path / "root"
    script = guest_script(root)
    if private is not None:
        cdir = root / "run/credentials/@system"
        cdir.mkdir(parents=True)
        (cdir / "amic.ssh-host-key").write_bytes(private)
        (cdir / "amic.ssh-host-key.pub").write_bytes(b"ssh-ed25519 AAAA x\n")
    proc = run(shell, script)
    assert proc.returncode == 0, proc.stderr
    made = sorted(p.name for p in (root / "etc/ssh").iterdir())
    assert made == ["ssh_host_ecdsa_key", "ssh_host_ecdsa_key.pub",
                    "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    pub = subprocess.run(["ssh-keygen", "-y", "-f", str(root / "etc/ssh/ssh_host_ed25519_key")],
                         capture_output=True, text=True)
    assert pub.returncode == 0 and pub.stdout.startswith("ssh-ed25519 ")


def test_the_guest_script_is_clean(tmp_path: Path) -> None:
    path = tmp_path / "hostkey.sh"
    path.write_text(SCRIPT)
    proc = subprocess.run([tools.pinned_shellcheck(), "-s", "sh", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_private_key_reaches_qemu_by_file_never_on_its_command_line(tmp_path: Path) -> None:
    files = vmhostkey.make(tmp_path, "dev")
    assert [stat.S_IMODE(os.stat(f).st_mode) for f in files] == [0o600, 0o600]
    machine = vm.QemuVm(tmp_path / "disk.qcow2", tmp_path, credential_files=files, kvm=False)
    argv = machine.argv()
    assert [a for a in argv if a.startswith("type=11,path=")] == [f"type=11,path={f}" for f in files]
    secret = base64.b64encode(credential_strings(tmp_path)["amic.ssh-host-key"]).decode()
    assert not any(secret[:40] in a for a in argv)
    vmhostkey.forget(tmp_path)
    assert not any(f.exists() for f in files)
    assert (tmp_path / vmhostkey.KNOWN_HOSTS).exists()      # what amic ssh checks stays


def test_a_link_planted_for_a_credential_file_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / vmhostkey.CREDENTIALS[0]).symlink_to(victim)
    vmhostkey.make(tmp_path, "dev")
    assert victim.read_text() == "keep"
    assert not (tmp_path / vmhostkey.CREDENTIALS[0]).is_symlink()


def test_a_kill_9_left_credential_files_the_next_up_removes(tmp_path: Path) -> None:
    files = vmhostkey.make(tmp_path, "dev")       # a boot killed before its end
    vmhostkey.forget(tmp_path)                    # what amic up's next boot ends with
    assert not any(f.exists() for f in files)


def test_a_known_hosts_that_is_no_regular_file_is_refused_not_taken_as_none(
        tmp_path: Path) -> None:
    (tmp_path / vmhostkey.KNOWN_HOSTS).symlink_to("/dev/null")
    with pytest.raises(UsageError, match="not a regular file"):
        vmhostkey.ssh_options(tmp_path, "dev")


def test_amic_ssh_checks_the_pinned_key_and_falls_back_for_older_vms(tmp_path: Path) -> None:
    older = vmhostkey.ssh_options(tmp_path, "dev")
    assert "StrictHostKeyChecking=no" in older      # a VM made before amic pinned keys
    vmhostkey.make(tmp_path, "dev")
    opts = vmhostkey.ssh_options(tmp_path, "dev")
    assert "StrictHostKeyChecking=yes" in opts and "HostKeyAlias=amic-vm-dev" in opts
    assert f"UserKnownHostsFile={tmp_path / vmhostkey.KNOWN_HOSTS}" in opts

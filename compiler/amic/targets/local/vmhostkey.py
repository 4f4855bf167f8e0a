"""A dev VM's SSH host key, made by amic on the host and handed to the guest at its first boot.

``amic ssh`` can then check the key it meets (``StrictHostKeyChecking=yes`` against the
VM's own known_hosts, under an alias: the forwarded port changes with every boot and may
have been another VM's), and the guest makes no key: under TCG its ssh-keygen runs were
one of the units competing for the emulated CPU before the boot hook.

The private key travels as an SMBIOS type 11 string (``io.systemd.credential.binary``,
the form systemd reads; ``scripts/vm-layer.sh``'s ``hostkey`` reads the DMI table itself
where systemd did not). QEMU reads it from a file (``-smbios type=11,path=``), never from
its command line, which every local user can read in ``/proc``; the file is 0600 in the
VM's directory and removed once the boot has ended (QEMU reads it during its start-up, not
always before ``Popen`` returns), or at the next ``amic up`` after a kill -9. In the guest
the table is readable by root only.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from amic.errors import BuildError
from amic.targets.local import vmfiles

KNOWN_HOSTS = "known_hosts"
CREDENTIALS = ("hostkey.smbios", "hostkey-pub.smbios")
"""The SMBIOS credential files in the VM's directory (private key, public key)."""


def alias(name: str) -> str:
    """The name ``amic ssh`` checks the key under (``HostKeyAlias``)."""
    return f"amic-vm-{name}"


def make(vdir: Path, name: str) -> list[Path]:
    """A new ed25519 host key for VM ``name``: its public half pinned in ``vdir/known_hosts``;
    returns the credential files that hand it to the guest (:func:`forget` them once the
    boot has ended)."""
    scratch = Path(tempfile.mkdtemp(prefix="hostkey-", dir=vdir))
    try:
        proc = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", alias(name),
                               "-f", str(scratch / "key")], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"ssh-keygen could not make the VM's host key: {proc.stderr.strip()}")
        private = (scratch / "key").read_bytes()
        public = (scratch / "key.pub").read_text().split()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    kind, blob = public[0], public[1]
    files = []
    for path, cred, data in ((vdir / CREDENTIALS[0], "amic.ssh-host-key", private),
                             (vdir / CREDENTIALS[1], "amic.ssh-host-key.pub",
                              f"{kind} {blob}\n".encode())):
        write(path, f"io.systemd.credential.binary:{cred}="
                    f"{base64.b64encode(data).decode()}".encode(), 0o600)
        files.append(path)
    write(vdir / KNOWN_HOSTS, f"{alias(name)} {kind} {blob}\n".encode(), 0o644)
    return files


def write(path: Path, data: bytes, mode: int) -> None:
    path.unlink(missing_ok=True)        # a new file has ``mode``; never a link planted there
    with os.fdopen(vmfiles.create_fresh(path, mode), "wb") as fh:
        fh.write(data)


def forget(vdir: Path) -> None:
    """Remove the VM's credential files, whether this boot made them or one killed before
    its end left them (QEMU read them when it started)."""
    for name in CREDENTIALS:
        (vdir / name).unlink(missing_ok=True)


def kept_known_hosts(vdir: Path) -> Path | None:
    """``vdir/known_hosts``, or None where no key is kept (a VM made before amic kept one).
    Anything but a regular file there is refused, never taken as "no key kept"."""
    known = vdir / KNOWN_HOSTS
    if known.is_symlink() or (known.exists() and not known.is_file()):
        raise vmfiles.refused(known, "not a regular file")
    return known if known.exists() else None


def pinned(vdir: Path) -> tuple[str, str] | None:
    """(type, base64 blob) of the key ``vdir/known_hosts`` pins, or None (none kept)."""
    known = kept_known_hosts(vdir)
    if known is None:
        return None
    fields = known.read_text(errors="replace").split()
    return (fields[1], fields[2]) if len(fields) >= 3 else None


def ssh_options(vdir: Path, name: str) -> list[str]:
    """``ssh`` options checking the VM's host key; a VM made before amic kept one (no
    known_hosts in its directory) is reached as before, unchecked."""
    known = kept_known_hosts(vdir)
    if known is None:
        return ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    return ["-o", f"HostKeyAlias={alias(name)}", "-o", f"UserKnownHostsFile={known}",
            "-o", "StrictHostKeyChecking=yes", "-o", "GlobalKnownHostsFile=/dev/null"]

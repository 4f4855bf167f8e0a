"""``amic export``: one local image written as a root tar, an OCI archive or a bootable disk.

Which writer a format (and ``--for PLATFORM``) takes: :mod:`.disk` for raw/qcow2 disks,
:mod:`.ec2disk` for a disk that boots as an EC2 instance, :mod:`.oci` for OCI archives.
Apart from those modules so that each of them stays a leaf (``ec2disk`` builds on ``disk``).
"""

from __future__ import annotations

from pathlib import Path

from amic.errors import UsageError
from amic.targets.base import Image
from amic.targets.local import ec2disk
from amic.targets.local.disk import MIB, check_tools, vm_layer_in_use, write_disk


def export_image(target, image: Image, out: Path, *, fmt: str = "tar",
                 authorized_key: Path | None = None, compress: bool = False,
                 platform: str | None = None, log=None) -> dict:
    """``amic export --format``: tar (the root filesystem), raw/qcow2 (a bootable disk), oci;
    ``platform`` (``--for ec2``): a disk that boots as an EC2 instance (:mod:`.ec2disk`)."""
    if authorized_key is not None and fmt not in ("raw", "qcow2"):
        raise UsageError("--authorized-key goes with --format raw or qcow2")
    if compress and fmt != "qcow2":
        raise UsageError("--compress goes with --format qcow2")
    if platform is not None:
        return export_for(target, image, out, fmt=fmt, platform=platform,
                          authorized_key=authorized_key, compress=compress, log=log)
    if fmt == "tar":
        target.export(image, out)
        return {}
    if fmt == "oci":
        from amic.targets.local import oci

        return oci.write_oci(target.store, image, out)
    if fmt not in ("raw", "qcow2"):
        raise UsageError(f"unknown export format {fmt!r}")
    with vm_layer_in_use(target, image, log=log) as vm_image:
        facts = write_disk(target.store, vm_image, out, fmt=fmt,
                           authorized_key=authorized_key, compress=compress, devvm=True)
    if log:
        log(f"{fmt} disk: root {facts['root_mib']} MiB (used {facts['used_kib'] // 1024} MiB), "
            f"{out.stat().st_size // MIB} MiB apparent, "
            f"{out.stat().st_blocks * 512 // MIB} MiB on disk")
    return facts


def export_for(target, image: Image, out: Path, *, fmt: str, platform: str,
               authorized_key: Path | None, compress: bool, log=None) -> dict:
    """``amic export --for PLATFORM``: the disk made fit for it (only ``ec2`` so far)."""
    if platform not in ec2disk.PLATFORMS:
        raise UsageError(f"--for {platform!r}: unknown (known: {', '.join(ec2disk.PLATFORMS)})")
    if fmt not in ("raw", "qcow2") or compress:
        raise UsageError(f"--for {platform} goes with --format raw (or qcow2, uncompressed)")
    if authorized_key is not None:
        raise UsageError(f"--authorized-key does not go with --for {platform}: an instance's "
                         "key is its key pair's, read from the instance metadata at boot")
    check_tools(fmt)
    made = ec2disk.write_ec2_disk(target, image, out, fmt=fmt, log=log)
    if log:
        log(f"{fmt} disk for {platform}: root {made.root_mib} MiB (used "
            f"{made.used_kib // 1024} MiB), {made.size // MIB} MiB; SSH as {made.ssh_user} "
            "with the instance's key pair")
    return {"uuid": made.root_uuid, "root_mib": made.root_mib, "used_kib": made.used_kib}

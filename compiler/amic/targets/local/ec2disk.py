"""``amic export --format raw --for ec2``: a local image's disk fit to boot as an EC2 instance.

The stock disk (:mod:`amic.targets.local.disk`) already has most of what EC2
needs: Debian's cloud kernel (NVMe and ENA drivers), the root found by its
file system UUID (GRUB's early config by its label), the serial console on
``ttyS0``, GRUB for BIOS and UEFI, and the root grown to the disk at every
boot (``amic-growroot.service``). What it lacks is in the **EC2 layer**, one
more layer over the VM layer, recorded in the store under a key made of the
VM layer's and the texts of the files below, so it is built once per image:

- ``curl``: the boot hook (``runtime/amic``: ``imds``) reads the instance id
  and the ``amic:services`` tag from the instance metadata with it, as on an
  AMI baked over SSH;
- DHCP on any Ethernet NIC (``Type=ether``: ENA's ``ens5``, or whatever name
  another instance type gives), the DHCP server's hostname not taken;
- ``amic-imds.service`` (``scripts/amic-imds.service``, ``scripts/ec2-imds.sh``):
  at every boot, before the boot hook, this instance's SSH public key (its
  key pair's, added for ``root``) and hostname from IMDSv2, amic's own unit
  instead of cloud-init;
- a check that the kernel has ``nvme`` and ``ena`` (``modinfo``).

No key is authorised on the disk (``--authorized-key`` is refused with
``--for ec2``): an instance's key comes only from its metadata. The stock
export is not changed by any of this: the EC2 layer is only made here.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import attrs

from amic.contract import KIND_LAYER, TAG_BASE, TAG_KIND, TAG_PARENT_KEY, TAG_SERVICE
from amic.errors import BuildError, UsageError
from amic.targets.base import Image, terminal_line
from amic.targets.local import disk
from amic.targets.scripts import script

EC2_SERVICE = "ec2-boot"
"""The service name the EC2 layer is tagged with (``amic images --all`` shows it)."""
PLATFORMS = ("ec2",)
"""What ``amic export --for`` takes."""

LAYER_SCRIPT = script(__package__, "ec2-layer.sh")
IMDS_SCRIPT = script(__package__, "ec2-imds.sh")
UNIT_NAME = "amic-imds.service"
FILES = (("ec2-imds.sh", "/usr/lib/amic-ec2/imds.sh", 0o755),
         (UNIT_NAME, f"/etc/systemd/system/{UNIT_NAME}", 0o644))
"""Package data put into the EC2 layer: (name in ``scripts/``, path in the image, mode)."""


@attrs.frozen
class Ec2Disk:
    """A raw disk written by :func:`write_ec2_disk`, and what RegisterImage needs of it."""

    path: Path
    size: int
    """Bytes: the EBS volume made of it is at least this big (rounded up to a GiB)."""
    root_uuid: str
    root_mib: int
    used_kib: int
    architecture: str = "x86_64"
    boot_mode: str = "uefi-preferred"
    """Both loaders are on the disk: UEFI where the instance type has it, else BIOS."""
    ena_support: bool = True
    root_device_name: str = "/dev/xvda"
    imds_support: str = "v2.0"
    """The units ask IMDSv2 only (a token first), so the AMI may require it."""
    ssh_user: str = "root"
    """Who the instance's key pair key is authorised for (``amic-imds.service``)."""

    @property
    def volume_gib(self) -> int:
        return -(-self.size // (1024 ** 3))


def file_text(name: str) -> str:
    return script(__package__, name)


def ec2_layer_key(vm_image: Image) -> str:
    parent = vm_image.key or vm_image.id
    parts = [LAYER_SCRIPT, *(file_text(name) for name, _, _ in FILES)]
    return hashlib.sha256("\0".join(["amic-ec2-layer", parent, *parts]).encode()).hexdigest()


def ec2_layer(target, vm_image: Image, *, log=None) -> Image:
    """The VM image plus the EC2 layer (built once, then found by its key); call it under
    the build lock, as :func:`amic.targets.local.disk.vm_layer`."""
    return disk.made_once(target, ec2_layer_key(vm_image),
                          lambda: _make_ec2_layer(target, vm_image, log))


def _make_ec2_layer(target, vm_image: Image, log) -> Image:
    key = ec2_layer_key(vm_image)
    if log:
        log("adding the EC2 layer (curl, DHCP on any NIC, the IMDSv2 unit); once per image")
    tail: list[str] = []

    def out(line: str) -> None:
        line = terminal_line(line)
        tail.append(line)
        del tail[:-30]
        if log:
            log(f"{EC2_SERVICE} | {line}")

    with target.launch(vm_image, build_id=f"ec2-{uuid.uuid4().hex[:12]}") as machine:
        for name, dest, mode in FILES:
            with resources.as_file(resources.files(__package__) / "scripts" / name) as src:
                machine.put(src, dest, mode=mode)
        rc = machine.run(LAYER_SCRIPT, on_output=out)
        if rc != 0:
            raise BuildError(f"the EC2 layer failed (exit {rc}):\n" + "\n".join(tail))
        tags = {TAG_KIND: KIND_LAYER, TAG_SERVICE: EC2_SERVICE,
                TAG_BASE: vm_image.tags.get(TAG_BASE, ""), TAG_PARENT_KEY: vm_image.key or ""}
        return target.snapshot(machine, key=key, final=False, tags=tags)


def cloud_base(target, base: Image, *, log=None) -> Image:
    """``base`` plus the VM and EC2 layers: the base ``--bake local`` builds services on
    (``amic.targets.ec2.local_bake``), as the SSH path starts from a cloud AMI that already
    has its kernel. Built once per base and found by the layers' keys (the base's id and
    the layers' scripts), so its image id, which every layer key above it is made of,
    changes when any of them does. Call it under the build lock."""
    return ec2_layer(target, disk.vm_layer(target, base, log=log), log=log)


def peek_cloud_base(target, base: Image) -> Image | None:
    """The :func:`cloud_base` of ``base`` if it is built (nothing is made)."""
    vm_image = target.find_image(disk.vm_layer_key(base))
    return None if vm_image is None else target.find_image(ec2_layer_key(vm_image))


@contextlib.contextmanager
def ec2_layer_in_use(target, image: Image, *, log=None) -> Iterator[Image]:
    """``image`` plus the VM and EC2 layers, use-locked for the block (prune keeps them)."""
    with contextlib.ExitStack() as stack:
        with target.build_lock():
            vm_image = disk.vm_layer(target, image, log=log)
            ec2_image = ec2_layer(target, vm_image, log=log)
            stack.enter_context(target.store.use(ec2_image.id))
        yield ec2_image


def write_ec2_disk(target, image: Image, out: Path, *, fmt: str = "raw", log=None) -> Ec2Disk:
    """Write ``image`` (a local image) to ``out`` as a disk that boots as an EC2 instance.

    ``fmt`` raw (what the EBS direct APIs upload) or qcow2. The disk's apparent size is
    the root file system's plus the partitions before it; the instance's volume may be
    bigger: the root grows to it at first boot.
    """
    if fmt not in ("raw", "qcow2"):
        raise UsageError(f"--for ec2 writes a raw or qcow2 disk, not {fmt!r}")
    with ec2_layer_in_use(target, image, log=log) as ec2_image:
        facts = disk.write_disk(target.store, ec2_image, out, fmt=fmt)
    return Ec2Disk(path=out, size=disk_size(facts), root_uuid=facts["uuid"],
                   root_mib=facts["root_mib"],
                   used_kib=facts["used_kib"])


def disk_size(facts: dict) -> int:
    """The disk's (virtual) size, as :func:`amic.targets.local.disk.make_raw` lays it out."""
    return disk.ROOT_START + facts["root_mib"] * disk.MIB + disk.TAIL

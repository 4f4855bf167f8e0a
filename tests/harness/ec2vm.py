"""A QEMU VM that looks to its guest like a Nitro EC2 instance, for disks of ``export --for ec2``.

``vm.QemuVm`` with the disk on NVMe (as EBS volumes are on Nitro), DMI's
system vendor ``Amazon EC2`` (how the boot hook tells it is on EC2), and the
instance metadata at 169.254.169.254:80 served by the IMDSv2 stand-in
(:mod:`tests.harness.imds`) through a ``guestfwd``; QEMU's user network keeps
``restrict=on``: nothing else leaves the guest but the forwarded SSH port.
"""

from __future__ import annotations

from pathlib import Path

from amic.targets.local import vm

from tests.harness import imds

NVME_SERIAL = "vol0a1b2c3d4e5f60718"


class Ec2LikeVm(vm.QemuVm):
    def __init__(self, disk_path: Path, workdir: Path, imds_port: int, **kw) -> None:
        super().__init__(disk_path, workdir, **kw)
        self.imds_port = imds_port

    def argv(self) -> list[str]:
        argv = super().argv()
        i = next(n for n, a in enumerate(argv) if a.startswith("file=") and "if=virtio" in a)
        argv[i] = argv[i].replace("if=virtio", "if=none,id=root")
        argv[i + 1:i + 1] = ["-device", f"nvme,drive=root,serial={NVME_SERIAL}"]
        n = argv.index("-netdev") + 1
        # the guest's network holds the IMDS address (QEMU refuses a guestfwd outside it),
        # as an EC2 VPC's link-local range does
        argv[n] += f",net=169.254.169.0/24,guestfwd={imds.guestfwd(self.imds_port)}"
        argv += ["-smbios", "type=1,manufacturer=Amazon EC2,product=m5.large"]
        return argv

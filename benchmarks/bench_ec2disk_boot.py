#!/usr/bin/env python3
"""Boot time of a disk made by ``amic export --for ec2`` against the stock disk, same run.

One small image is built on the local target in a store of this run's own
(the debootstrap base and package cache shared), exported twice: the stock
raw disk (docs/devvm.md) and the EC2 disk (docs/ec2.md). Then, interleaved R
times, each is booted under QEMU (KVM only with kvm_intel/kvm_amd, else TCG,
as ``amic run --vm``) and timed from QEMU's start to the boot hook's last
console line (``amic: boot: ok``):

  stock  the stock disk on virtio-blk, restrict=on, no metadata service
  ec2    the EC2 disk as a Nitro instance shows itself (tests/harness/ec2vm.py):
         NVMe, DMI ``Amazon EC2``, the IMDSv2 stand-in through a guestfwd;
         its boot also runs amic-imds.service, curl for the instance id and
         tags, and networkd's wait for the DHCP lease that needs

and prints the medians and the ratio ec2/stock (both grow to a 4 GiB disk on
their first boot: each boot is a fresh overlay, i.e. a first boot).

    sudo .venv/bin/python benchmarks/bench_ec2disk_boot.py [--repeat 1] [--uefi]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amic.targets.local import rootfs, vm  # noqa: E402

from tests.harness import ec2vm, imds  # noqa: E402
from tests.harness.cli import run_amic  # noqa: E402

AMIFILE = """\
FROM debian:12
ENABLE base
SERVICE base
    INIT echo base > /etc/bench-base
    UPDATE date > /run/bench-booted
"""


def amic(store: Path, cwd: Path, *args: str) -> None:
    env = {**os.environ, "AMIC_CACHE_DIR": str(store)}
    env.pop("AMIC_TARGET", None)
    run_amic(*args, cwd=cwd, env=env, timeout=None, check=True)


def boot_seconds(machine: vm.QemuVm) -> float:
    machine.start()
    try:
        result = machine.wait_boot(1200)
        if result != "ok":
            raise SystemExit("boot hook failed:\n" + "\n".join(machine.console[-40:]))
        return machine.boot_seconds
    finally:
        machine.stop(timeout=180)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--uefi", action="store_true")
    args = ap.parse_args()
    base = rootfs.ensure_base("debian:12")
    work = Path(tempfile.mkdtemp(prefix="bench-ec2disk-", dir="/var/cache/amic"))
    try:
        store = work / "store"
        (store / "local").mkdir(parents=True)
        (store / "bases").symlink_to(base.parent)
        packages = rootfs.cache_dir() / "local" / "packages"
        packages.mkdir(parents=True, exist_ok=True)
        (store / "local" / "packages").symlink_to(packages)
        proj = work / "proj"
        proj.mkdir()
        (proj / "Amifile").write_text(AMIFILE)
        amic(store, proj, "build", "--target", "local", "-q")
        stock, ec2 = work / "stock.raw", work / "ec2.raw"
        amic(store, proj, "export", "latest", "--format", "raw", "-o", str(stock))
        amic(store, proj, "export", "latest", "--format", "raw", "--for", "ec2", "-o", str(ec2))
        kvm = vm.kvm_usable()
        times: dict[str, list[float]] = {"stock": [], "ec2": []}
        pub = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchKeyOnlyForTheMetadata bench"
        for r in range(args.repeat):
            for name, raw in (("stock", stock), ("ec2", ec2)):
                run = work / f"{name}-{r}"
                run.mkdir()
                disk = run / "disk.qcow2"
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                                str(raw), str(disk), "4G"], check=True)
                if name == "stock":
                    s = boot_seconds(vm.QemuVm(disk, run, uefi=args.uefi, kvm=kvm))
                else:
                    with imds.Imds(instance_id="i-0bench", hostname="ip-10-9-9-9.ec2.internal",
                                   public_key=pub, tags={}) as server:
                        s = boot_seconds(ec2vm.Ec2LikeVm(disk, run, server.port,
                                                         uefi=args.uefi, kvm=kvm))
                times[name].append(s)
                print(f"{name} boot {r + 1}: {s:.1f}s", flush=True)
                shutil.rmtree(run)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{'KVM' if kvm else 'TCG'}, {'UEFI' if args.uefi else 'BIOS'}, "
              f"power-on to boot hook done, median of {args.repeat}: stock {med['stock']:.1f}s, "
              f"ec2 {med['ec2']:.1f}s, ratio ec2/stock {med['ec2'] / med['stock']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

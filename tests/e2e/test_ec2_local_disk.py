"""A local image's disk boots as an EC2 instance would: ``amic export --format raw --for ec2``.

One image is built on the local target for the module (its own store, as
test_devvm.py), exported with ``--for ec2``, and booted under QEMU the way a
Nitro instance looks to it: the disk on NVMe, DMI saying ``Amazon EC2`` (how
the boot hook tells it is on EC2), and the instance metadata at
169.254.169.254 served by the IMDSv2 stand-in (``tests/harness/imds.py``)
through a ``guestfwd`` of QEMU's user network with ``restrict=on``: nothing
else leaves the guest but the forwarded SSH port. The key pair is made after
the disk is written, so the only way its key reaches the guest is the
instance metadata.

Checked at boot: amic's IMDS unit authorised the key (SSH works) and set the
hostname; the boot hook took the instance id and the ``amic:services`` tag
from the metadata (the tagged service is initialised); the root grew to a
disk bigger than written; the kernel has ``nvme`` and ``ena``. With BIOS and
with UEFI (OVMF). And the stock export is unchanged by all this.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from amic.targets.local import disk, ec2disk, vm

from tests.harness import ec2vm, imds
from tests.harness.cli import run_amic

pytestmark = [pytest.mark.slow, pytest.mark.root]

RUNS = Path("/var/cache/amic/e2e-ec2disk-runs")
STORE = RUNS / str(os.getpid())
BOOT_TIMEOUT = 900
INSTANCE_ID = "i-0a1b2c3d4e5f60718"
HOSTNAME = "ip-10-1-2-3.ec2.internal"
AMIFILE = """\
FROM debian:12
ENABLE base
SERVICE base
    INIT echo base > /etc/ec2disk-base
    UPDATE date > /run/ec2disk-booted
SERVICE tagged
    REQUIRES base
    INIT echo tagged > /etc/ec2disk-tagged
"""


def amic(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "AMIC_CACHE_DIR": str(STORE)}
    env.pop("AMIC_TARGET", None)
    proc = run_amic(*args, cwd=cwd, env=env, timeout=None)
    if check and proc.returncode != 0:
        raise AssertionError(f"amic {' '.join(args)}: exit {proc.returncode}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def figure(name: str, value) -> None:
    line = f"FIGURE {name}: {value}"
    print(line)
    if os.environ.get("AMIC_FIGURES"):
        with open(os.environ["AMIC_FIGURES"], "a") as fh:
            fh.write(line + "\n")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[Path]:
    from amic.targets.local import rootfs

    base = rootfs.ensure_base("debian:12")
    for left in RUNS.glob("*"):
        if left.name.isdigit() and not Path("/proc", left.name).exists():
            shutil.rmtree(left, ignore_errors=True)
    STORE.mkdir(parents=True)
    (STORE / "bases").symlink_to(base.parent)
    shared_packages = rootfs.cache_dir() / "local" / "packages"
    shared_packages.mkdir(parents=True, exist_ok=True)
    (STORE / "local").mkdir()
    (STORE / "local" / "packages").symlink_to(shared_packages)
    proj = tmp_path_factory.mktemp("ec2disk") / "ec2disk"
    proj.mkdir()
    (proj / "Amifile").write_text(AMIFILE)
    amic("build", "--target", "local", "-q", cwd=proj)
    yield proj
    shutil.rmtree(STORE, ignore_errors=True)


@pytest.fixture(scope="module")
def ec2_raw(project: Path) -> Path:
    out = project / "ec2.raw"
    t0 = time.monotonic()
    amic("export", "latest", "--format", "raw", "--for", "ec2", "-o", str(out), cwd=project)
    figure("export raw --for ec2 seconds (VM and EC2 layers made)", f"{time.monotonic() - t0:.1f}")
    return out


@pytest.fixture(scope="module")
def key_pair(project: Path, ec2_raw: Path) -> Path:
    """Made after the disk is written: nothing of it can be on the disk."""
    key = project / "key_pair"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ec2-key-pair",
                    "-f", str(key)], check=True)
    return key


def boot_as_instance(disk_path: Path, workdir: Path, server: imds.Imds, label: str,
                     **kw) -> ec2vm.Ec2LikeVm:
    machine = ec2vm.Ec2LikeVm(disk_path, workdir, server.port, **kw)
    argv = machine.argv()
    netdev = argv[argv.index("-netdev") + 1]
    assert "restrict=on" in netdev and netdev.count("fwd=") == 2, netdev
    machine.start()
    try:
        assert machine.wait_boot(BOOT_TIMEOUT) == "ok", "\n".join(machine.console[-60:])
    except BaseException:
        machine.kill()
        raise
    figure(f"{label}: power-on to boot hook done ({'KVM' if machine.kvm else 'TCG'})",
           f"{machine.boot_seconds:.1f}s")
    return machine


def bigger(raw: Path, path: Path, size: str) -> Path:
    """A qcow2 over ``raw``, bigger than it: the instance's volume bigger than the snapshot."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(raw),
                    str(path), size], check=True)
    return path


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_ec2_disk_boots_as_an_instance(project: Path, ec2_raw: Path, key_pair: Path,
                                       tmp_path: Path, firmware: str) -> None:
    public = key_pair.with_suffix(".pub").read_text()
    assert not debugfs_cat(ec2_raw, "/root/.ssh/authorized_keys")    # no key on the disk
    written = ec2_raw.stat().st_size
    volume = bigger(ec2_raw, tmp_path / "volume.qcow2", "4G")
    with imds.Imds(instance_id=INSTANCE_ID, hostname=HOSTNAME, public_key=public,
                   tags={"Name": "ec2disk", "amic:services": "tagged"}) as server:
        machine = boot_as_instance(volume, tmp_path, server, f"EC2-like {firmware} first boot",
                                   uefi=firmware == "uefi")
        try:
            rc, out = vm.ssh_run(machine.ssh_port, key_pair,
                                 "hostname; /var/lib/amic/stage2/amic status; "
                                 "cat /etc/ec2disk-base /etc/ec2disk-tagged /run/ec2disk-booted "
                                 ">/dev/null && df -B1M --output=size / | tail -n 1 && "
                                 "modinfo -F filename nvme ena && findmnt -no SOURCE / && "
                                 "ls /sys/firmware/efi >/dev/null 2>&1 && echo uefi || echo bios")
            assert rc == 0, out
            lines = out.splitlines()
            assert lines[0] == "ip-10-1-2-3", out                    # hostname from IMDS
            assert f"instance {INSTANCE_ID}" in lines[1], out       # instance id from IMDS
            rows = {ln.split()[0]: ln for ln in lines[3:5]}
            assert rows["tagged"].split()[1] == "yes" and " ok " in rows["tagged"], out
            assert int(lines[5]) > 3000 > written // disk.MIB, (out, written)   # root grew
            assert len(lines[6:8]) == 2 and all(ln for ln in lines[6:8]), out     # nvme, ena
            assert lines[8].startswith("/dev/nvme0n1p"), out
            assert lines[9] == firmware, out
        finally:
            assert machine.stop(timeout=180) == 0, "\n".join(machine.console[-20:])
        assert any(m == "PUT" and s == 200 for m, _, s in server.requests)
        assert server.served("meta-data/public-keys/0/openssh-key")
        assert server.served("meta-data/instance-id")
        assert server.served("meta-data/tags/instance/amic:services")
        assert not [r for r in server.requests if r[2] == 401], server.requests  # IMDSv2 only


def debugfs_cat(raw: Path, path: str) -> str | None:
    """``path`` on the root file system of a disk (None: not there), read without mounting."""
    proc = subprocess.run(["debugfs", "-R", f"cat {path}", f"{raw}?offset={disk.ROOT_START}"],
                          capture_output=True, text=True)
    return None if "File not found" in proc.stderr or proc.returncode else proc.stdout


def test_stock_export_is_unchanged(project: Path, ec2_raw: Path) -> None:
    stock = project / "stock.raw"
    amic("export", "latest", "--format", "raw", "-o", str(stock), cwd=project)
    for raw in (stock, ec2_raw):                   # the reader works on both disks
        assert debugfs_cat(raw, "/etc/ec2disk-base") == "base\n"
    net = "/etc/systemd/network/80-amic-dhcp.network"
    assert "Name=en* eth*" in debugfs_cat(stock, net)
    assert "Type=ether" in debugfs_cat(ec2_raw, net)
    unit = f"/etc/systemd/system/{ec2disk.UNIT_NAME}"
    assert debugfs_cat(stock, unit) is None and debugfs_cat(stock, "/usr/bin/curl") is None
    assert debugfs_cat(ec2_raw, unit) == ec2disk.file_text(ec2disk.UNIT_NAME)
    # both over the same VM layer: the EC2 layer is one more, never a changed VM layer
    images = amic("images", "--all", cwd=project).stdout
    assert images.count(disk.VM_SERVICE) == 1 and images.count(ec2disk.EC2_SERVICE) == 1, images


def test_export_for_refuses_what_cannot_go_together(project: Path) -> None:
    pub = project / "some.pub"
    pub.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLE x\n")
    for extra, words in ((["--format", "raw", "--authorized-key", str(pub)], "key pair"),
                         (["--format", "tar"], "--format raw"),
                         (["--format", "raw", "--for", "gce"], "unknown")):
        args = extra if "--for" in extra else [*extra, "--for", "ec2"]
        proc = amic("export", "latest", *args, "-o", str(project / "x.raw"), cwd=project,
                    check=False)
        assert proc.returncode == 2 and words in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and not (project / "x.raw").exists()

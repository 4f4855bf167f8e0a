"""An AMI baked with ``--bake local`` boots as an instance: its snapshot, read back block by
block with GetSnapshotBlock, is the disk of a QEMU VM that looks like a Nitro instance.

EC2 and EBS are the strict stand-ins; the VM has the disk on NVMe, DMI saying ``Amazon
EC2``, QEMU user networking with ``restrict=on`` and a ``guestfwd`` of 169.254.169.254:80
to the loopback IMDSv2 stand-in, which serves the instance id, the tags and the key pair's
public key (made after the upload: the only way it reaches the guest is IMDS). Checked:
amic's IMDS unit authorised the key (SSH works), the boot hook ran and reported, the
Amifile's service is initialised, the root grew to the instance's bigger volume. The AMI
booted is a second build's, after a changed INIT line: its disk is the first one's changed
in place (only the paths the two images' own layers name compared), uploaded over the
first snapshot, and read back it holds the image's tree file for file.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import boto3
import pytest
from amic.targets.ec2 import disk_reuse
from amic.targets.local import disk, vm
from amic.targets.local.target import default_store

from tests.harness import ec2vm, imds
from tests.harness.cli import run_amic
from tests.harness.ec2 import REGION, fake_ec2

pytestmark = [pytest.mark.slow, pytest.mark.root]

BLOCK = 512 * 1024
INSTANCE_ID = "i-0b1a2c3d4e5f60719"
AMIFILE = """\
FROM debian:12
NAME {name}
ENABLE hello
SERVICE hello
    INIT echo {greeting} > /etc/bake-hello
    UPDATE date > /run/bake-booted
"""


def read_snapshot(endpoint: str, snap: str, out: Path) -> int:
    """Write the snapshot's volume to ``out`` (sparse) as GetSnapshotBlock gives it; return
    the number of blocks read. Every block's checksum is checked."""
    client = boto3.client("ebs", region_name=REGION, aws_access_key_id="testing",
                          aws_secret_access_key="testing", endpoint_url=endpoint)
    token, blocks = None, 0
    with open(out, "wb") as fh:
        while True:
            page = client.list_snapshot_blocks(SnapshotId=snap,
                                               **({"NextToken": token} if token else {}))
            fh.truncate(page["VolumeSize"] * 1024 ** 3)
            for blk in page["Blocks"]:
                got = client.get_snapshot_block(SnapshotId=snap, BlockIndex=blk["BlockIndex"],
                                                BlockToken=blk["BlockToken"])
                data = got["BlockData"].read()
                assert base64.b64encode(hashlib.sha256(data).digest()).decode() == \
                    got["Checksum"]
                fh.seek(blk["BlockIndex"] * BLOCK)
                fh.write(data)
                blocks += 1
            token = page.get("NextToken")
            if not token:
                return blocks


DISK_OWN = re.compile(r"(\S+ )?(\./|etc/|etc/fstab|boot/|boot/grub/(grub\.cfg)?|"
                      r"var/cache/apt/archives/([^/]+\.deb)?)$")
"""What a disk has of its own over its image's tree (reuse-root.sh): an rsync line for these
paths, and only these, is no difference."""


def assert_disk_holds_image(raw: Path, image_id: str, root_mib: int) -> None:
    """The root file system of ``raw`` is the merged tree of the local image ``image_id``,
    file for file, checksums, modes, owners, times, links and xattrs (``rsync -n -c``), but
    for the disk's own files."""
    lowers = ":".join(str(p) for p in default_store().lowers(image_id))
    check = (f'set -eu; mkdir -p "$1/m" "$1/d"; mount -t overlay overlay -o "lowerdir={lowers}"'
             f' "$1/m"; mount -t ext4 -o "ro,loop,offset={disk.ROOT_START},sizelimit='
             f'{root_mib * disk.MIB}" "$2" "$1/d"; rsync -n -aHAXci --numeric-ids --delete '
             '--exclude=/lost+found "$1/m/" "$1/d/"')
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", check,
                           "check", str(raw.parent), str(raw)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    differ = [ln for ln in proc.stdout.splitlines()
              if not DISK_OWN.match(ln.split(" ", 1)[-1].lstrip())]
    assert differ == [], differ[:20]


def test_a_locally_baked_ami_boots_as_an_instance(tmp_path):
    name = f"bakeboot-{uuid.uuid4().hex[:12]}"
    with fake_ec2(tmp_path / "ec2", strict=True) as fake, contextlib.ExitStack() as stack:
        env = {**fake.env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
               "XDG_CACHE_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path)}
        # the AMI booted is the second one: its disk is the first one's changed in place
        # (disk_reuse) and its snapshot holds only the changed blocks over the first's
        for greeting in ("hello", "hello-2"):
            (tmp_path / "Amifile").write_text(AMIFILE.format(name=name, greeting=greeting))
            sent = fake.ebs.calls["PutSnapshotBlock"]
            built = run_amic("build", "Amifile", "--target", "ec2", "--bake", "local",
                             cwd=tmp_path, env=env, timeout=3600)
            assert built.returncode == 0, built.stderr[-4000:]
            ami = built.stdout.split()[-1]
            image = fake.client(direct=False).describe_images(ImageIds=[ami])["Images"][0]
            project = {t["Key"]: t["Value"] for t in image["Tags"]}.get("amic:project") or name
            stack.callback(shutil.rmtree, disk_reuse.kept_dir(default_store(), project),
                           ignore_errors=True)
            if greeting == "hello":
                first = fake.ebs.calls["PutSnapshotBlock"] - sent
        assert "changed in place" in built.stderr, built.stderr[-4000:]
        # by rsync of only the paths the two images' own layers name (disk_delta)
        assert "paths of the image's own layers compared" in built.stderr, built.stderr[-4000:]
        facts = json.loads((disk_reuse.kept_dir(default_store(), project) / "disk.json")
                           .read_text())
        second = fake.ebs.calls["PutSnapshotBlock"] - sent
        assert second < first / 10, (first, second)
        snap = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]

        raw = tmp_path / "snapshot.raw"
        blocks = read_snapshot(fake.ebs.url, snap, raw)
        assert 0 < blocks <= first + second, (blocks, first, second)   # parent's and new ones
        assert_disk_holds_image(raw, facts["image"], facts["root_mib"])
        key = tmp_path / "key_pair"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        volume = tmp_path / "volume.qcow2"          # the instance's volume, bigger
        size_gib = raw.stat().st_size // 1024 ** 3 + 2
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(raw),
                        str(volume), f"{size_gib}G"], check=True)
        with imds.Imds(instance_id=INSTANCE_ID, hostname="ip-10-9-8-7.ec2.internal",
                       public_key=key.with_suffix(".pub").read_text(),
                       tags={"Name": name}) as server:
            machine = ec2vm.Ec2LikeVm(volume, tmp_path, server.port)
            machine.start()
            try:
                assert machine.wait_boot(900) == "ok", "\n".join(machine.console[-60:])
                rc, out = vm.ssh_run(machine.ssh_port, key,
                                     "/var/lib/amic/stage2/amic status; cat /etc/bake-hello "
                                     "&& test -f /run/bake-booted && df -B1G --output=size / "
                                     "| tail -n 1")
                assert rc == 0, out
                assert "hello-2" in out.splitlines(), out         # the second build's file
                assert f"instance {INSTANCE_ID}" in out, out
                row = next(ln for ln in out.splitlines() if ln.split()[:1] == ["hello"])
                assert " ok " in row, out
                assert int(out.splitlines()[-1]) >= size_gib - 1, out       # root grew
            finally:
                machine.stop(timeout=180)
        assert server.served("meta-data/public-keys/0/openssh-key")
        assert not [r for r in server.requests if r[2] == 401], server.requests

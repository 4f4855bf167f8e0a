"""A one-line INIT change in Amifile.example uploads a few blocks, not the disk.

Amifile.example is built on the local target, its bootable raw disk made
(``ec2.disk_reuse``) and uploaded to the EBS stand-in (``ebs_image.publish``); then one
INIT line changes, the image is built again (only the ``web`` layer runs), the disk is
made by changing the previous one in place and uploaded over the first snapshot. The
blocks the stand-in received are counted. A disk made afresh is scanned too (not
uploaded), to show what changing the disk in place saves.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import uuid
from pathlib import Path

import boto3
import botocore.config
import pytest
from amic.targets.ec2 import block_manifest as bm
from amic.targets.ec2 import disk_reuse, ebs_image
from amic.targets.local import disk
from amic.targets.local.target import LocalTarget

from tests.harness.cli import run_amic
from tests.harness.ec2 import REGION, fake_ec2
from tests.harness.tools import require

pytestmark = [pytest.mark.slow, pytest.mark.root]
REPO = Path(__file__).resolve().parents[2]
LINE = 'echo "$RELEASE" > "$APP_HOME/var/release"'


def build(project: Path) -> str:
    out = run_amic("build", "Amifile.example", "--target", "local", cwd=project, check=True,
                   timeout=1800)
    return re.findall(r"^[0-9a-f]{64}$", out.stdout, re.M)[-1]


def test_one_init_line_uploads_under_5_percent(tmp_path, monkeypatch):
    require("rsync")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "Amifile.example", project / "Amifile.example")
    shutil.copytree(REPO / "examples", project / "examples")
    target = LocalTarget()
    name = f"test-{uuid.uuid4().hex}"
    disks = []
    with fake_ec2(tmp_path / "ec2") as fake, contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, disk_reuse.kept_dir(target.store, name), ignore_errors=True)
        ebs = boto3.client("ebs", region_name=REGION, aws_access_key_id="testing",
                           aws_secret_access_key="testing", endpoint_url=fake.ebs.url,
                           config=botocore.config.Config(retries={"total_max_attempts": 1},
                                                         max_pool_connections=16))
        tags = {"amic:tool": "amic/test", "amic:project": name, "amic:kind": "final"}
        published = []
        for n in (1, 2):
            if n == 2:
                text = (project / "Amifile.example").read_text()
                assert LINE in text
                (project / "Amifile.example").write_text(
                    text.replace(LINE, LINE.replace('"$RELEASE"', '"$RELEASE-2"')))
            image = target.lookup(build(project))
            out = tmp_path / f"disk{n}.raw"
            with disk.vm_layer_in_use(target, image) as vm_image:
                facts, reused = disk_reuse.make_disk(target, vm_image, name, out)
                assert reused == (n == 2)
                if n == 2:     # what a disk made afresh would have sent
                    fresh = tmp_path / "fresh.raw"
                    disk.write_disk(target.store, vm_image, fresh, fmt="raw")
            disks.append(out)
            fake.ebs.puts.clear()
            published.append(ebs_image.publish(
                ebs, fake.client(direct=False), out, name=f"{name}-{n}", description="",
                arch="x86_64", tags=tags, build_id=f"b-{n}"))
            assert len(fake.ebs.puts) == published[-1].upload.blocks_sent
        first, second = (p.upload for p in published)
        assert second.parent == first.snapshot_id
        # what the stand-in holds for the new snapshot is the new disk, block for block
        assert fake.ebs.blocks_of(second.snapshot_id) == bm.scan(disks[1])
        afresh = len(bm.changed(bm.scan(fresh), first.manifest))
        volume_blocks = second.manifest.volume_gib * bm.GIB // bm.BLOCK_SIZE
        print(f"\nfirst upload: {first.blocks_sent} blocks of {volume_blocks} "
              f"({first.seconds:.1f}s); one INIT line: {second.blocks_sent} blocks "
              f"({100 * second.blocks_sent / first.blocks_total:.2f}% of the disk's "
              f"{first.blocks_total} non-zero blocks); a disk made afresh: {afresh} blocks")
        assert second.blocks_sent < 0.05 * first.blocks_total
        assert afresh > second.blocks_sent

"""``amic build --target ec2 --bake local`` through the CLI against the EC2 and EBS stand-ins.

EC2 is the strict stand-in (throttling, the tag-filter lag). The image is built on the
local target, uploaded block by block to the strict EBS stand-in and registered; a
second build finds the AMI by its final key without uploading; ``amic ami ls`` lists
it like an SSH-baked AMI; a third, one INIT line changed, uploads into a snapshot started
over the first while its disk was being made; ``amic gc`` finds nothing to collect. What
cannot be baked locally is refused with exit 2 before anything is created.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid

import pytest
from amic.targets.ec2 import disk_reuse
from amic.targets.local.target import default_store

from tests.harness.cli import run_amic
from tests.harness.ec2 import fake_ec2

pytestmark = [pytest.mark.slow, pytest.mark.root]

AMIFILE = """\
FROM {base}
NAME {name}
SERVICE hello
    INIT <<~EOF
        echo hello > /etc/hello
    EOF
"""


def test_bake_local_uploads_registers_and_is_cached(tmp_path):
    name = f"bake-{uuid.uuid4().hex[:12]}"
    (tmp_path / "Amifile").write_text(AMIFILE.format(base="debian:12", name=name))
    (tmp_path / "Amifile.ami").write_text(AMIFILE.format(base="ami-0123456789abcdef0",
                                                         name=name))
    with fake_ec2(tmp_path / "ec2", strict=True) as fake, contextlib.ExitStack() as stack:
        env = {**fake.env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
               "XDG_CACHE_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path)}

        def amic(*args):
            return run_amic(*args, cwd=tmp_path, env=env, timeout=1800)

        for args, words in ((["Amifile.ami"], "cannot make base image 'ami-0123456789abcdef0'"),
                            (["Amifile", "--arch", "arm64"], "cannot make an arm64 image")):
            refused = amic("build", *args, "--target", "ec2", "--bake", "local")
            assert refused.returncode == 2, refused.stderr
            assert words in refused.stderr and "--bake instance" in refused.stderr
            assert "Traceback" not in refused.stderr
        assert sum(fake.ebs.calls.values()) == 0

        built = amic("build", "Amifile", "--target", "ec2", "--bake", "local")
        assert built.returncode == 0, built.stderr
        # the build's result is the image as registered: EC2 is not asked for it again
        calls = [action for action, _ in fake.proxy.log]
        assert calls.count("RegisterImage") == 1, calls
        assert "DescribeImages" not in calls[calls.index("RegisterImage"):], calls
        fake.strict.consistency.settle()   # the tag-filter lag, as a user's next command
        kept = disk_reuse.kept_dir(default_store(), next(
            line.split()[2] for line in amic("ami", "ls").stdout.splitlines() if name in line))
        stack.callback(shutil.rmtree, kept, ignore_errors=True)
        ami = built.stdout.split()[-1]
        assert ami.startswith("ami-") and "upload:" in built.stderr and "MiB/s" in built.stderr
        assert fake.ebs.calls["StartSnapshot"] == 1 and fake.ebs.calls["CompleteSnapshot"] == 1
        image = fake.client(direct=False).describe_images(ImageIds=[ami])["Images"][0]
        tags = {t["Key"]: t["Value"] for t in image["Tags"]}
        assert tags["amic:kind"] == "final" and tags["amic:name"] == name
        assert tags["amic:tool"].startswith("amic/") and "amic:key" in tags
        snap = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        assert fake.ebs.state(snap) == "completed"
        snap_tags = {t["Key"]: t["Value"] for t in fake.client(direct=False).describe_snapshots(
            SnapshotIds=[snap])["Snapshots"][0]["Tags"]}
        assert snap_tags["amic:image-id"] == ami and snap_tags.get("amic:role") == "image"
        asked = fake.proxy.calls_of("RegisterImage", answered=True)[-1]
        assert (asked["Architecture"], asked["ImdsSupport"], asked["EnaSupport"]) == \
            ("x86_64", "v2.0", "true")
        assert fake.created_untagged() == []

        again = amic("build", "Amifile", "--target", "ec2", "--bake", "local")
        assert again.returncode == 0 and again.stdout.split()[-1] == ami, again.stderr
        assert fake.ebs.calls["StartSnapshot"] == 1
        assert ami in amic("ami", "ls").stdout

        # one INIT line changed: the disk is the kept one changed in place, so its snapshot
        # is started (over the first) while the disk step runs, and the upload goes into it
        (tmp_path / "Amifile").write_text(AMIFILE.format(base="debian:12", name=name)
                                          .replace("echo hello", "echo hello again"))
        changed = amic("build", "Amifile", "--target", "ec2", "--bake", "local")
        assert changed.returncode == 0, changed.stderr
        image = fake.client(direct=False).describe_images(
            ImageIds=[changed.stdout.split()[-1]])["Images"][0]
        second = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        assert f"snapshot {second} started beside the disk step" in changed.stderr
        assert "changed in place" in changed.stderr and fake.ebs.calls["StartSnapshot"] == 2
        assert fake.ebs.snaps[second].parent == snap and fake.ebs.state(second) == "completed"
        fake.strict.consistency.settle()
        assert "nothing to collect" in amic("gc").stderr

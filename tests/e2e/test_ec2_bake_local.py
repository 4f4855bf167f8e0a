"""``amic build --target ec2 --bake local`` through the CLI against the EC2 and EBS stand-ins.

EC2 is the strict stand-in (throttling, the tag-filter lag). The image is built on the
local target, uploaded block by block to the strict EBS stand-in and registered; a
second build finds the AMI by its final key without uploading; ``amic ami ls`` lists
it like an SSH-baked AMI; a third, one INIT line changed, uploads into a snapshot started
over the first while its disk was being made; ``amic gc`` finds nothing to collect. What
cannot be baked locally is refused with exit 2 before anything is created.

The final AMI's options are honoured as on the SSH path: boot mode, NitroTPM, SR-IOV, the
root volume and an extra mapping at RegisterImage, sharing of the image and its snapshot,
deprecation, snapshot tags, a region copy (in ``--manifest`` too, and the copies a cached
image lacks made by the next build), ``--force-deregister`` keeping the replaced image's
snapshot unless ``--force-delete-snapshot``; encryption and a build-instance volume, which
a local bake cannot honour, are refused naming the flag.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import uuid

import boto3
import pytest
from amic import contract
from amic.targets.ec2 import disk_reuse
from amic.targets.local.target import default_store

from tests.harness.cli import run_amic
from tests.harness.ec2 import REGION, fake_ec2
from tests.harness.ec2.api import tag_specs

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
                            (["Amifile", "--arch", "arm64"], "cannot make an arm64 image"),
                            (["Amifile", "--encrypt"], "--bake local cannot take --encrypt"),
                            (["Amifile", "--launch-volume", "device=/dev/sdf,size=2"],
                             "--bake local cannot take --launch-volume")):
            refused = amic("build", *args, "--target", "ec2", "--bake", "local")
            assert refused.returncode == 2, refused.stderr
            assert words in refused.stderr and "--bake instance" in refused.stderr
            assert "Traceback" not in refused.stderr
        assert sum(fake.ebs.calls.values()) == 0
        assert [a for a, _ in fake.proxy.log if not a.startswith("Describe")] == []

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

        # --no-cache makes the key's image again and deregisters the one it replaces, as on
        # the SSH path: one key names one final AMI
        replaced = changed.stdout.split()[-1]
        key = {t["Key"]: t["Value"] for t in image["Tags"]}["amic:key"]
        fresh = amic("build", "Amifile", "--target", "ec2", "--bake", "local", "--no-cache")
        assert fresh.returncode == 0, fresh.stderr
        assert fresh.stdout.split()[-1] != replaced and f"deregistered {replaced}" in fresh.stderr
        fake.strict.consistency.settle()
        under_key = fake.client(direct=False).describe_images(Owners=["self"], Filters=[
            {"Name": "tag:amic:key", "Values": [key]}])["Images"]
        assert [i["ImageId"] for i in under_key] == [fresh.stdout.split()[-1]], under_key
        assert "nothing to collect" in amic("gc").stderr


OPTIONS = ("--boot-mode", "uefi", "--tpm-support", "v2.0", "--sriov-support",
           "--imds-support", "v2.0", "--volume-size", "8", "--volume-type", "gp3",
           "--iops", "4000", "--throughput", "250", "--ami-volume", "device=/dev/sdg,size=3",
           "--share-with", "123456789012", "--deprecate-at", "400d",
           "--snapshot-tag", "backup=no", "--copy-to-region", "us-west-2")


def test_bake_local_honours_the_ami_options(tmp_path):
    name = f"bake-opts-{uuid.uuid4().hex[:12]}"
    (tmp_path / "Amifile").write_text(AMIFILE.format(base="debian:12", name=name))
    with fake_ec2(tmp_path / "ec2", strict=True) as fake, contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, disk_reuse.kept_dir(
            default_store(), contract.project_id(None, name)), ignore_errors=True)
        env = {**fake.env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
               "XDG_CACHE_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path)}
        ec2 = fake.client(direct=False)
        west = boto3.client("ec2", region_name="us-west-2", endpoint_url=fake.proxy.url,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

        def amic(*args):
            done = run_amic("build", "Amifile", "--target", "ec2", "--bake", "local", *args,
                            cwd=tmp_path, env=env, timeout=1800)
            assert done.returncode == 0, done.stderr
            return done.stdout.split()[-1]

        def snapshot_of(ami: str) -> str:      # through the proxy: the snapshot uploaded
            image = ec2.describe_images(ImageIds=[ami])["Images"][0]
            return image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]

        def alive(snap: str) -> bool:
            return any(s["SnapshotId"] == snap
                       for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"])

        ami = amic(*OPTIONS, "--manifest", tmp_path / "manifest.json")
        asked = fake.proxy.calls_of("RegisterImage", answered=True)[-1]
        assert {k: asked.get(k) for k in ("BootMode", "TpmSupport", "SriovNetSupport",
                                          "ImdsSupport")} == {
            "BootMode": "uefi", "TpmSupport": "v2.0", "SriovNetSupport": "simple",
            "ImdsSupport": "v2.0"}
        root = {k.split(".Ebs.")[1]: v for k, v in asked.items()
                if k.startswith("BlockDeviceMapping.1.Ebs.")}
        snap = snapshot_of(ami)
        assert root == {"SnapshotId": snap, "VolumeSize": "8", "VolumeType": "gp3",
                        "Iops": "4000", "Throughput": "250", "DeleteOnTermination": "true"}
        assert (asked["BlockDeviceMapping.2.DeviceName"],
                asked["BlockDeviceMapping.2.Ebs.VolumeSize"]) == ("/dev/sdg", "3")
        perms = ec2.describe_image_attribute(ImageId=ami, Attribute="launchPermission")
        assert perms["LaunchPermissions"] == [{"UserId": "123456789012"}]
        volume = ec2.describe_snapshot_attribute(SnapshotId=snap,
                                                 Attribute="createVolumePermission")
        assert volume["CreateVolumePermissions"] == [{"UserId": "123456789012"}]
        stags = {t["Key"]: t["Value"] for t in
                 ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0]["Tags"]}
        assert stags["backup"] == "no" and stags["amic:image-id"] == ami
        assert "backup" not in tag_specs(asked, "image")
        when = dt.datetime.strptime(fake.standin.ami_rules.deprecations[ami],
                                    "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
        assert abs(when - dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=400)) \
            < dt.timedelta(hours=1)
        copies = west.describe_images(Owners=["self"])["Images"]
        assert len(copies) == 1, copies
        copy = copies[0]["ImageId"]
        assert {t["Key"]: t["Value"] for t in copies[0]["Tags"]}["amic:source-image"] == \
            f"{REGION}/{ami}"
        assert fake.standin.ami_rules.deprecations[copy] == \
            fake.standin.ami_rules.deprecations[ami]
        regions = json.loads((tmp_path / "manifest.json").read_text())["regions"]
        assert regions == {REGION: ami, "us-west-2": copy}
        assert fake.created_untagged() == []

        # unchanged, one more region: the cached image gets the copy it lacks, nothing else
        fake.strict.consistency.settle()
        again = amic(*OPTIONS, "--copy-to-region", "eu-west-1")
        assert again == ami and fake.ebs.calls["StartSnapshot"] == 1
        eu = [r for r, _ in fake.standin.image_copies.made]
        assert eu == ["us-west-2", "eu-west-1"], eu

        # one name for every key: the image of that name is replaced, its snapshot kept
        # for `amic gc` unless --force-delete-snapshot
        fixed = ("--ami-name", f"{name}-fixed")
        for version, delete in (("v2", None), ("v3", ()), ("v4", ("--force-delete-snapshot",))):
            (tmp_path / "Amifile").write_text(AMIFILE.format(base="debian:12", name=name)
                                              .replace("echo hello", f"echo {version}"))
            fake.strict.consistency.settle()
            old, old_snap = ami, snapshot_of(ami)
            ami = amic(*fixed, *(() if delete is None else ("--force-deregister", *delete)))
            if delete is None:
                continue
            assert ami != old and ec2.describe_images(Owners=["self"], Filters=[
                {"Name": "image-id", "Values": [old]}])["Images"] == []
            assert alive(old_snap) is not bool(delete), (version, old_snap)
        assert fake.created_untagged() == []

"""``--bake local``'s final AMI options (``local_publish``) against the EC2 and EBS stand-ins.

A small raw disk is uploaded and registered by ``ebs_image.publish`` as the bake calls it,
with the registration and the ``then`` that ``local_publish`` makes from options read by
the option table: what RegisterImage is given (EC2's volume rules checked by the proxy, a
root volume below its snapshot refused as EC2 refuses it), the image's sharing, its
snapshot's, its deprecation, the snapshot tags; an image whose sharing EC2 refuses is
removed with its snapshot; a cached image found by ``LocalBake`` gets its missing region
copies. Only moto and the stand-ins answer; nothing of amic is replaced."""

from __future__ import annotations

import platform
from pathlib import Path

import boto3
import botocore.config
import pytest
from amic.errors import BuildError
from amic.targets.base import Image
from amic.targets.ec2 import block_manifest as bm
from amic.targets.ec2 import ebs_image, local_publish
from amic.targets.ec2 import session as aws
from amic.targets.ec2.options import options_from_values
from amic.targets.ec2.target import Ec2Target

from tests.harness.ec2 import REGION, fake_ec2
from tests.harness.ec2.api import tag_specs

pytestmark = pytest.mark.slow
B = bm.BLOCK_SIZE
TAGS = {"amic:tool": "amic/test", "amic:key": "k" * 64, "amic:kind": "final",
        "amic:project": "p-opts", "amic:name": "opts", "amic:build-id": "b-1"}
ACCOUNT, OTHER = "123456789012", "444455556666"
ORG = "arn:aws:organizations::123456789012:organization/o-abc123def4"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with fake_ec2(tmp_path_factory.mktemp("ec2")) as fake:
        yield fake


@pytest.fixture
def fake(server, tmp_path, monkeypatch):
    server.reset()
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("AMIC_CACHE_DIR", str(tmp_path / "amic"))
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    return server


def ebs(fake):
    return boto3.client("ebs", region_name=REGION, aws_access_key_id="testing",
                        aws_secret_access_key="testing", endpoint_url=fake.ebs.url,
                        config=botocore.config.Config(retries={"total_max_attempts": 1,
                                                               "mode": "standard"}))


def disk(path: Path, size: int = 64 * 1024 * 1024) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)
        for index in (0, 3, size // B - 1):
            fh.seek(index * B)
            fh.write(b"x" * B)
    return path


def publish(fake, path: Path, lines: list[str], snapshot_tags=None, **values):
    """``path`` uploaded and registered as ``LocalBake.publish`` has it done for ``values``."""
    opts = options_from_values({"bake": "local", "poll_interval": 0.05, **values})
    local_publish.check(opts)
    ec2 = fake.client(direct=False)
    return ebs_image.publish(ebs(fake), ec2, path, name="opts-1", description="test",
                             arch="x86_64", tags=TAGS, build_id="b-1", log=lines.append,
                             snapshot_tags=snapshot_tags, how=local_publish.registration(opts),
                             then=local_publish.finish(ec2, opts, REGION, lines.append))


def registered(fake) -> dict[str, str]:
    calls = fake.proxy.calls_of("RegisterImage", answered=True)
    assert len(calls) == 1, calls
    return calls[0]


def test_boot_mode_tpm_sriov_and_the_volumes_reach_register_image(fake, tmp_path):
    lines: list[str] = []
    done = publish(fake, disk(tmp_path / "a.raw"), lines, tpm_support="v2.0",
                   sriov_support=True, volume_size=4, volume_type="gp3", iops=4000,
                   throughput=250, imds_support="v2.0",
                   ami_volumes=["device=/dev/sdg,size=3,type=io2,iops=1000",
                                "device=/dev/sdh,virtual-name=ephemeral0"])
    asked = registered(fake)
    assert {k: asked[k] for k in ("BootMode", "TpmSupport", "SriovNetSupport", "ImdsSupport",
                                  "EnaSupport")} == {
        "BootMode": "uefi", "TpmSupport": "v2.0", "SriovNetSupport": "simple",
        "ImdsSupport": "v2.0", "EnaSupport": "true"}
    root = {k.split(".Ebs.")[1]: v for k, v in asked.items()
            if k.startswith("BlockDeviceMapping.1.Ebs.")}
    assert asked["BlockDeviceMapping.1.DeviceName"] == "/dev/xvda"
    assert root == {"SnapshotId": done.upload.snapshot_id, "VolumeSize": "4",
                    "VolumeType": "gp3", "Iops": "4000", "Throughput": "250",
                    "DeleteOnTermination": "true"}
    assert (asked["BlockDeviceMapping.2.DeviceName"], asked["BlockDeviceMapping.2.Ebs.Iops"],
            asked["BlockDeviceMapping.3.VirtualName"]) == ("/dev/sdg", "1000", "ephemeral0")
    # nothing asked of the image once registered: no wait, no attribute (IMDSv2 only was
    # RegisterImage's), as without options
    after = [a for a, _ in fake.proxy.answered][
        [a for a, _ in fake.proxy.answered].index("RegisterImage"):]
    assert not {"DescribeImages", "ModifyImageAttribute", "EnableImageDeprecation"} & set(after)


def test_a_root_volume_below_the_snapshot_is_the_snapshots_size(fake, tmp_path):
    lines: list[str] = []
    path = disk(tmp_path / "b.raw", size=bm.GIB + 2 * B)        # a 2 GiB volume
    done = publish(fake, path, lines, volume_size=1)
    assert done.upload.manifest.volume_gib == 2
    assert registered(fake)["BlockDeviceMapping.1.Ebs.VolumeSize"] == "2"
    assert "root volume: 2 GiB, the snapshot's size (the 1 GiB asked would not hold it)" in lines


def test_the_image_is_deprecated_and_shared_with_its_snapshot(fake, tmp_path):
    lines: list[str] = []
    done = publish(fake, disk(tmp_path / "c.raw"), lines,
                   {**TAGS, "backup": "no"}, share_accounts=[ACCOUNT], snapshot_users=[OTHER],
                   ami_org_arns=[ORG], deprecate_at="400d", imds_support="v2.0")
    ec2, ami, snap = fake.client(direct=False), done.image_id, done.upload.snapshot_id
    perms = ec2.describe_image_attribute(ImageId=ami, Attribute="launchPermission")
    assert {"UserId": ACCOUNT} in perms["LaunchPermissions"]
    assert {"OrganizationArn": ORG} in perms["LaunchPermissions"]
    assert {"UserId": OTHER} not in perms["LaunchPermissions"]    # snapshots only
    volume = ec2.describe_snapshot_attribute(SnapshotId=snap, Attribute="createVolumePermission")
    assert sorted(p["UserId"] for p in volume["CreateVolumePermissions"]) == [ACCOUNT, OTHER]
    assert fake.standin.ami_rules.deprecations[ami].startswith(("2027-", "2028-"))
    assert not [c for c in fake.proxy.calls_of("ModifyImageAttribute") if "ImdsSupport.Value" in c]
    # the snapshot tags: on the snapshot from StartSnapshot on, not on the image
    assert fake.ebs.snaps[snap].tags and {"Key": "backup", "Value": "no"} in fake.ebs.snaps[snap].tags
    snap_tags = aws.tag_dict(ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0]["Tags"])
    assert snap_tags["backup"] == "no" and snap_tags["amic:image-id"] == ami
    assert "backup" not in tag_specs(registered(fake), "image")
    assert f"shared snapshots {snap} with {ACCOUNT}, {OTHER}" in lines, lines


def test_an_image_ec2_will_not_share_is_removed_with_its_snapshot(fake, tmp_path):
    fake.proxy.fail("ModifyImageAttribute", times=1, code="UnauthorizedOperation", status=403)
    with pytest.raises(BuildError, match="UnauthorizedOperation"):
        publish(fake, disk(tmp_path / "d.raw"), [], share_accounts=[ACCOUNT])
    ami = registered(fake)
    gone = fake.client(direct=False).describe_images(Owners=["self"])["Images"]
    assert [i["ImageId"] for i in gone] == [], "the unshared image stayed"
    assert fake.proxy.calls_of("DeregisterImage", answered=True)
    # amic's (moto's RegisterImage invents an untagged one of its own for each image)
    snaps = fake.client().describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": ["amic:build-id"]}])
    assert snaps["Snapshots"] == [] and not list(bm.manifests_dir().glob("*.json")), (ami, snaps)


def test_a_cached_image_gets_its_missing_region_copies(fake, tmp_path):
    done = publish(fake, disk(tmp_path / "e.raw"), [])
    lines: list[str] = []
    bake = Ec2Target.from_values({"bake": "local", "poll_interval": 0.05,
                                  "copy_regions": ["us-west-2"], "deprecate_at": "30d"},
                                 log_fn=lines.append)
    bake.publish_cached(Image(id=done.image_id, key=TAGS["amic:key"], tags=TAGS), "b-2")
    west = boto3.client("ec2", region_name="us-west-2", endpoint_url=fake.proxy.url,
                        aws_access_key_id="testing", aws_secret_access_key="testing")
    copies = west.describe_images(Owners=["self"])["Images"]
    assert len(copies) == 1 and bake.copies == {"us-west-2": copies[0]["ImageId"]}
    tags = aws.tag_dict(copies[0]["Tags"])
    assert tags["amic:source-image"] == f"{REGION}/{done.image_id}"
    assert tags["amic:key"] == TAGS["amic:key"]
    assert fake.standin.ami_rules.deprecations[copies[0]["ImageId"]]
    assert any("copying the cached image" in line for line in lines), lines

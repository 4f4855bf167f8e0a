"""Packer amazon-ebs parity, the AMI side (issue 21), through the real CLI against the stand-in.

Each option shows up in the EC2 calls the proxy records: run and volume tags at launch,
the root volume's type/IOPS/throughput and extra launch volumes, the AMI's block device
mappings, ENA, IMDSv2-only, deprecation, snapshot tags apart from AMI tags, user /
organization / OU sharing apart from snapshot sharing, copies to two regions at once
each with its own KMS key (and both in ``--manifest``), the shutdown behaviour; a
``--skip-create-ami`` build makes no image; ``--boot-mode``/``--tpm-support`` register the
image again with them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.harness.e2e_builds import Builds
from tests.harness.ec2 import REGION, assert_clean, standin_ec2
from tests.harness.ec2.api import tag_specs

pytestmark = [pytest.mark.slow, pytest.mark.root]

AMIFILE = """\
FROM debian:12
NAME parity-shop
SERVICE base
    INIT echo base-{v} > /etc/amic-base
"""
ORG = "arn:aws:organizations::123456789012:organization/o-abc123def4"
OU = "arn:aws:organizations::123456789012:ou/o-abc123def4/ou-ab12-cd34ef56"
WEST_KEY = "arn:aws:kms:us-west-2:123456789012:key/1111aaaa-2222-3333-4444-555566667777"
EU_KEY = "alias/eu-builds"


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    with standin_ec2(tmp_path_factory) as fake:
        yield Builds(fake, tmp_path_factory.mktemp("home"))


def folder_with(tmp_path: Path, version: str) -> Path:
    folder = tmp_path / "shop"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Amifile").write_text(AMIFILE.format(v=version))
    return folder


def one(proxy, action: str) -> dict[str, str]:
    calls = proxy.calls_of(action, answered=True)
    assert len(calls) == 1, (action, calls)
    return calls[0]


def test_launch_volume_tag_ami_share_copy_options_reach_ec2(builds, tmp_path):
    fake = builds.fake
    fake.proxy.reset()
    folder = folder_with(tmp_path, "v1")
    manifest = tmp_path / "manifest.json"
    ami = builds.build(
        folder, "--run-tag", "team=web", "--run-volume-tag", "cost=ci",
        "--ami-tag", "release=1", "--snapshot-tag", "backup=no", "--snapshot-tag", "release=s",
        "--volume-type", "gp3", "--iops", "4000", "--throughput", "250",
        "--launch-volume", "device=/dev/sdf,size=2,type=io2,iops=1000",
        "--ami-volume", "device=/dev/sdg,size=3,type=gp3,throughput=300",
        "--ena-support", "--imds-support", "v2.0", "--deprecate-at", "400d",
        "--ami-user", "111122223333", "--snapshot-user", "444455556666",
        "--ami-org-arn", ORG, "--ami-ou-arn", OU,
        "--copy-to-region", f"us-west-2:{WEST_KEY}", "--copy-to-region", "eu-west-1",
        "--region-kms-key", f"eu-west-1={EU_KEY}", "--shutdown-behavior", "stop",
        "--manifest", str(manifest))
    proxy = fake.proxy

    run = proxy.calls_of("RunInstances", answered=True)[-1]
    assert run["InstanceInitiatedShutdownBehavior"] == "stop"
    instance, volume = tag_specs(run, "instance"), tag_specs(run, "volume")
    assert instance["team"] == "web" and "cost" not in instance and "amic:build-id" in instance
    assert volume["cost"] == "ci" and "team" not in volume and "amic:build-id" in volume
    devices = {run[k]: k.rsplit(".", 1)[0] for k in run if k.endswith(".DeviceName")}
    assert len(devices) == 2, devices
    root = next(pre for dev, pre in devices.items() if dev != "/dev/sdf")   # the image's root
    assert (run[f"{root}.Ebs.VolumeType"], run[f"{root}.Ebs.Iops"],
            run[f"{root}.Ebs.Throughput"]) == ("gp3", "4000", "250")
    extra = devices["/dev/sdf"]
    assert (run[f"{extra}.Ebs.VolumeSize"], run[f"{extra}.Ebs.VolumeType"],
            run[f"{extra}.Ebs.Iops"]) == ("2", "io2", "1000")

    ena = [c for c in proxy.calls_of("ModifyInstanceAttribute", answered=True)
           if "EnaSupport.Value" in c]
    assert ena and ena[0]["EnaSupport.Value"] == "true"
    create = one(proxy, "CreateImage")
    assert (create["BlockDeviceMapping.1.DeviceName"], create["BlockDeviceMapping.1.Ebs.VolumeSize"],
            create["BlockDeviceMapping.1.Ebs.Throughput"]) == ("/dev/sdg", "3", "300")
    image_tags, snap_tags = tag_specs(create, "image"), tag_specs(create, "snapshot")
    assert image_tags["release"] == "1" and "backup" not in image_tags
    assert snap_tags["release"] == "s" and snap_tags["backup"] == "no"   # snapshot tags win
    assert snap_tags["amic:key"] == image_tags["amic:key"]

    modify = proxy.calls_of("ModifyImageAttribute", answered=True)
    imds = [c for c in modify if c.get("ImdsSupport.Value")]
    assert {c["ImageId"] for c in imds} >= {ami} and imds[0]["ImdsSupport.Value"] == "v2.0"
    shares = [c for c in modify if c["ImageId"] == ami and "LaunchPermission.Add.1.UserId" in c]
    assert len(shares) == 1
    share = shares[0]
    assert {share[k] for k in share if k.startswith("LaunchPermission.Add.")} == {
        "111122223333", ORG, OU}
    assert "444455556666" not in share.values()        # --snapshot-user: snapshots only
    volume_shares = [c for c in proxy.calls_of("ModifySnapshotAttribute", answered=True)]
    assert volume_shares and all(c["UserId.1"] == "444455556666" and "UserId.2" not in c
                                 for c in volume_shares)
    perms = fake.client().describe_image_attribute(ImageId=ami, Attribute="launchPermission")
    assert {"UserId": "111122223333"} in perms["LaunchPermissions"]

    deprecations = proxy.calls_of("EnableImageDeprecation", answered=True)
    assert ami in {c["ImageId"] for c in deprecations}
    assert fake.standin.ami_rules.deprecations[ami].startswith(("2027-", "2028-"))

    copies = proxy.calls_of("CopyImage", answered=True)
    keys = {c.get("KmsKeyId") for c in copies}
    assert keys == {WEST_KEY, EU_KEY} and all(c["Encrypted"] == "true" for c in copies)
    assert len(deprecations) == 3 and len(imds) == 3      # the copies got them too
    # tagged at creation, and in parallel: both asked for before either was waited for
    assert all(tag_specs(c, "image")["amic:source-image"] == f"{REGION}/{ami}" for c in copies)
    made = {copy_id for _, copy_id in fake.standin.image_copies.made[-2:]}
    order = [(a, p) for a, p in proxy.answered if a in ("CopyImage", "DescribeImages")]
    last_copy = max(i for i, (a, _) in enumerate(order) if a == "CopyImage")
    first_wait = min(i for i, (a, p) in enumerate(order) if a == "DescribeImages"
                     and p.get("ImageId.1") in made)
    assert last_copy < first_wait, [a for a, _ in order]
    regions = json.loads(manifest.read_text())["regions"]
    assert set(regions) == {REGION, "us-west-2", "eu-west-1"} and regions[REGION] == ami
    assert len(set(regions.values())) == 3
    assert_clean(fake)


def test_skip_create_ami_provisions_and_makes_no_image(builds, tmp_path):
    fake = builds.fake
    fake.proxy.reset()
    folder = folder_with(tmp_path, "v-skip")
    proc = builds.amic("build", "--target", "ec2", *fake.ssh_args(), "--ssh-user", "root",
                       "--poll-interval", "0.05", "--ssh-timeout", "60", "--checkpoint", "none",
                       "--console-timeout", "30", "--skip-create-ami", "Amifile", cwd=folder)
    assert "--skip-create-ami: no image made" in proc.stderr
    assert fake.proxy.count("RunInstances") == 1
    assert fake.proxy.count("CreateImage", "RegisterImage", "CopyImage", "CreateSnapshot") == 0
    assert_clean(fake)


def test_boot_mode_and_tpm_register_the_image_again(builds, tmp_path):
    fake = builds.fake
    fake.proxy.reset()
    folder = folder_with(tmp_path, "v-uefi")
    ami = builds.build(folder, "--boot-mode", "uefi", "--tpm-support", "v2.0")
    register = one(fake.proxy, "RegisterImage")
    assert (register["BootMode"], register["TpmSupport"]) == ("uefi", "v2.0")
    first = one(fake.proxy, "CreateImage")
    assert register["Name"] == first["Name"]
    ec2 = fake.client(direct=False)     # as EC2 shows it: the snapshot registered from
    raw = ec2.describe_images(ImageIds=[ami])["Images"][0]
    snap = raw["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    stags = {t["Key"]: t["Value"] for t in
             ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0].get("Tags", [])}
    assert stags["amic:image-id"] == ami
    assert_clean(fake)


def test_an_init_that_powers_off_is_reported(builds, tmp_path):
    """--shutdown-behavior stop: the instance stops under a running INIT (the stand-in stops it
    as EC2 does when the guest powers off); the build fails saying so, and cleans up."""
    import threading
    import time

    fake = builds.fake
    fake.proxy.reset()
    folder = tmp_path / "off"
    folder.mkdir()
    (folder / "Amifile").write_text("FROM debian:12\nNAME parity-off\nSERVICE base\n"
                                    "    INIT touch /var/tmp/powering-off && sleep 300\n")
    stopped: list[str] = []

    def power_off() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not stopped:
            for inst in list(fake.standin.instances.values()):
                if (inst.upper / "root" / "var/tmp/powering-off").exists():
                    fake.client(direct=False).stop_instances(InstanceIds=[inst.id])
                    stopped.append(inst.id)
                    return
            time.sleep(0.2)

    watcher = threading.Thread(target=power_off, daemon=True)
    watcher.start()
    proc = builds.amic("build", "--target", "ec2", *fake.ssh_args(), "--ssh-user", "root",
                       "--poll-interval", "0.05", "--ssh-timeout", "60", "--checkpoint", "none",
                       "--console-timeout", "30", "--shutdown-behavior", "stop", "Amifile",
                       cwd=folder, check=False)
    watcher.join(timeout=10)
    assert stopped and proc.returncode == 1, proc.stderr
    assert "something on it powered it off" in proc.stderr, proc.stderr
    assert "--shutdown-behavior stop stopped it" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert_clean(fake)


def test_force_deregister_keeps_snapshots_unless_force_delete_snapshot(builds, tmp_path):
    """Packer's force_deregister / force_delete_snapshot: the replaced AMI's snapshots stay
    (for `amic gc`) unless --force-delete-snapshot deletes them at once."""
    fake = builds.fake
    ec2 = fake.client(direct=False)

    def snapshots_of(ami: str) -> list[str]:
        raw = ec2.describe_images(ImageIds=[ami])["Images"][0]
        return [b["Ebs"]["SnapshotId"] for b in raw["BlockDeviceMappings"] if "Ebs" in b]

    def alive(snaps: list[str]) -> set[str]:
        found = ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
        return {s["SnapshotId"] for s in found} & set(snaps)

    fixed = ("--ami-name", "parity-fixed-{key}")
    first = builds.build(folder_with(tmp_path, "fixed"), *fixed)
    first_snaps = snapshots_of(first)
    second = builds.build(folder_with(tmp_path, "fixed"), *fixed, "--no-cache",
                          "--force-deregister")
    assert second != first and alive(first_snaps) == set(first_snaps)
    second_snaps = snapshots_of(second)
    third = builds.build(folder_with(tmp_path, "fixed"), *fixed, "--no-cache",
                         "--force-deregister", "--force-delete-snapshot")
    assert third != second and alive(second_snaps) == set()
    assert_clean(fake)

"""``--bake local`` and the final AMI's options (``local_publish``): what it cannot honour is
refused before anything is made, naming the flag; what it honours at RegisterImage is
rendered from the options as the SSH path renders them.

The options are made from flag values by the option table's own reader
(``options_from_values``), the target by ``Ec2Target.from_values`` as ``amic build`` makes
it; no AWS call is made (the refusal comes first; EC2 clients are made on first use)."""

from __future__ import annotations

import platform

import pytest

from amic.errors import UsageError
from amic.targets.ec2 import ebs_image, local_publish
from amic.targets.ec2.local_bake import LocalBake
from amic.targets.ec2.options import Ec2Options, options_from_values
from amic.targets.ec2.target import Ec2Target


@pytest.fixture(autouse=True)
def x86_64_host(monkeypatch, tmp_path):
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("AMIC_CACHE_DIR", str(tmp_path / "cache"))


def bake(**values) -> Ec2Target:
    return Ec2Target.from_values({"bake": "local", **values}, log_fn=lambda m: None)


@pytest.mark.parametrize("values,flag", [
    ({"encrypt": True}, "--encrypt"),
    ({"kms_key_id": "alias/mine"}, "--kms-key-id"),
    ({"launch_volumes": ["device=/dev/sdf,size=2"]}, "--launch-volume"),
])
def test_what_a_local_bake_cannot_honour_is_refused_naming_the_flag(values, flag):
    with pytest.raises(UsageError) as refused:
        bake(**values)
    said = str(refused.value)
    assert f"--bake local cannot take {flag}:" in said and "--bake instance" in said
    assert isinstance(bake(), LocalBake)     # the same values without it: a local bake
    assert not isinstance(Ec2Target.from_values({"bake": "instance", **values}), LocalBake)


@pytest.mark.parametrize("values,words", [
    ({"tpm_support": "v2.0", "boot_mode": "legacy-bios"}, "--tpm-support needs UEFI"),
    ({"ami_volumes": ["device=/dev/xvda,size=20"]}, "--ami-volume device=/dev/xvda: that is "
                                                    "the root device"),
])
def test_contradictions_with_the_uploaded_disk_are_refused(values, words):
    with pytest.raises(UsageError, match=words):
        bake(**values)


def test_an_imds_support_other_than_v2_is_refused():
    # the flag's choices are v2.0 alone today; the bake's images are IMDSv2 only whatever
    # a later choice would be, so the refusal does not rely on argparse
    local_publish.check(Ec2Options(imds_support="v2.0"))
    with pytest.raises(UsageError, match="IMDSv2 only"):
        local_publish.check(Ec2Options(imds_support="v1.0"))


def test_without_options_registration_is_the_bakes_own():
    how = local_publish.registration(options_from_values({"bake": "local"}))
    assert how == ebs_image.Registration()
    assert how.args("snap-1", 2) == {"BootMode": "uefi-preferred", "BlockDeviceMappings": [
        {"DeviceName": "/dev/xvda", "Ebs": {"VolumeType": "gp3", "DeleteOnTermination": True,
                                            "SnapshotId": "snap-1", "VolumeSize": 2}}]}


def test_boot_mode_tpm_sriov_root_volume_and_mappings_go_to_register_image():
    opts = options_from_values({
        "bake": "local", "tpm_support": "v2.0", "sriov_support": True, "volume_size": 8,
        "volume_type": "io2", "iops": 5000,
        "ami_volumes": ["device=/dev/sdg,size=3,type=gp3,throughput=300",
                        "device=/dev/sdh,virtual-name=ephemeral0", "device=/dev/sdi,no-device"]})
    args = local_publish.registration(opts).args("snap-1", 2)
    assert (args["BootMode"], args["TpmSupport"], args["SriovNetSupport"]) == \
        ("uefi", "v2.0", "simple")       # NitroTPM needs UEFI: not uefi-preferred
    root, *more = args["BlockDeviceMappings"]
    assert root == {"DeviceName": "/dev/xvda", "Ebs": {
        "SnapshotId": "snap-1", "VolumeSize": 8, "VolumeType": "io2", "Iops": 5000,
        "DeleteOnTermination": True}}
    assert more == [vol.mapping() for vol in opts.ami_volumes]     # as CreateImage gets them
    assert more[0] == {"DeviceName": "/dev/sdg", "Ebs": {
        "VolumeSize": 3, "VolumeType": "gp3", "Throughput": 300, "DeleteOnTermination": True}}
    # a boot mode given is kept; a root asked smaller than the snapshot is the snapshot's
    mode = local_publish.registration(options_from_values({"boot_mode": "legacy-bios",
                                                           "volume_size": 1}))
    assert mode.args("snap-2", 3)["BootMode"] == "legacy-bios"
    assert mode.args("snap-2", 3)["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 3


def test_only_what_is_asked_makes_the_image_wait():
    region = "us-east-1"
    assert not local_publish.asks_more(options_from_values({"imds_support": "v2.0",
                                                            "boot_mode": "uefi"}), region)
    for values in ({"share_accounts": ["123456789012"]}, {"snapshot_users": ["123456789012"]},
                   {"ami_groups": ["all"]}, {"deprecate_at": "30d"},
                   {"copy_regions": ["us-west-2"]}):
        assert local_publish.asks_more(options_from_values(values), region), values
    assert not local_publish.asks_more(options_from_values({"copy_regions": [region]}), region)

"""A build's look-ups (``amic.targets.ec2.lookups``): one Describe per kind for every key,
against moto behind the counting proxy (so the counts are EC2's, not a mock's)."""

from __future__ import annotations

import pytest
from amic.targets.ec2 import lookups
from amic.targets.ec2 import session as aws

from tests.harness.ec2 import REGION, fake_ec2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    with fake_ec2(tmp_path_factory.mktemp("ec2")) as fake:
        yield fake


def _tag(ec2, rid: str, **tags: str) -> None:
    ec2.create_tags(Resources=[rid], Tags=[{"Key": k.replace("_", ":"), "Value": v}
                                           for k, v in tags.items()])


def test_every_key_of_a_build_in_two_calls_and_a_recheck_in_one(fake, monkeypatch):
    for k, v in fake.env.items():
        monkeypatch.setenv(k, v)
    direct = fake.client()
    vol = direct.create_volume(AvailabilityZone=f"{REGION}a", Size=8)["VolumeId"]
    keys = [f"{c}" * 64 for c in "abcde"]
    services = ["s1", "s2", "s3", "s4", "s5"]
    # layers 1 and 2 checkpointed (snapshots), the final key an AMI; layer 3 of another
    # project's service of the same name is not ours
    snaps = {}
    for key, svc in zip(keys[:2], services[:2]):
        snaps[key] = direct.create_snapshot(VolumeId=vol)["SnapshotId"]
        _tag(direct, snaps[key], amic_key=key, amic_service=svc, amic_checkpoint="snapshot",
             amic_kind="layer")
    other = direct.create_snapshot(VolumeId=vol)["SnapshotId"]
    _tag(direct, other, amic_key="f" * 64, amic_service="s3", amic_checkpoint="snapshot",
         amic_kind="layer")
    final = direct.register_image(Name="final", RootDeviceName="/dev/xvda",
                                  VirtualizationType="hvm")["ImageId"]
    _tag(direct, final, amic_key=keys[4], amic_kind="final")
    fake.proxy.reset()
    ec2 = aws.client(aws.options_from_env())
    found = lookups.Lookups()
    found.plan(keys, services)
    answers = {key: found.find(ec2, key) for key in keys}
    assert answers[keys[0]].id == snaps[keys[0]] and answers[keys[1]].id == snaps[keys[1]]
    assert answers[keys[2]] is None and answers[keys[3]] is None
    assert answers[keys[4]].id == final
    history = found.history(ec2, "s3")
    assert [img.id for img in history] == [other]          # why layer 3 ran: compared with it
    assert fake.proxy.calls == {"DescribeImages": 2, "DescribeSnapshots": 1}, fake.proxy.calls
    # another build held key 4's lease and made it meanwhile: asked again, alone
    made = direct.create_snapshot(VolumeId=vol)["SnapshotId"]
    _tag(direct, made, amic_key=keys[3], amic_service="s4", amic_checkpoint="snapshot")
    found.recheck(keys[3])
    assert found.find(ec2, keys[3]).id == made
    assert fake.proxy.count("DescribeSnapshots") == 2
    # found made: everything is asked afresh at the next look-up
    assert found.find(ec2, keys[2]) is None
    assert fake.proxy.calls == {"DescribeImages": 3, "DescribeSnapshots": 3}, fake.proxy.calls


def test_filter_values_go_in_chunks_of_200():
    assert [len(c) for c in lookups.chunks([str(i) for i in range(450)])] == [200, 200, 50]

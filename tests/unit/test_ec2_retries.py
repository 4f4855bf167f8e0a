"""amic's EC2 calls survive the strict stand-in (``tests/harness/ec2/strict.py``).

Each test first shows the strictness biting (a plain boto3 call without retries, or the
look-up amic used before, is refused or misses), then that amic's own function gets
through it. The refusals themselves are checked in ``tests/targets/test_ec2_standin_strict.py``.
"""

from __future__ import annotations

import time

import boto3
import botocore.config
import botocore.exceptions
import pytest
from amic.targets.ec2 import images, query, resources, snapshots
from amic.targets.ec2 import session as aws
from amic.targets.ec2.options import Ec2Options

from tests.harness.ec2 import REGION, fake_ec2
from tests.harness.ec2.strict import Strictness

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory):
    with fake_ec2(tmp_path_factory.mktemp("ec2")) as fake:
        yield fake


@pytest.fixture
def fake(fake_server, monkeypatch):
    fake_server.strict = None
    fake_server.reset()
    for k, v in fake_server.env.items():
        monkeypatch.setenv(k, v)
    return fake_server


def raw_client(fake):
    """boto3 through the proxy, retries off: what the stand-in refuses, it sees."""
    return boto3.client("ec2", region_name=REGION, aws_access_key_id="testing",
                        aws_secret_access_key="testing", endpoint_url=fake.proxy.url,
                        config=botocore.config.Config(retries={"total_max_attempts": 1,
                                                               "mode": "standard"}))


def amic_client():
    return aws.client(aws.options_from_env())


def drain(ec2, action: str, **kwargs) -> None:
    """Call until the stand-in throttles ``action`` (its bucket is empty)."""
    for _ in range(200):
        try:
            getattr(ec2, action)(**kwargs)
        except botocore.exceptions.ClientError as exc:
            assert exc.response["Error"]["Code"] == "RequestLimitExceeded"
            return
    raise AssertionError("never throttled")


def test_raw_describe_images_retries_throttling_with_jitter(fake):
    ami = fake.register_debian12()
    access = query.resolve()
    fake.proxy.fail("DescribeImages", 2)     # RequestLimitExceeded, HTTP 503: the throttle's answer
    found = query.describe_images(access, ImageIds=[ami], user_agent="amic-test")
    assert [i["ImageId"] for i in found] == [ami]
    assert [a for a, agent in fake.proxy.agents if agent == "amic-test"] == ["DescribeImages"] * 3
    # past its attempts it hands over (QueryError: the caller's boto3 path takes it from there)
    fake.proxy.fail("DescribeImages", query.THROTTLE_ATTEMPTS)
    with pytest.raises(query.QueryError, match="RequestLimitExceeded"):
        query.describe_images(access, ImageIds=[ami], user_agent="amic-test")


def test_boto3_calls_ride_out_the_throttle(fake):
    strict = fake.make_strict(Strictness(bucket_scale=0.03, refill_scale=0.05))  # 3, 1/s
    ami = fake.register_debian12()
    raw, ours = raw_client(fake), amic_client()    # made first: a client takes a while
    drain(raw, "describe_images", ImageIds=[ami])
    for _ in range(6):      # twice the bucket, at once: botocore's backoff waits for refills
        assert images.image_by_id(ours, ami).id == ami
    assert strict.throttle.throttled["DescribeImages"] >= 2


def _image_with_snapshot(fake, ec2) -> tuple[str, str, str]:
    ami = fake.register_debian12()
    iid = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    image = ec2.create_image(InstanceId=iid, Name=f"img-{time.monotonic_ns()}")["ImageId"]
    snap = ec2.describe_images(ImageIds=[image])["Images"][0]["BlockDeviceMappings"][0][
        "Ebs"]["SnapshotId"]
    return iid, image, snap


def test_deregister_waits_for_the_snapshot_to_be_released(fake):
    strict = fake.make_strict(Strictness(in_use_seconds=1.5))
    ec2 = raw_client(fake)
    _, image, snap = _image_with_snapshot(fake, ec2)
    assert images.deregister(amic_client(), image) == [snap]
    assert strict.snapshots.refused["InvalidSnapshot.InUse"] >= 1
    assert fake.client().describe_snapshots(
        Filters=[{"Name": "snapshot-id", "Values": [snap]}])["Snapshots"] == []


def test_layer_snapshots_of_one_volume_wait_out_the_rate(fake):
    strict = fake.make_strict(Strictness(snapshot_interval=1.0))
    ec2 = raw_client(fake)
    vol = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=8)["VolumeId"]
    ours = amic_client()
    first = snapshots.create_layer_snapshot(ours, vol, {"amic:tool": "t"}, "one")
    second = snapshots.create_layer_snapshot(ours, vol, {"amic:tool": "t"}, "two")
    assert first["SnapshotId"] != second["SnapshotId"]
    assert strict.snapshots.refused["SnapshotCreationPerVolumeRateExceeded"] >= 1


def test_cleanup_finds_a_new_instance_by_id_when_the_tag_filter_lags(fake):
    fake.make_strict(Strictness(delay=30.0, multi_eni=True))
    ami = fake.register_debian12()
    ec2 = amic_client()
    tags = aws.tag_specs({"amic:tool": "amic/t", "amic:build-id": "lagged",
                          "amic:role": "build"}, "instance")
    launched = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1,
                                 TagSpecifications=tags)["Instances"][0]
    iid = launched["InstanceId"]
    assert resources.build_instances(ec2, "lagged") == []            # by tag: not yet
    opts = Ec2Options(poll_interval=0.05, instance_timeout=30)
    logged: list[str] = []
    fake.proxy.reset()
    resources.retire_build(ec2, "lagged", opts, logged.append, True, [launched])
    state = fake.client().describe_instances(InstanceIds=[iid])["Reservations"][0][
        "Instances"][0]["State"]["Name"]
    assert state in ("shutting-down", "terminated")
    # RunInstances' answer was enough: no Describe, and TerminateInstances not waited for
    assert fake.proxy.count("DescribeInstances", "TerminateInstances") == 1, fake.proxy.calls
    # several interfaces: the group swap was refused, and the cleanup said what comes instead
    assert fake.strict.multi_eni.refused == 1
    assert any("InvalidInstanceID" in line for line in logged), logged


def test_memo_confirmation_rides_out_a_throttled_call_without_boto3(fake):
    """The memo's two raw DescribeImages: one throttled answer is retried (no boto3 fallback);
    throttled past ``THROTTLE_ATTEMPTS`` the memo is declined (the full path, with botocore's
    retries, runs instead)."""
    from amic.targets.ec2 import target as ec2target

    ami = fake.register_debian12()
    ec2c = fake.client()
    final = ec2c.register_image(Name="final-x", RootDeviceName="/dev/xvda",
                                VirtualizationType="hvm", Architecture="x86_64")["ImageId"]
    ec2c.create_tags(Resources=[final], Tags=[{"Key": "amic:key", "Value": "k" * 64}])
    result = {"image_id": final, "base_image_id": ami, "final_key": "k" * 64}
    target = ec2target.Ec2Target(options=Ec2Options(ssh_cidrs=("127.0.0.1/32",)),
                                 log_fn=lambda m: None)
    fake.proxy.reset()
    fake.proxy.fail("DescribeImages", 1)                       # RequestLimitExceeded, 503
    assert target.confirm_memo(result, {"base_ref": "debian:12"})
    assert fake.proxy.injected == 1 and fake.proxy.count("DescribeImages") == 3
    assert fake.proxy.boto3_calls() == []
    fake.proxy.reset()
    fake.proxy.fail("DescribeImages", 2 * query.THROTTLE_ATTEMPTS)
    assert not target.confirm_memo(result, {"base_ref": "debian:12"})


def test_lease_is_read_back_through_the_delay(fake):
    """DescribeKeyPairs does not show a new lease at once (InvalidKeyPair.NotFound, as EC2
    answers for a while after CreateKeyPair): the holder still takes it, and a second build
    finds it held and waits (polling, not spinning on CreateKeyPair)."""
    from amic.errors import BuildError
    from amic.targets.ec2 import lease

    fake.make_strict()
    ec2 = amic_client()
    fake.proxy.not_found_after("CreateKeyPair", "DescribeKeyPairs", 3, "InvalidKeyPair.NotFound")
    with lease.lease(ec2, "a" * 64, "b-one", log=lambda m: None, poll=0.1) as name:
        assert fake.proxy.injected == 3            # read back through the lag
        before = fake.proxy.count("CreateKeyPair")
        with pytest.raises(BuildError, match="b-one"), \
                lease.lease(ec2, "a" * 64, "b-two", log=lambda m: None, poll=0.1,
                            wait_limit=1.5):
            pass
        assert fake.proxy.count("CreateKeyPair") - before <= 3      # polled, not spun
        assert [k["KeyName"] for k in fake.client().describe_key_pairs()["KeyPairs"]] == [name]
    assert fake.client().describe_key_pairs()["KeyPairs"] == []

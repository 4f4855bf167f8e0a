"""The strict stand-in refuses what EC2 refuses, checked with boto3 (a client nobody here wrote).

One test per strictness of ``tests/harness/ec2/strict.py`` (and the relay's idle sessions
and the first-boot dpkg lock of the instance stand-in). Each shows the refusal, then that
the same call passes once EC2 would let it (so the strictness is a delay, not a wall).
The tests that show amic surviving the same strictness are in ``tests/e2e/test_ec2_strict.py``
and ``tests/unit/test_ec2_retries.py``.
"""

from __future__ import annotations

import socket
import threading
import time

import boto3
import botocore.config
import botocore.exceptions
import pytest

from tests.harness.ec2 import REGION, fake_ec2
from tests.harness.ec2.boot import Relay
from tests.harness.ec2.strict import Strictness

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory):
    with fake_ec2(tmp_path_factory.mktemp("ec2")) as fake:
        yield fake


@pytest.fixture
def fake(fake_server):
    fake_server.strict = None
    fake_server.reset()
    return fake_server


def client(fake):
    """boto3 through the proxy with botocore's retries off: every refusal is seen."""
    return boto3.client("ec2", region_name=REGION, aws_access_key_id="testing",
                        aws_secret_access_key="testing", endpoint_url=fake.proxy.url,
                        config=botocore.config.Config(retries={"total_max_attempts": 1,
                                                               "mode": "standard"}))


def code_of(fn, **kwargs) -> str | None:
    try:
        fn(**kwargs)
    except botocore.exceptions.ClientError as exc:
        return exc.response["Error"]["Code"]
    return None


def test_throttle_refuses_past_the_bucket_with_503_and_refills(fake):
    strict = fake.make_strict(Strictness(bucket_scale=0.05, refill_scale=0.25))
    ec2 = client(fake)
    answers = []
    for _ in range(12):
        try:
            ec2.describe_images(Owners=["self"])
            answers.append(200)
        except botocore.exceptions.ClientError as exc:
            assert exc.response["Error"]["Code"] == "RequestLimitExceeded"
            answers.append(exc.response["ResponseMetadata"]["HTTPStatusCode"])
    # bucket 100 * 0.05 = 5 tokens, refilled at 20 * 0.25 = 5/s
    assert answers[:5] == [200] * 5 and 503 in answers, answers
    assert strict.throttle.throttled["DescribeImages"] == answers.count(503)
    # per action: another API's bucket is untouched
    assert code_of(ec2.describe_key_pairs, KeyNames=[]) is None
    time.sleep(0.5)
    assert code_of(ec2.describe_images, Owners=["self"]) is None    # refilled


def test_tag_filtered_describe_lags_behind_creation(fake):
    strict = fake.make_strict(Strictness(delay=1.0))
    ec2 = client(fake)
    tags = [{"ResourceType": "key-pair", "Tags": [{"Key": "amic:build-id", "Value": "b1"}]}]
    made = ec2.create_key_pair(KeyName="k1", TagSpecifications=tags)
    by_tag = {"Filters": [{"Name": "tag:amic:build-id", "Values": ["b1"]}]}
    assert ec2.describe_key_pairs(**by_tag)["KeyPairs"] == []
    assert ec2.describe_key_pairs(Filters=[{"Name": "tag-key", "Values": ["amic:build-id"]}])[
        "KeyPairs"] == []
    # by name (no tag filter) at once
    assert [k["KeyPairId"] for k in ec2.describe_key_pairs(KeyNames=["k1"])["KeyPairs"]] == [
        made["KeyPairId"]]
    time.sleep(1.1)
    assert [k["KeyPairId"] for k in ec2.describe_key_pairs(**by_tag)["KeyPairs"]] == [
        made["KeyPairId"]]
    assert strict.consistency.hidden == 2


def test_tag_filtered_describe_instances_lags_and_drops_empty_reservations(fake):
    fake.make_strict(Strictness(delay=1.0))
    ami = fake.register_debian12()
    ec2 = client(fake)
    iid = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": "amic:build-id", "Value": "b2"}]}])[
        "Instances"][0]["InstanceId"]
    by_tag = {"Filters": [{"Name": "tag:amic:build-id", "Values": ["b2"]}]}
    assert ec2.describe_instances(**by_tag)["Reservations"] == []
    assert ec2.describe_instances(InstanceIds=[iid])["Reservations"]    # by id at once
    time.sleep(1.1)
    found = ec2.describe_instances(**by_tag)["Reservations"]
    assert [i["InstanceId"] for r in found for i in r["Instances"]] == [iid]


def test_delete_snapshot_in_use_for_a_while_after_deregister(fake):
    fake.make_strict(Strictness(in_use_seconds=1.0))
    ami = fake.register_debian12()
    ec2 = client(fake)
    iid = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    image = ec2.create_image(InstanceId=iid, Name="img")["ImageId"]
    snaps = [b["Ebs"]["SnapshotId"] for b in
             ec2.describe_images(ImageIds=[image])["Images"][0]["BlockDeviceMappings"]
             if "Ebs" in b]
    assert snaps
    assert code_of(ec2.delete_snapshot, SnapshotId=snaps[0]) == "InvalidSnapshot.InUse"  # the AMI
    ec2.deregister_image(ImageId=image)
    assert code_of(ec2.delete_snapshot, SnapshotId=snaps[0]) == "InvalidSnapshot.InUse"  # still
    time.sleep(1.1)
    assert code_of(ec2.delete_snapshot, SnapshotId=snaps[0]) is None
    ec2.terminate_instances(InstanceIds=[iid])


def test_create_snapshot_of_one_volume_is_rate_limited(fake):
    fake.make_strict(Strictness(snapshot_interval=1.0))
    ec2 = client(fake)
    vol = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=8)["VolumeId"]
    other = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=8)["VolumeId"]
    assert code_of(ec2.create_snapshot, VolumeId=vol) is None
    assert code_of(ec2.create_snapshot, VolumeId=vol) == "SnapshotCreationPerVolumeRateExceeded"
    assert code_of(ec2.create_snapshot, VolumeId=other) is None      # per volume
    time.sleep(1.1)
    assert code_of(ec2.create_snapshot, VolumeId=vol) is None


def test_modify_instance_groups_refused_with_several_interfaces(fake):
    strict = fake.make_strict()
    ami = fake.register_debian12()
    ec2 = client(fake)
    one, two = [i["InstanceId"] for i in
                ec2.run_instances(ImageId=ami, MinCount=2, MaxCount=2)["Instances"]]
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    default = ec2.describe_security_groups(Filters=[
        {"Name": "group-name", "Values": ["default"]},
        {"Name": "vpc-id", "Values": [vpc]}])["SecurityGroups"][0]["GroupId"]
    strict.multi_eni.mark(one)
    assert code_of(ec2.modify_instance_attribute, InstanceId=one,
                   Groups=[default]) == "InvalidInstanceID"
    assert code_of(ec2.modify_instance_attribute, InstanceId=two, Groups=[default]) is None
    assert strict.multi_eni.refused == 1


def test_relay_keeps_an_idle_connection_open():
    """The instance relay forwards a connection silent for longer than its connect timeout."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def echo():
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(100):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    relay = Relay(lambda: port)
    try:
        with socket.create_connection(("127.0.0.1", relay.port), 5) as conn:
            conn.settimeout(15)
            conn.sendall(b"one")
            assert conn.recv(10) == b"one"
            time.sleep(6.5)             # the relay's connect timeout was 5 s
            conn.sendall(b"two")
            assert conn.recv(10) == b"two"
    finally:
        relay.close()
        server.close()


def test_relay_cuts_a_connection_silent_both_ways_and_keeps_a_talking_one():
    """The strict relay drops an idle flow as a NAT gateway does (the e2e silent INIT then
    proves amic's keepalives), and only an idle one."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def echo():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=conn: [c.sendall(d) for d in iter(
                lambda: c.recv(100), b"")], daemon=True).start()

    threading.Thread(target=echo, daemon=True).start()
    relay = Relay(lambda: port, idle_timeout=1.0)
    try:
        with socket.create_connection(("127.0.0.1", relay.port), 5) as talking, \
                socket.create_connection(("127.0.0.1", relay.port), 5) as silent:
            for conn in (talking, silent):
                conn.settimeout(5)
                conn.sendall(b"hi")
                assert conn.recv(10) == b"hi"
            for _ in range(6):              # 2.4 s of a byte each 0.4 s
                time.sleep(0.4)
                talking.sendall(b".")
                assert talking.recv(10) == b"."
            assert silent.recv(10) == b"", "the idle connection was not cut"
            assert relay.idle_cuts == 1
    finally:
        relay.close()
        server.close()


@pytest.mark.root
def test_first_boot_holds_the_dpkg_lock_against_apt(tmp_path_factory):
    """A fresh instance's first boot holds dpkg's lock (as unattended-upgrades does): apt
    itself refuses to install meanwhile, and gets the lock once it is let go."""
    from amic.targets.local import rootfs

    from tests.harness.sshd import new_key, require_sshd_root

    require_sshd_root()
    with fake_ec2(tmp_path_factory.mktemp("ec2"), rootfs.ensure_base(), strict=True) as fake:
        fake.standin.dpkg_lock_seconds = 8.0
        ami = fake.register_debian12()
        ec2 = client(fake)
        key = new_key("ed25519")
        ec2.import_key_pair(KeyName="k", PublicKeyMaterial=f"ssh-ed25519 {key.get_base64()}")
        iid = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, KeyName="k")[
            "Instances"][0]["InstanceId"]
        server = fake.standin.instances[iid].sshd
        assert fake.standin.dpkg_holders == [iid], fake.standin.problems
        refused = server.run("apt-get -o DPkg::Lock::Timeout=0 -y install")
        assert refused.returncode != 0
        assert "Could not get lock /var/lib/dpkg/lock-frontend" in refused.stdout, refused.stdout
        waited = server.run("apt-get -o DPkg::Lock::Timeout=60 -y install", timeout=90)
        assert waited.returncode == 0, waited.stdout
        assert "Waiting for cache lock" in waited.stdout, waited.stdout
        ec2.terminate_instances(InstanceIds=[iid])

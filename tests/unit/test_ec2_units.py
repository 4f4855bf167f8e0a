"""ec2 target pieces that need no AWS: base references, console fingerprints, names, prune plans."""

from __future__ import annotations

import datetime as dt

import paramiko
import pytest
from amic.targets.ec2 import session as aws
from amic.targets.ec2 import gc as ec2_gc
from amic.targets.ssh.hostkeys import fingerprints
from amic.errors import UsageError
from amic.targets.ec2 import bases, flags, hostkeys, naming, resources
from amic.targets.ec2 import target as ec2_target
from amic.targets.base import Image

CONSOLE = """\
[   10.1] cloud-init[512]: Cloud-init v. 22.4.2 finished
<14>Jul 17 18:12:01 ec2: \n\
<14>Jul 17 18:12:01 ec2: #############################################################
<14>Jul 17 18:12:01 ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----
<14>Jul 17 18:12:01 ec2: 256 SHA256:pQ9nT4G8Pq2r1Y5cVNfCVjX8oG5zNfR0R6A7yBkUeQM root@ip-172-31-1-2 (ECDSA)
<14>Jul 17 18:12:01 ec2: 256 SHA256:3z0E1zYQ9Vt5Qe6i1YkC8tLzVrJQv5b3oP0nQ2l8a7c root@ip-172-31-1-2 (ED25519)
<14>Jul 17 18:12:01 ec2: 3072 SHA256:Wd5kQ8r1e9gD2pQnH0iY0yT1m0Zt3sVqjZr7nQ0cX1E root@ip-172-31-1-2 (RSA)
<14>Jul 17 18:12:01 ec2: -----END SSH HOST KEY FINGERPRINTS-----
ec2: 2048 SHA256:ThisLineIsOutsideTheBlockAndMustBeIgnored0000 root@x (RSA)
-----BEGIN SSH HOST KEY FINGERPRINTS-----
2048 6c:1b:0e:2a:33:44:55:66:77:88:99:aa:bb:cc:dd:ee /etc/ssh/ssh_host_rsa_key.pub (RSA)
-----END SSH HOST KEY FINGERPRINTS-----
"""


def test_console_fingerprints_only_inside_the_block():
    fps = hostkeys.parse_console_fingerprints(CONSOLE)
    assert [(f.bits, f.kind) for f in fps] == [(256, "ECDSA"), (256, "ED25519"), (3072, "RSA"),
                                              (2048, "RSA")]
    assert fps[1].fingerprint == "SHA256:3z0E1zYQ9Vt5Qe6i1YkC8tLzVrJQv5b3oP0nQ2l8a7c"
    assert fps[3].fingerprint == "MD5:6c:1b:0e:2a:33:44:55:66:77:88:99:aa:bb:cc:dd:ee"
    assert not any("Outside" in f.fingerprint for f in fps)
    assert hostkeys.parse_console_fingerprints("no block here\n") == []


def test_key_fingerprints_match_ssh_keygen_spelling():
    key, public = resources.generate_key("ed25519")
    assert public.startswith("ssh-ed25519 ")
    fps = fingerprints(key)
    assert any(f.startswith("SHA256:") and not f.endswith("=") for f in fps)
    assert any(f.startswith("MD5:") for f in fps)
    rsa, public = resources.generate_key("rsa")
    assert isinstance(rsa, paramiko.RSAKey) and public.startswith("ssh-rsa ")


@pytest.mark.parametrize("ref,owner,name", [
    ("debian:12", "136693071363", "debian-12-amd64-*"),
    ("debian:bookworm", "136693071363", "debian-12-amd64-*"),
    ("ubuntu:24.04", "099720109477", "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"),
    ("amazonlinux:2023", "137112412989", "al2023-ami-2023.*-kernel-*-x86_64"),
    (None, "136693071363", "debian-12-amd64-*"),
])
def test_portable_names(ref, owner, name):
    q = bases.parse_base(ref, arch="x86_64")
    args = q.call_args()
    assert args["Owners"] == [owner]
    assert {"Name": "name", "Values": [name]} in args["Filters"]
    assert {"Name": "state", "Values": ["available"]} in args["Filters"]


def test_arm64_names_and_instance_types():
    assert bases.arch_for_instance_type("t4g.small") == "arm64"
    assert bases.arch_for_instance_type("c6gn.large") == "arm64"
    assert bases.arch_for_instance_type("a1.medium") == "arm64"
    assert bases.arch_for_instance_type("t3.micro") == "x86_64"
    assert bases.arch_for_instance_type("m7i.large") == "x86_64"
    q = bases.parse_base("debian:12", arch="arm64")
    assert {"Name": "name", "Values": ["debian-12-arm64-*"]} in q.call_args()["Filters"]


def test_ami_id_and_filters():
    assert bases.parse_base("ami-0123456789abcdef0", arch="x86_64").call_args() == {
        "ImageIds": ["ami-0123456789abcdef0"]}
    q = bases.parse_base("owner=canonical name=my-golden-* arch=arm64 user=ubuntu "
                       "virtualization-type=hvm", arch="x86_64")
    args = q.call_args()
    assert args["Owners"] == ["099720109477"]
    assert {"Name": "architecture", "Values": ["arm64"]} in args["Filters"]
    assert {"Name": "virtualization-type", "Values": ["hvm"]} in args["Filters"]
    assert q.user == "ubuntu"


@pytest.mark.parametrize("ref", ["debian:7", "gentoo:latest", "owner=self name"])
def test_unknown_bases_are_usage_errors(ref):
    with pytest.raises(UsageError):
        bases.parse_base(ref, arch="x86_64")


def test_ami_names_are_valid():
    assert naming.ami_name("web{x}:v1 #2") == "web-x--v1 -2"
    assert naming.ami_name("a") == "amic-a"
    assert len(naming.ami_name("x" * 300)) == 128
    when = dt.datetime(2024, 7, 1, 12, 0, 0, tzinfo=dt.UTC)
    fields = naming.name_fields({"amic:amifile": "Amifile.web", "team": "ops"}, "ab" * 32, "b1", when)
    assert "{amifile}-{label[team]}-{timestamp}".format_map(fields) == "web-ops-20240701-120000"
    assert "{unknown}".format_map(fields) == "{unknown}"


def test_durations_and_expiry():
    assert flags.parse_duration("90m") == dt.timedelta(minutes=90)
    assert flags.parse_duration("2d") == dt.timedelta(days=2)
    with pytest.raises(UsageError):
        flags.parse_duration("soon")
    tags = aws.resource_tags("b1", ttl=dt.timedelta(hours=1))
    assert not aws.expired(tags)
    assert aws.expired(tags, at=aws.now() + dt.timedelta(hours=2))
    assert {"amic:tool", "amic:build-id", "amic:expires", "amic:role"} <= set(tags)


def test_fit_tags_keeps_the_essential_ones():
    tags = {f"label{i}": "x" for i in range(60)}
    tags["amic:key"] = "k"
    kept, dropped = aws.fit_tags(tags, keep_prefixes=("amic:key",))
    assert len(kept) == 50 and kept["amic:key"] == "k" and len(dropped) == 11


def _img(i, kind, name="web", key=None, days=0, **tags):
    created = aws.iso(aws.now() - dt.timedelta(days=days))
    return Image(id=f"ami-{i}", key=key or f"k{i}", created=created,
                 tags={"amic:kind": kind, "amic:amifile": "Amifile", "amic:name": name,
                       "amic:project": f"p-{name}", **tags})


def test_prune_keeps_newest_finals_and_their_layers_of_one_project_only():
    images = [
        _img(1, "final", days=1, **{"amic:layer:web": "L1"}),
        _img(2, "final", days=5, **{"amic:layer:web": "L0"}),
        _img(3, "final", name="other", days=9, **{"amic:layer:web": "LS"}),
        _img(4, "layer", key="L1", days=1, **{"amic:service": "web"}),
        _img(5, "layer", key="L0", days=5, **{"amic:service": "web"}),
        _img(6, "layer", key="LS", days=9, **{"amic:service": "web"}),   # other's final uses it
        _img(7, "layer", key="L1", days=2, **{"amic:service": "web"}),   # duplicate of ami-4
    ]
    doomed = {img.id for img, _ in ec2_gc.prune_plan(images, keep=1, project="p-web")}
    assert doomed == {"ami-2", "ami-5", "ami-7"}
    assert {i.id for i, _ in ec2_gc.prune_plan(images, keep=1, project="p-web",
                                               older_than=dt.timedelta(days=6))} == set()
    assert len(ec2_gc.prune_plan(images, keep=1, project="p-web", everything=True)) == 6
    assert {i.id for i, _ in ec2_gc.prune_plan(images, keep=2, project="p-web")} == {"ami-7"}
    assert {i.id for i, _ in ec2_gc.prune_plan(images, keep=0, project="p-other")} == {"ami-3"}


def test_prune_selects_on_the_identity_not_the_name_and_legacy_images_only_when_forced():
    legacy = {"amic:project": None}
    images = [
        _img(1, "final", days=1, **{"amic:layer:web": "L1"}),
        _img(2, "final", days=5, **{"amic:layer:web": "L0"}),
        # another team's project whose folder is also called web: same name, other identity
        _img(3, "final", days=2, **{"amic:project": "p-theirs"}),
        _img(4, "final", days=3, **{"amic:project": "p-theirs"}),
        # built before amic:project existed
        _img(5, "final", days=7, **legacy), _img(6, "final", days=8, **legacy),
    ]
    for img in images[4:]:
        del img.tags["amic:project"]
    doomed = {img.id for img, _ in ec2_gc.prune_plan(images, keep=1, project="p-web")}
    assert doomed == {"ami-2"}
    theirs = {img.id for img, _ in ec2_gc.prune_plan(images, keep=1, project="p-theirs")}
    assert theirs == {"ami-4"}
    forced = {img.id for img, _ in ec2_gc.prune_plan(images, keep=1, project="p-web",
                                                     legacy_name="web")}
    assert forced == {"ami-2", "ami-5", "ami-6"}
    assert len(ec2_gc.prune_plan(images, keep=0, project="p-web", everything=True)) == 2


# -- ec2query: the build memo's confirmation without boto3 -------------------------------

def _botocore_authorization(url: str, headers: dict, body: bytes, amz_date: str, creds) -> str:
    """What botocore's own SigV4 signer says for the same request at the same time."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    request.context["timestamp"] = amz_date
    auth = SigV4Auth(Credentials(creds.access_key, creds.secret_key, creds.token), "ec2",
                     "eu-west-1")
    request.headers["X-Amz-Date"] = amz_date
    if creds.token:
        request.headers["X-Amz-Security-Token"] = creds.token
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    return (f"AWS4-HMAC-SHA256 Credential={auth.scope(request)}, "
            f"SignedHeaders={auth.signed_headers(auth.headers_to_sign(request))}, "
            f"Signature={signature}")


@pytest.mark.parametrize("url", ["https://ec2.eu-west-1.amazonaws.com/",
                                 "http://127.0.0.1:4566/", "https://vpce.example:443/"])
@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEJr//////////token=="])
def test_query_signature_matches_botocore(url, token):
    from amic.targets.ec2 import query as ec2query

    creds = ec2query.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    body = b"Action=DescribeImages&Version=2016-11-15&Owner.1=self&Filter.1.Name=tag%3Aamic%3Akey"
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    expected = _botocore_authorization(url, dict(headers), body, "20250102T030405Z", creds)
    ec2query.sign("POST", url, headers, body, region="eu-west-1", credentials=creds,
                  amz_date="20250102T030405Z")
    assert headers["Authorization"] == expected
    assert headers.get("X-Amz-Security-Token") == token


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """No AWS configuration at all, then what each test sets."""
    import os

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return tmp_path


def test_query_access_follows_boto3_rules(aws_env, monkeypatch):
    from amic.targets.ec2 import query as ec2query

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    a = ec2query.resolve()
    assert (a.region, a.endpoint, a.credentials.access_key) == (
        "eu-central-1", "https://ec2.eu-central-1.amazonaws.com", "AKIDENV")
    assert ec2query.resolve(region="cn-north-1").endpoint == "https://ec2.cn-north-1.amazonaws.com.cn"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://global:1")
    assert ec2query.resolve().endpoint == "http://global:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", "http://ec2-only:2")
    assert ec2query.resolve().endpoint == "http://ec2-only:2"
    assert ec2query.resolve(endpoint_url="http://explicit:3").endpoint == "http://explicit:3"
    # a config file is read through botocore: its endpoint and region count
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("AWS_ENDPOINT_URL_EC2")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    (aws_env / "config").write_text("[default]\nregion = ap-south-1\n"
                                    "endpoint_url = http://from-config:4\n"
                                    "[profile other]\nregion = us-west-2\n")
    a = ec2query.resolve()
    assert (a.region, a.endpoint, a.credentials.access_key) == (
        "ap-south-1", "http://from-config:4", "AKIDENV")
    # an explicit profile skips the environment's keys, as botocore's chain does
    (aws_env / "credentials").write_text("[other]\naws_access_key_id = AKIDPROFILE\n"
                                         "aws_secret_access_key = profile-secret\n")
    a = ec2query.resolve(profile="other")
    assert (a.region, a.endpoint, a.credentials.access_key, a.credentials.secret_key) == (
        "us-west-2", "https://ec2.us-west-2.amazonaws.com", "AKIDPROFILE", "profile-secret")
    with pytest.raises(ec2query.QueryError):
        ec2query.resolve(profile="missing")
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")     # left to boto3
    with pytest.raises(ec2query.QueryError):
        ec2query.resolve()


def test_query_access_without_credentials_or_region(aws_env, monkeypatch):
    from amic.targets.ec2 import query as ec2query

    with pytest.raises(ec2query.QueryError, match="no region"):
        ec2query.resolve()
    with pytest.raises(ec2query.QueryError, match="no credentials"):
        ec2query.resolve(region="us-east-1")
    with pytest.raises(ec2query.QueryError):
        ec2query.resolve(region="us-isob-east-1", endpoint_url=None)


def test_query_credentials_never_shown(aws_env, monkeypatch):
    from amic.targets.ec2 import query as ec2query

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSHOWN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-shown-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "never-shown-token")
    a = ec2query.resolve(region="us-east-1")
    text = f"{a!r} {a.credentials!r} {a!s}"
    assert "never-shown" not in text and "AKIDSHOWN" not in text


def test_aws_region_is_honoured_first_by_both_paths(aws_env, monkeypatch):
    """AWS_REGION (read first by the AWS CLI v2 and most SDKs) wins over AWS_DEFAULT_REGION,
    in the boto3 session and in the memo confirmation alike."""
    from amic.targets.ec2 import session as aws
    from amic.targets.ec2 import query as ec2query

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert ec2query.resolve().region == "eu-west-3"
    assert aws.session(aws.AwsOptions()).region_name == "eu-west-3"
    monkeypatch.delenv("AWS_REGION")
    assert ec2query.resolve().region == "eu-central-1"
    assert aws.session(aws.AwsOptions()).region_name == "eu-central-1"
    assert aws.session(aws.AwsOptions(region="us-east-2")).region_name == "us-east-2"


def test_launch_failures_names_each_unhealthy_enabled_service():
    from amic.targets.ec2.launch import failures

    def svc(name, enabled=True, state="current", update="ok", **extra):
        return {"name": name, "enabled": enabled,
                "init": {"state": state, "failed_exit": extra.get("init_exit", ""),
                         "failed_where": extra.get("where", "")},
                "update": {"result": update, "exit": extra.get("exit", ""),
                           "detail": extra.get("detail", "")}}

    status = {"services": [
        svc("base"),
        svc("idle", enabled=False, state="missing", update=""),
        svc("web", state="failed", update="skipped", init_exit="7", where="Amifile:12"),
        svc("broken", update="failed", exit="3", detail="UPDATE script 01 at Amifile:27"),
        svc("half", state="interrupted", update=""),
    ]}
    assert failures(status) == [
        "web: init failed, exit 7 at Amifile:12",
        "broken: update failed, exit 3 (UPDATE script 01 at Amifile:27)",
        "half: init interrupted",
    ]
    assert failures({}) == []


def test_option_table_rows_name_real_fields_and_defaults_come_from_the_options():
    import argparse

    import attrs

    from amic.cli.ec2 import add_ec2_build_options
    from amic.targets.ec2 import options

    ec2_fields = {f.name for f in attrs.fields(options.Ec2Options)}
    aws_fields = {f.name for f in attrs.fields(aws.AwsOptions)}
    assert {row.attribute for row in flags.EC2_OPTIONS} <= ec2_fields
    assert {row.attribute for row in flags.AWS_OPTIONS} <= aws_fields
    parser = argparse.ArgumentParser()
    add_ec2_build_options(parser)
    target = ec2_target.Ec2Target.from_args(parser.parse_args([]))
    assert target.opts == options.Ec2Options(aws=aws.options_from_env())
    args = parser.parse_args(["--expire-after", "90m", "--ami-tag", "team=web", "--ssh-port", "2222",
                              "--no-public-ip", "--ssh-cidr", "10.0.0.0/8", "--region", "eu-west-3"])
    opts = ec2_target.Ec2Target.from_args(args).opts
    assert (opts.ttl, opts.image_tags, opts.ssh_port) == (dt.timedelta(minutes=90), {"team": "web"}, 2222)
    assert (opts.associate_public_ip, opts.ssh_cidrs, opts.aws.region) == (False, ("10.0.0.0/8",),
                                                                           "eu-west-3")
    with pytest.raises(UsageError, match="--ami-tag"):
        options.options_from_values({"image_tags": ["novalue"]})
    with pytest.raises(UsageError, match="exclude each other"):
        options.options_from_values({"trust_on_first_use": True,
                                     "host_key_fingerprints": ["SHA256:x"]})


# -- waiters against moto in server mode, faults injected by the proxy ---------------------

@pytest.fixture(scope="module")
def moto_ec2(tmp_path_factory):
    """moto + the counting proxy + the stand-in without roots (lifecycle only)."""
    from tests.harness.ec2 import fake_ec2

    with fake_ec2(tmp_path_factory.mktemp("waiters")) as fake:
        yield fake


def _client(fake, attempts: int = 1):
    """A boto3 client through the proxy that does not retry by itself: the waiter must."""
    import boto3
    from botocore.config import Config

    return boto3.client("ec2", region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing", endpoint_url=fake.proxy.url,
                        config=Config(retries={"max_attempts": attempts, "mode": "standard"}))


def _instance(fake, ec2) -> str:
    ami = fake.register_debian12()
    tags = aws.tag_specs({"amic:tool": "amic/test", "amic:build-id": "waiters"}, "instance")
    return ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1,
                             TagSpecifications=tags)["Instances"][0]["InstanceId"]


def test_image_waiter_survives_not_found_right_after_create(moto_ec2):
    from amic.errors import BuildError
    from amic.targets.ec2 import waiters

    fake = moto_ec2
    fake.proxy.reset()
    ec2 = _client(fake)
    iid = _instance(fake, ec2)
    fake.proxy.not_found_after("CreateImage", "DescribeImages", 3, "InvalidAMIID.NotFound")
    ami = ec2.create_image(InstanceId=iid, Name="waiter-test-1")["ImageId"]
    # botocore's own waiter gives up on the first NotFound (what amic used before)
    with pytest.raises(BuildError, match="InvalidAMIID.NotFound"):
        aws.wait(ec2, "image_available", timeout=5, poll_interval=0.05, doing="botocore",
                 ImageIds=[ami])
    fake.proxy.reset()
    fake.proxy.not_found_after("CreateImage", "DescribeImages", 3, "InvalidAMIID.NotFound")
    ami = ec2.create_image(InstanceId=iid, Name="waiter-test-2")["ImageId"]
    waiters.image_available(ec2, [ami], timeout=10, poll_interval=0.05, doing="amic")
    assert fake.proxy.injected == 3 and fake.proxy.count("DescribeImages") == 4


def test_terminate_waiter_waits_through_stopping_and_throttling(moto_ec2):
    fake = moto_ec2
    fake.proxy.reset()
    ec2 = _client(fake)
    iid = _instance(fake, ec2)
    fake.proxy.rewrite("DescribeInstances", "<name>terminated</name>", "<name>stopping</name>", 2)
    fake.proxy.rewrite("DescribeInstances", "<name>terminated</name>",
                       "<name>shutting-down</name>", 2)
    fake.proxy.fail("DescribeInstances", 2)          # RequestLimitExceeded, not retried by boto3
    resources.terminate_instances(ec2, [iid], timeout=10, poll_interval=0.05, doing="terminate")
    assert fake.proxy.injected == 6
    state = fake.client().describe_instances(InstanceIds=[iid])["Reservations"][0]
    assert state["Instances"][0]["State"]["Name"] == "terminated"


def test_waiter_times_out_only_at_the_timeout(moto_ec2):
    import time

    from amic.errors import BuildError
    from amic.targets.ec2 import waiters

    fake = moto_ec2
    fake.proxy.reset()
    ec2 = _client(fake)
    fake.proxy.fail("DescribeImages", 10_000, "InvalidAMIID.NotFound", 400)
    t0 = time.monotonic()
    with pytest.raises(BuildError, match="not available after 1s"):
        waiters.image_available(ec2, ["ami-12345678"], timeout=1.0, poll_interval=0.1,
                                doing="never there")
    assert 0.8 <= time.monotonic() - t0 < 3
    fake.proxy.reset()
    with pytest.raises(BuildError, match="AuthFailure"):     # not retryable: at once
        fake.proxy.fail("DescribeImages", 1, "AuthFailure", 401)
        waiters.image_available(ec2, ["ami-12345678"], timeout=30, poll_interval=0.1,
                                doing="denied")


def test_layer_snapshot_is_pending_then_registered_once(moto_ec2):
    from amic.targets.ec2 import snapshots

    fake = moto_ec2
    fake.proxy.reset()
    fake.standin.snapshot_seconds = 0.6
    ec2 = _client(fake)
    iid = _instance(fake, ec2)
    volume, device = snapshots.root_volume(ec2, iid)
    tags = {"amic:tool": "amic/test", "amic:build-id": "b1", "amic:key": "k" * 64,
            "amic:service": "web", **snapshots.image_facts(ec2, fake.standin.launches[-1][1])}
    fake.proxy.not_found_after("CreateSnapshot", "DescribeSnapshots", 2,
                               "InvalidSnapshot.NotFound")
    raw = snapshots.create_layer_snapshot(
        ec2, volume, snapshots.snapshot_tags(tags, {snapshots.TAG_ROOT_DEVICE: device}, print),
        "test")
    assert raw["State"] == "pending"
    layer = snapshots.find_layer(fake.client(), "k" * 64)     # found while still pending
    assert layer is not None and layer.id == raw["SnapshotId"] and snapshots.is_snapshot(layer)
    import botocore.exceptions

    seen = []     # through the proxy: NotFound twice (eventual consistency), then pending
    for _ in range(3):
        try:
            seen.append(ec2.describe_snapshots(SnapshotIds=[layer.id])["Snapshots"][0]["State"])
        except botocore.exceptions.ClientError as exc:
            seen.append(exc.response["Error"]["Code"])
    assert seen == ["InvalidSnapshot.NotFound"] * 2 + ["pending"]
    # RegisterImage of a pending snapshot is refused by the stand-in; ami_for_layer waits
    ami = snapshots.ami_for_layer(ec2, layer, name="amic-layer-test", timeout=10,
                                  poll_interval=0.05, log=print)
    assert fake.proxy.count("RegisterImage") == 1 and fake.proxy.injected == 2
    img = ec2.describe_images(ImageIds=[ami])["Images"][0]      # as EC2 answers (the proxy)
    img_tags = aws.tag_dict(img["Tags"])
    assert img_tags["amic:key"] == "k" * 64 and img_tags["amic:from-snapshot"] == layer.id
    assert img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"] == layer.id
    assert snapshots.ami_for_layer(ec2, layer, name="amic-layer-test", timeout=10,
                                   poll_interval=0.05, log=print) == ami
    assert fake.proxy.count("RegisterImage") == 1              # reused, not registered again
    assert fake.created_untagged() == []


def test_the_running_answer_gives_address_and_root_volume_without_another_describe(moto_ec2):
    """``wait_running``'s last DescribeInstances answers the address and the root volume;
    an entry without its volumes (as a ``pending`` one may be) makes root_volume ask EC2."""
    from amic.targets.ec2 import resources, snapshots
    from amic.targets.ec2.options import Ec2Options

    fake = moto_ec2
    ec2 = _client(fake)
    iid = _instance(fake, ec2)
    fake.proxy.reset()
    opts = Ec2Options(poll_interval=0.05, instance_timeout=30, ssh_interface="private-ip")
    host, inst = resources.wait_running(ec2, iid, opts)
    polls = fake.proxy.count("DescribeInstances")
    assert polls >= 1, fake.proxy.calls
    assert host == inst["PrivateIpAddress"] and inst["State"]["Name"] == "running"
    volume, device = snapshots.root_volume(ec2, iid, inst)
    assert volume.startswith("vol-") and device == inst["RootDeviceName"]
    assert fake.proxy.count("DescribeInstances") == polls       # no Describe for either
    bare = {k: v for k, v in inst.items() if k != "BlockDeviceMappings"}
    assert snapshots.root_volume(ec2, iid, bare) == (volume, device)
    assert fake.proxy.count("DescribeInstances") == polls + 1

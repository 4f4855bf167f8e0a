"""ec2 target pieces that need no AWS: base references, console fingerprints, names, prune plans."""

from __future__ import annotations

import datetime as dt

import paramiko
import pytest
from amic import aws, ec2_gc, sshconn
from amic.errors import UsageError
from amic.targets import ec2
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
    fps = ec2.parse_console_fingerprints(CONSOLE)
    assert [(f.bits, f.kind) for f in fps] == [(256, "ECDSA"), (256, "ED25519"), (3072, "RSA"),
                                              (2048, "RSA")]
    assert fps[1].fingerprint == "SHA256:3z0E1zYQ9Vt5Qe6i1YkC8tLzVrJQv5b3oP0nQ2l8a7c"
    assert fps[3].fingerprint == "MD5:6c:1b:0e:2a:33:44:55:66:77:88:99:aa:bb:cc:dd:ee"
    assert not any("Outside" in f.fingerprint for f in fps)
    assert ec2.parse_console_fingerprints("no block here\n") == []


def test_key_fingerprints_match_ssh_keygen_spelling():
    key, public = ec2.generate_key("ed25519")
    assert public.startswith("ssh-ed25519 ")
    fps = sshconn.fingerprints(key)
    assert any(f.startswith("SHA256:") and not f.endswith("=") for f in fps)
    assert any(f.startswith("MD5:") for f in fps)
    rsa, public = ec2.generate_key("rsa")
    assert isinstance(rsa, paramiko.RSAKey) and public.startswith("ssh-rsa ")


@pytest.mark.parametrize("ref,owner,name", [
    ("debian:12", "136693071363", "debian-12-amd64-*"),
    ("debian:bookworm", "136693071363", "debian-12-amd64-*"),
    ("ubuntu:24.04", "099720109477", "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"),
    ("amazonlinux:2023", "137112412989", "al2023-ami-2023.*-kernel-*-x86_64"),
    (None, "136693071363", "debian-12-amd64-*"),
])
def test_portable_names(ref, owner, name):
    q = ec2.parse_base(ref, arch="x86_64")
    args = q.call_args()
    assert args["Owners"] == [owner]
    assert {"Name": "name", "Values": [name]} in args["Filters"]
    assert {"Name": "state", "Values": ["available"]} in args["Filters"]


def test_arm64_names_and_instance_types():
    assert ec2.arch_for_instance_type("t4g.small") == "arm64"
    assert ec2.arch_for_instance_type("c6gn.large") == "arm64"
    assert ec2.arch_for_instance_type("a1.medium") == "arm64"
    assert ec2.arch_for_instance_type("t3.micro") == "x86_64"
    assert ec2.arch_for_instance_type("m7i.large") == "x86_64"
    q = ec2.parse_base("debian:12", arch="arm64")
    assert {"Name": "name", "Values": ["debian-12-arm64-*"]} in q.call_args()["Filters"]


def test_ami_id_and_filters():
    assert ec2.parse_base("ami-0123456789abcdef0", arch="x86_64").call_args() == {
        "ImageIds": ["ami-0123456789abcdef0"]}
    q = ec2.parse_base("owner=canonical name=my-golden-* arch=arm64 user=ubuntu "
                       "virtualization-type=hvm", arch="x86_64")
    args = q.call_args()
    assert args["Owners"] == ["099720109477"]
    assert {"Name": "architecture", "Values": ["arm64"]} in args["Filters"]
    assert {"Name": "virtualization-type", "Values": ["hvm"]} in args["Filters"]
    assert q.user == "ubuntu"


@pytest.mark.parametrize("ref", ["debian:7", "gentoo:latest", "owner=self name"])
def test_unknown_bases_are_usage_errors(ref):
    with pytest.raises(UsageError):
        ec2.parse_base(ref, arch="x86_64")


def test_ami_names_are_valid():
    assert ec2._ami_name("web{x}:v1 #2") == "web-x--v1 -2"
    assert ec2._ami_name("a") == "amic-a"
    assert len(ec2._ami_name("x" * 300)) == 128
    when = dt.datetime(2024, 7, 1, 12, 0, 0, tzinfo=dt.UTC)
    fields = ec2._name_fields({"amic:amifile": "Amifile.web", "team": "ops"}, "ab" * 32, "b1", when)
    assert "{amifile}-{label[team]}-{timestamp}".format_map(fields) == "web-ops-20240701-120000"
    assert "{unknown}".format_map(fields) == "{unknown}"


def test_durations_and_expiry():
    assert aws.parse_duration("90m") == dt.timedelta(minutes=90)
    assert aws.parse_duration("2d") == dt.timedelta(days=2)
    with pytest.raises(UsageError):
        aws.parse_duration("soon")
    tags = aws.resource_tags("b1", ttl=dt.timedelta(hours=1))
    assert not aws.expired(tags)
    assert aws.expired(tags, at=aws.now() + dt.timedelta(hours=2))
    assert {"amic:tool", "amic:build-id", "amic:expires", "amic:role"} <= set(tags)


def test_fit_tags_keeps_the_essential_ones():
    tags = {f"label{i}": "x" for i in range(60)}
    tags["amic:key"] = "k"
    kept, dropped = aws.fit_tags(tags, keep_prefixes=("amic:key",))
    assert len(kept) == 50 and kept["amic:key"] == "k" and len(dropped) == 11


def _img(i, kind, amifile="Amifile", key=None, days=0, **tags):
    created = aws.iso(aws.now() - dt.timedelta(days=days))
    return Image(id=f"ami-{i}", key=key or f"k{i}", created=created,
                 tags={"amic:kind": kind, "amic:amifile": amifile, **tags})


def test_prune_keeps_newest_finals_and_their_layers():
    images = [
        _img(1, "final", days=1, **{"amic:layer:web": "L1"}),
        _img(2, "final", days=5, **{"amic:layer:web": "L0"}),
        _img(3, "final", amifile="Other", days=9),
        _img(4, "layer", key="L1", days=1, **{"amic:service": "web"}),
        _img(5, "layer", key="L0", days=5, **{"amic:service": "web"}),
    ]
    doomed = {img.id for img, _ in ec2_gc.prune_plan(images, keep=1)}
    assert doomed == {"ami-2", "ami-5"}
    assert {i.id for i, _ in ec2_gc.prune_plan(images, keep=1, older_than=dt.timedelta(days=6))} == set()
    assert len(ec2_gc.prune_plan(images, keep=1, everything=True)) == 5
    assert {i.id for i, _ in ec2_gc.prune_plan(images, keep=2)} == set()

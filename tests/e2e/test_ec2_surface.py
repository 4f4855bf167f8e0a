"""EC2's everyday surface (issue 23), through the real CLI against the stand-in.

- The final AMI's default description names the project, the Amifile and the key
  (not "built by amic from amic" for a plain ``Amifile``); a layer snapshot's too.
- ``amic ami prune`` names each thing it removed once: a layer snapshot is not
  "removed snap-X and snap-X".
- In plain output, a layer's ``[i/n] service RUN`` line comes before the line of
  the snapshot that checkpoints it.
- ``--no-cache`` of an unchanged Amifile replaces the final AMI of its key: one final
  AMI per key afterwards, the old one deregistered and its snapshots deleted.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.harness.e2e_builds import Builds
from tests.harness.ec2 import standin_ec2

pytestmark = [pytest.mark.slow, pytest.mark.root]

AMIFILE = """\
FROM debian:12
NAME surface-shop
SERVICE base
    INIT echo base-{v} > /etc/amic-base
SERVICE web
    REQUIRES base
    INIT echo web-{v} > /etc/amic-web
"""


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    with standin_ec2(tmp_path_factory) as fake:
        yield Builds(fake, tmp_path_factory.mktemp("home"))


def build(builds: Builds, folder: Path, version: str, *extra: str):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Amifile").write_text(AMIFILE.format(v=version))
    return builds.amic("build", "--target", "ec2", *builds.fake.ssh_args(), "--ssh-user", "root",
                       "--poll-interval", "0.05", "--ssh-timeout", "60", "--checkpoint", "all",
                       "--console-timeout", "30", "--progress", "plain", *extra, "Amifile",
                       cwd=folder)


def test_descriptions_output_order_and_prune_lines(builds, tmp_path):
    folder = tmp_path / "shop"
    first = build(builds, folder, "v1")
    ami = first.stdout.strip().splitlines()[-1]
    ec2 = builds.fake.client()
    image = ec2.describe_images(ImageIds=[ami])["Images"][0]
    key = {t["Key"]: t["Value"] for t in image["Tags"]}["amic:key"]
    assert image["Description"] == f"surface-shop: built by amic from Amifile (key {key[:12]})"
    snaps = ec2.describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:amic:service", "Values": ["base"]}])["Snapshots"]
    assert snaps
    for snap in snaps:
        skey = {t["Key"]: t["Value"] for t in snap["Tags"]}["amic:key"]
        assert snap["Description"] == \
            f"amic cache layer base of surface-shop (key {skey[:12]}) from Amifile"

    # the layer line, then its snapshot's line
    lines = first.stderr.splitlines()
    for i, service in ((1, "base"), (2, "web")):
        done = [n for n, line in enumerate(lines) if re.match(rf"\[{i}/2\] {service} +RUN ", line)]
        snap = [n for n, line in enumerate(lines) if "layer snapshot snap-" in line]
        assert done and len(snap) == 2, first.stderr
        assert done[0] < snap[i - 1], first.stderr

    # a second build leaves the first one's final and layers to prune
    build(builds, folder, "v2")
    out = builds.amic("ami", "prune", "--keep", "1", "--yes", cwd=folder)
    removed = [line.split() for line in out.stdout.splitlines() if line.startswith("removed ")]
    assert removed, out.stdout + out.stderr
    for words in removed:
        ids = [w.strip(",") for w in words[1:] if w != "and"]
        assert len(ids) == len(set(ids)), out.stdout
    assert any(words[1].startswith("snap-") for words in removed), out.stdout


def finals_of_key(builds: Builds, key: str) -> list[str]:
    return [i["ImageId"] for i in builds.fake.client().describe_images(Owners=["self"], Filters=[
        {"Name": "tag:amic:key", "Values": [key]}, {"Name": "tag:amic:kind", "Values": ["final"]},
        {"Name": "state", "Values": ["available"]}])["Images"]]


def test_no_cache_replaces_the_final_ami_of_its_key(builds, tmp_path):
    folder = tmp_path / "again"
    first = build(builds, folder, "nc1").stdout.strip().splitlines()[-1]
    tags = {t["Key"]: t["Value"] for t in builds.fake.client().describe_images(
        ImageIds=[first])["Images"][0]["Tags"]}
    key = tags["amic:key"]
    first_snaps = [m["Ebs"]["SnapshotId"] for m in builds.fake.client().describe_images(
        ImageIds=[first])["Images"][0]["BlockDeviceMappings"] if "Ebs" in m]
    proc = build(builds, folder, "nc1", "--no-cache")
    again = proc.stdout.strip().splitlines()[-1]
    assert again != first
    assert f"--no-cache replaced the final AMI of key {key[:12]}: deregistered {first}" \
        in proc.stderr, proc.stderr
    assert finals_of_key(builds, key) == [again]
    assert builds.fake.client().describe_images(ImageIds=[first])["Images"] == [] or \
        builds.fake.client().describe_images(ImageIds=[first])["Images"][0]["State"] != "available"
    left = builds.fake.client().describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert not {s["SnapshotId"] for s in left} & set(first_snaps)
    # an unchanged build afterwards is answered with the new AMI
    assert build(builds, folder, "nc1").stdout.strip().splitlines()[-1] == again

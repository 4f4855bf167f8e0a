"""``--checkpoint all`` after an ``auto`` build makes the checkpoints ``auto`` skipped
(issue 17, item 7), through the real CLI against the stand-in, counting CreateSnapshot.

Neither the build memo nor the engine's cached final may answer such a build: the memo
records which checkpoints it saw, and the engine looks the asked ones up.
"""

from __future__ import annotations

import collections
import json

import pytest

from tests.harness.e2e_builds import Builds
from tests.harness.ec2 import standin_ec2

pytestmark = [pytest.mark.slow, pytest.mark.root]

AMIFILE = """\
FROM debian:12
SERVICE base
    INIT echo base > /etc/amic-base
SERVICE web
    REQUIRES base
    INIT echo web > /etc/amic-web
SERVICE app
    REQUIRES web
    INIT echo app > /etc/amic-app
"""


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    with standin_ec2(tmp_path_factory) as fake:
        yield Builds(fake, tmp_path_factory.mktemp("home"))


def build(builds: Builds, folder, policy: str) -> tuple[dict, dict[str, int]]:
    builds.fake.proxy.reset()
    proc = builds.amic("build", "--target", "ec2", *builds.fake.ssh_args(), "--ssh-user", "root",
                       "--poll-interval", "0.05", "--ssh-timeout", "60",
                       "--console-timeout", "30", "--checkpoint", policy, "--json", "Amifile",
                       cwd=folder)
    # the calls answered with success: the strict stand-in refuses quick snapshots of one
    # volume (amic retries them), and a refused call made nothing
    return json.loads(proc.stdout), dict(collections.Counter(
        a for a, _ in builds.fake.proxy.answered))


def layer_snapshots(builds: Builds) -> dict[str, str]:
    """service -> id of its layer snapshot."""
    snaps = builds.fake.client().describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:amic:checkpoint", "Values": ["snapshot"]}])["Snapshots"]
    tags = [{t["Key"]: t["Value"] for t in s["Tags"]} | {"id": s["SnapshotId"]} for s in snaps]
    found: dict[str, str] = {}
    for t in tags:
        assert t["amic:service"] not in found, f"two checkpoints of {t['amic:service']}"
        found[t["amic:service"]] = t["id"]
    return found


def test_checkpoint_all_after_auto_makes_the_missing_checkpoints(builds, tmp_path):
    (tmp_path / "Amifile").write_text(AMIFILE)
    first, calls = build(builds, tmp_path, "auto")
    # auto: trivial inits cost less than a snapshot, only the last layer is kept
    assert set(layer_snapshots(builds)) == {"app"}
    assert calls.get("CreateSnapshot", 0) == 1
    # unchanged but --checkpoint all: base and web are made, and nothing else
    second, calls = build(builds, tmp_path, "all")
    assert second["image_id"] == first["image_id"]
    assert set(layer_snapshots(builds)) == {"base", "web", "app"}
    assert calls.get("CreateSnapshot", 0) == 2
    assert calls.get("CreateImage", 0) == 0 and calls.get("RunInstances", 0) == 1
    made = {r["service"]: r for r in second["layers"]}
    assert made["base"]["status"] == made["web"]["status"] == "RUN"
    assert made["base"]["checkpoint"] and made["web"]["checkpoint"]
    assert made["web"]["reason"] == "no checkpoint (--checkpoint all)"
    assert made["app"]["status"] == "CACHED"
    # now every checkpoint exists: the memo (or the engine) answers, nothing is made
    third, calls = build(builds, tmp_path, "all")
    assert third["image_id"] == first["image_id"] and third["cached"]
    assert calls.get("CreateSnapshot", 0) == 0 and calls.get("RunInstances", 0) == 0
    assert set(layer_snapshots(builds)) == {"base", "web", "app"}


def test_a_named_checkpoint_after_last_makes_only_that_one(builds, tmp_path):
    (tmp_path / "Amifile").write_text(AMIFILE.replace("echo", "echo named"))
    before = layer_snapshots(builds)
    first, _ = build(builds, tmp_path, "last")
    second, calls = build(builds, tmp_path, "web")
    assert second["image_id"] == first["image_id"]
    assert calls.get("CreateSnapshot", 0) == 1 and calls.get("CreateImage", 0) == 0
    # the earlier test's snapshots are another Amifile's: two more, app's and web's
    assert len(builds.fake.client().describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:amic:checkpoint", "Values": ["snapshot"]}])["Snapshots"]) == len(before) + 2

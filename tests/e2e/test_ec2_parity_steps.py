"""Packer's -on-error=ask, -debug and skip_create_ami, and the region copies (issue 21), through
the real CLI against the stand-in.

``--on-error ask`` answered ``r`` on a pseudo-terminal runs the failed step again, for steps
other than a layer's INIT: waiting for SSH, uploading the stage2, creating the final image,
a region copy (each counted where EC2 or the instance sees it). ``--debug`` pauses before
the launch and before the final image (nothing of either happens while it waits).
``--skip-create-ami`` provisions (every INIT) and makes nothing, even when the image is
cached. Copies are tagged at creation (the first DescribeImages shows the tags), and
Ctrl-C while they are pending stops the wait at once and cancels them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import xml.etree.ElementTree as ET

import pytest

from tests.harness.e2e_builds import E2E
from tests.harness.ec2 import REGION, assert_clean, image_file, standin_ec2
from tests.harness.ec2.api import tag_specs
from tests.harness.pty_drive import Answer, drive, say

pytestmark = [pytest.mark.slow, pytest.mark.root]

QUICK = """\
FROM debian:12

SERVICE base
    INIT echo {v} > /etc/amic-base

SERVICE app
    REQUIRES base
    INIT echo app-{v} >> /etc/amic-app-runs
"""
OTHER = "us-west-2"


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    with standin_ec2(tmp_path_factory, strict=True) as fake:
        yield E2E(fake, tmp_path_factory.mktemp("parity-steps"))


def moto_in(fake, region: str):
    import boto3

    key, secret = fake.proxy.credentials
    return boto3.client("ec2", region_name=region, endpoint_url=fake.moto.url,
                        aws_access_key_id=key, aws_secret_access_key=secret)


def copies_in(fake, region: str) -> list[dict]:
    return moto_in(fake, region).describe_images(Owners=["self"])["Images"]


def snapshots_of(image: dict) -> set[str]:
    return {b["Ebs"]["SnapshotId"] for b in image.get("BlockDeviceMappings", [])
            if b.get("Ebs", {}).get("SnapshotId")}


def test_on_error_ask_retries_launch_ssh_upload_image_and_copy(e2e):
    """Five steps fail once each; ``r`` runs each again: the launch (with a client token of
    its own), then on the one instance SSH is waited for again (the console read again), the
    stage2 uploaded again, CreateImage and CopyImage called again."""
    fake = e2e.fake
    e2e.write(QUICK.format(v="ask-steps"))
    fake.proxy.reset()
    fake.capacity.refuse(times=1)                # 0. no capacity at the first try
    fake.standin.ssh_up = False                  # 1. the instance answers no SSH at first
    blockers = []

    def block_install(params, text):             # 2. the stage2 cannot be installed
        for iid in ET.fromstring(text).iter():
            if iid.tag.endswith("instanceId") and iid.text in fake.standin.instances:
                root = fake.standin.instances[iid.text].upper / "root"
                (root / "var/lib").mkdir(parents=True, exist_ok=True)
                (root / "var/lib/amic").write_text("in the way\n")
                blockers.append(root / "var/lib/amic")
        return text

    fake.proxy.after["RunInstances"].append(block_install)
    fake.proxy.fail("CreateImage", 1, "InvalidParameterValue", 400)    # 3.
    fake.proxy.fail("CopyImage", 1, "InvalidParameterValue", 400)      # 4.
    consoles: list[int] = []

    def ssh_back() -> str:
        consoles.append(fake.proxy.count("GetConsoleOutput"))
        fake.standin.ssh_up = True
        return "r\n"

    def unblock() -> str:
        blockers[0].unlink()
        return "r\n"

    try:
        run = drive(e2e.argv("--on-error", "ask", "--progress", "plain", "--ssh-timeout", "3",
                             "--copy-to-region", OTHER),
                    cwd=e2e.project, env=e2e.env(), answers=[
                        Answer("launching failed", say("r\n")),
                        Answer("and SSH failed", ssh_back),
                        Answer("uploading stage2 failed", unblock),
                        Answer("creating the image failed", say("r\n")),
                        Answer(f"to {OTHER} failed", say("r\n"))])
    finally:
        fake.proxy.after["RunInstances"].remove(block_install)
        fake.standin.ssh_up = True
        fake.capacity.reset()
    assert run.returncode == 0 and not run.unanswered, (run.unanswered, run.terminal[-4000:])
    for step in ("launching", "waiting for i-", "uploading stage2", "creating the image",
                 "copying ami-"):
        assert f"--on-error ask: retrying {step}" in run.terminal, step
    tries = fake.proxy.calls_of("RunInstances")
    assert len(tries) == 2 and tries[0]["ClientToken"] != tries[1]["ClientToken"]
    assert len(fake.proxy.calls_of("RunInstances", answered=True)) == 1   # then one instance
    assert fake.proxy.count("GetConsoleOutput") > consoles[0]   # SSH: waited for again
    assert len(fake.proxy.calls_of("CreateImage")) == 2     # refused, then made
    assert len(fake.proxy.calls_of("CreateImage", answered=True)) == 1
    assert len(fake.proxy.calls_of("CopyImage")) == 2
    assert len(fake.proxy.calls_of("CopyImage", answered=True)) == 1
    ami = run.stdout.strip().splitlines()[-1]
    assert image_file(fake, ami, "/var/lib/amic/stage2/amic") is not None   # installed
    assert image_file(fake, ami, "/etc/amic-app-runs").read_text() == "app-ask-steps\n"
    copy = [c for c in copies_in(fake, OTHER) if any(
        t["Key"] == "amic:source-image" and t["Value"].endswith(ami) for t in c.get("Tags", []))]
    assert len(copy) == 1
    assert_clean(fake)


def test_no_retry_offered_where_a_retry_cannot_run_the_step_again(e2e):
    """--boot-mode registers the image again after deregistering the first: a failure there
    is asked about without [r]etry, and ``r`` is not taken for an answer."""
    fake = e2e.fake
    e2e.write(QUICK.format(v="no-retry"))
    fake.proxy.reset()
    fake.proxy.fail("RegisterImage", 1, "InvalidParameterValue", 400)
    run = drive(e2e.argv("--on-error", "ask", "--checkpoint", "none", "--boot-mode", "uefi"),
                cwd=e2e.project, env=e2e.env(), answers=[
                    Answer("(no retry: the image CreateImage made is deregistered already)",
                           say("r\n")),
                    Answer("'r'? [c]lean up, [a]bort and keep the machine? [c]", say("c\n"))])
    assert not run.unanswered, run.terminal[-3000:]
    assert run.returncode == 1 and "Traceback" not in run.terminal
    assert "[r]etry" not in run.terminal.split("registering the image again")[-1]
    assert len(fake.proxy.calls_of("RegisterImage")) == 1
    assert_clean(fake)


def test_debug_pauses_before_the_launch_and_before_the_final_image(e2e):
    """Nothing is launched while the first pause waits, nothing stopped or imaged while the
    last one does."""
    fake = e2e.fake
    e2e.write(QUICK.format(v="debug"))
    fake.proxy.reset()
    at_pause: dict[str, tuple[int, ...]] = {}

    def held(name: str, *actions: str):
        def reply() -> str:
            before = tuple(fake.proxy.count(a) for a in actions)
            time.sleep(1.5)                   # the build waits on the terminal meanwhile
            at_pause[name] = before + tuple(fake.proxy.count(a) for a in actions)
            return "\n"
        return reply

    run = drive(e2e.argv("--debug", "--checkpoint", "none"), cwd=e2e.project, env=e2e.env(),
                answers=[
                    Answer("--debug: stage2 artifact done; press Enter to go on (next: launch "
                           "an instance from ami-", held("launch", "RunInstances")),
                    Answer("--debug: [1/2] base done", say("\n")),
                    Answer("--debug: [2/2] app done", say("\n")),
                    Answer("--debug: install-boot-hook, prepare-image done; press Enter to go "
                           "on (next: stop the machine and make the final image)",
                           held("image", "StopInstances", "CreateImage"))])
    assert run.returncode == 0 and not run.unanswered, (run.unanswered, run.terminal[-3000:])
    assert at_pause["launch"] == (0, 0)
    assert at_pause["image"] == (0, 0, 0, 0)
    assert fake.proxy.count("RunInstances") == 1 and fake.proxy.count("CreateImage") == 1
    assert_clean(fake)


def test_skip_create_ami_provisions_even_when_the_image_is_cached(e2e, tmp_path):
    """Packer always provisions: the build memo does not answer (first run), nor does the
    cached final AMI (second run, without the memo), nor a cached layer."""
    fake = e2e.fake
    e2e.write(QUICK.format(v="skip"))
    first = e2e.build("--checkpoint", "none")
    assert first.rc == 0, first.stderr
    for env in (e2e.env(), {**e2e.env(), "AMIC_CACHE_DIR": str(tmp_path / "no-memo")}):
        time.sleep(fake.strict.settings.delay)     # the image shows in tag-filtered look-ups
        fake.proxy.reset()
        proc = subprocess.run(e2e.argv("--checkpoint", "none", "--skip-create-ami"),
                              cwd=e2e.project, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "none (--skip-create-ami)", proc.stdout
        assert first.ami not in proc.stdout
        assert fake.proxy.count("RunInstances") == 1
        assert "[1/2] base" in proc.stderr and "--skip-create-ami (every INIT runs)" in proc.stderr
        layers = [line for line in proc.stderr.splitlines() if " RUN " in line]
        assert len(layers) == 2, proc.stderr
        assert fake.proxy.count("CreateImage", "RegisterImage", "CopyImage",
                                "CreateSnapshot") == 0
        iid = fake.standin.launches[-1][0]
        (inst,) = [i for i in fake.standin.terminated if i.id == iid]    # its disk kept
        assert (inst.upper / "root/etc/amic-app-runs").read_text() == "app-skip\n"
        assert_clean(fake)
    plan = subprocess.run(e2e.argv("--checkpoint", "none", "--skip-create-ami", "--dry-run"),
                          cwd=e2e.project, env=e2e.env(), capture_output=True, text=True,
                          timeout=120)                # the dry run says the same
    assert plan.returncode == 0 and plan.stdout.count("--skip-create-ami (every INIT runs)") == 2, (
        plan.stdout, plan.stderr)
    bad = subprocess.run(e2e.argv("--skip-create-ami"), cwd=e2e.project, env=e2e.env(),
                         capture_output=True, text=True, timeout=120)    # --checkpoint all
    assert bad.returncode == 2, bad.stderr
    assert "--skip-create-ami makes no image and no snapshot: --checkpoint all" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_copies_are_tagged_at_creation(e2e):
    """The first DescribeImages that names a copy (amic's own wait) shows its tags: no
    CreateTags is needed for them, and its snapshots carry the snapshot tags from the start."""
    fake = e2e.fake
    e2e.write(QUICK.format(v="copy-tags"))
    first_seen: dict[str, dict[str, str]] = {}

    def watch(params, text):
        for item in ET.fromstring(text).iter():
            fields = {el.tag.split("}")[-1]: el for el in item}
            image = fields.get("imageId")
            if item.tag.endswith("item") and image is not None and image.text.startswith("ami-"):
                tags = {}
                for tag in item.iter():
                    kv = {el.tag.split("}")[-1]: el.text for el in tag}
                    if "key" in kv and "value" in kv:
                        tags[kv["key"]] = kv["value"]
                first_seen.setdefault(image.text, tags)
        return text

    fake.proxy.after["DescribeImages"].append(watch)
    try:
        b = e2e.build("--checkpoint", "none", "--copy-to-region", OTHER)
    finally:
        fake.proxy.after["DescribeImages"].remove(watch)
    assert b.rc == 0, b.stderr
    call = fake.proxy.calls_of("CopyImage", answered=True)[-1]
    image_tags, snap_tags = tag_specs(call, "image"), tag_specs(call, "snapshot")
    assert image_tags["amic:source-image"].endswith(b.ami) and "amic:build-id" in snap_tags
    (copy,) = [c for c in copies_in(fake, OTHER) if any(
        t["Value"].endswith(b.ami) for t in c.get("Tags", []) if t["Key"] == "amic:source-image")]
    seen = first_seen[copy["ImageId"]]
    assert seen["amic:source-image"] == image_tags["amic:source-image"]
    assert seen["amic:key"] == image_tags["amic:key"] and seen["amic:tool"].startswith("amic/")
    tagged_later = [c for c in fake.proxy.calls_of("CreateTags", answered=True)
                    if c.get("ResourceId.1") == copy["ImageId"]]
    assert tagged_later == []
    assert_clean(fake)


def test_ctrl_c_while_copying_cancels_the_copies_at_once(e2e):
    fake = e2e.fake
    e2e.write(QUICK.format(v="copy-int"))
    fake.proxy.reset()
    fake.standin.image_copies.seconds = 3600          # copies that take an hour
    proc = subprocess.Popen(e2e.argv("--checkpoint", "none", "--copy-to-region", OTHER,
                                     "--copy-to-region", "eu-west-1"),
                            cwd=e2e.project, env=e2e.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while len(fake.proxy.calls_of("CopyImage", answered=True)) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        time.sleep(1.0)                               # amic is waiting for the copies now
        made = list(fake.standin.image_copies.made[-2:])
        snaps = {copy_id: snapshots_of(moto_in(fake, region).describe_images(
            ImageIds=[copy_id])["Images"][0]) for region, copy_id in made}
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        fake.standin.image_copies.seconds = 0.0
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert took < 20, took
    assert "Traceback" not in err
    deregistered = {c["ImageId"] for c in fake.proxy.calls_of("DeregisterImage", answered=True)}
    for region, copy_id in made:
        assert copy_id in deregistered, (copy_id, err)
        assert f"cancelled the copy {copy_id} in {region}" in err, err
        assert copy_id not in {c["ImageId"] for c in copies_in(fake, region)}
        left = {s["SnapshotId"] for s in moto_in(fake, region).describe_snapshots(
            OwnerIds=["self"])["Snapshots"]}
        assert snaps[copy_id] and not snaps[copy_id] & left, (snaps[copy_id], left)
    assert_clean(fake)


def test_a_cached_image_gets_the_copies_it_is_missing(e2e):
    """A cached final image still answers ``--copy-to-region``: a region the earlier build
    did not copy to (it asked for none, or was interrupted while copying) gets its copy,
    neither the build memo nor the cached path answering without it; a region that has its
    copy gets no second one."""
    fake = e2e.fake
    e2e.write(QUICK.format(v="late-copy"))
    first = e2e.build("--checkpoint", "none")
    assert first.rc == 0, first.stderr
    assert "CopyImage" not in first.calls
    ami = first.stdout.split()[-1]

    second = e2e.build("--checkpoint", "none", "--copy-to-region", OTHER, "--json")
    assert second.rc == 0, second.stderr
    assert "RunInstances" not in second.calls           # cached: no instance
    assert second.made["CopyImage"] == 1, second.calls
    assert f"copying the cached image to the regions it is missing from: {OTHER}" in second.stderr
    regions = json.loads(second.stdout)["regions"]
    assert regions[REGION] == ami and regions[OTHER].startswith("ami-")
    copy = [c for c in copies_in(fake, OTHER) if c["ImageId"] == regions[OTHER]]
    assert copy and {t["Key"]: t["Value"] for t in copy[0]["Tags"]}["amic:source-image"] == (
        f"{REGION}/{ami}")

    third = e2e.build("--checkpoint", "none", "--copy-to-region", OTHER, "--json")
    assert third.rc == 0, third.stderr
    assert "CopyImage" not in third.calls and "RunInstances" not in third.calls
    assert json.loads(third.stdout)["regions"] == regions

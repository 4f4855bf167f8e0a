"""``amic build --target ec2`` end to end: the real CLI against moto and a faithful stand-in.

Each build is the ``amic`` console script run as a subprocess, reaching moto
through ``AWS_ENDPOINT_URL_EC2`` (the counting proxy of ``tests/harness/ec2/__init__.py``;
nothing patched) and the instance's SSH side through ``--ssh-host``/``--ssh-port``.
Every instance is a real sshd over an overlay root made from the image it was
launched from (the debootstrap base for the registered Debian AMI, frozen
instance disks for AMIs made by CreateImage, and for AMIs registered from a layer
snapshot the disk as CreateSnapshot found it), so a build launched from a cached
layer really finds the earlier layers' packages installed.

Layer checkpoints are live snapshots (CreateSnapshot, no StopInstances, no
CreateImage); an AMI is registered from one only when a build starts from it,
and reused after that.

The scenarios share one Amifile project and one moto, in file order (each
helper builds what it needs if run alone). After every build: no instance
running, no key pair or security group left, every create call tagged.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import re
import signal
import subprocess
import threading
import time

import pytest

from tests.harness.e2e_builds import AMIFILE, E2E, TOKEN, Build, layer_snapshots
from tests.harness.ec2 import assert_clean, disk_file, image_file, standin_ec2

pytestmark = [pytest.mark.slow, pytest.mark.root]

TOKEN_SEEN = hashlib.sha256(TOKEN.encode()).hexdigest()[:16]   # what the INIT writes instead


def registered_from(fake, snap: str) -> list[str]:
    """AMIs registered from layer snapshot ``snap`` (found by tag, as amic finds them)."""
    return [i["ImageId"] for i in fake.client().describe_images(
        Owners=["self"], Filters=[{"Name": "tag:amic:from-snapshot", "Values": [snap]}])["Images"]]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    with standin_ec2(tmp_path_factory, strict=True) as fake:   # test_arg_values_never_on_disk searches disks
        project = tmp_path_factory.mktemp("project")
        yield E2E(fake, project)


def test_full_build(e2e):
    e2e.full = None
    full = e2e.ensure_full()
    fake = e2e.fake
    assert re.fullmatch(r"ami-[0-9a-f]+", full["ami"])
    # one instance, from the registered Debian AMI; a checkpoint per layer plus the final
    assert fake.standin.launches[-1][1] == e2e.base_ami
    assert set(full["layers"]) == {"base", "web", "app"}
    # a layer checkpoint is a live snapshot: no stop, no AMI; the final one stop + CreateImage
    calls = collections.Counter(a for a, _ in fake.proxy.answered)
    assert calls["CreateSnapshot"] == 3 and calls["CreateImage"] == 1, calls
    assert calls["StopInstances"] == 1 and calls["RegisterImage"] == 0, calls
    snaps = layer_snapshots(fake)
    for svc, snap in snaps.items():   # tagged at creation with what it would become
        tags = snap["Tags"]
        assert tags["amic:kind"] == "layer" and tags["amic:service"] == svc, tags
        assert tags["amic:tool"].startswith("amic/") and tags["amic:build-id"], tags
        assert tags["amic:ssh-user"] == "root" and tags["amic:key"] and tags["amic:root-device"]
        assert tags["amic:arch"] == "x86_64" and tags["amic:source-image"] == e2e.base_ami
    # each snapshot is the disk at its moment: web's has no app file, app's has it
    assert disk_file(fake, snaps["web"]["SnapshotId"], "/etc/amic-web") is not None
    assert disk_file(fake, snaps["web"]["SnapshotId"], "/etc/amic-app") is None
    assert disk_file(fake, snaps["app"]["SnapshotId"], "/etc/amic-app").read_text() == "hello app\n"
    # the final AMI really holds what the INITs did, packages included
    ami = full["ami"]
    assert image_file(fake, ami, "/usr/bin/jq") and image_file(fake, ami, "/usr/bin/hello")
    assert image_file(fake, ami, "/etc/amic-base").read_text() == "base\n"
    assert image_file(fake, ami, "/etc/amic-web").read_text() == '"web-v1"\n'
    assert "Hello, world!" in image_file(fake, ami, "/etc/amic-hello").read_text()
    assert image_file(fake, ami, "/etc/amic-token").read_text() == TOKEN_SEEN + "\n"
    assert image_file(fake, ami, "/etc/amic-app").read_text() == "hello app\n"
    assert image_file(fake, ami, "/var/lib/amic/stage2/amic") is not None
    # the stand-in installed the build's key as cloud-init does; every checkpoint took it
    # out before its snapshot (and put it back), prepare-image before the final image
    build_key = base64.b64decode(fake.proxy.calls_of("ImportKeyPair")[0]["PublicKeyMaterial"])
    for snap in full["layers"].values():
        keys = disk_file(fake, snap, "/root/.ssh/authorized_keys")
        assert keys is None or build_key.split()[1].decode() not in keys.read_text(), snap
    keys = image_file(fake, ami, "/root/.ssh/authorized_keys")
    assert keys is None or build_key.split()[1].decode() not in keys.read_text()
    tags = {t["Key"]: t["Value"] for t in
            fake.client().describe_images(ImageIds=[ami])["Images"][0]["Tags"]}
    assert tags["amic:kind"] == "final" and tags["amic:amifile"] == "Amifile"
    assert "amic:source" not in tags, tags          # no digest of the (guessable) path
    assert {tags[f"amic:layer:{s}"] for s in ("base", "web", "app")} == {
        t for t in tags.values() if len(t) == 64} - {tags["amic:key"]}


def test_unchanged_rebuild_launches_nothing(e2e):
    full = e2e.ensure_full()
    b = e2e.build()
    assert b.rc == 0, b
    assert b.ami == full["ami"]
    assert b.count("RunInstances") == 0 and b.count("CreateImage") == 0, b
    assert set(b.layers().values()) == {"CACHED"}, b
    assert b.seconds < 5, b


def fast_rebuild(e2e) -> Build:
    """An unchanged rebuild answered by the build memo (the previous build recorded it)."""
    e2e.build()       # records the memo if the last build could not (input written too late)
    b = e2e.build()
    assert b.rc == 0, b
    return b


def test_unchanged_rebuild_is_confirmed_without_boto3(e2e):
    full = e2e.ensure_full()
    b = fast_rebuild(e2e)
    assert b.ami == full["ami"]
    # the memo answered after two DescribeImages sent by amic.targets.ec2.query, none through boto3
    assert b.calls == {"DescribeImages": 2} and b.boto3 == [], b
    assert set(b.layers().values()) == {"CACHED"}, b
    assert "unchanged: image " + full["ami"] in b.stderr
    assert b.seconds < 2, b


@pytest.mark.parametrize("code", ["RequestLimitExceeded", "AuthFailure"])
def test_unconfirmed_memo_falls_back_to_boto3(e2e, code):
    full = e2e.ensure_full()
    fast_rebuild(e2e)
    # the memo's calls fail (throttling: past the raw path's own 4 tries per call), the
    # full path (boto3, retries) answers
    times = 1 if code == "AuthFailure" else 8
    b = e2e.build(faults=(("DescribeImages", times, code, 401 if code == "AuthFailure" else 503),))
    assert b.rc == 0, b
    assert b.ami == full["ami"]
    assert b.boto3 and b.count("RunInstances") == 0 and b.count("CreateImage") == 0, b
    assert e2e.fake.proxy.injected == times


def test_new_base_on_aws_rebuilds(e2e):
    """Debian publishes a newer debian-12 AMI: the memo is not confirmed, everything re-runs."""
    full = e2e.ensure_full()
    fast_rebuild(e2e)
    fake = e2e.fake
    newer = fake.standin.register_base(fake.client(), "debian-12-amd64-20991231-2359")
    try:
        b = e2e.build()
        assert b.rc == 0, b
        assert b.run_images == [newer], b
        assert b.layers() == {"base": "RUN", "web": "RUN", "app": "RUN"}, b
        assert b.ami != full["ami"]
        again = e2e.build()           # and the new result is the one remembered
        assert again.ami == b.ami and again.boto3 == [] and again.count("RunInstances") == 0, again
    finally:
        fake.client().deregister_image(ImageId=newer)
    b = e2e.build()                  # the old base again: its final AMI is still there
    assert b.rc == 0 and b.ami == full["ami"] and b.count("RunInstances") == 0, b


def test_deregistered_final_ami_is_rebuilt(e2e):
    full = e2e.ensure_full()
    fast_rebuild(e2e)
    e2e.fake.client().deregister_image(ImageId=full["ami"])
    b = e2e.build()
    assert b.rc == 0, b
    assert b.ami != full["ami"]
    # every layer is still there: one AMI registered from the last one's snapshot (it had
    # none yet), one launch from that AMI, one CreateImage (the final)
    app = registered_from(e2e.fake, full["layers"]["app"])
    assert len(app) == 1 and b.count("RegisterImage") == 1, b
    assert b.run_images == app and b.count("CreateImage") == 1, b
    assert b.count("CreateSnapshot") == 0, b
    assert set(b.layers().values()) == {"CACHED"}, b
    full["ami"] = b.ami
    again = e2e.build()
    assert again.ami == b.ami and again.boto3 == [], again


def test_one_layer_change_starts_from_the_cached_prefix(e2e):
    full = e2e.ensure_full()
    e2e.write(AMIFILE.replace('"web-v1"', '"web-v2"'))
    try:
        b = e2e.build()
        assert b.rc == 0, b
        # launched from base's layer: jq there came from the cached layer, not a re-run
        base = registered_from(e2e.fake, full["layers"]["base"])
        assert b.run_images == base and len(base) == 1, b
        # the layer's AMI is named after the project, like its finals (`ami ls` reads it)
        raw = e2e.fake.client().describe_images(ImageIds=base)["Images"][0]
        project = {t_["Key"]: t_["Value"] for t_ in raw["Tags"]}["amic:name"]
        assert raw["Name"].startswith(f"{project}-layer-base-"), raw["Name"]
        assert b.layers() == {"base": "CACHED", "web": "RUN", "app": "RUN"}, b
        assert "base: init: begin" not in b.stderr
        assert b.count("RunInstances") == 1 and b.count("CreateImage") == 1, b
        assert b.made["CreateSnapshot"] == 2 and b.count("StopInstances") == 1, b
        assert image_file(e2e.fake, b.ami, "/etc/amic-web").read_text() == '"web-v2"\n'
        assert b.ami != full["ami"]
    finally:
        e2e.write(AMIFILE)


def test_update_only_change_reuses_every_layer(e2e):
    full = e2e.ensure_full()
    e2e.write(AMIFILE.replace("web-update-v1", "web-update-v2"))
    try:
        b = e2e.build()
        assert b.rc == 0, b
        assert set(b.layers().values()) == {"CACHED"}, b
        # the AMI registered from app's snapshot before is reused: no RegisterImage now
        assert b.run_images == registered_from(e2e.fake, full["layers"]["app"]), b
        assert b.count("RegisterImage") == 0, b
        assert b.count("CreateImage") == 1, b        # only the final AMI: a new stage2
        assert "init: begin" not in b.stderr
        assert b.ami != full["ami"]
        update = image_file(e2e.fake, b.ami, "/var/lib/amic/stage2/services/web/update/01.sh")
        assert "web-update-v2" in update.read_text()
    finally:
        e2e.write(AMIFILE)


def _rebuild_within_the_tag_lag(e2e, version: str, **again_kwargs):
    """Build ``version`` of the UPDATE (a new final image), then the same at once, while the
    strict stand-in's tag filters do not show that image yet: (first build, rebuild)."""
    e2e.ensure_full()
    e2e.write(AMIFILE.replace("web-update-v1", version))
    time.sleep(0.2)                  # the memo records only inputs older than the build
    # --checkpoint auto: the memo's record holds for it whatever earlier tests checkpointed
    b = e2e.build("--checkpoint", "auto")
    assert b.rc == 0 and b.count("CreateImage") == 1, b
    consistency = e2e.fake.strict.consistency
    hidden, delay = consistency.hidden, consistency.delay
    consistency.delay = 120          # the new image stays out of tag-filtered answers
    try:
        again = e2e.build("--checkpoint", "auto", settle=False, **again_kwargs)
    finally:
        consistency.delay = delay
    assert again.rc == 0, again
    assert consistency.hidden > hidden    # the tag look-up really missed it
    assert again.ami == b.ami, again
    assert again.count("CreateImage") == 0 and again.count("RunInstances") == 0, again
    return b, again


def test_rebuild_at_once_is_answered_by_the_image_just_made(e2e):
    """An unchanged rebuild started while EC2's tag filters do not show the image the last
    build made yet: the memo confirms that image by id instead of making it again."""
    try:
        b, again = _rebuild_within_the_tag_lag(e2e, "web-update-v4")
        assert again.boto3 == [] and "unchanged: image " + b.ami in again.stderr, again
    finally:
        e2e.write(AMIFILE)


def test_a_rebuild_the_memo_cannot_answer_still_finds_the_image_just_made(e2e):
    """The same, with the memo's quick check throttled past its tries (two DescribeImages,
    ``query.THROTTLE_ATTEMPTS`` each): the full path runs with boto3, its tag look-up misses
    the image, and it asks for the image the memo recorded by id instead of making a
    second AMI of the same key."""
    from amic.targets.ec2.query import THROTTLE_ATTEMPTS

    try:
        _, again = _rebuild_within_the_tag_lag(
            e2e, "web-update-v5", faults=(("DescribeImages", 2 * THROTTLE_ATTEMPTS),))
        assert again.boto3 != [], again                 # the full path ran
        by_id = [c for c in e2e.fake.proxy.calls_of("DescribeImages") if "ImageId.1" in c]
        assert by_id and by_id[-1]["ImageId.1"] == again.ami, by_id
    finally:
        e2e.write(AMIFILE)


def test_throttled_calls_are_retried(e2e):
    e2e.ensure_full()
    e2e.write(AMIFILE.replace("web-update-v1", "web-update-v3"))
    try:
        b = e2e.build(faults=(("RunInstances", 2), ("CreateImage", 1), ("DescribeImages", 1),
                              ("TerminateInstances", 1)))
        assert b.rc == 0, b
        assert e2e.fake.proxy.injected == 5
        # RunInstances carries a client token: its retries start one instance
        assert len({p["ClientToken"] for p in e2e.fake.proxy.calls_of("RunInstances")}) == 1
        assert len(e2e.fake.standin.launches) == len(set(e2e.fake.standin.launches))
        assert set(b.layers().values()) == {"CACHED"}, b
    finally:
        e2e.write(AMIFILE)


def test_failing_init_names_service_and_line(e2e):
    e2e.ensure_full()
    text = AMIFILE.replace('echo "$GREETING app" > /etc/amic-app',
                           'echo about to fail\n        exit 3')
    e2e.write(text)
    try:
        b = e2e.build()
        assert b.rc == 1, b
        lines = text.splitlines()
        # the line of the command that failed, not of INIT <<~EOF
        line = next(i for i, text_line in enumerate(lines, 1) if text_line.strip() == "exit 3")
        assert re.search(rf"service app failed \(exit 3\) at Amifile:{line}\b", b.stderr), b
        assert "about to fail" in b.stderr
        assert b.count("RunInstances") == 1 and b.count("TerminateInstances") == 1, b
        assert b.layers()["app"] == "FAILED"
        assert b.stdout.strip() == ""
    finally:
        e2e.write(AMIFILE)


def test_ctrl_c_during_init_exits_130_and_cleans_up(e2e):
    e2e.ensure_full()
    e2e.write(AMIFILE.replace('echo "$GREETING app" > /etc/amic-app',
                              'echo sleeping; sleep 120'))
    fake = e2e.fake
    try:
        fake.proxy.reset()
        proc = subprocess.Popen(e2e.argv(), cwd=e2e.project, env=e2e.env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seen: list[str] = []
        started = threading.Event()

        def read():
            for line in proc.stderr:
                seen.append(line)
                if "app: init: begin" in line:
                    started.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert started.wait(120), "".join(seen)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
        reader.join(10)
        assert rc == 130, "".join(seen)
        assert time.monotonic() - t0 < 30
        assert fake.proxy.count("TerminateInstances") == 1
        assert_clean(fake)
        # the INIT was really interrupted: nothing is still sleeping in the stand-in
        assert not any(i.sshd for i in fake.standin.instances.values())
    finally:
        e2e.write(AMIFILE)


def test_arg_values_never_on_disk(e2e):
    e2e.ensure_full()
    disks = [str(p) for p in e2e.fake.standin.disks()]
    assert len(disks) >= 3
    seen = subprocess.run(["grep", "-rl", "--", TOKEN_SEEN, *disks], check=False,
                          capture_output=True, text=True)
    assert seen.stdout, "the INIT did see the ARG value (sanity check of the search)"
    leaked = subprocess.run(["grep", "-rla", "--", TOKEN, *disks], check=False,
                            capture_output=True, text=True)
    assert leaked.returncode == 1 and leaked.stdout == "", leaked.stdout

"""SSH to the instance and AMI snapshots, against moto and a real sshd on loopback.

The instance's SSH side is one real sshd (``PlainSshd``) reached through the
stand-in's relay via ``--ssh-host``/``--ssh-port``; its host key is what the
proxy prints on the instance's console. Its sessions run a fixed harmless
command, so these tests stop short of running a build's INIT (the end-to-end
build needs the overlay-root stand-in).
"""

from __future__ import annotations

import os

import pytest
from amic.targets.ec2 import gc as ec2_gc
from amic.targets.ssh.hostkeys import fingerprints
from amic.errors import BuildError
from amic.targets.ec2 import target as ec2
from amic.targets.ec2.options import Ec2Options
from amic.contract import TAG_AMIFILE, TAG_KEY, TAG_KIND, TAG_LAYER_PREFIX, TAG_SERVICE

from tests.harness.ec2 import PlainSshd, fake_ec2, xml_values

pytestmark = [pytest.mark.slow, pytest.mark.root]


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root (sshd)")
    os.makedirs("/run/sshd", exist_ok=True)
    with fake_ec2(tmp_path_factory.mktemp("ec2")) as fake:
        sshd = PlainSshd(tmp_path_factory.mktemp("sshd"))
        try:
            yield fake, sshd
        finally:
            sshd.close()


@pytest.fixture
def fake(fake_server, monkeypatch):
    fake, sshd = fake_server
    fake.reset()
    fake.standin.plain = sshd
    for k, v in fake.env.items():
        monkeypatch.setenv(k, v)
    fake.register_debian12()
    return fake


def target(fake, **kw) -> ec2.Ec2Target:
    opts = {"ssh_cidrs": ("127.0.0.1/32",), "console_timeout": 5, "poll_interval": 0.05,
            "ssh_timeout": 5, "ssh_user": "root", "ssh_host": "127.0.0.1",
            "ssh_port": fake.standin.relay_port}
    opts.update(kw)
    return ec2.Ec2Target(options=Ec2Options(**opts), log_fn=lambda m: None)


def assert_clean(fake) -> None:
    assert fake.all_leftovers() == {"instances": [], "key_pairs": [], "security_groups": []}
    assert fake.created_untagged() == []


def test_host_key_from_console_is_accepted(fake):
    t = target(fake)
    with t.launch(t.resolve_base(None), build_id="b-ok") as m:
        assert m.conn is not None
        lines = []
        assert m.run("true", env={"SECRET": "x y"}, on_output=lines.append) == 0
        assert lines == ["stand-in"]
        assert m.expected_keys & fingerprints(fake.standin.plain.host_key)
    assert_clean(fake)


def test_host_key_mismatch_is_refused(fake):
    fake.standin.wrong_fingerprint = True
    t = target(fake)
    with pytest.raises(BuildError, match="refusing .*middle"), \
            t.launch(t.resolve_base(None), build_id="b-mitm"):
        pass
    assert_clean(fake)


def test_explicit_fingerprint_and_trust_on_first_use(fake):
    fake.standin.print_fingerprints = False
    t = target(fake, host_key_fingerprints=("SHA256:AAAAnotthekey",))
    with pytest.raises(BuildError, match="refusing"), t.launch(t.resolve_base(None), build_id="b-x"):
        pass
    t = target(fake, console_timeout=0.2)
    with pytest.raises(BuildError, match="no SSH host key fingerprints"), \
            t.launch(t.resolve_base(None), build_id="b-y"):
        pass
    t = target(fake, trust_on_first_use=True)
    with t.launch(t.resolve_base(None), build_id="b-tofu") as m:
        assert m.expected_keys == fingerprints(fake.standin.plain.host_key)
    assert fake.proxy.count("GetConsoleOutput") >= 1
    assert_clean(fake)


def test_ssh_never_up_times_out_and_cleans(fake):
    fake.standin.ssh_up = False
    t = target(fake, ssh_timeout=2)
    with pytest.raises(BuildError, match="no SSH on"), t.launch(t.resolve_base(None), build_id="b-d"):
        pass
    assert_clean(fake)


def test_snapshots_tags_cache_and_image_options(fake):
    ec2c = fake.client()
    t = target(fake, share_accounts=("111122223333",), copy_regions=("eu-west-1",),
               image_tags={"team": "web"}, force_deregister=True, force_delete_snapshot=True,
               image_name="web-{key}")
    base = t.resolve_base(None)
    layer_tags = {TAG_KIND: "layer", TAG_SERVICE: "httpd", TAG_AMIFILE: "Amifile",
                  "amic:build-id": "b-snap", "amic:name": "web",
                  "amic:project": "p-web"}
    with t.launch(base, build_id="b-snap") as m:
        layer = t.snapshot(m, key="L" * 64, final=False, tags=layer_tags)
        assert not m.stopped                  # a layer is a live snapshot: no stop
        assert layer.id.startswith("snap-") and m.run("true") == 0
        final_tags = {TAG_KIND: "final", TAG_AMIFILE: "Amifile", TAG_LAYER_PREFIX + "httpd": "L" * 64,
                      "amic:build-id": "b-snap", "team": "x", "amic:name": "web",
                      "amic:project": "p-web"}
        final = t.snapshot(m, key="F" * 64, final=True, tags=final_tags)
        again = t.snapshot(m, key="F" * 64, final=True, tags=final_tags)   # same name: replaced
    assert_clean(fake)
    # one stop, for the first final image (the second finds the instance stopped)
    assert fake.proxy.count("StopInstances") == 1 and fake.proxy.count("StartInstances") == 0
    assert fake.proxy.count("CreateSnapshot") == 1
    assert t.find_image("L" * 64).id == layer.id
    assert t.find_image("F" * 64).id == again.id
    assert not ec2c.describe_images(Filters=[{"Name": "image-id", "Values": [final.id]}])["Images"]
    raw = ec2c.describe_images(ImageIds=[again.id])["Images"][0]
    tags = {t_["Key"]: t_["Value"] for t_ in raw["Tags"]}
    assert raw["Name"] == "web-FFFFFFFFFFFF"
    assert tags[TAG_KEY] == "F" * 64 and tags["team"] == "web" and tags["amic:tool"].startswith("amic/")
    assert tags["amic:ssh-user"] == "root"
    snap = raw["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    stags = {t_["Key"]: t_["Value"] for t_ in
             ec2c.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0]["Tags"]}
    assert stags["amic:image-id"] == again.id and stags[TAG_KEY] == "F" * 64
    perms = ec2c.describe_image_attribute(ImageId=again.id, Attribute="launchPermission")
    assert {"UserId": "111122223333"} in perms["LaunchPermissions"]
    import boto3

    west = boto3.client("ec2", region_name="eu-west-1", endpoint_url=fake.moto.url,
                        aws_access_key_id="testing", aws_secret_access_key="testing")
    copies = west.describe_images(Owners=["self"], Filters=[{"Name": "tag:amic:key",
                                                             "Values": ["F" * 64]}])["Images"]
    assert len(copies) == 2   # one per final snapshot

    # The layer is listed (as its snapshot) with the final; pruning keeps the newest final and
    # the layer it names; --all removes everything, the snapshot-only layer included.
    assert {img.id for img in t.list_images()} == {again.id, layer.id}
    doomed = ec2_gc.prune_plan(list(t.list_images()), keep=1, project="p-web")
    assert doomed == []
    for img, _ in ec2_gc.prune_plan(list(t.list_images()), keep=1, project="p-web",
                                    everything=True):
        t.deregister(img.id)
    assert list(t.list_images()) == []
    assert layer.id not in {s["SnapshotId"] for s in ec2c.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert not ec2c.describe_snapshots(SnapshotIds=[])["Snapshots"] or all(
        s.get("Tags") is None or "amic:image-id" not in {x["Key"] for x in s["Tags"]}
        for s in ec2c.describe_snapshots(OwnerIds=["self"])["Snapshots"])


def test_interrupt_as_create_image_answers_leaves_its_snapshots_tagged(fake):
    """Ctrl-C right after CreateImage: the image's snapshots already carry amic's tags
    (TagSpecifications ``snapshot``, at creation), so `amic gc` can attribute them."""
    import _thread

    ec2c = fake.client()
    made: list[str] = []

    def interrupt(params, text):
        made.extend(xml_values(text, "imageId"))
        _thread.interrupt_main()
        return text

    fake.proxy.after["CreateImage"].append(interrupt)
    t = target(fake)
    tags = {TAG_KIND: "final", TAG_AMIFILE: "Amifile", "amic:build-id": "b-cimg",
            "amic:name": "web"}
    with pytest.raises(KeyboardInterrupt), t.launch(t.resolve_base(None), build_id="b-cimg") as m:
        t.snapshot(m, key="C" * 64, final=True, tags=tags)
    assert made
    raw = ec2c.describe_images(ImageIds=made)["Images"][0]
    snaps = [b["Ebs"]["SnapshotId"] for b in raw["BlockDeviceMappings"] if "Ebs" in b]
    assert snaps
    for snap in ec2c.describe_snapshots(SnapshotIds=snaps)["Snapshots"]:
        stags = {t_["Key"]: t_["Value"] for t_ in snap.get("Tags", [])}
        assert stags.get("amic:build-id") == "b-cimg" and stags.get(TAG_KEY) == "C" * 64, stags
        assert stags.get("amic:tool", "").startswith("amic/")
    assert_clean(fake)

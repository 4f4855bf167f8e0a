"""The EBS direct API uploader (``amic.targets.ec2.ebs_upload``, ``ebs_image``, ``ebs_early``)
against the strict EBS stand-in (``tests/harness/ec2/ebs.py``): what it sends, what it skips,
what it leaves behind when it fails, is interrupted or killed."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import boto3
import botocore.config
import pytest
from amic.errors import BuildError
from amic.targets.ec2 import block_manifest as bm
from amic.targets.ec2 import disk_reuse, ebs_early, ebs_image, ebs_upload

from tests.harness.cli import run_amic
from tests.harness.ec2 import REGION, fake_ec2
from tests.harness.ec2.ebs_model import EbsError

pytestmark = pytest.mark.slow
B = bm.BLOCK_SIZE
TAGS = {"amic:tool": "amic/test", "amic:key": "k" * 64, "amic:kind": "final",
        "amic:project": "p-test", "amic:name": "demo", "amic:build-id": "b-1"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with fake_ec2(tmp_path_factory.mktemp("ec2")) as fake:
        yield fake


@pytest.fixture
def fake(server, tmp_path, monkeypatch):
    server.reset()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return server


def ebs(fake):
    return boto3.client("ebs", region_name=REGION, aws_access_key_id="testing",
                        aws_secret_access_key="testing", endpoint_url=fake.ebs.url,
                        config=botocore.config.Config(retries={"total_max_attempts": 1,
                                                               "mode": "standard"},
                                                      max_pool_connections=16))


def disk(path: Path, blocks: dict[int, bytes], size: int = 64 * 1024 * 1024) -> Path:
    """A sparse raw disk with ``blocks`` written (each filled with its byte pattern)."""
    with open(path, "wb") as fh:
        fh.truncate(size)
        for index, fill in blocks.items():
            fh.seek(index * B)
            fh.write((fill * B)[:B])
    return path


def read_back(fake, snap: str, size: int) -> bytes:
    """The whole volume as GetSnapshotBlock gives it (unlisted blocks read as zeros)."""
    client = ebs(fake)
    out = bytearray(size)
    token = None
    while True:
        page = client.list_snapshot_blocks(SnapshotId=snap, **({"NextToken": token} if token
                                                               else {}))
        for blk in page["Blocks"]:
            got = client.get_snapshot_block(SnapshotId=snap, BlockIndex=blk["BlockIndex"],
                                            BlockToken=blk["BlockToken"])
            data = got["BlockData"].read()
            assert base64.b64encode(hashlib.sha256(data).digest()).decode() == got["Checksum"]
            start = blk["BlockIndex"] * B
            if start < size:
                out[start:start + B] = data[:size - start]
        token = page.get("NextToken")
        if not token:
            return bytes(out)


def publish(fake, path: Path, **kw) -> ebs_image.Published:
    lines: list = []
    done = ebs_image.publish(ebs(fake), fake.client(direct=False), path,
                             name=kw.pop("name", "demo-1"), description="test",
                             arch="x86_64", tags=TAGS, build_id="b-1",
                             progress=lines.append, **kw)
    assert lines and lines[-1].sent_bytes == done.upload.blocks_sent * B
    return done


def test_upload_skips_zeros_then_sends_only_changed_blocks(fake, tmp_path):
    first = disk(tmp_path / "a.raw", {0: b"a", 1: b"b", 5: b"\0", 40: b"c", 127: b"d"})
    one = publish(fake, first)
    assert one.upload.blocks_sent == 4 and one.upload.parent is None
    assert sorted(i for _, i in fake.ebs.puts) == [0, 1, 40, 127]
    snap = one.upload.snapshot_id
    assert read_back(fake, snap, first.stat().st_size) == first.read_bytes()

    ec2 = fake.client(direct=False)
    image = ec2.describe_images(ImageIds=[one.image_id])["Images"][0]
    assert {t["Key"]: t["Value"] for t in image["Tags"]} == TAGS
    assert image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"] == snap
    # what EC2 was asked (moto's RegisterImage keeps only the name)
    asked = fake.proxy.calls_of("RegisterImage", answered=True)[-1]
    assert {k: asked[k] for k in ("Architecture", "EnaSupport", "RootDeviceName", "BootMode",
                                  "ImdsSupport", "VirtualizationType",
                                  "BlockDeviceMapping.1.DeviceName",
                                  "BlockDeviceMapping.1.Ebs.SnapshotId")} == {
        "Architecture": "x86_64", "EnaSupport": "true", "RootDeviceName": "/dev/xvda",
        "BootMode": "uefi-preferred", "ImdsSupport": "v2.0", "VirtualizationType": "hvm",
        "BlockDeviceMapping.1.DeviceName": "/dev/xvda", "BlockDeviceMapping.1.Ebs.SnapshotId": snap}
    snap_tags = {t["Key"]: t["Value"] for t in
                 ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0]["Tags"]}
    assert snap_tags["amic:image-id"] == one.image_id and "amic:role" not in snap_tags
    assert bm.load(snap).blocks == bm.scan(first)

    # block 1 changed, block 40 zeroed, block 60 new: three blocks go, over the parent
    fake.ebs.puts.clear()
    second = disk(tmp_path / "b.raw", {0: b"a", 1: b"B", 60: b"e", 127: b"d"})
    two = publish(fake, second, name="demo-2")
    assert two.upload.parent == snap
    assert sorted(i for _, i in fake.ebs.puts) == [1, 40, 60]
    assert read_back(fake, two.upload.snapshot_id, second.stat().st_size) == second.read_bytes()


def test_throttling_and_server_errors_are_retried(fake, tmp_path):
    fake.ebs.put_rate, fake.ebs.put_burst = 40.0, 4.0
    fake.ebs.fail("PutSnapshotBlock", 3)
    fake.ebs.fail("CompleteSnapshot", 1)
    try:
        done = publish(fake, disk(tmp_path / "t.raw", {i: bytes([i + 1]) for i in range(40)}))
    finally:
        fake.ebs.put_rate, fake.ebs.put_burst = 1000.0, 1000.0
    assert done.upload.blocks_sent == 40 and done.upload.retries >= 3
    assert fake.ebs.refused["RequestThrottledException"] > 0
    assert fake.ebs.refused["InternalServerException"] == 4


def test_a_new_snapshot_unknown_for_a_while_is_waited_out(fake, tmp_path):
    # EBS may answer "does not exist" to blocks for a snapshot it just started
    # (awslabs/coldsnap#43): the upload waits that out instead of failing.
    fake.ebs.write_lag = 3.0
    path = disk(tmp_path / "w.raw", {i: bytes([i + 1]) for i in range(8)})
    t0 = time.monotonic()
    done = ebs_upload.upload(ebs(fake), fake.client(direct=False), path, tags=TAGS,
                             description="test")
    assert time.monotonic() - t0 >= 3.0
    assert fake.ebs.refused["ResourceNotFoundException"] >= 1 and done.retries >= 1
    assert done.blocks_sent == 8
    assert read_back(fake, done.snapshot_id, path.stat().st_size) == path.read_bytes()


def test_a_snapshot_unknown_past_the_patience_fails_clearly_and_is_deleted(fake, tmp_path):
    fake.ebs.write_lag = 60.0
    path = disk(tmp_path / "u.raw", {0: b"x"})
    t0 = time.monotonic()
    with pytest.raises(BuildError, match=r"writing block 0 of snap-\w+: .*does not exist"):
        ebs_upload.upload(ebs(fake), fake.client(direct=False), path, tags=TAGS,
                          description="test", new_snapshot_patience=2.0)
    assert time.monotonic() - t0 < 20
    assert upload_snapshots(fake) == []


def test_the_image_is_registered_once_the_sealed_snapshot_is_completed(fake, tmp_path):
    # CompleteSnapshot answers "pending" (EBS seals the snapshot asynchronously) and
    # RegisterImage refuses a snapshot that is not completed: the upload waits
    fake.ebs.seal_seconds = 1.5
    path = disk(tmp_path / "s.raw", {0: b"s", 3: b"t"})
    t0 = time.monotonic()
    done = ebs_image.publish(ebs(fake), fake.client(direct=False), path, name="sealed",
                             description="", arch="x86_64", tags=TAGS, build_id="b-1",
                             seal_poll=0.1)
    assert time.monotonic() - t0 >= 1.5
    assert fake.ebs.state(done.upload.snapshot_id) == "completed"
    assert fake.proxy.calls_of("RegisterImage", answered=True)


def test_a_snapshot_sealed_past_the_wait_fails_clearly_and_is_deleted(fake, tmp_path):
    fake.ebs.seal_seconds = 600.0
    path = disk(tmp_path / "p.raw", {0: b"p"})
    with pytest.raises(BuildError, match=r"sealing snap-\w+"):
        ebs_image.publish(ebs(fake), fake.client(direct=False), path, name="slow",
                          description="", arch="x86_64", tags=TAGS, build_id="b-1",
                          seal_poll=0.1, seal_timeout=1.0)
    assert upload_snapshots(fake) == []
    assert not fake.proxy.calls_of("RegisterImage", answered=True)


def upload_snapshots(fake) -> list[str]:
    found = fake.client().describe_snapshots(OwnerIds=["self"])["Snapshots"]
    return [s["SnapshotId"] for s in found]


def test_a_failed_or_interrupted_upload_deletes_its_snapshot(fake, tmp_path):
    path = disk(tmp_path / "f.raw", {i: bytes([i + 1]) for i in range(20)})
    fake.ebs.fail("CompleteSnapshot", 100)
    with pytest.raises(BuildError, match="InternalServerException"):
        publish(fake, path)
    assert fake.ebs.calls["StartSnapshot"] == 1 and upload_snapshots(fake) == []

    def interrupt(progress):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ebs_image.publish(ebs(fake), fake.client(direct=False), path, name="x", description="",
                          arch="x86_64", tags=TAGS, build_id="b-1", progress=interrupt)
    assert fake.ebs.calls["StartSnapshot"] == 2 and upload_snapshots(fake) == []
    assert not list(bm.manifests_dir().glob("*.json")) if bm.manifests_dir().exists() else True


def test_arch_ec2_does_not_have_is_refused(fake, tmp_path):
    with pytest.raises(BuildError, match="no architecture 'riscv64'"):
        ebs_image.publish(ebs(fake), fake.client(direct=False), tmp_path, name="x",
                          description="", arch="riscv64", tags=TAGS, build_id="b-1")
    assert fake.ebs.calls["StartSnapshot"] == 0


KILLED = textwrap.dedent("""
    import sys
    from pathlib import Path
    import boto3, botocore.config
    from amic.targets.ec2 import ebs_image
    ebs = boto3.client("ebs", endpoint_url=sys.argv[1],
                       config=botocore.config.Config(retries={"total_max_attempts": 1}))
    ec2 = boto3.client("ec2")
    ebs_image.publish(ebs, ec2, Path(sys.argv[2]), name="killed", description="", arch="x86_64",
                      tags={"amic:project": "p-killed"}, build_id="b-killed", workers=2,
                      progress=lambda p: print(p.line(), flush=True))
""")


def test_kill_9_mid_upload_then_gc_leaves_nothing(fake, tmp_path):
    path = disk(tmp_path / "k.raw", {i: bytes([i % 250 + 1]) for i in range(100)})
    fake.ebs.put_rate, fake.ebs.put_burst = 5.0, 5.0      # ~20 s of upload
    env = {**os.environ, **fake.env, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-c", KILLED, fake.ebs.url, str(path)], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert "upload:" in proc.stdout.readline()      # blocks are going
        snaps = upload_snapshots(fake)
        assert len(snaps) == 1 and fake.ebs.state(snaps[0]) == "pending"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        fake.ebs.put_rate, fake.ebs.put_burst = 1000.0, 1000.0
    time.sleep(0.2)
    gc = run_amic("gc", env=env, check=True)
    assert f"snapshot {snaps[0]}" in gc.stderr, gc.stderr
    assert upload_snapshots(fake) == []
    assert "nothing to collect" in run_amic("gc", env=env, check=True).stderr


def test_manifest_scan_and_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = disk(tmp_path / "m.raw", {2: b"x", 3: b"\0", 9: b"y"}, size=10 * B + 100)
    with open(path, "r+b") as fh:     # a short last block with data
        fh.seek(10 * B)
        fh.write(b"z" * 100)
    found = bm.scan(path)
    assert sorted(found) == [2, 9, 10]
    assert found[10] == hashlib.sha256(b"z" * 100 + bytes(B - 100)).hexdigest()
    old = bm.Manifest("snap-0123456789abcdef0", 1, {2: found[2], 4: "0" * 64, 9: "1" * 64})
    assert bm.changed(found, old) == [4, 9, 10]
    assert bm.changed(found, None) == [2, 9, 10]
    bm.save(old)
    assert bm.load(old.snapshot_id) == old
    assert bm.load("../../etc/passwd") is None
    (bm.manifests_dir() / "snap-0123456789abcdef1.json").write_text("{not json")
    assert bm.load("snap-0123456789abcdef1") is None


# -- the snapshot started beside the disk step (ebs_early) -----------------------------------

@pytest.fixture
def created(fake):
    """``f(snapshot_id)`` hooks the stand-in runs as it starts a snapshot, removed after."""
    hooks: list = []
    fake.ebs.on_created.extend([lambda snap: [f(snap) for f in hooks]])
    yield hooks
    fake.ebs.on_created.pop()


def amic_snapshots(fake) -> list[str]:
    """The snapshots amic made (moto's RegisterImage invents one of its own for each image)."""
    found = fake.client().describe_snapshots(OwnerIds=["self"])["Snapshots"]
    return sorted(s["SnapshotId"] for s in found
                  if any(t["Key"] == "amic:build-id" for t in s.get("Tags", [])))


def beside(fake, volume_gib: int, log=None):
    return ebs_early.beside(lambda: ebs(fake), fake.client(direct=False), volume_gib=volume_gib,
                            tags=TAGS, build_id="b-1", description="test", log=log)


def disk_step(seconds: float) -> float:
    """A disk step as ``disk_reuse``'s: the main thread waits on a subprocess; when it ended."""
    subprocess.run(["sleep", str(seconds)], check=True)
    return time.monotonic()


def test_the_snapshot_starts_beside_the_disk_step_and_the_upload_goes_into_it(
        fake, tmp_path, created):
    first = publish(fake, disk(tmp_path / "a.raw", {0: b"a", 1: b"b", 40: b"c"}))
    seen: dict[str, float] = {}
    created.append(lambda snap: seen.setdefault(snap, time.monotonic()))
    lines: list[str] = []
    with beside(fake, 1, lines.append) as early:
        ended = disk_step(2.0)
        second = disk(tmp_path / "b.raw", {0: b"a", 1: b"B", 40: b"c", 60: b"d"})
        two = publish(fake, second, name="demo-2", early=early, log=lines.append)
    snap = two.upload.snapshot_id
    assert list(seen) == [snap] and seen[snap] < ended, (seen, ended)
    assert fake.ebs.calls["StartSnapshot"] == 2        # the first build's and this one
    said = next(ln for ln in lines if ln.startswith(f"snapshot {snap} started beside"))
    asked = float(said.split("(asked ")[1].split("s into it)")[0])
    assert 0 <= asked < 2.0, said          # asked for before the 2 s disk step ended
    # over the first snapshot, found beside the disk step too: only the changed blocks went
    assert two.upload.parent == first.upload.snapshot_id == fake.ebs.snaps[snap].parent
    assert sorted(i for s, i in fake.ebs.puts if s == snap) == [1, 60]
    assert read_back(fake, snap, second.stat().st_size) == second.read_bytes()
    assert amic_snapshots(fake) == sorted([first.upload.snapshot_id, snap])


def test_a_failed_or_interrupted_disk_step_deletes_the_early_snapshot(fake, created):
    up = threading.Event()
    created.append(lambda snap: up.set())
    for stop in (BuildError("the disk step failed"), KeyboardInterrupt()):
        up.clear()
        with pytest.raises(type(stop)), beside(fake, 1):
            assert up.wait(20)              # the snapshot exists (or is being answered)
            disk_step(0.2)
            raise stop
        assert upload_snapshots(fake) == []
    assert fake.ebs.calls["StartSnapshot"] == 2

    # Ctrl-C while StartSnapshot is still in flight: its answer is waited for, and deleted
    created.append(lambda snap: time.sleep(1.5))
    up.clear()
    with pytest.raises(KeyboardInterrupt), beside(fake, 1):
        assert up.wait(20)
        raise KeyboardInterrupt
    assert fake.ebs.calls["StartSnapshot"] == 3 and upload_snapshots(fake) == []


def test_an_error_starting_the_early_snapshot_is_the_builds_and_nothing_is_left(
        fake, tmp_path):
    def refuse(action, snaps, request, headers):
        if action == "StartSnapshot":
            raise EbsError("AccessDeniedException", 403, "not authorized: ebs:StartSnapshot")

    fake.ebs.authorizers.append(refuse)
    path = disk(tmp_path / "r.raw", {0: b"r"})
    with pytest.raises(BuildError, match="AccessDeniedException"), beside(fake, 1) as early:
        disk_step(0.1)
        publish(fake, path, early=early)
    assert fake.ebs.calls["StartSnapshot"] == 1     # raised as it was, not asked again
    assert upload_snapshots(fake) == [] and not fake.proxy.calls_of("RegisterImage")


def test_a_disk_of_another_size_deletes_the_early_snapshot_and_uploads_its_own(
        fake, tmp_path, created):
    seen: list[str] = []
    created.append(seen.append)
    lines: list[str] = []
    # the kept disk was 1 GiB; the disk made is bigger (made afresh): a 2 GiB volume
    path = disk(tmp_path / "big.raw", {0: b"x", 2100: b"y"}, size=bm.GIB + 2 * B)
    with beside(fake, 1, lines.append) as early:
        disk_step(0.5)
        done = publish(fake, path, early=early, log=lines.append)
    snap = done.upload.snapshot_id
    assert len(seen) == 2 and seen[1] == snap, seen
    assert (f"deleted {seen[0]}, started beside the disk step for a 1 GiB disk: this disk "
            "needs 2 GiB") in lines, lines
    assert amic_snapshots(fake) == [snap]
    assert fake.ebs.snaps[snap].volume_size == 2
    assert fake.ebs.blocks_of(snap) == bm.scan(path)
    asked = fake.proxy.calls_of("RegisterImage", answered=True)[-1]
    assert (asked["BlockDeviceMapping.1.Ebs.SnapshotId"],
            asked["BlockDeviceMapping.1.Ebs.VolumeSize"]) == (snap, "2")
    image = fake.client(direct=False).describe_images(ImageIds=[done.image_id])["Images"][0]
    assert {t["Key"]: t["Value"] for t in image["Tags"]} == TAGS


def test_the_volume_is_known_before_the_disk_only_over_a_kept_disk(tmp_path):
    store = types.SimpleNamespace(root=tmp_path)
    assert ebs_early.kept_volume_gib(store, "p-test") is None
    kept = disk_reuse.kept_dir(store, "p-test")
    kept.mkdir(parents=True)
    (kept / "disk.json").write_text(json.dumps({"uuid": "u", "root_mib": 2000,
                                                "used_kib": 100_000}))
    assert ebs_early.kept_volume_gib(store, "p-test") is None       # no disk.raw
    disk(kept / "disk.raw", {}, size=2 * bm.GIB + B)
    assert ebs_early.kept_volume_gib(store, "p-test") == 3
    (kept / "disk.json").write_text(json.dumps({"uuid": "u", "root_mib": 2000,
                                                "used_kib": 1_900_000}))
    assert ebs_early.kept_volume_gib(store, "p-test") is None       # made afresh, bigger

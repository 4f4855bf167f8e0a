"""The EBS direct API stand-in (``tests/harness/ec2/ebs.py``) answers the AWS CLI as AWS does.

Every call goes through ``aws ebs ...`` (the awscli wheel of the test extra, beside the
venv's python): a client nobody here wrote builds the requests, signs them for ``ebs`` and
parses the answers and the errors. Each refusal is shown next to the call that passes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions
import pytest

from tests.harness.ec2 import REGION, fake_ec2

pytestmark = pytest.mark.slow

BLOCK = 524288
AWS = str(Path(sys.executable).with_name("aws"))


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    assert os.access(AWS, os.X_OK), f"{AWS} missing: tools/setup installs the test extra"
    with fake_ec2(tmp_path_factory.mktemp("ec2")) as fake:
        yield fake


def aws(fake, *args: str, ok: bool = True) -> dict | str:
    env = {**os.environ, **fake.env, "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
    proc = subprocess.run([AWS, "--output", "json", *args], env=env, capture_output=True,
                          text=True, timeout=120)
    if not ok:
        assert proc.returncode != 0, proc.stdout
        return proc.stderr
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def block(tmp_path: Path, fill: bytes, size: int = BLOCK) -> tuple[Path, str]:
    data = (fill * size)[:size]
    path = tmp_path / f"block-{hashlib.sha256(data).hexdigest()[:12]}"
    path.write_bytes(data)
    return path, base64.b64encode(hashlib.sha256(data).digest()).decode()


def put(fake, snap: str, index: int, path: Path, checksum: str, *, ok: bool = True,
        length: int = BLOCK):
    return aws(fake, "ebs", "put-snapshot-block", "--snapshot-id", snap, "--block-index",
               str(index), "--block-data", str(path), "--data-length", str(length),
               "--checksum", checksum, "--checksum-algorithm", "SHA256", ok=ok)


def linear(*checksums: str) -> str:
    return base64.b64encode(hashlib.sha256(
        b"".join(base64.b64decode(c) for c in checksums)).digest()).decode()


def start(fake, size: int = 1, *extra: str, writable: bool = True) -> dict:
    started = aws(fake, "ebs", "start-snapshot", "--volume-size", str(size),
                  "--tags", "Key=amic:tool,Value=test", "--timeout", "60", *extra)
    if writable:
        fake.ebs.writable_now(started["SnapshotId"])
    return started


def ec2_status(fake, snap: str) -> tuple[str, dict]:
    found = fake.client(direct=False).describe_snapshots(SnapshotIds=[snap])["Snapshots"][0]
    return found["State"], {t["Key"]: t["Value"] for t in found.get("Tags", [])}


def test_write_complete_read_with_the_aws_cli(fake, tmp_path):
    fake.ebs.write_lag = 600.0
    try:
        started = start(fake, writable=False)
    finally:
        fake.ebs.write_lag = 0.5
    snap = started["SnapshotId"]
    assert started["BlockSize"] == BLOCK and started["Status"] == "pending"
    assert started["VolumeSize"] == 1
    assert ec2_status(fake, snap) == ("pending", {"amic:tool": "test"})

    a, a_sum = block(tmp_path, b"a")
    # just started: EBS may not know it yet for writes (awslabs/coldsnap#43)
    assert "ResourceNotFoundException" in put(fake, snap, 0, a, a_sum, ok=False)
    fake.ebs.writable_now(snap)
    assert put(fake, snap, 0, a, a_sum)["Checksum"] == a_sum
    # a wrong checksum, a short block, an index past the 1 GiB volume: refused
    b, b_sum = block(tmp_path, b"b")
    assert "ValidationException" in put(fake, snap, 1, b, a_sum, ok=False)
    short, short_sum = block(tmp_path, b"s", 4096)
    assert "ValidationException" in put(fake, snap, 1, short, short_sum, ok=False, length=4096)
    assert "ValidationException" in put(fake, snap, 2048, b, b_sum, ok=False)
    put(fake, snap, 2047, b, b_sum)
    # a pending snapshot cannot be read, nor registered
    assert "ValidationException" in aws(fake, "ebs", "list-snapshot-blocks", "--snapshot-id",
                                        snap, ok=False)
    with pytest.raises(botocore.exceptions.ClientError, match="IncorrectState"):
        register(fake, snap)

    # the count and the aggregate checksum are checked
    assert "ValidationException" in aws(fake, "ebs", "complete-snapshot", "--snapshot-id", snap,
                                        "--changed-blocks-count", "1", ok=False)
    assert "ValidationException" in aws(
        fake, "ebs", "complete-snapshot", "--snapshot-id", snap, "--changed-blocks-count", "2",
        "--checksum", linear(b_sum, a_sum), "--checksum-algorithm", "SHA256",
        "--checksum-aggregation-method", "LINEAR", ok=False)
    fake.ebs.seal_seconds = 600.0      # long enough to see it sealed and pending
    try:
        done = aws(fake, "ebs", "complete-snapshot", "--snapshot-id", snap,
                   "--changed-blocks-count", "2", "--checksum", linear(a_sum, b_sum),
                   "--checksum-algorithm", "SHA256", "--checksum-aggregation-method", "LINEAR")
    finally:
        fake.ebs.seal_seconds = 0.3
    # as the EBS User Guide's example answers: sealed, completed asynchronously
    assert done == {"Status": "pending"}
    assert ec2_status(fake, snap)[0] == "pending"
    assert "ValidationException" in put(fake, snap, 3, a, a_sum, ok=False)
    assert "ValidationException" in aws(fake, "ebs", "list-snapshot-blocks", "--snapshot-id",
                                        snap, ok=False)
    with pytest.raises(botocore.exceptions.ClientError, match="IncorrectState"):
        register(fake, snap)
    fake.ebs.sealed_now(snap)
    wait_completed(fake, snap)
    assert "ValidationException" in put(fake, snap, 3, a, a_sum, ok=False)

    listed = aws(fake, "ebs", "list-snapshot-blocks", "--snapshot-id", snap)
    assert [b["BlockIndex"] for b in listed["Blocks"]] == [0, 2047]
    assert listed["BlockSize"] == BLOCK and listed["VolumeSize"] == 1
    out = tmp_path / "read"
    got = aws(fake, "ebs", "get-snapshot-block", "--snapshot-id", snap, "--block-index", "2047",
              "--block-token", listed["Blocks"][1]["BlockToken"], str(out))
    assert got["Checksum"] == b_sum and got["DataLength"] == BLOCK
    assert out.read_bytes() == b.read_bytes()
    # a token is for its own block only
    assert "ValidationException" in aws(
        fake, "ebs", "get-snapshot-block", "--snapshot-id", snap, "--block-index", "0",
        "--block-token", listed["Blocks"][1]["BlockToken"], str(out), ok=False)
    ami = register(fake, snap)
    assert ami.startswith("ami-")


def register(fake, snap: str) -> str:
    return fake.client(direct=False).register_image(
        Name=f"ebs-{snap}", Architecture="x86_64", RootDeviceName="/dev/xvda",
        VirtualizationType="hvm", EnaSupport=True, BootMode="uefi-preferred",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap}}])["ImageId"]


def wait_completed(fake, snap: str) -> None:
    """DescribeSnapshots until ``completed`` (``aws ec2 wait`` polls every 15 s)."""
    deadline = time.monotonic() + 10 + fake.ebs.seal_seconds
    while ec2_status(fake, snap)[0] != "completed":
        assert time.monotonic() < deadline, f"{snap} still {ec2_status(fake, snap)[0]}"
        time.sleep(0.05)


def complete(fake, snap: str, count: int) -> None:
    aws(fake, "ebs", "complete-snapshot", "--snapshot-id", snap,
        "--changed-blocks-count", str(count))
    wait_completed(fake, snap)


def test_parents_share_blocks_and_changes_span_the_chain(fake, tmp_path):
    a, a_sum = block(tmp_path, b"a")
    b, b_sum = block(tmp_path, b"b")
    c, c_sum = block(tmp_path, b"c")
    root = start(fake)["SnapshotId"]
    for i in (0, 1, 2):
        put(fake, root, i, a, a_sum)
    complete(fake, root, 3)
    assert "ResourceNotFoundException" in aws(fake, "ebs", "start-snapshot", "--volume-size", "1",
                                              "--parent-snapshot-id", "snap-0000000000000000f",
                                              ok=False)
    child = start(fake, 1, "--parent-snapshot-id", root)
    assert child["ParentSnapshotId"] == root
    put(fake, child["SnapshotId"], 1, b, b_sum)
    complete(fake, child["SnapshotId"], 1)
    grand = start(fake, 2, "--parent-snapshot-id", child["SnapshotId"])["SnapshotId"]
    put(fake, grand, 3000, c, c_sum)
    complete(fake, grand, 1)

    listed = aws(fake, "ebs", "list-snapshot-blocks", "--snapshot-id", grand)
    assert [x["BlockIndex"] for x in listed["Blocks"]] == [0, 1, 2, 3000]
    token = listed["Blocks"][1]["BlockToken"]
    out = tmp_path / "read"
    aws(fake, "ebs", "get-snapshot-block", "--snapshot-id", grand, "--block-index", "1",
        "--block-token", token, str(out))
    assert out.read_bytes() == b.read_bytes()      # the child's block, not the root's

    changed = aws(fake, "ebs", "list-changed-blocks", "--first-snapshot-id", root,
                  "--second-snapshot-id", grand)["ChangedBlocks"]
    assert [x["BlockIndex"] for x in changed] == [1, 3000]
    assert "FirstBlockToken" in changed[0] and "FirstBlockToken" not in changed[1]
    alone = start(fake)["SnapshotId"]
    complete(fake, alone, 0)
    err = aws(fake, "ebs", "list-changed-blocks", "--first-snapshot-id", alone,
              "--second-snapshot-id", grand, ok=False)
    assert "ValidationException" in err and "lineage" in err
    small = aws(fake, "ebs", "start-snapshot", "--volume-size", "1", "--parent-snapshot-id",
                grand, ok=False)
    assert "ValidationException" in small


def ebs_client(fake):
    return boto3.client("ebs", region_name=REGION, aws_access_key_id="testing",
                        aws_secret_access_key="testing", endpoint_url=fake.ebs.url,
                        config=botocore.config.Config(retries={"total_max_attempts": 1,
                                                               "mode": "standard"}))


def test_pagination_tokens_and_throttling(fake, tmp_path):
    ebs = ebs_client(fake)
    data = b"p" * BLOCK
    checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
    snap = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    fake.ebs.writable_now(snap)
    for i in range(150):
        ebs.put_snapshot_block(SnapshotId=snap, BlockIndex=i, BlockData=data, DataLength=BLOCK,
                               Checksum=checksum, ChecksumAlgorithm="SHA256")
    assert ebs.complete_snapshot(SnapshotId=snap, ChangedBlocksCount=150)["Status"] == "pending"
    wait_completed(fake, snap)
    first = aws(fake, "ebs", "list-snapshot-blocks", "--snapshot-id", snap, "--max-results", "100")
    assert len(first["Blocks"]) == 100 and first["NextToken"]
    rest = aws(fake, "ebs", "list-snapshot-blocks", "--snapshot-id", snap, "--max-results", "100",
               "--next-token", first["NextToken"])
    assert [x["BlockIndex"] for x in rest["Blocks"]] == list(range(100, 150))
    assert "NextToken" not in rest
    assert "ValidationException" in aws(fake, "ebs", "list-snapshot-blocks", "--snapshot-id", snap,
                                        "--next-token", first["NextToken"], ok=False)

    fake.ebs.put_rate, fake.ebs.put_burst = 0.01, 2.0
    try:
        snap2 = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
        fake.ebs.writable_now(snap2)
        codes = []
        for i in range(4):
            path, _ = block(tmp_path, b"t")
            out = put(fake, snap2, i, path, checksum_of(path), ok=i < 2)
            codes.append("ok" if isinstance(out, dict) else
                         "throttled" if "RequestThrottledException" in out else out)
        assert codes == ["ok", "ok", "throttled", "throttled"]
    finally:
        fake.ebs.put_rate, fake.ebs.put_burst = 1000.0, 1000.0


def checksum_of(path: Path) -> str:
    return base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()


def test_an_unsigned_or_unknown_request_is_refused(fake):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(fake.ebs.url + "/snapshots", data=b'{"VolumeSize": 1}',
                                 method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 403
    assert "ResourceNotFoundException" in aws(fake, "ebs", "list-snapshot-blocks", "--snapshot-id",
                                              "snap-0123456789abcdef0", ok=False)

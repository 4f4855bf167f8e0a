"""docs/ec2.md's IAM policy for ``amic build --bake local``, enforced on EC2 and on EBS.

The image is built on the local target and uploaded with the EBS direct APIs to the EBS
stand-in, which has every call judged by the documented statements as written (the
snapshot's ARN, ``aws:RequestTag``/``aws:ResourceTag``, ``ebs:ParentSnapshot``, ...:
``tests/harness/ec2/iam.py``) and refuses as EBS does (``AccessDeniedException``); the EC2
calls (RegisterImage, the snapshot's tags) are judged as in ``test_ec2_iam.py``. Without
``UploadTaggedSnapshots`` the build is refused at StartSnapshot, without
``WriteOwnSnapshots`` at the first block (exit 1, the missing permission and docs/ec2.md
named, no traceback); with both, a full upload and then one over its parent snapshot
pass with nothing refused. The final AMI's options a local bake honours need only the
statements documented for them (sharing, deprecation, a region copy), and no more for what
RegisterImage takes (boot mode, NitroTPM, SR-IOV, the volumes) or the snapshot's tags;
without ``ShareOwnImages`` sharing is refused as on the SSH path.
"""

from __future__ import annotations

import shutil
import uuid

import boto3
import pytest
from amic import contract
from botocore.exceptions import ClientError
from amic.targets.ec2 import disk_reuse
from amic.targets.local.target import default_store

from tests.harness.ec2 import REGION, assert_clean, standin_ec2
from tests.harness.ec2.iam import MOTO_ENV
from tests.harness.ec2.iam_cli import DOC, Session, no_denials
from tests.harness.tools import require

pytestmark = [pytest.mark.slow, pytest.mark.root]

STATEMENTS = ("UploadTaggedSnapshots", "WriteOwnSnapshots")
AMIFILE = """\
FROM debian:12
NAME {base}
SERVICE hello
    INIT echo {variant} > /etc/iam-bake
"""
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    require("rsync")
    name = f"iam-bake-{uuid.uuid4().hex[:12]}"
    with standin_ec2(tmp_path_factory, MOTO_ENV) as fake:
        session = Session(fake, tmp_path_factory.mktemp("iam-bake"), AMIFILE)
        session.name = name
        try:
            yield session
        finally:       # the project's kept disk (/var/cache/amic/ec2-disks)
            shutil.rmtree(disk_reuse.kept_dir(default_store(), contract.project_id(None, name)),
                          ignore_errors=True)


def bake(session: Session, variant: str, policy: dict, *extra: str):
    session.write_amifile(AMIFILE.format(base=session.name, variant=variant))
    session.fake.ebs.puts.clear()
    run = session.amic("build", "--target", "ec2", "--bake", "local", "Amifile", *extra,
                       policy=policy, env={**ENV, "HOME": str(session.root)}, timeout=1800)
    assert_clean(session.fake)
    return run


def snapshot_of(session: Session, ami: str) -> str:
    # through the proxy: moto's own answer names a snapshot moto invented for the image
    image = session.fake.client(direct=False).describe_images(ImageIds=[ami])["Images"][0]
    return image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]


def test_bake_local_needs_its_statements_and_passes_with_them(session):
    fake = session.fake
    # without UploadTaggedSnapshots: refused before anything is created
    no_start = bake(session, "v1", DOC.policy(STATEMENTS[1]))
    no_start.refused("ebs:StartSnapshot")
    assert fake.ebs.snaps == {}, fake.ebs.snaps
    # without WriteOwnSnapshots: started (tagged), refused at the first block; the
    # unfinished snapshot cannot be deleted either (that is this statement's too)
    no_write = bake(session, "v1", DOC.policy(STATEMENTS[0]))
    no_write.refused("ebs:PutSnapshotBlock")
    assert fake.ebs.puts == [] and "could not delete unfinished snapshot" in no_write.stderr
    assert any("perform: ec2:DeleteSnapshot" in d for d in no_write.denials), no_write
    for snap in list(fake.ebs.snaps):          # what amic gc would remove
        fake.client().delete_snapshot(SnapshotId=snap)

    # with both: a full upload, nothing refused
    policy = DOC.policy(*STATEMENTS)
    full = bake(session, "v1", policy)
    no_denials(full)
    assert {"StartSnapshot", "PutSnapshotBlock", "CompleteSnapshot", "RegisterImage",
            "DeleteTags", "CreateTags"} <= set(full.actions), full.actions
    first = snapshot_of(session, full.ami)
    assert fake.ebs.state(first) == "completed" and fake.ebs.snaps[first].parent is None
    sent_first = len(fake.ebs.puts)
    assert sent_first > 0
    fake.strict.consistency.settle()    # the tag-filter lag, as a user's next build

    # one INIT line changed: uploaded over the first snapshot, nothing refused
    changed = bake(session, "v2", policy)
    no_denials(changed)
    second = snapshot_of(session, changed.ami)
    assert fake.ebs.snaps[second].parent == first, (first, fake.ebs.snaps[second])
    assert 0 < len(fake.ebs.puts) < sent_first, (len(fake.ebs.puts), sent_first)
    assert {snap for snap, _ in fake.ebs.puts} == {second}

    # what amic never does, read a snapshot back, the policy does not allow; the harness's
    # admin may; a key IAM does not know is refused
    def listing(key: tuple[str, str]) -> str:
        ebs = boto3.client("ebs", region_name=REGION, endpoint_url=fake.ebs.url,
                           aws_access_key_id=key[0], aws_secret_access_key=key[1])
        try:
            return "ok" if ebs.list_snapshot_blocks(SnapshotId=second)["Blocks"] else "empty"
        except ClientError as exc:
            return exc.response["Error"]["Code"]

    assert [listing(key) for key in (session.iam.user, session.iam.admin, ("testing", "t"))] \
        == ["AccessDeniedException", "ok", "UnrecognizedClientException"]
    assert session.iam.denials()[-1].startswith(
        f"User: {session.iam.user_arn} is not authorized to perform: ebs:ListSnapshotBlocks "
        f"on resource: arn:aws:ec2:{REGION}::snapshot/{second} because"), session.iam.denials()


def test_the_ami_options_need_only_their_documented_statements(session):
    options = ("--share-with", "210987654321", "--deprecate-at", "30d",
               "--copy-to-region", "us-west-2", "--boot-mode", "uefi", "--tpm-support", "v2.0",
               "--sriov-support", "--volume-size", "8", "--ami-volume", "device=/dev/sdg,size=1",
               "--snapshot-tag", "backup=no")
    run = bake(session, "options",
               DOC.policy(*STATEMENTS, "ShareOwnImages", "AmiAttributes", "CopyImages"), *options)
    no_denials(run)
    assert {"ModifyImageAttribute", "ModifySnapshotAttribute", "EnableImageDeprecation",
            "CopyImage"} <= set(run.actions), run.actions
    assert session.fake.standin.ami_rules.deprecations.get(run.ami), run

    without = bake(session, "options-2", DOC.policy(*STATEMENTS, "AmiAttributes", "CopyImages"),
                   *options)
    without.refused("ec2:ModifySnapshotAttribute")

"""docs/ec2.md's IAM policy, enforced: amic through the real CLI as an IAM user of moto.

The policy is read out of docs/ec2.md (``tests/harness/ec2/iam_policy.py``): the base
document, and one block of statements per optional feature. moto's server runs
with IAM enforced (``INITIAL_NO_AUTH_ACTION_COUNT``, ``tests/harness/ec2/iam.py``):
every call must be signed by a known key (amic's own hand-signed DescribeImages of
the build memo too) and its action allowed; every EC2 call is also evaluated
against the documented statements as written (resources, ``aws:RequestTag``,
``aws:ResourceTag``, ``ec2:CreateAction``), which moto does not do, and refused as
EC2 would. Each feature is run without its statements (refused: exit 1, the
missing action and docs/ec2.md named, no traceback, nothing left behind) and with
them (it works, and no call was refused).
"""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.harness.ec2 import assert_clean, iam_policy, standin_ec2
from tests.harness.ec2.iam import MOTO_ENV, moto_projection
from tests.harness.ec2.iam_cli import DOC, Session, no_denials

FEATURES = {
    "prune": ("RemoveOwnImages", "CheckImagesInUse"),
    "gc": ("CollectLeftovers",),
    "copy": ("CopyImages",),
    "share": ("ShareOwnImages",),
    "free-group": ("FreeBuildGroup", "ToDefaultGroup"),
    "instance-profile": ("PassBuildRole",),
    "temporary-profile": ("TemporaryInstanceProfile", "ListTemporaryRoles"),
    "attributes": ("AmiAttributes",),
    "bake-local": ("UploadTaggedSnapshots", "WriteOwnSnapshots"),   # test_ec2_iam_bake_local.py
}
NOT_IN_THE_STAND_IN = {"EncryptWithOwnKey": "moto's EC2 calls no KMS"}
OTHER = "us-west-2"
SHARE_WITH = "210987654321"

AMIFILE = """\
FROM debian:12
NAME iam-e2e

SERVICE base
    INIT echo {base} > /etc/iam-base

SERVICE app
    REQUIRES base
    INIT echo {variant} > /etc/iam-app
"""


# -- the documented policy and the evaluator, without a server ------------------------------

def test_every_documented_statement_is_tested_or_says_why_not():
    assert set(DOC.extras) == {s for sids in FEATURES.values() for s in sids} | set(
        NOT_IN_THE_STAND_IN)
    tested_paragraph = iam_policy.DOC.read_text().split("The policy is tested as documented")[1]
    for sid in NOT_IN_THE_STAND_IN:       # the doc says which blocks are not tested
        assert f"`{sid}`" in tested_paragraph.split("\n## ")[0], sid


def test_the_whole_policy_fits_a_managed_policy_and_the_doc_says_so():
    everything = DOC.policy(*DOC.extras)
    size = len(re.sub(r"\s", "", json.dumps(everything)))
    assert size <= 6144, size               # IAM's limit for a customer managed policy
    assert len(re.sub(r"\s", "", json.dumps(DOC.base))) > 2048   # too big to be inline
    assert "customer managed policy" in " ".join(iam_policy.DOC.read_text().split())


def _asks(action, params, tags=None):
    return iam_policy.asks(action, {"Action": action, **params}, region="us-east-1",
                           account="123456789012",
                           tags_of=lambda rid, region: (tags or {}).get(rid, {}))


def _refused(policy, action, params, tags=None) -> list[str]:
    return [f"{a.action} {a.resource}" for a in _asks(action, params, tags)
            if iam_policy.denied(policy, a)]


TAGGED_SNAPSHOT = {"VolumeId": "vol-1", "TagSpecification.1.ResourceType": "snapshot",
                   "TagSpecification.1.Tag.1.Key": "amic:tool",
                   "TagSpecification.1.Tag.1.Value": "amic/0.1"}
OWN = {"vol-1": {"amic:tool": "amic/0.1"}, "i-1": {"amic:tool": "amic/0.1"}}


def test_evaluator_allows_what_the_policy_allows_and_nothing_more():
    policy = DOC.policy()
    assert _refused(policy, "CreateSnapshot", TAGGED_SNAPSHOT, OWN) == []
    # the positive control: the policy without CreateSnapshot refuses it
    assert _refused(DOC.policy(drop_actions=["ec2:CreateSnapshot"]), "CreateSnapshot",
                    TAGGED_SNAPSHOT, OWN) == ["ec2:CreateSnapshot arn:aws:ec2:us-east-1::snapshot/*",
                                              "ec2:CreateSnapshot arn:aws:ec2:us-east-1:"
                                              "123456789012:volume/vol-1"]
    # conditions: a volume that is not amic's, a snapshot without amic's tag
    assert _refused(policy, "CreateSnapshot", TAGGED_SNAPSHOT, {}) == [
        "ec2:CreateSnapshot arn:aws:ec2:us-east-1:123456789012:volume/vol-1"]
    untagged = {"VolumeId": "vol-1"}
    assert _refused(policy, "CreateSnapshot", untagged, OWN) == [
        "ec2:CreateSnapshot arn:aws:ec2:us-east-1::snapshot/*"]
    # tag on create: ec2:CreateTags with ec2:CreateAction, refused for a create not listed
    no_create_action = json.loads(json.dumps(policy))
    for stmt in no_create_action["Statement"]:
        if stmt["Sid"] == "TagOnCreate":
            stmt["Condition"]["StringEquals"]["ec2:CreateAction"].remove("CreateKeyPair")
    key_pair = {"KeyName": "amic-b1", "TagSpecification.1.ResourceType": "key-pair",
                "TagSpecification.1.Tag.1.Key": "amic:tool",
                "TagSpecification.1.Tag.1.Value": "amic/0.1"}
    assert _refused(policy, "CreateKeyPair", key_pair) == []
    assert _refused(no_create_action, "CreateKeyPair", key_pair) == [
        "ec2:CreateTags arn:aws:ec2:us-east-1:123456789012:key-pair/*"]
    # resource tags: only amic's instances are imaged, terminated, ...
    assert _refused(policy, "TerminateInstances", {"InstanceId.1": "i-1"}, OWN) == []
    assert _refused(policy, "TerminateInstances", {"InstanceId.1": "i-2"}, OWN) == [
        "ec2:TerminateInstances arn:aws:ec2:us-east-1:123456789012:instance/i-2"]
    # an optional statement: refused without, allowed with
    assert _refused(policy, "DeleteVolume", {"VolumeId": "vol-1"}, OWN)
    assert _refused(DOC.policy("CollectLeftovers"), "DeleteVolume", {"VolumeId": "vol-1"},
                    OWN) == []


def _ebs_refused(policy, action, snaps=(), request=None, tags=None) -> list[str]:
    return [f"{a.action} {a.resource}" for a in iam_policy.ebs_asks(
        action, list(snaps), request or {}, region="us-east-1",
        tags_of=lambda rid, region: (tags or {}).get(rid, {})) if iam_policy.denied(policy, a)]


def test_evaluator_judges_the_ebs_direct_apis():
    """--bake local's statements: StartSnapshot only with amic's tag (its tags are
    ec2:CreateTags too), blocks and completion only on amic's snapshots, DeleteTags only of
    amic's keys; the reads amic never makes are allowed by nothing."""
    policy = DOC.policy(*FEATURES["bake-local"])
    arn = "arn:aws:ec2:us-east-1::snapshot/"
    tagged = {"VolumeSize": 2, "Tags": [{"Key": "amic:tool", "Value": "amic/0.1"}]}
    own = {"snap-1": {"amic:tool": "amic/0.1"}, "snap-2": {"amic:tool": "amic/0.1"}}
    assert _ebs_refused(policy, "StartSnapshot", request=tagged) == []
    assert _ebs_refused(policy, "StartSnapshot", request={"VolumeSize": 2}) == [
        f"ebs:StartSnapshot {arn}*"]
    assert _ebs_refused(DOC.policy(), "StartSnapshot", request=tagged) == [
        f"ebs:StartSnapshot {arn}*"]
    assert _ebs_refused(DOC.policy(*FEATURES["bake-local"], drop_actions=["ec2:CreateTags"]),
                        "StartSnapshot", request=tagged) == [f"ec2:CreateTags {arn}*"]
    for action in ("PutSnapshotBlock", "CompleteSnapshot"):
        assert _ebs_refused(policy, action, ["snap-1"], tags=own) == []
        assert _ebs_refused(policy, action, ["snap-9"], tags=own) == [f"ebs:{action} {arn}snap-9"]
        assert _ebs_refused(DOC.policy(*FEATURES["bake-local"], drop_actions=[f"ebs:{action}"]),
                            action, ["snap-1"], tags=own) == [f"ebs:{action} {arn}snap-1"]
    # ListChangedBlocks needs both snapshots; ListSnapshotBlocks, GetSnapshotBlock: not granted
    reads = {"Effect": "Allow", "Action": "ebs:List*", "Resource": f"{arn}snap-2"}
    assert _ebs_refused({"Statement": [reads]}, "ListChangedBlocks", ["snap-2", "snap-1"]) == [
        f"ebs:ListChangedBlocks {arn}snap-1"]
    for action in ("ListSnapshotBlocks", "GetSnapshotBlock"):
        assert _ebs_refused(policy, action, ["snap-1"], tags=own) == [f"ebs:{action} {arn}snap-1"]
    # the request's facts are condition keys: a parent named in a Deny is refused
    deny = {"Effect": "Deny", "Action": "ebs:StartSnapshot", "Resource": "*",
            "Condition": {"StringLike": {"ebs:ParentSnapshot": f"{arn}snap-1"}}}
    child = {**tagged, "ParentSnapshotId": "snap-1"}
    assert _ebs_refused(policy, "StartSnapshot", request=child) == []
    assert _ebs_refused({**policy, "Statement": [*policy["Statement"], deny]}, "StartSnapshot",
                        request=child) == [f"ebs:StartSnapshot {arn}*"]
    # DeleteTags of the upload's temporary amic: tags only
    untag = {"ResourceId.1": "snap-1", "Tag.1.Key": "amic:role", "Tag.2.Key": "amic:expires"}
    assert _refused(policy, "DeleteTags", untag, own) == []
    assert _refused(policy, "DeleteTags", {**untag, "Tag.3.Key": "Name"}, own) == [
        f"ec2:DeleteTags {arn}snap-1"]


def test_evaluator_operators_and_explicit_deny():
    ask = iam_policy.Ask("ec2:CreateTags", "arn:aws:ec2:r:a:instance/i-1",
                         {"aws:TagKeys": ["amic:a", "amic:b"], "aws:RequestTag/amic:a": "x"})

    def policy(*stmts):
        return {"Statement": list(stmts)}

    allow = {"Effect": "Allow", "Action": "ec2:*Tags", "Resource": "*"}
    assert iam_policy.denied(policy(allow), ask) is None
    for cond, ok in (({"ForAllValues:StringLike": {"aws:TagKeys": "amic:*"}}, True),
                     ({"ForAllValues:StringLike": {"aws:TagKeys": "amic:a"}}, False),
                     ({"ForAnyValue:StringEquals": {"aws:TagKeys": "amic:b"}}, True),
                     ({"StringEquals": {"aws:RequestTag/amic:a": ["y", "x"]}}, True),
                     ({"StringEquals": {"aws:RequestTag/amic:c": "x"}}, False),
                     ({"StringEqualsIfExists": {"aws:RequestTag/amic:c": "x"}}, True),
                     ({"StringNotEquals": {"aws:RequestTag/amic:a": "x"}}, False),
                     ({"Null": {"aws:RequestTag/amic:c": "true"}}, True)):
        assert (iam_policy.denied(policy({**allow, "Condition": cond}), ask) is None) is ok, cond
    deny = {"Effect": "Deny", "NotAction": "ec2:Describe*", "Resource": "*"}
    assert "explicit deny" in iam_policy.denied(policy(allow, deny), ask)
    with pytest.raises(iam_policy.PolicyError):
        iam_policy.denied(policy({**allow, "Condition": {"DateLessThan": {"aws:x": "y"}}}), ask)


def test_moto_gets_the_actions_of_every_statement():
    projected = moto_projection(DOC.policy(*FEATURES["prune"]))
    assert all(s["Resource"] == "*" and "Condition" not in s for s in projected["Statement"])
    actions = {a for s in projected["Statement"] for a in iam_policy.as_list(s["Action"])}
    assert {"ec2:CreateSnapshot", "ec2:RegisterImage", "autoscaling:DescribeLaunchConfigurations",
            "ec2:DeregisterImage"} <= actions


def test_the_hint_names_the_missing_permission():
    from botocore.exceptions import ClientError

    from amic.targets.ec2 import session as aws

    def error(code, message, op="CreateSnapshot"):
        return ClientError({"Error": {"Code": code, "Message": message}}, op)

    ec2 = error("UnauthorizedOperation", "You are not authorized to perform this operation. "
                "User: arn:aws:iam::1:user/u is not authorized to perform: ec2:CreateSnapshot "
                "on resource: arn:aws:ec2:r::snapshot/* because no identity-based policy allows")
    asg = error("AccessDenied", "User: arn:aws:iam::1:user/u is not authorized to perform: "
                "autoscaling:DescribeLaunchConfigurations", "DescribeLaunchConfigurations")
    bare = error("UnauthorizedOperation", "You are not authorized to perform this operation.")
    assert "lacks ec2:CreateSnapshot: docs/ec2.md" in aws.explain(ec2, "snapshotting").render()
    assert "lacks autoscaling:DescribeLaunchConfigurations: docs/ec2.md" in aws.hint(asg)
    assert "lacks the permission for CreateSnapshot: docs/ec2.md" in aws.hint(bare)
    assert aws.hint(error("InvalidAMIID.NotFound", "no")) == ""


# -- through the CLI, against the stand-in with IAM enforced -------------------------------

@pytest.fixture(scope="module")
def session(tmp_path_factory):
    with standin_ec2(tmp_path_factory, MOTO_ENV) as fake:
        yield Session(fake, tmp_path_factory.mktemp("iam-project"), AMIFILE)


SWAP = "perform: ec2:ModifyInstanceAttribute "
"""What a build without FreeBuildGroup/ToDefaultGroup is refused (and does without)."""


@pytest.mark.slow
@pytest.mark.root
def test_build_under_the_documented_policy(session):
    """Full build with checkpoints, a build from a layer snapshot, an unchanged rebuild
    answered by the memo's own signed calls: the base policy is enough for all three."""
    full = session.build("v1")
    no_denials(full, SWAP)
    assert {"RunInstances", "CreateSnapshot", "CreateImage", "TerminateInstances"} <= set(
        full.actions), full.actions
    # every EC2 call of the build was judged (amic's user signed them all)
    assert len(full.actions) == sum(session.fake.proxy.calls.values())
    assert "could not move" in full.stderr      # no FreeBuildGroup: cleanup waited instead
    from_layer = session.build("v2")
    no_denials(from_layer, SWAP)
    assert "RegisterImage" in from_layer.actions, from_layer.actions
    no_denials(session.build("v2"))   # unchanged: the full path (the memo is written now;
    memo = session.build("v2")           # the Amifile was too new for it before)
    no_denials(memo)
    assert memo.ami == from_layer.ami
    # answered by the memo: only amic's own signed DescribeImages, which moto verified
    assert memo.actions == ["DescribeImages"] * 2, memo.actions
    assert session.fake.proxy.boto3_calls() == [], memo
    # moto checks the memo's signatures: signed with a wrong secret, the memo is not
    # confirmed, and boto3's calls are refused too
    forged = session.amic("build", "--target", "ec2", *session.common(), "Amifile",
                          env={"AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert forged.rc == 1 and "AuthFailure" in forged.stderr, forged
    assert any("confirm-memo" in agent for _, agent in session.fake.proxy.agents)
    assert "Traceback" not in forged.stderr, forged
    listed = session.amic("ami", "ls", "--all")
    no_denials(listed)
    assert memo.ami in listed.stdout, listed


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.parametrize("judge", ["evaluator", "moto"])
def test_a_policy_without_create_snapshot_fails_the_build(session, judge):
    """The positive control: refused by the evaluator (as EC2 would), or by moto alone."""
    session.iam.enforce = judge == "evaluator"
    try:
        run = session.build(f"nosnap-{judge}", policy=DOC.policy(drop_actions=["ec2:CreateSnapshot"]))
    finally:
        session.iam.enforce = True
    run.refused("ec2:CreateSnapshot")
    assert any("perform: ec2:CreateSnapshot" in d for d in run.denials), run


@pytest.mark.slow
@pytest.mark.root
def test_a_policy_without_register_image_fails_a_build_from_a_layer(session):
    # a base layer of its own: no AMI was registered from its snapshot yet
    no_denials(session.build("reg-1", base="reg"), SWAP)
    run = session.build("reg-2", base="reg",
                        policy=DOC.policy(drop_actions=["ec2:RegisterImage"]))
    run.refused("ec2:RegisterImage")


@pytest.mark.slow
@pytest.mark.root
def test_launch_needs_only_the_base_policy(session):
    built = session.build("launch")
    no_denials(built, SWAP)
    run = session.amic("launch", built.ami, *session.common(), "--boot-timeout", "60")
    no_denials(run, SWAP)
    assert "RunInstances" in run.actions
    assert_clean(session.fake)


@pytest.mark.slow
@pytest.mark.root
def test_copy_to_region_needs_its_statement(session):
    without = session.build("copy-1", "--copy-to-region", OTHER)
    without.refused("ec2:CopyImage")
    run = session.build("copy-2", "--copy-to-region", OTHER, policy=DOC.policy(*FEATURES["copy"]))
    no_denials(run, SWAP)
    other = session.iam._ec2(OTHER)
    copies = other.describe_images(Owners=["self"], Filters=[
        {"Name": "tag:amic:source-image", "Values": [f"us-east-1/{run.ami}"]}])["Images"]
    assert len(copies) == 1 and any(t["Key"] == "amic:tool" for t in copies[0]["Tags"])


@pytest.mark.slow
@pytest.mark.root
def test_share_with_needs_its_statement(session):
    without = session.build("share-1", "--share-with", SHARE_WITH)
    without.refused("ec2:ModifyImageAttribute")
    run = session.build("share-2", "--share-with", SHARE_WITH,
                        policy=DOC.policy(*FEATURES["share"]))
    no_denials(run, SWAP)
    perms = session.fake.client().describe_image_attribute(
        ImageId=run.ami, Attribute="launchPermission")["LaunchPermissions"]
    assert perms == [{"UserId": SHARE_WITH}]
    # the refused build's AMI, unshared, is the cached image of its key: once the policy
    # is fixed, the same build answers it shared as asked, not as that build left it
    again = session.build("share-1", "--share-with", SHARE_WITH,
                          policy=DOC.policy(*FEATURES["share"]))
    no_denials(again, SWAP)
    assert "RunInstances" not in again.actions, again.actions
    perms = session.fake.client().describe_image_attribute(
        ImageId=again.ami, Attribute="launchPermission")["LaunchPermissions"]
    assert perms == [{"UserId": SHARE_WITH}]


@pytest.mark.slow
@pytest.mark.root
def test_ami_attributes_need_their_statement(session):
    """--imds-support, --deprecate-at, --ena-support (issue 21): AmiAttributes is enough;
    the volume, tag and snapshot-sharing options need nothing beyond the base policy."""
    without = session.build("attr-1", "--imds-support", "v2.0", "--deprecate-at", "30d")
    without.refused("ec2:ModifyImageAttribute")
    run = session.build("attr-2", "--imds-support", "v2.0", "--deprecate-at", "30d",
                        "--ena-support", "--run-tag", "team=web", "--run-volume-tag", "c=1",
                        "--snapshot-tag", "backup=no", "--volume-type", "gp3", "--iops", "4000",
                        "--launch-volume", "device=/dev/sdf,size=1",
                        policy=DOC.policy(*FEATURES["attributes"]))
    no_denials(run, SWAP)
    assert {"EnableImageDeprecation", "ModifyImageAttribute"} <= set(run.actions), run.actions
    assert session.fake.standin.ami_rules.deprecations.get(run.ami), run


@pytest.mark.slow
@pytest.mark.root
def test_the_default_group_swap_needs_its_statements(session):
    run = session.build("swap", policy=DOC.policy(*FEATURES["free-group"]))
    no_denials(run)
    assert "ModifyInstanceAttribute" in run.actions and "could not move" not in run.stderr, run


@pytest.mark.slow
@pytest.mark.root
def test_ami_prune_needs_its_statements(session):
    old = session.build("prune-1")
    new = session.build("prune-2")
    no_denials(old, SWAP)
    no_denials(new, SWAP)
    (session.root / "Amifile").write_text(AMIFILE.format(variant="prune-2", base="base"))
    ec2 = session.fake.client()

    def images() -> set[str]:
        return {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]}

    before = images()
    without = session.amic("ami", "prune", "--keep", "1", "--yes")
    without.refused("ec2:DescribeLaunchTemplates")
    assert images() == before                       # nothing removed
    # Auto Scaling goes to moto directly: moto's own enforcement refuses it
    no_asg = session.amic("ami", "prune", "--keep", "1", "--yes", policy=DOC.policy(
        *FEATURES["prune"], drop_actions=["autoscaling:DescribeLaunchConfigurations"]))
    no_asg.refused("autoscaling:DescribeLaunchConfigurations")
    assert images() == before
    run = session.amic("ami", "prune", "--keep", "1", "--yes",
                       policy=DOC.policy(*FEATURES["prune"]))
    no_denials(run)
    left = images()
    assert old.ami not in left and new.ami in left, run


@pytest.mark.slow
@pytest.mark.root
def test_gc_needs_its_statement(session):
    ec2 = session.fake.client()
    past = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    tags = [{"Key": "amic:tool", "Value": "amic/test"}, {"Key": "amic:build-id", "Value": "b-iam"},
            {"Key": "amic:role", "Value": "build"}, {"Key": "amic:expires", "Value": past}]
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1, TagSpecifications=[
        {"ResourceType": "volume", "Tags": tags}])["VolumeId"]
    without = session.amic("gc")
    without.refused("ec2:DeleteVolume")
    assert ec2.describe_volumes(VolumeIds=[volume])["Volumes"]
    run = session.amic("gc", policy=DOC.policy(*FEATURES["gc"]))
    no_denials(run)
    assert not ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [volume]}])["Volumes"]


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.parametrize("command,action", [
    (("gc",), "ec2:DescribeVolumes"),
    (("ami", "ls"), "ec2:DescribeImages"),
    (("ami", "prune", "--keep", "1", "--yes"), "ec2:DescribeSnapshots"),
])
def test_a_refused_read_is_a_clear_error(session, command, action):
    """Wherever amic reads, a refusal is an error naming the permission, never a traceback."""
    (session.root / "Amifile").write_text(AMIFILE.format(variant="read", base="base"))
    run = session.amic(*command, policy=DOC.policy(*DOC.extras, drop_actions=[action]))
    run.refused(action)


@pytest.mark.slow
@pytest.mark.root
def test_an_instance_profile_needs_its_statement(session):
    iam = session.iam.iam
    if not iam.list_instance_profiles()["InstanceProfiles"]:
        iam.create_role(RoleName="amic-build-role", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "sts:AssumeRole",
                "Principal": {"Service": "ec2.amazonaws.com"}}]}))
        iam.create_instance_profile(InstanceProfileName="amic-build")
        iam.add_role_to_instance_profile(InstanceProfileName="amic-build",
                                         RoleName="amic-build-role")
    without = session.build("role-1", "--iam-instance-profile", "amic-build")
    without.refused("iam:PassRole")
    # the documented statement with its placeholders filled in, as a user would
    policy = json.loads(json.dumps(DOC.policy(*FEATURES["instance-profile"])).replace(
        "arn:aws:iam::ACCOUNT:role/ROLE",
        f"arn:aws:iam::{session.fake.moto.account}:role/amic-build-role"))
    run = session.build("role-2", "--iam-instance-profile", "amic-build", policy=policy)
    no_denials(run, SWAP)
    assert session.fake.proxy.calls_of("RunInstances")[0]["IamInstanceProfile.Name"] == "amic-build"


def test_a_temporary_profile_needs_its_statements(session, tmp_path):
    policy_file = tmp_path / "instance-policy.json"
    policy_file.write_text(json.dumps([{"Effect": "Allow", "Action": "s3:GetObject",
                                        "Resource": "arn:aws:s3:::some-bucket/*"}]))
    run = session.build("role-3", "--temporary-iam-instance-profile", str(policy_file),
                        policy=DOC.policy(*FEATURES["temporary-profile"]))
    no_denials(run, SWAP)
    launched = session.fake.proxy.calls_of("RunInstances")[-1]
    assert launched["IamInstanceProfile.Name"].startswith("amic-"), launched
    iam = session.iam.iam
    assert iam.list_roles(PathPrefix="/amic/")["Roles"] == []     # deleted after the build
    # moto answers ListInstanceProfiles' PathPrefix with every profile (amic lists roles
    # only): the test filters by path itself; amic-build (Path "/") is another test's
    profiles = iam.list_instance_profiles(PathPrefix="/amic/")["InstanceProfiles"]
    assert [p for p in profiles if p["Path"].startswith("/amic/")] == []

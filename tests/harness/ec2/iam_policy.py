"""The IAM policy docs/ec2.md documents, and a small evaluator of it for EC2 Query calls and
the EBS direct APIs (``ebs_asks``).

moto's IAM enforcement (``tests/harness/ec2/iam.py``) checks who signed a call and
whether some statement names its action; it evaluates no ``Resource`` and no
``Condition``. This module does the rest, as EC2 authorizes a call: each resource the
call touches (the instance a CreateImage reads, the ``image/*`` it creates, ...) must be
allowed by a statement whose ``Action``/``NotAction``, ``Resource``/``NotResource`` and
``Condition`` all match, and no statement may deny it. Tags put on resources at
creation (``TagSpecification``) are authorized as ``ec2:CreateTags`` with
``ec2:CreateAction`` = the creating action, as EC2 does.

The request context holds the keys amic's policy uses: ``aws:RequestTag/K`` and
``aws:TagKeys`` (the tags a call puts on a resource), ``aws:ResourceTag/K`` and
``ec2:ResourceTag/K`` (the tags the resource has, looked up by the caller's
``tags_of``), ``ec2:CreateAction``. Condition operators: ``StringEquals``,
``StringNotEquals``, ``StringEqualsIgnoreCase``, ``StringLike``, ``StringNotLike``,
``Null``, with ``ForAllValues:``/``ForAnyValue:`` and ``…IfExists``. Anything else
raises ``PolicyError``: a policy the evaluator cannot read is never judged allowed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import attrs

REPO = Path(__file__).resolve().parents[3]
DOC = REPO / "docs" / "ec2.md"
SECTION = "### The IAM policy"


class PolicyError(Exception):
    """A policy (or a part of one) the evaluator does not understand."""


# -- the documented policy -------------------------------------------------------------------

@attrs.frozen
class Documented:
    """docs/ec2.md's policy: the base document and the optional statements by Sid."""

    base: dict
    extras: dict[str, dict]

    def policy(self, *sids: str, drop_actions: Iterable[str] = ()) -> dict:
        """The base policy plus the optional statements ``sids``; ``drop_actions`` removed
        from every statement (a statement left without actions goes)."""
        unknown = set(sids) - set(self.extras)
        if unknown:
            raise KeyError(f"no statement {sorted(unknown)} in {DOC}")
        drop = {a.lower() for a in drop_actions}
        out = []
        for stmt in [*self.base["Statement"], *(self.extras[s] for s in sids)]:
            stmt = json.loads(json.dumps(stmt))
            if drop and "Action" in stmt:
                actions = [a for a in as_list(stmt["Action"]) if a.lower() not in drop]
                if not actions:
                    continue
                stmt["Action"] = actions
            out.append(stmt)
        return {"Version": self.base["Version"], "Statement": out}


def documented(path: Path = DOC) -> Documented:
    """The ```json blocks of the IAM section: one policy document (the base), then lists of
    statements (the optional features), each statement with a unique Sid."""
    text = path.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start)
    blocks = [json.loads(b) for b in re.findall(r"^```json\n(.*?)^```", text[start:end],
                                               re.S | re.M)]
    bases = [b for b in blocks if isinstance(b, dict)]
    if len(bases) != 1 or "Statement" not in bases[0]:
        raise PolicyError(f"{path}: expected one policy document in {SECTION!r}, got {len(bases)}")
    extras: dict[str, dict] = {}
    sids = [s.get("Sid") for s in bases[0]["Statement"]]
    for block in blocks:
        if isinstance(block, list):
            for stmt in block:
                sids.append(stmt.get("Sid"))
                extras[stmt["Sid"]] = stmt
    if None in sids or len(set(sids)) != len(sids):
        raise PolicyError(f"{path}: every statement needs a unique Sid: {sids}")
    return Documented(bases[0], extras)


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


# -- what a call asks for --------------------------------------------------------------------

@attrs.frozen
class Ask:
    """One authorization EC2 makes for a call: ``action`` on ``resource`` in ``context``."""

    action: str
    resource: str
    context: Mapping[str, object]


def _numbered(params: Mapping[str, str], prefix: str) -> list[str]:
    return [params[k] for k in sorted((k for k in params if re.fullmatch(
        re.escape(prefix) + r"\.\d+", k)), key=lambda k: int(k.rsplit(".", 1)[1]))]


def tag_specs(params: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """resource type -> the tags ``TagSpecification.N`` puts on it."""
    out: dict[str, dict[str, str]] = {}
    for n in range(1, 100):
        rtype = params.get(f"TagSpecification.{n}.ResourceType")
        if rtype is None:
            break
        tags = out.setdefault(rtype, {})
        for m in range(1, 100):
            key = params.get(f"TagSpecification.{n}.Tag.{m}.Key")
            if key is None:
                break
            tags[key] = params.get(f"TagSpecification.{n}.Tag.{m}.Value", "")
    return out


def _tag_pairs(params: Mapping[str, str]) -> dict[str, str]:
    """``Tag.N.Key``/``Tag.N.Value`` (CreateTags, DeleteTags)."""
    out = {}
    for m in range(1, 100):
        key = params.get(f"Tag.{m}.Key")
        if key is None:
            break
        out[key] = params.get(f"Tag.{m}.Value", "")
    return out


_KIND_OF_PREFIX = {"i-": "instance", "vol-": "volume", "sg-": "security-group",
                   "ami-": "image", "snap-": "snapshot", "subnet-": "subnet", "vpc-": "vpc",
                   "eni-": "network-interface", "key-": "key-pair"}
_NEW_TAGGABLE = {"RunInstances": ("instance", "volume", "network-interface"),
                 "CreateSecurityGroup": ("security-group",), "ImportKeyPair": ("key-pair",),
                 "CreateKeyPair": ("key-pair",), "CreateImage": ("image", "snapshot"),
                 "CreateSnapshot": ("snapshot",), "RegisterImage": ("image",),
                 "CopyImage": ("image",)}


def kind_of(resource_id: str) -> str:
    for prefix, kind in _KIND_OF_PREFIX.items():
        if resource_id.startswith(prefix):
            return kind
    return "key-pair"     # key pairs are named by their name


class Arns:
    def __init__(self, region: str, account: str) -> None:
        self.region, self.account = region, account

    def __call__(self, kind: str, rid: str = "*") -> str:
        owner = "" if kind in ("image", "snapshot") else self.account
        return f"arn:aws:ec2:{self.region}:{owner}:{kind}/{rid}"


TagsOf = Callable[[str, str], Mapping[str, str]]
"""``tags_of(resource id, region)``: the tags the resource has now ({} if none or gone)."""
RolesOf = Callable[[str], list[str]]
"""``roles_of(instance profile name or ARN)``: the ARNs of the profile's roles."""


def asks(action: str, params: Mapping[str, str], *, region: str, account: str,
         tags_of: TagsOf, roles_of: RolesOf = lambda profile: []) -> list[Ask]:
    """Every authorization EC2 makes for the Query call ``action(params)`` (an instance
    profile given to RunInstances: ``iam:PassRole`` on its role, as IAM asks)."""
    arn = Arns(region, account)
    ec2 = f"ec2:{action}"
    if action.startswith("Describe"):      # no resource-level permissions
        return [Ask(ec2, "*", {})]

    def existing(rid: str, kind: str | None = None, extra: Mapping | None = None) -> Ask:
        tags = tags_of(rid, region)
        ctx = {**{f"aws:ResourceTag/{k}": v for k, v in tags.items()},
               **{f"ec2:ResourceTag/{k}": v for k, v in tags.items()}, **(extra or {})}
        return Ask(ec2, arn(kind or kind_of(rid), rid), ctx)

    specs = tag_specs(params)
    out: list[Ask] = []
    for kind in _NEW_TAGGABLE.get(action, ()):     # the resources the call creates
        tags = specs.get(kind, {})
        out.append(Ask(ec2, arn(kind), request_tags(tags)))
    for kind, tags in specs.items():               # their tags: CreateTags at creation
        out.append(Ask("ec2:CreateTags", arn(kind), {**request_tags(tags),
                                                     "ec2:CreateAction": action}))
    if action == "RunInstances":
        image = params.get("ImageId", "")
        out.append(Ask(ec2, arn("image", image), {}))
        if params.get("KeyName"):
            out.append(existing(params["KeyName"], "key-pair"))
        groups = (_numbered(params, "SecurityGroupId")
                  or _numbered(params, "NetworkInterface.1.SecurityGroupId"))
        out += [existing(g) for g in groups]
        out.append(Ask(ec2, arn("subnet", params.get("NetworkInterface.1.SubnetId")
                                or params.get("SubnetId") or "*"), {}))
        if params.get("InstanceMarketOptions.MarketType") == "spot":
            # a spot launch creates a spot-instances-request ("Spot Instance permissions")
            out.append(Ask(ec2, arn("spot-instances-request"),
                           request_tags(specs.get("spot-instances-request", {}))))
        profile = params.get("IamInstanceProfile.Name") or params.get("IamInstanceProfile.Arn")
        if profile:
            out += [Ask("iam:PassRole", role, {"iam:PassedToService": "ec2.amazonaws.com"})
                    for role in roles_of(profile) or [f"arn:aws:iam::{account}:role/?"]]
    elif action == "CreateSecurityGroup":
        out.append(Ask(ec2, arn("vpc", params.get("VpcId") or "*"), {}))
    elif action == "CreateImage":
        out.append(existing(params.get("InstanceId", ""), "instance"))
    elif action == "CreateSnapshot":
        out.append(existing(params.get("VolumeId", ""), "volume"))
    elif action == "RegisterImage":
        for n in range(1, 20):
            snap = params.get(f"BlockDeviceMapping.{n}.Ebs.SnapshotId")
            if snap:
                out.append(existing(snap, "snapshot"))
    elif action == "CopyImage":
        src = params.get("SourceImageId", "")
        out.append(Ask(ec2, Arns(params.get("SourceRegion", region), account)("image", src), {}))
    elif action in ("CreateTags", "DeleteTags"):
        tags = _tag_pairs(params)
        extra = request_tags(tags) if action == "CreateTags" else {"aws:TagKeys": list(tags)}
        out += [existing(rid, extra=extra) for rid in _numbered(params, "ResourceId")]
    elif action == "ModifyInstanceAttribute":
        out.append(existing(params.get("InstanceId", ""), "instance"))
        out += [existing(g) for g in _numbered(params, "GroupId")]
    elif action not in _NEW_TAGGABLE:
        ids = [params[k] for k in sorted(params) if re.fullmatch(
            r"(InstanceId|VolumeId|SnapshotId|ImageId|GroupId|KeyPairId)(\.\d+)?", k)]
        if "KeyName" in params and "KeyPairId" not in params:
            ids.append(params["KeyName"])
        out += [existing(rid, "key-pair" if action.endswith("KeyPair") else None) for rid in ids]
    return out or [Ask(ec2, "*", {})]


SnapshotOf = Callable[[str], object]
"""``snapshot_of(snapshot id)``: the EBS stand-in's record (``ebs_model.Snap``) or None."""


def ebs_asks(action: str, snapshots: list[str], request: Mapping, *, region: str,
             tags_of: TagsOf, snapshot_of: SnapshotOf = lambda snap: None) -> list[Ask]:
    """Every authorization EBS makes for a direct API call (Service Authorization Reference,
    "Actions, resources, and condition keys for Amazon Elastic Block Store"): the snapshot
    ``arn:aws:ec2:REGION::snapshot/ID``, with ``aws:ResourceTag/K`` (only: the ``ec2:``
    keys are EC2's), and ``ebs:VolumeSize``, ``ebs:Description``, ``ebs:ParentSnapshot``
    (the parent's ARN). StartSnapshot: the new ``snapshot/*`` with the request's values and
    ``aws:RequestTag/K``, ``aws:TagKeys``; its tags are also ``ec2:CreateTags`` on it (the
    reference's operations table), with no ``ec2:CreateAction`` (none is listed for it).
    ListChangedBlocks: both snapshots (``snapshots``: the second, then the first)."""
    arn = Arns(region, "")
    ebs = f"ebs:{action}"

    def facts(size, description, parent) -> dict[str, object]:
        out: dict[str, object] = {}
        if size is not None:
            out["ebs:VolumeSize"] = str(size)
        if description:
            out["ebs:Description"] = description
        if parent:
            out["ebs:ParentSnapshot"] = arn("snapshot", parent)
        return out

    if action == "StartSnapshot":
        tags = {t.get("Key", ""): t.get("Value", "") for t in request.get("Tags") or []}
        ctx = {**request_tags(tags), **facts(request.get("VolumeSize"),
                                            request.get("Description"),
                                            request.get("ParentSnapshotId"))}
        out = [Ask(ebs, arn("snapshot"), ctx)]
        if tags:
            out.append(Ask("ec2:CreateTags", arn("snapshot"), request_tags(tags)))
        return out
    out = []
    for snap in snapshots:
        record = snapshot_of(snap)
        ctx = {f"aws:ResourceTag/{k}": v for k, v in tags_of(snap, region).items()}
        if record is not None:
            ctx.update(facts(record.volume_size, record.description, record.parent))
        out.append(Ask(ebs, arn("snapshot", snap), ctx))
    return out or [Ask(ebs, arn("snapshot"), {})]


def request_tags(tags: Mapping[str, str]) -> dict[str, object]:
    ctx: dict[str, object] = {f"aws:RequestTag/{k}": v for k, v in tags.items()}
    if tags:
        ctx["aws:TagKeys"] = list(tags)
    return ctx


# -- evaluation --------------------------------------------------------------------------------

def _like(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, value, re.S | (re.I if ignore_case else 0)) is not None


_OPERATORS: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": lambda want, got: want == got,
    "StringNotEquals": lambda want, got: want == got,
    "StringEqualsIgnoreCase": lambda want, got: want.lower() == got.lower(),
    "StringLike": _like,
    "StringNotLike": _like,
}
_NEGATED = ("StringNotEquals", "StringNotLike")


def _condition_holds(op: str, key: str, wanted, context: Mapping[str, object]) -> bool:
    qualifier, _, base = op.rpartition(":")
    if_exists = base.endswith("IfExists")
    base = base.removesuffix("IfExists")
    # context keys are case-insensitive
    got = next((v for k, v in context.items() if k.lower() == key.lower()), None)
    if base == "Null":
        return (got is None) == (str(wanted).lower() == "true")
    if base not in _OPERATORS or qualifier not in ("", "ForAllValues", "ForAnyValue"):
        raise PolicyError(f"condition operator {op!r} is not understood")
    match = _OPERATORS[base]
    wants = [str(w) for w in as_list(wanted)]
    negated = base in _NEGATED
    if got is None:
        return if_exists or negated or qualifier == "ForAllValues"
    values = [str(v) for v in as_list(got)]

    def one(value: str) -> bool:
        hit = any(match(w, value) for w in wants)
        return not hit if negated else hit

    if qualifier == "ForAllValues":
        return all(one(v) for v in values)
    if qualifier == "ForAnyValue":
        return any(one(v) for v in values)
    if len(values) != 1:
        raise PolicyError(f"{key} is multi-valued: {op} needs ForAllValues/ForAnyValue")
    return one(values[0])


def _matches(patterns, value: str, *, ignore_case: bool) -> bool:
    return any(_like(p, value, ignore_case=ignore_case) for p in as_list(patterns))


def statement_applies(stmt: Mapping, ask: Ask) -> bool:
    """Whether ``stmt``'s action, resource and condition all match ``ask``."""
    unknown = set(stmt) - {"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource",
                           "Condition"}
    if unknown or ("Action" in stmt) == ("NotAction" in stmt) \
            or ("Resource" in stmt) == ("NotResource" in stmt):
        raise PolicyError(f"statement {stmt.get('Sid')!r}: not understood ({sorted(stmt)})")
    if "Action" in stmt:
        if not _matches(stmt["Action"], ask.action, ignore_case=True):
            return False
    elif _matches(stmt["NotAction"], ask.action, ignore_case=True):
        return False
    if "Resource" in stmt:
        if not _matches(stmt["Resource"], ask.resource, ignore_case=False):
            return False
    elif _matches(stmt["NotResource"], ask.resource, ignore_case=False):
        return False
    return all(_condition_holds(op, key, wanted, ask.context)
               for op, keys in stmt.get("Condition", {}).items()
               for key, wanted in keys.items())


def denied(policy: Mapping, ask: Ask) -> str | None:
    """None when ``policy`` allows ``ask``; else why not (explicit deny or no allow)."""
    allowed = False
    for stmt in as_list(policy["Statement"]):
        if stmt.get("Effect") not in ("Allow", "Deny"):
            raise PolicyError(f"statement {stmt.get('Sid')!r}: Effect {stmt.get('Effect')!r}")
        if statement_applies(stmt, ask):
            if stmt["Effect"] == "Deny":
                return f"with an explicit deny in statement {stmt.get('Sid')}"
            allowed = True
    return None if allowed else f"because no identity-based policy allows the {ask.action} action"

"""The fake EC2 with IAM enforced: amic runs as an IAM user whose policy is docs/ec2.md's.

moto's server honours ``INITIAL_NO_AUTH_ACTION_COUNT``: after that many requests,
every request must be signed (SigV4, checked) by the key of an IAM user of moto's
account, and the user's policies must name the action. ``enforced_ec2`` starts
moto with ``BOOTSTRAP_CALLS`` unauthenticated requests, spends them on an admin
user for the harness itself (its key signs every look-up the stand-in and the
assertions make) and then, as that admin, creates the user amic runs as
(``IamEnforcement.env``).

What moto checks and what it does not (``moto/iam/access_control.py``, moto 5.2):
it matches actions (``Action``/``NotAction``, wildcards) against the resource
``*`` only, so a statement whose ``Resource`` is an ARN pattern never allows
anything there; and it evaluates no condition keys EC2 uses. So the policy moto
gets is the documented one *projected* (``moto_projection``: Resource ``*``, no
Condition), which makes moto the judge of the actions (and of the signatures,
also of amic's own hand-signed DescribeImages and of the Auto Scaling calls that
go to moto directly), and every EC2 call through the proxy is also evaluated
against the documented policy as written (``iam_policy``: resources, tag
conditions, ``ec2:CreateAction``) before it reaches moto. A call that policy does
not allow is answered ``UnauthorizedOperation`` with EC2's message (``enforce``),
and recorded either way (``verdicts``), so a test can also let moto alone refuse.

The EBS direct APIs never reach moto: the EBS stand-in (``ebs.py``) asks this module
(``_check_ebs``) about every call. A key neither user has is refused
(``UnrecognizedClientException``; the signature itself is not checked there); amic's
user's calls are evaluated against the documented policy (``iam_policy.ebs_asks``: the
snapshot ARN, ``aws:RequestTag``/``aws:ResourceTag``, ``ebs:ParentSnapshot``, ...) and
refused as EBS does (``AccessDeniedException``, 403, IAM's message), recorded in
``verdicts`` like the EC2 calls (with ``enforce`` off, only recorded: moto never sees them).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import threading
from collections.abc import Mapping

import attrs

from tests.harness.ec2 import iam_policy
from tests.harness.ec2.api import REGION, ApiError
from tests.harness.ec2.ebs_model import EbsError

BOOTSTRAP_CALLS = 3
"""Unauthenticated requests moto answers: CreateUser, PutUserPolicy, CreateAccessKey of
the harness's admin."""
MOTO_ENV = {"INITIAL_NO_AUTH_ACTION_COUNT": str(BOOTSTRAP_CALLS)}
ADMIN = "harness-admin"
USER = "amic-ci"
ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def moto_projection(policy: Mapping) -> dict:
    """What moto can evaluate of ``policy``: each Allow statement's actions on ``*``
    (moto matches statements against the resource ``*`` only), without conditions (moto
    evaluates none of EC2's). Deny statements are kept only where they are already
    unconditional on ``*`` (elsewhere moto would deny more than IAM)."""
    out = []
    for stmt in iam_policy.as_list(policy["Statement"]):
        plain = {k: v for k, v in stmt.items() if k not in ("Resource", "NotResource", "Condition")}
        if stmt["Effect"] == "Allow":
            out.append({**plain, "Resource": "*"})
        elif stmt.get("Resource") == "*" and "Condition" not in stmt:
            out.append(stmt)
    return {"Version": policy.get("Version", "2012-10-17"), "Statement": out}


@attrs.frozen
class Verdict:
    action: str
    params: Mapping[str, str]
    denials: tuple[str, ...]
    """EC2's messages for each refused authorization of the call (empty: allowed)."""


def _client(service: str, url: str, key: tuple[str, str], region: str = REGION):
    import boto3
    from botocore.config import Config

    # a pool as big as amic's upload (16 PutSnapshotBlock at once, each judged here)
    return boto3.client(service, region_name=region, endpoint_url=url,
                        aws_access_key_id=key[0], aws_secret_access_key=key[1],
                        config=Config(max_pool_connections=32))


class IamEnforcement:
    """The IAM side of an enforced fake EC2: the admin and amic's user, their keys, the
    policy amic runs under, and the verdict on every EC2 call it made."""

    def __init__(self, fake) -> None:
        self.fake = fake
        self.enforce = True
        """Refuse what the documented policy does not allow (False: only record it, and
        let moto's own enforcement decide)."""
        self.policy: dict | None = None
        self.verdicts: list[Verdict] = []
        self._lock = threading.Lock()
        self._clients: dict[str, object] = {}
        self._attached: str | None = None
        self._n = 0
        self._bootstrap()

    # set-up -----------------------------------------------------------------------

    def _bootstrap(self) -> None:
        anonymous = _client("iam", self.fake.moto.url, ("testing", "testing"))
        anonymous.create_user(UserName=ADMIN)                               # 1
        anonymous.put_user_policy(UserName=ADMIN, PolicyName="all",         # 2
                                  PolicyDocument=json.dumps(ALL))
        key = anonymous.create_access_key(UserName=ADMIN)["AccessKey"]     # 3: enforced now
        self.admin = (key["AccessKeyId"], key["SecretAccessKey"])
        self.iam = _client("iam", self.fake.moto.url, self.admin)
        self.iam.create_user(UserName=USER)
        key = self.iam.create_access_key(UserName=USER)["AccessKey"]
        self.user = (key["AccessKeyId"], key["SecretAccessKey"])
        self.user_arn = f"arn:aws:iam::{self.fake.moto.account}:user/{USER}"
        self._clients.clear()
        self._attached = None
        self.fake.proxy.credentials = self.admin
        self.fake.proxy.resign = self._resign
        self.fake.proxy.before["*"].append(self._check)
        self.fake.ebs.authorizers.append(self._check_ebs)

    def reset(self) -> None:
        """The fake's reset (moto's state, IAM users included, goes), then the users again."""
        self.fake.reset()
        conn = http.client.HTTPConnection("127.0.0.1", self.fake.moto.port, timeout=30)
        conn.request("POST", "/moto-api/reset-auth", body=str(BOOTSTRAP_CALLS))
        conn.getresponse().read()
        conn.close()
        self.verdicts.clear()
        self.policy = None
        self.enforce = True
        self._bootstrap()

    def use_policy(self, policy: dict) -> None:
        """amic's user gets ``policy`` (as a customer managed policy, as docs/ec2.md says)."""
        self._n += 1
        arn = self.iam.create_policy(PolicyName=f"amic-{self._n}", PolicyDocument=json.dumps(
            moto_projection(policy)))["Policy"]["Arn"]
        self.iam.attach_user_policy(UserName=USER, PolicyArn=arn)
        if self._attached:
            self.iam.detach_user_policy(UserName=USER, PolicyArn=self._attached)
        self._attached = arn
        self.policy = policy
        with self._lock:
            self.verdicts.clear()

    @property
    def env(self) -> dict[str, str]:
        """The fake's environment with amic's user's key instead of the harness's."""
        return {**self.fake.env, "AWS_ACCESS_KEY_ID": self.user[0],
                "AWS_SECRET_ACCESS_KEY": self.user[1]}

    # what the calls got ------------------------------------------------------------

    def denials(self) -> list[str]:
        with self._lock:
            return [d for v in self.verdicts for d in v.denials]

    def actions(self) -> list[str]:
        """Every EC2 action amic called (through the proxy) and EBS direct API call it made,
        in order."""
        with self._lock:
            return [v.action for v in self.verdicts]

    # the proxy's hook ---------------------------------------------------------------

    def _check(self, action: str, params: Mapping[str, str], headers: Mapping[str, str]) -> None:
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        scope = re.search(r"Credential=([^/]+)/\d+/([^/]+)/", auth)
        if self.policy is None or not scope or scope[1] != self.user[0]:
            return                       # not amic's user: moto alone judges it
        region = scope[2]
        denials = []
        for ask in iam_policy.asks(action, params, region=region, account=self.fake.moto.account,
                                   tags_of=self._tags_of, roles_of=self._roles_of):
            why = iam_policy.denied(self.policy, ask)
            if why:
                denials.append(
                    f"You are not authorized to perform this operation. User: {self.user_arn} "
                    f"is not authorized to perform: {ask.action} on resource: {ask.resource} "
                    f"{why}")
        with self._lock:
            self.verdicts.append(Verdict(action, dict(params), tuple(denials)))
        if denials and self.enforce:
            raise ApiError("UnauthorizedOperation", denials[0], 403)

    def _check_ebs(self, action: str, snapshots: list[str], request: Mapping,
                   headers: Mapping[str, str]) -> None:
        """The EBS stand-in's hook: an EBS direct API call judged as EBS would (IAM's message,
        ``AccessDeniedException``). With IAM enforced, a key IAM does not know is refused."""
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        scope = re.search(r"Credential=([^/]+)/\d+/([^/]+)/", auth)
        if not scope or scope[1] not in (self.admin[0], self.user[0]):
            raise EbsError("UnrecognizedClientException", 403,
                           "The security token included in the request is invalid.")
        if self.policy is None or scope[1] != self.user[0]:
            return
        denials = []
        for ask in iam_policy.ebs_asks(action, snapshots, request, region=scope[2],
                                       tags_of=self._tags_of, snapshot_of=self.fake.ebs.snaps.get):
            why = iam_policy.denied(self.policy, ask)
            if why:
                denials.append(f"User: {self.user_arn} is not authorized to perform: "
                               f"{ask.action} on resource: {ask.resource} {why}")
        with self._lock:
            self.verdicts.append(Verdict(action, {"snapshots": ",".join(snapshots)},
                                         tuple(denials)))
        if denials and self.enforce:
            raise EbsError("AccessDeniedException", 403, denials[0], "UNAUTHORIZED_ACCOUNT")

    def _ec2(self, region: str):
        with self._lock:
            if region not in self._clients:
                self._clients[region] = _client("ec2", self.fake.moto.url, self.admin, region)
            return self._clients[region]

    def _tags_of(self, rid: str, region: str) -> dict[str, str]:
        """The tags resource ``rid`` has now, through the admin's client ({} if none)."""
        ec2 = self._ec2(region)
        kind = iam_policy.kind_of(rid)
        with contextlib.suppress(Exception):
            if kind == "instance":
                found = [i for r in ec2.describe_instances(InstanceIds=[rid])["Reservations"]
                         for i in r["Instances"]]
            elif kind == "volume":
                found = ec2.describe_volumes(VolumeIds=[rid])["Volumes"]
            elif kind == "snapshot":
                found = ec2.describe_snapshots(SnapshotIds=[rid])["Snapshots"]
            elif kind == "image":
                found = ec2.describe_images(ImageIds=[rid])["Images"]
            elif kind == "security-group":
                found = ec2.describe_security_groups(GroupIds=[rid])["SecurityGroups"]
            elif kind == "key-pair":
                found = ec2.describe_key_pairs(
                    **({"KeyPairIds": [rid]} if rid.startswith("key-") else {"KeyNames": [rid]})
                )["KeyPairs"]
            else:
                found = []
            return {t["Key"]: t.get("Value", "") for t in (found[0].get("Tags") or [])} \
                if found else {}
        return {}

    def _roles_of(self, profile: str) -> list[str]:
        with contextlib.suppress(Exception):
            found = self.iam.get_instance_profile(InstanceProfileName=profile.rpartition("/")[2])
            return [role["Arn"] for role in found["InstanceProfile"]["Roles"]]
        return []

    def _resign(self, method: str, path: str, headers: dict, body: bytes) -> dict:
        """Sign again a body the proxy's ``forward`` hooks changed, with the caller's key."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        scope = re.search(r"Credential=([^/]+)/\d+/([^/]+)/([^/]+)/", auth)
        secrets = dict([self.admin, self.user])
        if not scope or scope[1] not in secrets:
            return headers
        host = next(v for k, v in headers.items() if k.lower() == "host")
        ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
        req = AWSRequest(method=method, url=f"http://{host}{path}", data=body,
                         headers={"Content-Type": ctype} if ctype else {})
        SigV4Auth(Credentials(scope[1], secrets[scope[1]]), scope[3], scope[2]).add_auth(req)
        out = {k: v for k, v in headers.items() if k.lower() not in ("authorization", "x-amz-date")}
        out["Authorization"] = req.headers["Authorization"]
        out["X-Amz-Date"] = req.headers["X-Amz-Date"]
        return out


@contextlib.contextmanager
def enforced(fake_cm):
    """``with enforced(fake_ec2(...) or standin_ec2(...)) as (fake, iam)``: the context
    manager must have been made with ``moto_env=MOTO_ENV``."""
    with fake_cm as fake:
        yield fake, IamEnforcement(fake)

"""``--temporary-iam-instance-profile FILE``: a role and instance profile made for one build.

Packer's ``temporary_iam_instance_profile_policy_document``: the build instance gets a role
whose inline policy is the given statements, through an instance profile, both made before
the instance and deleted after it (and tagged at creation, under the IAM path
``/amic/`` so ``amic gc`` finds them with one ListRoles / ListInstanceProfiles: IAM's
List calls return no tags, and nothing else needs looking at).

IAM is eventually consistent: a profile made a moment ago may be refused by RunInstances
("Invalid IAM Instance Profile name", InvalidParameterValue) for some seconds
("Troubleshoot IAM roles", "changes may not be immediately visible"). The launch retries
that refusal for :data:`PROPAGATION` seconds.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping

from amic.errors import BuildError
from amic.targets.ec2 import session as aws

Log = Callable[[str], None]

PATH = "/amic/"
"""The IAM path of every temporary role and profile: what ``amic gc`` lists."""
PROPAGATION = 60.0
"""Seconds RunInstances may refuse a new profile while IAM propagates it."""
ASSUME_EC2 = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
    "Action": "sts:AssumeRole"}]}


def with_profile(stack: contextlib.ExitStack, clients, opts, name: str,
                 tags: Mapping[str, str], log: Log):
    """``opts`` with the build's own profile when ``--temporary-iam-instance-profile`` asks
    for one (made here, its cleanup on ``stack``); ``opts`` as they are otherwise. IAM tags
    get no heartbeat: ``amic gc`` judges them by owner and expiry."""
    if not opts.temporary_iam_policy:
        return opts
    import attrs

    profile = add_profile(stack, clients.iam, name, lasting(tags), opts.temporary_iam_policy, log)
    return attrs.evolve(opts, iam_instance_profile=profile)


def lasting(tags: Mapping[str, str]) -> dict[str, str]:
    """A build's resource tags without the heartbeat, which nothing refreshes on IAM."""
    return {k: v for k, v in tags.items() if not k.startswith("amic:heartbeat")}


def iam_tags(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def add_profile(stack: contextlib.ExitStack, iam, name: str, tags: Mapping[str, str],
                policy: str, log: Log) -> str:
    """Role ``name`` with ``policy`` inline, in instance profile ``name``; the profile's name.
    The cleanup goes on ``stack`` first, and finds both by name."""
    stack.callback(_cleanup, log, iam, name)
    aws.call("creating the temporary IAM role", iam.create_role, RoleName=name, Path=PATH,
             AssumeRolePolicyDocument=json.dumps(ASSUME_EC2), Tags=iam_tags(tags),
             Description="amic build instance role (temporary)")
    aws.call("attaching the temporary role's policy", iam.put_role_policy, RoleName=name,
             PolicyName="amic-build", PolicyDocument=policy)
    aws.call("creating the temporary instance profile", iam.create_instance_profile,
             InstanceProfileName=name, Path=PATH, Tags=iam_tags(tags))
    aws.call("adding the role to the instance profile", iam.add_role_to_instance_profile,
             InstanceProfileName=name, RoleName=name)
    log(f"instance profile {name} (temporary role {name})")
    return name


def _cleanup(log: Log, iam, name: str) -> None:
    try:
        delete(iam, name)
        log(f"deleted instance profile and role {name}")
    except Exception as exc:  # noqa: BLE001 - cleanup logs, never raises (multistep)
        log(f"warning: could not remove the temporary role/profile {name}: {exc} "
            "(it is tagged; `amic gc` removes it after it expires)")


def delete(iam, name: str) -> None:
    """Profile and role ``name``, whatever part of them exists (an interrupted create)."""
    import botocore.exceptions

    def gone(fn, **kwargs) -> None:
        try:
            fn(**kwargs)
        except botocore.exceptions.ClientError as exc:
            if aws.error_code(exc) != "NoSuchEntity":
                raise

    gone(iam.remove_role_from_instance_profile, InstanceProfileName=name, RoleName=name)
    gone(iam.delete_instance_profile, InstanceProfileName=name)
    gone(iam.delete_role_policy, RoleName=name, PolicyName="amic-build")
    gone(iam.delete_role, RoleName=name)


def leftovers(iam) -> list[tuple[str, dict[str, str]]]:
    """(name, tags) of every temporary role under ``PATH`` (its profile has its name)."""
    found = []
    for page in iam.get_paginator("list_roles").paginate(PathPrefix=PATH):
        for role in page["Roles"]:
            tags = iam.list_role_tags(RoleName=role["RoleName"])["Tags"]
            found.append((role["RoleName"], aws.tag_dict(tags)))
    return found


def launching(run: Callable[[], object], log: Log) -> object:
    """``run()`` (RunInstances), retried while EC2 does not know the new profile yet."""
    import botocore.exceptions

    deadline = time.monotonic() + PROPAGATION
    attempt = 0
    while True:
        try:
            return run()
        except (BuildError, botocore.exceptions.ClientError) as exc:
            if "instance profile" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            attempt += 1
            if attempt == 1:
                log("the new instance profile is not visible to EC2 yet; retrying")
            time.sleep(aws.backoff(attempt, cap=5.0))

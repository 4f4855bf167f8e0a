"""AWS access for the ec2 target: sessions, clients, tags and expiry.

Credentials, profiles and regions come from the standard boto3 chain
(environment, ``~/.aws/config`` and ``credentials``, SSO, instance roles).
Endpoints too: botocore reads ``AWS_ENDPOINT_URL_EC2`` / ``AWS_ENDPOINT_URL``
(and ``endpoint_url`` in a profile) itself, which is how the tests reach moto
and how a user reaches LocalStack or a VPC endpoint. Nothing here patches
botocore.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import random
import re
import time
from collections.abc import Iterable, Mapping

import attrs

from amic import __version__
from amic.contract import TAG_BUILD
from amic.errors import BuildError, UsageError
from amic.targets import defaults
from amic.targets.ec2 import owner
from amic.targets.ec2.flags import AWS_OPTIONS, RETRY_MODES

TOOL = "amic"
TAG_TOOL = "amic:tool"
"""``amic/<version>`` on every resource amic creates: what ``amic gc`` looks for."""
TAG_EXPIRES = "amic:expires"
"""UTC ISO-8601 time after which a temporary resource counts as leaked (``amic gc``)."""
TAG_ROLE = "amic:role"
"""``build`` (a temporary resource of a build), ``launch`` (``amic launch``)."""

MAX_TAGS = 50
"""EC2's limit of tags per resource."""

_DEFAULTS = defaults(AWS_OPTIONS)
"""The defaults of the AWS flags (``--retry-mode``, ``--max-attempts``), written in the table."""


@attrs.frozen
class AwsOptions:
    """How to reach AWS. Everything unset falls back to the standard chain."""

    profile: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    """Explicit endpoint; normally unset (``AWS_ENDPOINT_URL_EC2`` is honoured by botocore)."""
    retry_mode: str = _DEFAULTS["retry_mode"]
    """botocore retry mode; ``AWS_RETRY_MODE`` overrides the default."""
    max_attempts: int = _DEFAULTS["max_attempts"]
    """Attempts per API call including the first (throttling is retried with backoff)."""
    connect_timeout: float = 10.0
    read_timeout: float = 60.0


def options_from_env(**overrides) -> AwsOptions:
    """``AwsOptions`` with the ``AWS_RETRY_MODE`` / ``AWS_MAX_ATTEMPTS`` conventions applied."""
    values = {k: v for k, v in overrides.items() if v is not None}
    if "retry_mode" not in values and os.environ.get("AWS_RETRY_MODE"):
        values["retry_mode"] = os.environ["AWS_RETRY_MODE"]
    if "max_attempts" not in values and os.environ.get("AWS_MAX_ATTEMPTS"):
        values["max_attempts"] = int(os.environ["AWS_MAX_ATTEMPTS"])
    opts = AwsOptions(**values)
    if opts.retry_mode not in RETRY_MODES:
        raise UsageError(f"retry mode {opts.retry_mode!r}: expected one of {', '.join(RETRY_MODES)}")
    return opts


def session(opts: AwsOptions):
    import boto3
    import botocore.exceptions

    try:
        # AWS_REGION is what the AWS CLI v2 and most SDKs read first; botocore
        # itself only reads AWS_DEFAULT_REGION, so pass it on explicitly.
        sess = boto3.Session(profile_name=opts.profile,
                             region_name=opts.region or os.environ.get("AWS_REGION") or None)
        region = sess.region_name  # reads ~/.aws/config: a file that does not parse fails here
    except botocore.exceptions.ProfileNotFound as exc:
        raise UsageError(str(exc)) from None
    except (botocore.exceptions.ConfigParseError, botocore.exceptions.InvalidConfigError) as exc:
        raise UsageError(f"the AWS configuration is broken: {exc} (fix the file, or point "
                         "AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE elsewhere)") from None
    if not region:
        raise UsageError("no AWS region: pass --region, set AWS_REGION, or put region= in the "
                         "profile (~/.aws/config)")
    return sess


def client(opts: AwsOptions, service: str = "ec2", *, region: str | None = None, sess=None):
    """A client with amic's retry and timeout settings (one per region)."""
    from botocore.config import Config

    sess = sess or session(opts)
    config = Config(retries={"mode": opts.retry_mode, "max_attempts": opts.max_attempts},
                    connect_timeout=opts.connect_timeout, read_timeout=opts.read_timeout,
                    user_agent_extra=f"amic/{__version__}")
    kwargs = {"config": config, "region_name": region or sess.region_name}
    if opts.endpoint_url:
        kwargs["endpoint_url"] = opts.endpoint_url
    return sess.client(service, **kwargs)


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ClientError (``None`` for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None


def permission_hint(exc: BaseException) -> str:
    """Which permission is missing (AWS's message names it; else the operation's) and where
    the policy that has it is."""
    named = re.search(r"perform: ([\w-]+:[\w*]+)", str(exc))
    action = named[1] if named else f"the permission for {getattr(exc, 'operation_name', '?')}"
    return (f" (the IAM policy lacks {action}: docs/ec2.md, \"The IAM policy\", lists the "
            "statement that has it)")


def explain(exc: BaseException, doing: str) -> BuildError:
    """A BuildError saying what failed, with the AWS code and a hint for the common ones."""
    return BuildError(f"{doing}: {exc}{hint(exc)}")


def hint(exc: BaseException) -> str:
    """What to do about a common AWS error (`` (…)``), or ``""``."""
    code = error_code(exc)
    return {
        "UnauthorizedOperation": permission_hint(exc),
        "AccessDenied": permission_hint(exc),
        "AccessDeniedException": permission_hint(exc),
        "AuthFailure": " (check the credentials: aws sts get-caller-identity)",
        "RequestLimitExceeded": " (throttled even after retries; raise AWS_MAX_ATTEMPTS or use "
                                "--retry-mode adaptive)",
        "InsufficientInstanceCapacity": " (try another --instance-type or --subnet)",
        "VcpuLimitExceeded": " (raise the vCPU quota or use a smaller --instance-type)",
    }.get(code or "", "")


def call(doing: str, fn, **kwargs):
    """``fn(**kwargs)``; an AWS error becomes a BuildError saying what was being done."""
    import botocore.exceptions

    try:
        return fn(**kwargs)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise explain(exc, doing) from None


def backoff(attempt: int, *, base: float = 0.5, cap: float = 10.0) -> float:
    """Seconds before retry ``attempt`` (1, 2, ...): exponential with full jitter, as AWS
    recommends ("Retries and exponential backoff", the EC2 throttling guide), so builds
    that were refused together do not come back together."""
    return random.uniform(0, min(cap, base * 2 ** attempt))


def call_patiently(doing: str, fn, *, codes: tuple[str, ...], patience: float,
                   log=None, **kwargs):
    """``call`` that waits out the AWS errors ``codes`` (refusals EC2 lifts by itself, like
    ``InvalidSnapshot.InUse`` just after DeregisterImage) with ``backoff`` for up to
    ``patience`` seconds; any other error, or the same one after that, is a BuildError."""
    import botocore.exceptions

    deadline = time.monotonic() + patience
    attempt = 0
    while True:
        try:
            return fn(**kwargs)
        except botocore.exceptions.ClientError as exc:
            attempt += 1
            code = error_code(exc)
            if code not in codes or time.monotonic() >= deadline:
                raise explain(exc, doing) from None
            pause = min(backoff(attempt), max(0.0, deadline - time.monotonic()))
            if log is not None and attempt == 1:
                log(f"{doing}: {code}; retrying for up to {patience:.0f}s")
            time.sleep(pause)
        except botocore.exceptions.BotoCoreError as exc:
            raise explain(exc, doing) from None


def wait(ec2, waiter_name: str, *, timeout: float, poll_interval: float, doing: str,
         **kwargs) -> None:
    """A botocore waiter polling every ``poll_interval`` for ``timeout``; BuildError on timeout."""
    import botocore.exceptions

    delay = max(poll_interval, 0.1)
    try:
        ec2.get_waiter(waiter_name).wait(
            WaiterConfig={"Delay": delay, "MaxAttempts": max(1, math.ceil(timeout / delay))},
            **kwargs)
    except botocore.exceptions.WaiterError as exc:
        raise BuildError(f"{doing}: {exc}") from None


class Clients:
    """The EC2 clients of one boto3 session, one per region, made on first use."""

    def __init__(self, opts: AwsOptions) -> None:
        self.opts = opts
        self._ec2 = None
        self._session = None
        self._regions: dict[str, object] = {}

    @property
    def ec2(self):
        """The client of the session's own region."""
        if self._ec2 is None:
            self._session = session(self.opts)
            self._ec2 = client(self.opts, "ec2", sess=self._session)
        return self._ec2

    @property
    def region(self) -> str:
        return self.ec2.meta.region_name

    @property
    def iam(self):
        """IAM of the same session (``--endpoint-url`` is EC2's: not used for IAM)."""
        self.ec2    # noqa: B018 - makes the session
        return client(attrs.evolve(self.opts, endpoint_url=None), "iam", sess=self._session)

    def for_region(self, region: str):
        if region == self.region:
            return self.ec2
        if region not in self._regions:
            self._regions[region] = client(self.opts, "ec2", region=region, sess=self._session)
        return self._regions[region]


# -- tags -------------------------------------------------------------------

def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value


def resource_tags(build_id: str, *, ttl: dt.timedelta | None, role: str = "build",
                  extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The tags every resource of a build carries (``amic:owner``: the process that made it,
    so that its death is seen at once on this host)."""
    tags = {TAG_TOOL: f"{TOOL}/{__version__}", TAG_BUILD: build_id, TAG_ROLE: role,
            "Name": f"amic-{role}-{build_id}", **owner.tags()}
    if ttl is not None:
        tags[TAG_EXPIRES] = iso(now() + ttl)
    if extra:
        tags.update(extra)
    return tags


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    """``{k: v}`` as EC2's ``[{Key, Value}]``, values cut to EC2's 256-character limit."""
    return [{"Key": k[:128], "Value": str(v)[:256]} for k, v in tags.items()]


def tag_dict(items: Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in items or ()}


def tag_specs(tags: Mapping[str, str], *types: str) -> list[dict]:
    return [{"ResourceType": t, "Tags": tag_list(tags)} for t in types]


def fit_tags(tags: Mapping[str, str], *, keep_prefixes: tuple[str, ...] = (),
             limit: int = MAX_TAGS) -> tuple[dict[str, str], list[str]]:
    """At most ``limit`` tags: the ones whose key starts with ``keep_prefixes`` first.

    Returns the tags to set and the keys left out (for a warning).
    """
    items = list(tags.items())
    if len(items) <= limit:
        return dict(items), []
    first = [kv for kv in items if kv[0].startswith(keep_prefixes)]
    rest = [kv for kv in items if not kv[0].startswith(keep_prefixes)]
    kept = (first + rest)[:limit]
    dropped = [k for k, _ in (first + rest)[limit:]]
    return dict(kept), dropped


def expired(tags: Mapping[str, str], at: dt.datetime | None = None) -> bool:
    """True when a resource's ``amic:expires`` lies in the past."""
    when = parse_iso(tags.get(TAG_EXPIRES))
    return when is not None and when <= (at or now())

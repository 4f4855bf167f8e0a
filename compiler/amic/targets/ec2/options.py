"""What ``--target ec2`` can be told: :class:`Ec2Options`, and its option table.

The table (:data:`AWS_OPTIONS`, :data:`EC2_OPTIONS`) is the only list of the
ec2 flags: ``amic.cli.ec2`` adds its rows to ``amic build``, ``amic launch``,
``amic gc`` and ``amic ami``, and :func:`options_from_values` turns what was
given back into options. Defaults live in the options classes alone.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
from collections.abc import Mapping, Sequence

import attrs

from amic.errors import UsageError
from amic.targets import Option, given
from amic.targets.ec2 import session as aws

ON_ERROR = ("cleanup", "abort")


@attrs.define
class Ec2Options:
    """Everything ``--target ec2`` can be told (flags: :data:`EC2_OPTIONS`)."""

    aws: aws.AwsOptions = attrs.field(factory=aws.AwsOptions)
    instance_type: str = "t3.micro"
    arch: str | None = None
    """``x86_64`` or ``arm64``; by default from the instance type."""
    volume_size: int | None = None
    """Root volume GiB (default: the image's)."""
    volume_type: str = "gp3"
    subnet_id: str | None = None
    vpc_id: str | None = None
    security_group_ids: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    ssh_cidrs: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    """Who may reach port 22; empty: the caller's public address, looked up once."""
    associate_public_ip: bool | None = None
    iam_instance_profile: str | None = None
    ssh_user: str | None = None
    ssh_host: str | None = None
    ssh_port: int = 22
    ssh_interface: str = "public-ip"
    """Address used without ``ssh_host``: public-ip, private-ip, public-dns, private-dns."""
    ssh_timeout: float = 600.0
    console_timeout: float = 600.0
    """How long to wait for the host key fingerprints on the console."""
    trust_on_first_use: bool = False
    host_key_fingerprints: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    """Expected host key fingerprints given by the user (skip the console)."""
    jump_host: str | None = None
    """``[user@]host[:port]`` of a bastion, reached with the SSH agent / ``jump_key``."""
    jump_key: str | None = None
    key_type: str = "ed25519"
    ttl: dt.timedelta = dt.timedelta(hours=4)
    """How long temporary resources live before ``amic gc`` may remove them."""
    image_name: str = "{amifile}-{timestamp}"
    """Final AMI name template: {amifile} {key} {build_id} {timestamp} {date} and labels {label[x]}."""
    image_description: str = "built by amic from {amifile} (key {key})"
    image_tags: Mapping[str, str] = attrs.field(factory=dict)
    copy_regions: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    encrypt: bool = False
    kms_key_id: str | None = None
    share_accounts: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    force_deregister: bool = False
    poll_interval: float = 5.0
    instance_timeout: float = 900.0
    image_timeout: float = 3600.0
    on_error: str = "cleanup"


def key_values(items: Sequence[str], flag: str) -> dict[str, str]:
    """``KEY=VALUE`` words as a dict; UsageError naming ``flag`` for any other word."""
    out = {}
    for item in items:
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise UsageError(f"{flag} {item!r}: expected KEY=VALUE")
        out[k] = v
    return out


# -- the option table -------------------------------------------------------------------

_AWS = "AWS access (default: the standard boto3 chain)"
_INSTANCE = "ec2 target: the build instance"
_SSH = "ec2 target: SSH"
_AMI = "ec2 target: the final AMI"

AWS_OPTIONS: tuple[Option, ...] = (
    Option(["--region"], "region", _AWS, "AWS region (default: AWS_REGION / the profile's)"),
    Option(["--profile"], "profile", _AWS,
           "named profile from ~/.aws/config (default: AWS_PROFILE)"),
    Option(["--endpoint-url"], "endpoint_url", _AWS,
           "EC2 endpoint (normally set with AWS_ENDPOINT_URL_EC2 / AWS_ENDPOINT_URL)",
           metavar="URL"),
    Option(["--retry-mode"], "retry_mode", _AWS,
           "botocore retry mode (default: AWS_RETRY_MODE or standard)", choices=aws.RETRY_MODES),
    Option(["--max-attempts"], "max_attempts", _AWS,
           "attempts per API call, throttling included (default: AWS_MAX_ATTEMPTS or 10)",
           metavar="N", type=int),
)
"""How to reach AWS (:class:`~amic.targets.ec2.session.AwsOptions`): every ec2 command has them."""

EC2_OPTIONS: tuple[Option, ...] = (
    Option(["--instance-type"], "instance_type", _INSTANCE, "default: t3.micro"),
    Option(["--arch"], "arch", _INSTANCE,
           "architecture of the base image (default: from the instance type)",
           choices=("x86_64", "arm64")),
    Option(["--volume-size"], "volume_size", _INSTANCE, "root volume size (default: the image's)",
           metavar="GIB", type=int),
    Option(["--volume-type"], "volume_type", _INSTANCE, "root volume type (default: gp3)"),
    Option(["--subnet"], "subnet_id", _INSTANCE, "launch into this subnet", metavar="SUBNET_ID"),
    Option(["--vpc"], "vpc_id", _INSTANCE,
           "VPC of the temporary security group (default: the subnet's or the default VPC)",
           metavar="VPC_ID"),
    Option(["--security-group"], "security_group_ids", _INSTANCE,
           "use this security group instead of a temporary one (repeatable)",
           metavar="SG_ID", action="append"),
    Option(["--ssh-cidr"], "ssh_cidrs", _INSTANCE,
           "who may reach port 22 through the temporary group (repeatable; default: "
           "this machine's public address, from checkip.amazonaws.com)",
           metavar="CIDR", action="append"),
    Option(["--public-ip"], "associate_public_ip", _INSTANCE,
           "give the instance a public address (default: the subnet's setting)",
           action="store_true"),
    Option(["--no-public-ip"], "associate_public_ip", _INSTANCE, action="store_false"),
    Option(["--iam-instance-profile"], "iam_instance_profile", _INSTANCE,
           "instance profile for INIT scripts", metavar="NAME|ARN"),
    Option(["--key-type"], "key_type", _INSTANCE,
           "temporary key pair type (rsa for images without ed25519 support)",
           choices=("ed25519", "rsa")),
    Option(["--expire-after"], "expire_after", _INSTANCE,
           "temporary resources carry amic:expires = now + this; `amic gc` removes "
           "them afterwards if a build could not (default: 4h)",
           metavar="DURATION", field="ttl", convert=aws.parse_duration),
    Option(["--poll-interval"], "poll_interval", _INSTANCE,
           "waiter delay between checks (default: 5)", metavar="SECONDS", type=float),
    Option(["--instance-timeout"], "instance_timeout", _INSTANCE,
           "wait this long for an instance to run/stop/terminate (default: 900)",
           metavar="SECONDS", type=float),
    Option(["--image-timeout"], "image_timeout", _INSTANCE,
           "wait this long for an image to become available (default: 3600)",
           metavar="SECONDS", type=float),

    Option(["--ssh-user"], "ssh_user", _SSH,
           "login user (default: the base image's: admin, ubuntu, ec2-user)"),
    Option(["--ssh-host"], "ssh_host", _SSH,
           "connect here instead of the instance's address (port forwarding, private setups)"),
    Option(["--ssh-port"], "ssh_port", _SSH, "default: 22", type=int),
    Option(["--ssh-interface"], "ssh_interface", _SSH,
           "which address of the instance to use (default: public-ip)",
           choices=("public-ip", "private-ip", "public-dns", "private-dns")),
    Option(["--ssh-jump-host"], "jump_host", _SSH, "reach the instance through this bastion",
           metavar="[USER@]HOST[:PORT]"),
    Option(["--ssh-jump-key"], "jump_key", _SSH,
           "private key for the bastion (default: the SSH agent / ~/.ssh)", metavar="FILE"),
    Option(["--ssh-timeout"], "ssh_timeout", _SSH, "wait this long for SSH (default: 600)",
           metavar="SECONDS", type=float),
    Option(["--console-timeout"], "console_timeout", _SSH,
           "wait this long for host key fingerprints on the console (default: 600)",
           metavar="SECONDS", type=float),
    Option(["--ssh-host-key-fingerprint"], "host_key_fingerprints", _SSH,
           "accept only this host key (repeatable); skips the console",
           metavar="SHA256:…", action="append"),
    Option(["--ssh-trust-on-first-use"], "trust_on_first_use", _SSH,
           "accept the host key the instance first presents, unverified", action="store_true"),

    Option(["--ami-name"], "image_name", _AMI,
           "name template: {amifile} {key} {build_id} {timestamp} {date} {label[NAME]} "
           "(default: {amifile}-{timestamp})", metavar="TEMPLATE"),
    Option(["--ami-description"], "image_description", _AMI, metavar="TEMPLATE"),
    Option(["--ami-tag"], "image_tags", _AMI,
           "extra tag on the final AMI and its snapshots (repeatable)", metavar="KEY=VALUE",
           action="append", convert=functools.partial(key_values, flag="--ami-tag")),
    Option(["--copy-to-region"], "copy_regions", _AMI, "copy the final AMI there (repeatable)",
           metavar="REGION", action="append"),
    Option(["--encrypt"], "encrypt", _AMI, "encrypt the root volume (and so the AMIs)",
           action="store_true"),
    Option(["--kms-key-id"], "kms_key_id", _AMI, "KMS key for --encrypt (default: aws/ebs)",
           metavar="KEY"),
    Option(["--share-with"], "share_accounts", _AMI,
           "grant launch permission to this account (repeatable)", metavar="ACCOUNT",
           action="append"),
    Option(["--force-deregister"], "force_deregister", _AMI,
           "deregister an existing AMI of the same name (and its snapshots) first",
           action="store_true"),
)
"""The ec2 target's own flags (``amic build --target ec2``, ``amic launch``)."""

VALUE_NAMES = ("on_error",)
"""Values the target reads that the build command defines (``--on-error``), not this table."""


def aws_options_from_values(values: Mapping[str, object]) -> aws.AwsOptions:
    return aws.options_from_env(**given(values, AWS_OPTIONS))


def options_from_values(values: Mapping[str, object]) -> Ec2Options:
    """``Ec2Options`` from ``{dest: value}`` of both tables (absent or None: the default).

    Values are already typed (``--ssh-port`` an int); what the table converts
    (``--expire-after``, ``--ami-tag``) and the combinations are checked here.
    """
    fields = given(values, EC2_OPTIONS)
    if values.get("on_error") is not None:
        fields["on_error"] = values["on_error"]
    opts = Ec2Options(aws=aws_options_from_values(values), **fields)
    if opts.trust_on_first_use and opts.host_key_fingerprints:
        raise UsageError("--ssh-trust-on-first-use and --ssh-host-key-fingerprint exclude each other")
    for cidr in opts.ssh_cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise UsageError(f"--ssh-cidr {cidr!r}: not a CIDR") from None
    return opts

"""The ec2 target's option table: every flag of ``--target ec2`` and the AWS commands, as data.

These rows are the only list of the ec2 flags: ``amic.cli.ec2`` adds them to
``amic build``, ``amic launch``, ``amic gc`` and ``amic ami`` (through
``amic.cli.options``), and :func:`amic.targets.ec2.options.options_from_values`
turns what was given back into options; the value parsers the rows name
(:func:`parse_duration`, :func:`key_values`) are here too. Defaults are written
here alone, one per row; the options classes take theirs from the rows
(:func:`amic.targets.defaults`), and so does the table in docs/ec2.md
(``tools/option-table``). Every ``amic`` start reads this module, so it
imports nothing heavy (the options classes are attrs classes, whose creation
and imports cost tens of milliseconds).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence

from amic.errors import UsageError
from amic.targets import Option

RETRY_MODES = ("standard", "adaptive", "legacy")
"""botocore's retry modes (``--retry-mode``, ``AWS_RETRY_MODE``)."""


def parse_duration(text: str) -> dt.timedelta:
    """``90m``, ``4h``, ``2d``, ``1w``, ``3600`` (seconds) as a timedelta."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    try:
        if text and text[-1] in units:
            return dt.timedelta(seconds=float(text[:-1]) * units[text[-1]])
        return dt.timedelta(seconds=float(text))
    except ValueError:
        raise UsageError(f"duration {text!r}: expected a number with s, m, h, d or w") from None


def key_values(items: Sequence[str], flag: str) -> dict[str, str]:
    """``KEY=VALUE`` words as a dict; UsageError naming ``flag`` for any other word."""
    out = {}
    for item in items:
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise UsageError(f"{flag} {item!r}: expected KEY=VALUE")
        out[k] = v
    return out


def type_list(values: Sequence[str] | str, flag: str = "--spot-instance-type") -> tuple[str, ...]:
    """Instance types given as ``T,T`` (and, repeatable flags, several times) as one tuple."""
    out: list[str] = []
    for text in [values] if isinstance(values, str) else values:
        types = [t.strip() for t in text.split(",")]
        if not all(types):
            raise UsageError(f"{flag} {text!r}: expected TYPE[,TYPE...]")
        out += types
    return tuple(out)


def arch_list(text: str) -> str:
    """``x86_64``, ``arm64`` or both comma-separated (argparse ``type``: a bad one exits 2)."""
    import argparse

    words = [w.strip() for w in text.split(",")]
    if not all(w in ("x86_64", "amd64", "arm64", "aarch64") for w in words):
        raise argparse.ArgumentTypeError(f"{text!r}: expected x86_64, arm64 or x86_64,arm64")
    return text


def spot_price(text: str) -> str:
    """``auto`` (EC2's cap: the on-demand price) or a positive price in USD per hour."""
    try:
        ok = text == "auto" or float(text) > 0
    except ValueError:
        ok = False
    if not ok:
        raise UsageError(f"--spot-price {text!r}: expected auto or a price per hour (0.05)")
    return text


def policy_file(path: str) -> str:
    """``--temporary-iam-instance-profile FILE``: a policy document, or a list of statements
    (Packer's ``Statement`` blocks), as the JSON text of a document; UsageError otherwise."""
    import json
    from pathlib import Path

    flag = "--temporary-iam-instance-profile"
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"{flag} {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{flag} {path}: not JSON: {exc}") from None
    if isinstance(data, list):
        data = {"Version": "2012-10-17", "Statement": data}
    if not isinstance(data, dict) or not isinstance(data.get("Statement"), list) \
            or not data["Statement"]:
        raise UsageError(f"{flag} {path}: expected a policy document or a list of statements")
    return json.dumps(data)


# -- the option table -------------------------------------------------------------------

_AWS = "AWS access (default: the standard boto3 chain)"
_INSTANCE = "ec2 target: the build instance"
_SSH = "ec2 target: SSH"
_AMI = "ec2 target: the final AMI"

BUILD = ("build",)
"""Rows only ``amic build`` uses: ``amic launch`` makes no AMI and resolves no base, so
it reads neither the AMI's name, tags, copies and shares nor ``--arch``."""

AWS_OPTIONS: tuple[Option, ...] = (
    Option(["--region"], "region", _AWS, "AWS region", unset="AWS_REGION / the profile's"),
    Option(["--profile"], "profile", _AWS,
           "named profile from ~/.aws/config", unset="AWS_PROFILE"),
    Option(["--endpoint-url"], "endpoint_url", _AWS,
           "EC2 endpoint (normally set with AWS_ENDPOINT_URL_EC2 / AWS_ENDPOINT_URL)",
           metavar="URL"),
    Option(["--retry-mode"], "retry_mode", _AWS,
           "botocore retry mode", choices=RETRY_MODES, default="standard",
           unset="AWS_RETRY_MODE"),
    Option(["--max-attempts"], "max_attempts", _AWS,
           "attempts per API call, throttling included", metavar="N", type=int, default=10,
           unset="AWS_MAX_ATTEMPTS"),
)
"""How to reach AWS (:class:`~amic.targets.ec2.session.AwsOptions`): every ec2 command has them."""

EC2_OPTIONS: tuple[Option, ...] = (
    Option(["--bake"], "bake", _INSTANCE,
           "where the image is made: on a build instance over SSH, or on this machine's "
           "local target, its disk uploaded with the EBS direct APIs (docs/ec2.md)",
           choices=("instance", "local"), default="instance", commands=BUILD),
    Option(["--instance-type"], "instance_type", _INSTANCE,
           "instance type, or a comma list tried in order while EC2 lacks capacity",
           metavar="TYPE[,TYPE...]", default="t3.micro"),
    Option(["--spot-price"], "spot_price", _INSTANCE,
           "run on spot (Packer spot_price): auto caps at the on-demand price; falls back "
           "to on-demand when no spot capacity is there", metavar="auto|PRICE",
           convert=spot_price, unset="on-demand"),
    Option(["--spot-instance-type"], "spot_instance_types", _INSTANCE,
           "spot types to try, in order (Packer spot_instance_types; repeatable)",
           metavar="TYPE[,TYPE...]", action="append", convert=type_list,
           unset="the --instance-type list"),
    Option(["--arch"], "arch", _INSTANCE,
           "architecture of the base image; several (x86_64,arm64): a build each, in parallel",
           metavar="ARCH[,ARCH]", type=arch_list, unset="from the instance type",
           commands=BUILD),
    Option(["--volume-size"], "volume_size", _INSTANCE, "root volume size",
           metavar="GIB", type=int, unset="the image's"),
    Option(["--volume-type"], "volume_type", _INSTANCE, "root volume type",
           unset="the image's; gp3 when another root volume flag is given"),
    Option(["--iops"], "iops", _INSTANCE, "root volume IOPS (gp3, io1, io2)", metavar="N",
           type=int, unset="the volume type's"),
    Option(["--throughput"], "throughput", _INSTANCE, "root volume throughput (gp3)",
           metavar="MIB_S", type=int, unset="the volume type's"),
    Option(["--launch-volume"], "launch_volumes", _INSTANCE,
           "an extra volume of the build instance (repeatable), included in the AMI: "
           "device=/dev/sdf,size=GIB[,type=,iops=,throughput=,encrypted=true,kms-key-id=,"
           "snapshot-id=,delete-on-termination=false]",
           metavar="device=…,size=…", action="append"),
    Option(["--run-tag"], "run_tags", _INSTANCE,
           "extra tag on the build instance, at launch (repeatable)", metavar="KEY=VALUE",
           action="append", convert=functools.partial(key_values, flag="--run-tag")),
    Option(["--run-volume-tag"], "run_volume_tags", _INSTANCE,
           "extra tag on the build instance's volumes, at launch (repeatable)",
           metavar="KEY=VALUE", action="append",
           convert=functools.partial(key_values, flag="--run-volume-tag")),
    Option(["--shutdown-behavior"], "shutdown_behavior", _INSTANCE,
           "what a shutdown from inside the instance does", choices=("terminate", "stop"),
           default="terminate"),
    Option(["--subnet"], "subnet_id", _INSTANCE, "launch into this subnet", metavar="SUBNET_ID"),
    Option(["--subnet-filter"], "subnet_filter", _INSTANCE,
           "launch into the subnet with the most free addresses among those tagged so "
           "(Packer subnet_filter; repeatable: all must match)", metavar="TAG=VALUE",
           action="append", convert=functools.partial(key_values, flag="--subnet-filter")),
    Option(["--availability-zone"], "availability_zone", _INSTANCE,
           "launch in this zone (Packer availability_zone)", metavar="ZONE",
           unset="EC2's choice or the subnet's"),
    Option(["--vpc"], "vpc_id", _INSTANCE,
           "VPC of the temporary security group",
           metavar="VPC_ID", unset="the subnet's or the default VPC"),
    Option(["--security-group"], "security_group_ids", _INSTANCE,
           "use this security group instead of a temporary one (repeatable)",
           metavar="SG_ID", action="append"),
    Option(["--ssh-cidr"], "ssh_cidrs", _INSTANCE,
           "who may reach port 22 through the temporary group (repeatable)",
           metavar="CIDR", action="append",
           unset="this machine's public address, from checkip.amazonaws.com"),
    Option(["--public-ip"], "associate_public_ip", _INSTANCE,
           "give the instance a public address",
           action="store_true", unset="the subnet's setting"),
    Option(["--no-public-ip"], "associate_public_ip", _INSTANCE, action="store_false"),
    Option(["--iam-instance-profile"], "iam_instance_profile", _INSTANCE,
           "instance profile for INIT scripts", metavar="NAME|ARN"),
    Option(["--temporary-iam-instance-profile"], "temporary_iam_policy", _INSTANCE,
           "give the instance a role made for the build, with this policy (a JSON document "
           "or list of statements), deleted after it (Packer "
           "temporary_iam_instance_profile_policy_document)", metavar="POLICY_FILE",
           convert=policy_file),
    Option(["--key-type"], "key_type", _INSTANCE,
           "temporary key pair type (rsa for images without ed25519 support)",
           choices=("ed25519", "rsa"), default="ed25519"),
    Option(["--expire-after"], "expire_after", _INSTANCE,
           "temporary resources carry amic:expires = now + this; `amic gc` removes "
           "them afterwards if a build could not",
           metavar="DURATION", field="ttl", convert=parse_duration, default="4h"),
    Option(["--poll-interval"], "poll_interval", _INSTANCE,
           "waiter delay between checks", metavar="SECONDS", type=float, default=5.0),
    Option(["--instance-timeout"], "instance_timeout", _INSTANCE,
           "wait this long for an instance to run/stop/terminate",
           metavar="SECONDS", type=float, default=900.0),
    Option(["--image-timeout"], "image_timeout", _INSTANCE,
           "wait this long for an image to become available",
           metavar="SECONDS", type=float, default=3600.0),

    Option(["--ssh-user"], "ssh_user", _SSH,
           "login user",
           unset="the base image's: admin, ubuntu, ec2-user"),
    Option(["--ssh-host"], "ssh_host", _SSH,
           "connect here instead of the instance's address (port forwarding, private setups)"),
    Option(["--ssh-port"], "ssh_port", _SSH, type=int, default=22),
    Option(["--ssh-interface"], "ssh_interface", _SSH,
           "which address of the instance to use",
           choices=("public-ip", "private-ip", "public-dns", "private-dns"), default="public-ip"),
    Option(["--ssh-jump-host"], "jump_host", _SSH, "reach the instance through this bastion",
           metavar="[USER@]HOST[:PORT]"),
    Option(["--ssh-jump-key"], "jump_key", _SSH,
           "private key for the bastion", metavar="FILE",
           unset="the SSH agent / ~/.ssh"),
    Option(["--ssh-timeout"], "ssh_timeout", _SSH, "wait this long for SSH",
           metavar="SECONDS", type=float, default=600.0),
    Option(["--console-timeout"], "console_timeout", _SSH,
           "wait this long for host key fingerprints on the console",
           metavar="SECONDS", type=float, default=600.0),
    Option(["--ssh-host-key-fingerprint"], "host_key_fingerprints", _SSH,
           "accept only this host key (repeatable); skips the console",
           metavar="SHA256:…", action="append"),
    Option(["--ssh-trust-on-first-use"], "trust_on_first_use", _SSH,
           "accept the host key the instance first presents, unverified", action="store_true"),

    Option(["--ami-name"], "image_name", _AMI,
           "name template: {name} {amifile} {key} {build_id} {stamp} {timestamp} {date} "
           "{label[NAME]}",
           metavar="TEMPLATE", default="{name}-{key}-{stamp}-{build_id}", commands=BUILD),
    Option(["--ami-description"], "image_description", _AMI, metavar="TEMPLATE",
           default="{name}: built by amic from {file} (key {key})", commands=BUILD),
    Option(["--ami-tag"], "image_tags", _AMI,
           "extra tag on the final AMI and its snapshots (repeatable)", metavar="KEY=VALUE",
           action="append", convert=functools.partial(key_values, flag="--ami-tag"),
           commands=BUILD),
    Option(["--snapshot-tag"], "snapshot_tags", _AMI,
           "extra tag on the final AMI's snapshots only; wins over --ami-tag (repeatable)",
           metavar="KEY=VALUE", action="append",
           convert=functools.partial(key_values, flag="--snapshot-tag"), commands=BUILD),
    Option(["--ami-volume"], "ami_volumes", _AMI,
           "a block device mapping of the final AMI (repeatable): device=/dev/sdg,size=GIB"
           "[,type=,iops=,throughput=,encrypted=true,kms-key-id=,snapshot-id=] or "
           "device=/dev/sdh,virtual-name=ephemeral0 or device=/dev/sdi,no-device",
           metavar="device=…", action="append", commands=BUILD),
    Option(["--ena-support"], "ena_support", _AMI, "mark the AMI ENA-capable",
           action="store_true", unset="the base image's", commands=BUILD),
    Option(["--sriov-support"], "sriov_support", _AMI,
           "mark the AMI for Intel 82599 VF enhanced networking",
           action="store_true", unset="the base image's", commands=BUILD),
    Option(["--boot-mode"], "boot_mode", _AMI, "boot mode of the AMI",
           choices=("legacy-bios", "uefi", "uefi-preferred"), unset="the base image's",
           commands=BUILD),
    Option(["--tpm-support"], "tpm_support", _AMI, "NitroTPM on instances of the AMI",
           choices=("v2.0",), commands=BUILD),
    Option(["--imds-support"], "imds_support", _AMI,
           "instances of the AMI get IMDSv2 only", choices=("v2.0",), commands=BUILD),
    Option(["--deprecate-at"], "deprecate_at", _AMI,
           "deprecate the AMI (and its copies) at this UTC time: 2027-01-31T00:00:00Z, "
           "or after a duration: 90d", metavar="TIME|DURATION", commands=BUILD),
    Option(["--copy-to-region"], "copy_regions", _AMI,
           "copy the final AMI there, encrypted with KMS when given; copies run in "
           "parallel (repeatable)",
           metavar="REGION[:KMS]", action="append", commands=BUILD),
    Option(["--region-kms-key"], "region_kms_keys", _AMI,
           "KMS key of the copy in REGION (repeatable)", metavar="REGION=KEY",
           action="append", convert=functools.partial(key_values, flag="--region-kms-key"),
           commands=BUILD),
    Option(["--encrypt"], "encrypt", _AMI, "encrypt the root volume (and so the AMIs)",
           action="store_true"),
    Option(["--kms-key-id"], "kms_key_id", _AMI, "KMS key for --encrypt",
           metavar="KEY", unset="aws/ebs"),
    Option(["--share-with"], "share_accounts", _AMI,
           "both --ami-user and --snapshot-user (repeatable)", metavar="ACCOUNT",
           action="append", commands=BUILD),
    Option(["--ami-user"], "ami_users", _AMI,
           "grant launch permission to this account (repeatable)", metavar="ACCOUNT",
           action="append", commands=BUILD),
    Option(["--snapshot-user"], "snapshot_users", _AMI,
           "grant create-volume permission on the snapshots to this account (repeatable)",
           metavar="ACCOUNT", action="append", commands=BUILD),
    Option(["--ami-group"], "ami_groups", _AMI, "make the AMI public", choices=("all",),
           action="append", commands=BUILD),
    Option(["--ami-org-arn"], "ami_org_arns", _AMI,
           "grant launch permission to this AWS Organization (repeatable)",
           metavar="ARN", action="append", commands=BUILD),
    Option(["--ami-ou-arn"], "ami_ou_arns", _AMI,
           "grant launch permission to this organizational unit (repeatable)",
           metavar="ARN", action="append", commands=BUILD),
    Option(["--force-deregister"], "force_deregister", _AMI,
           "deregister an existing AMI of the same name first",
           action="store_true", commands=BUILD),
    Option(["--force-delete-snapshot"], "force_delete_snapshot", _AMI,
           "with --force-deregister: delete its snapshots at once (else `amic gc` collects "
           "them)", action="store_true", commands=BUILD),
    Option(["--skip-create-ami"], "skip_create_ami", _AMI,
           "Packer's skip_create_ami: provision and test only. Launches from the base, "
           "runs every INIT and makes no AMI and no snapshot; nothing cached is looked up, "
           "so an existing AMI is never the answer (a --checkpoint other than none is "
           "refused)", action="store_true", commands=BUILD),
)
"""The ec2 target's own flags (``amic build --target ec2``, ``amic launch``)."""

VALUE_NAMES = ("on_error",)
"""Values the target reads that the build command defines (``--on-error``), not this table."""

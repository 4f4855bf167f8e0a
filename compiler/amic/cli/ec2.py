"""EC2 commands and options: ``amic gc``, ``amic ami ls|prune``, ``amic launch``.

Registered by ``amic.cli.main`` through :func:`add_ec2_parsers`; the ``build``
subcommand adds the ec2 target's options with :func:`add_ec2_build_options`
and makes the target with ``Ec2Target.from_args(args)``. boto3 and paramiko
are imported inside the handlers only.
"""

from __future__ import annotations

import argparse
import json
import sys

from amic.errors import UsageError

# -- options shared by build, launch, gc, ami -----------------------------------------

def add_aws_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("AWS access (default: the standard boto3 chain)")
    g.add_argument("--region", help="AWS region (default: AWS_REGION / the profile's)")
    g.add_argument("--profile", help="named profile from ~/.aws/config (default: AWS_PROFILE)")
    g.add_argument("--endpoint-url", metavar="URL",
                   help="EC2 endpoint (normally set with AWS_ENDPOINT_URL_EC2 / AWS_ENDPOINT_URL)")
    g.add_argument("--retry-mode", choices=["standard", "adaptive", "legacy"],
                   help="botocore retry mode (default: AWS_RETRY_MODE or standard)")
    g.add_argument("--max-attempts", type=int, metavar="N",
                   help="attempts per API call, throttling included (default: AWS_MAX_ATTEMPTS or 10)")


def add_ec2_build_options(parser: argparse.ArgumentParser, *, aws_options: bool = True) -> None:
    """Options of ``--target ec2`` (for ``amic build`` and ``amic launch``)."""
    if aws_options:
        add_aws_options(parser)
    g = parser.add_argument_group("ec2 target: the build instance")
    g.add_argument("--instance-type", default="t3.micro", help="default: t3.micro")
    g.add_argument("--arch", choices=["x86_64", "arm64"],
                   help="architecture of the base image (default: from the instance type)")
    g.add_argument("--volume-size", type=int, metavar="GIB", help="root volume size (default: the image's)")
    g.add_argument("--volume-type", default="gp3", help="root volume type (default: gp3)")
    g.add_argument("--subnet", dest="subnet_id", metavar="SUBNET_ID", help="launch into this subnet")
    g.add_argument("--vpc", dest="vpc_id", metavar="VPC_ID",
                   help="VPC of the temporary security group (default: the subnet's or the default VPC)")
    g.add_argument("--security-group", dest="security_group_ids", action="append", default=[],
                   metavar="SG_ID", help="use this security group instead of a temporary one (repeatable)")
    g.add_argument("--ssh-cidr", dest="ssh_cidrs", action="append", default=[], metavar="CIDR",
                   help="who may reach port 22 through the temporary group (repeatable; default: "
                   "this machine's public address, from checkip.amazonaws.com)")
    g.add_argument("--public-ip", dest="associate_public_ip", action="store_true", default=None,
                   help="give the instance a public address (default: the subnet's setting)")
    g.add_argument("--no-public-ip", dest="associate_public_ip", action="store_false")
    g.add_argument("--iam-instance-profile", metavar="NAME|ARN", help="instance profile for INIT scripts")
    g.add_argument("--key-type", choices=["ed25519", "rsa"], default="ed25519",
                   help="temporary key pair type (rsa for images without ed25519 support)")
    g.add_argument("--expire-after", default="4h", metavar="DURATION",
                   help="temporary resources carry amic:expires = now + this; `amic gc` removes "
                   "them afterwards if a build could not (default: 4h)")
    g.add_argument("--poll-interval", type=float, default=5.0, metavar="SECONDS",
                   help="waiter delay between checks (default: 5)")
    g.add_argument("--instance-timeout", type=float, default=900, metavar="SECONDS",
                   help="wait this long for an instance to run/stop/terminate (default: 900)")
    g.add_argument("--image-timeout", type=float, default=3600, metavar="SECONDS",
                   help="wait this long for an image to become available (default: 3600)")

    g = parser.add_argument_group("ec2 target: SSH")
    g.add_argument("--ssh-user", help="login user (default: the base image's: admin, ubuntu, ec2-user)")
    g.add_argument("--ssh-host", help="connect here instead of the instance's address "
                   "(port forwarding, private setups)")
    g.add_argument("--ssh-port", type=int, default=22, help="default: 22")
    g.add_argument("--ssh-interface", default="public-ip",
                   choices=["public-ip", "private-ip", "public-dns", "private-dns"],
                   help="which address of the instance to use (default: public-ip)")
    g.add_argument("--ssh-jump-host", dest="jump_host", metavar="[USER@]HOST[:PORT]",
                   help="reach the instance through this bastion")
    g.add_argument("--ssh-jump-key", dest="jump_key", metavar="FILE",
                   help="private key for the bastion (default: the SSH agent / ~/.ssh)")
    g.add_argument("--ssh-timeout", type=float, default=600, metavar="SECONDS",
                   help="wait this long for SSH (default: 600)")
    g.add_argument("--console-timeout", type=float, default=600, metavar="SECONDS",
                   help="wait this long for host key fingerprints on the console (default: 600)")
    g.add_argument("--ssh-host-key-fingerprint", dest="host_key_fingerprints", action="append",
                   default=[], metavar="SHA256:…",
                   help="accept only this host key (repeatable); skips the console")
    g.add_argument("--ssh-trust-on-first-use", dest="trust_on_first_use", action="store_true",
                   help="accept the host key the instance first presents, unverified")

    g = parser.add_argument_group("ec2 target: the final AMI")
    g.add_argument("--ami-name", dest="image_name", default="{amifile}-{timestamp}",
                   metavar="TEMPLATE", help="name template: {amifile} {key} {build_id} {timestamp} "
                   "{date} {label[NAME]} (default: {amifile}-{timestamp})")
    g.add_argument("--ami-description", dest="image_description",
                   default="built by amic from {amifile} (key {key})", metavar="TEMPLATE")
    g.add_argument("--ami-tag", dest="image_tags", action="append", default=[], metavar="KEY=VALUE",
                   help="extra tag on the final AMI and its snapshots (repeatable)")
    g.add_argument("--copy-to-region", dest="copy_regions", action="append", default=[],
                   metavar="REGION", help="copy the final AMI there (repeatable)")
    g.add_argument("--encrypt", action="store_true", help="encrypt the root volume (and so the AMIs)")
    g.add_argument("--kms-key-id", metavar="KEY", help="KMS key for --encrypt (default: aws/ebs)")
    g.add_argument("--share-with", dest="share_accounts", action="append", default=[],
                   metavar="ACCOUNT", help="grant launch permission to this account (repeatable)")
    g.add_argument("--force-deregister", action="store_true",
                   help="deregister an existing AMI of the same name (and its snapshots) first")


def aws_options_from_args(args):
    from amic.targets.ec2 import session as aws

    return aws.options_from_env(profile=getattr(args, "profile", None),
                                region=getattr(args, "region", None),
                                endpoint_url=getattr(args, "endpoint_url", None),
                                retry_mode=getattr(args, "retry_mode", None),
                                max_attempts=getattr(args, "max_attempts", None))


def _kv(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise UsageError(f"{flag} {item!r}: expected KEY=VALUE")
        out[k] = v
    return out


def options_from_args(args):
    """``Ec2Options`` from parsed ``add_ec2_build_options`` arguments (missing ones: defaults)."""
    from amic.targets.ec2 import session as aws
    from amic.targets.ec2.target import Ec2Options

    defaults = Ec2Options()
    fields = {}
    for name in ("instance_type", "arch", "volume_size", "volume_type", "subnet_id", "vpc_id",
                 "security_group_ids", "ssh_cidrs", "associate_public_ip", "iam_instance_profile",
                 "ssh_user", "ssh_host", "ssh_port", "ssh_interface", "ssh_timeout",
                 "console_timeout", "trust_on_first_use", "host_key_fingerprints", "jump_host",
                 "jump_key", "key_type", "image_name", "image_description", "copy_regions",
                 "encrypt", "kms_key_id", "share_accounts", "force_deregister", "poll_interval",
                 "instance_timeout", "image_timeout", "on_error"):
        value = getattr(args, name, None)
        fields[name] = getattr(defaults, name) if value is None else value
    fields["image_tags"] = _kv(getattr(args, "image_tags", None) or [], "--ami-tag")
    fields["ttl"] = aws.parse_duration(getattr(args, "expire_after", None) or "4h")
    if fields["trust_on_first_use"] and fields["host_key_fingerprints"]:
        raise UsageError("--ssh-trust-on-first-use and --ssh-host-key-fingerprint exclude each other")
    for cidr in fields["ssh_cidrs"]:
        import ipaddress

        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise UsageError(f"--ssh-cidr {cidr!r}: not a CIDR") from None
    return Ec2Options(aws=aws_options_from_args(args), **fields)


def _target(args, **overrides):
    from amic.targets.ec2.target import Ec2Options, Ec2Target

    if hasattr(args, "instance_type"):
        return Ec2Target.from_args(args)
    return Ec2Target(options=Ec2Options(aws=aws_options_from_args(args), **overrides))


# -- gc ------------------------------------------------------------------------------

def cmd_gc(args) -> int:
    from amic.targets.ec2 import gc as ec2_gc

    target = _target(args)
    found = ec2_gc.find_leaks(target, build_id=args.build_id, ignore_expiry=args.force)
    if args.json:
        print(json.dumps([leak.to_json() for leak in found], indent=2))
    for leak in found:
        verb = "would remove" if args.dry_run else "removing"
        print(f"{verb} {leak.kind} {leak.id} (build {leak.build_id or '?'}, {leak.why})",
              file=sys.stderr)
    if not found:
        print("nothing to collect", file=sys.stderr)
        return 0
    if args.dry_run:
        return 0
    failures = ec2_gc.remove(target, found)
    for leak, err in failures:
        print(f"amic: warning: could not remove {leak.kind} {leak.id}: {err}", file=sys.stderr)
    return 1 if failures else 0


# -- ami ls / prune ---------------------------------------------------------------------

def cmd_ami_ls(args) -> int:
    from amic.targets import base as tb

    target = _target(args)
    images = list(target.list_images())
    if not args.all:
        images = [i for i in images if i.tags.get(tb.TAG_KIND, "final") == "final"]
    if args.json:
        print(json.dumps([{"id": i.id, "key": i.key, "kind": i.tags.get(tb.TAG_KIND),
                           "service": i.tags.get(tb.TAG_SERVICE),
                           "amifile": i.tags.get(tb.TAG_AMIFILE), "created": i.created,
                           "name": i.tags.get("Name"), "tags": dict(i.tags)} for i in images],
                         indent=2))
        return 0
    print(f"{'IMAGE':<22} {'KIND':<6} {'AMIFILE/SERVICE':<20} {'KEY':<13} {'CREATED':<25} NAME")
    for i in images:
        kind = i.tags.get(tb.TAG_KIND, "?")
        what = i.tags.get(tb.TAG_SERVICE) if kind == "layer" else i.tags.get(tb.TAG_AMIFILE)
        print(f"{i.id:<22} {kind:<6} {what or '-':<20} {(i.key or '-')[:12]:<13} "
              f"{i.created or '-':<25} {i.tags.get('Name', '')}")
    return 0


def cmd_ami_prune(args) -> int:
    from amic.targets.ec2 import session as aws
    from amic.targets.ec2 import gc as ec2_gc

    target = _target(args)
    older = aws.parse_duration(args.older_than) if args.older_than else None
    doomed = ec2_gc.prune_plan(list(target.list_images()), keep=args.keep, older_than=older,
                               everything=args.all)
    for img, why in doomed:
        verb = "would remove" if args.dry_run else "removing"
        print(f"{verb} {img.id} ({why})", file=sys.stderr)
    if not doomed:
        print("nothing to prune", file=sys.stderr)
    if args.dry_run:
        return 0
    failed = 0
    for img, _ in doomed:
        try:
            snaps = target.deregister(img.id)
            print(f"removed {img.id}" + (f" and {', '.join(snaps)}" if snaps else ""))
        except Exception as exc:  # noqa: BLE001 - report and go on with the rest
            failed += 1
            print(f"amic: warning: could not remove {img.id}: {exc}", file=sys.stderr)
    return 1 if failed else 0


# -- launch ----------------------------------------------------------------------------

def cmd_launch(args) -> int:
    from amic.targets.ec2 import launch as ec2_launch

    target = _target(args)
    return ec2_launch.launch_and_check(target, args.image, services=args.service, keep=args.keep,
                                       boot_timeout=args.boot_timeout, command=args.command)


def add_ec2_parsers(sub) -> None:
    p = sub.add_parser(
        "gc", help="remove EC2 resources that crashed or killed builds left behind",
        description="Find instances, key pairs, security groups and volumes tagged by amic "
        "whose amic:expires time has passed (or of one --build-id), and snapshots whose image "
        "is gone; remove them. Use --dry-run first.")
    add_aws_options(p)
    p.add_argument("--dry-run", "-n", action="store_true", help="only list what would go")
    p.add_argument("--build-id", metavar="ID", help="only resources of this build")
    p.add_argument("--force", action="store_true",
                   help="ignore amic:expires (with --build-id: remove a kept --on-error=abort build)")
    p.add_argument("--json", action="store_true", help="print what was found as JSON on stdout")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("ami", help="list and prune amic's AMIs on EC2 (cache layers and finals)")
    asub = p.add_subparsers(dest="ami_command", metavar="COMMAND", required=True)
    q = asub.add_parser("ls", help="list final AMIs (--all: layer checkpoints too)")
    add_aws_options(q)
    q.add_argument("--all", "-a", action="store_true", help="include layer checkpoints")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_ami_ls)
    q = asub.add_parser(
        "prune", help="deregister old AMIs and delete their snapshots",
        description="Keep the newest --keep final AMIs per Amifile and the layer checkpoints "
        "they were built from; remove the rest (only those older than --older-than, if given).")
    add_aws_options(q)
    q.add_argument("--keep", type=int, default=1, metavar="N",
                   help="final AMIs kept per Amifile (default: 1)")
    q.add_argument("--older-than", metavar="AGE", help="only remove AMIs older than this (30d, 12h)")
    q.add_argument("--all", action="store_true", help="remove every amic AMI")
    q.add_argument("--dry-run", "-n", action="store_true")
    q.set_defaults(func=cmd_ami_prune)

    p = sub.add_parser(
        "launch", help="start an instance from an AMI, check that it boots, tear it down",
        description="Launch an instance from a built AMI (id, or a final cache key) with extra "
        "services requested (instance tag amic:services, read by the boot hook), wait until "
        "the boot hook reports its result over SSH, print `amic status`, and terminate "
        "everything (unless --keep). Exit status: that of `amic status` on the instance.")
    p.add_argument("image", help="AMI id (ami-…) or cache key")
    p.add_argument("--service", "-s", action="append", default=[], metavar="SVC",
                   help="request an extra service at boot (repeatable), e.g. test")
    p.add_argument("--keep", action="store_true", help="leave the instance running; print how to reach it")
    p.add_argument("--boot-timeout", type=float, default=900, metavar="SECONDS",
                   help="wait this long for the boot hook (default: 900)")
    p.add_argument("--command", "-c", metavar="COMMAND",
                   help="also run COMMAND on the instance after boot (its exit status counts)")
    p.add_argument("--on-error", choices=["cleanup", "abort"], default="cleanup",
                   help=argparse.SUPPRESS)
    add_ec2_build_options(p)
    p.set_defaults(func=cmd_launch)


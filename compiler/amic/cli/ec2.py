"""EC2 commands and options: ``amic gc``, ``amic ami ls|prune``, ``amic launch``.

Registered by ``amic.cli.main`` through :func:`add_ec2_parsers`; the ``build``
subcommand adds the ec2 target's options with :func:`add_ec2_build_options`
and makes the target with ``Ec2Target.from_args(args)``. The options are the
target's own table (``amic.targets.ec2.flags``), added here as flags by
``amic.cli.options``. boto3 and paramiko are imported inside the handlers only.
"""

from __future__ import annotations

import argparse
import json
import sys

from amic.cli.common import count_argument, seconds_argument
from amic.cli.options import add_option_groups
from amic.cli.project import add_project_options
from amic.targets.ec2.flags import AWS_OPTIONS, EC2_OPTIONS, parse_duration

# -- options shared by build, launch, gc, ami -----------------------------------------

def add_aws_options(parser: argparse.ArgumentParser) -> None:
    add_option_groups(parser, AWS_OPTIONS)


def add_ec2_build_options(parser: argparse.ArgumentParser, *, aws_options: bool = True,
                          command: str = "build") -> None:
    """Options of ``--target ec2`` for ``command`` (``build`` or ``launch``: the rows it uses)."""
    if aws_options:
        add_aws_options(parser)
    add_option_groups(parser, EC2_OPTIONS, command)


def _target(args):
    from amic.targets.ec2.target import Ec2Target

    return Ec2Target.from_args(args)


# -- gc ------------------------------------------------------------------------------

def cmd_gc(args) -> int:
    from amic.targets.ec2 import gc as ec2_gc
    from amic.targets.ec2 import session as aws

    target = _target(args)
    seen = ec2_gc.survey(target, build_id=args.build_id, ignore_expiry=args.force)
    found = seen.leaks
    if args.json:
        print(json.dumps([leak.to_json() for leak in found], indent=2))
    for live in seen.live:
        print(f"live build {live.build_id} ({live.owner}; {live.how}; last heartbeat "
              f"{live.heartbeat or '-'}): {', '.join(live.resources)}", file=sys.stderr)
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
        print(f"amic: warning: could not remove {leak.kind} {leak.id}: {err}{aws.hint(err)}",
              file=sys.stderr)
    return 1 if failures else 0


# -- ami ls / prune ---------------------------------------------------------------------

def _project(args):
    """The project ``ami prune`` works on (``amic.cli.project``)."""
    from amic.cli.project import project_to_prune

    return project_to_prune(args)


def cmd_ami_ls(args) -> int:
    from amic import contract as tb

    target = _target(args)
    images = list(target.list_images())
    if not args.all:
        images = [i for i in images if i.tags.get(tb.TAG_KIND, "final") == "final"]
    if args.name or args.project or args.file:
        project = _project(args)
        images = [i for i in images if i.tags.get(tb.TAG_PROJECT) == project.id]
    if args.json:
        print(json.dumps([{"id": i.id, "key": i.key, "kind": i.tags.get(tb.TAG_KIND),
                           "project": i.tags.get(tb.TAG_NAME),
                           "project_id": i.tags.get(tb.TAG_PROJECT),
                           "service": i.tags.get(tb.TAG_SERVICE),
                           "amifile": i.tags.get(tb.TAG_AMIFILE), "created": i.created,
                           "name": i.tags.get("Name"), "tags": dict(i.tags)} for i in images],
                         indent=2))
        return 0
    print(f"{'IMAGE':<22} {'PROJECT':<16} {'PROJECT ID':<27} {'KIND':<6} {'SERVICE':<14} "
          f"{'KEY':<13} {'CREATED':<25} NAME")
    for i in images:
        kind = i.tags.get(tb.TAG_KIND, "?")
        svc = i.tags.get(tb.TAG_SERVICE) if kind == "layer" else "-"
        print(f"{i.id:<22} {i.tags.get(tb.TAG_NAME) or '-':<16} "
              f"{i.tags.get(tb.TAG_PROJECT) or '- (none)':<27} {kind:<6} {svc or '-':<14} "
              f"{(i.key or '-')[:12]:<13} {i.created or '-':<25} {i.tags.get('Name', '')}")
    return 0


def _in_use(ec2_gc, target, ids: list[str]) -> dict[str, str]:
    """``gc.in_use``; an API that cannot be asked stops the prune with a clear message."""
    import botocore.exceptions

    from amic.errors import BuildError
    from amic.targets.ec2 import session as aws

    try:
        return ec2_gc.in_use(target, ids)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise BuildError(f"could not check whether the AMIs are in use ({exc}){aws.hint(exc)}; "
                         "nothing was removed (--force removes without checking)") from exc


def cmd_ami_prune(args) -> int:
    from amic import contract
    from amic.targets.ec2 import gc as ec2_gc

    project = _project(args)
    name = project.label
    target = _target(args)
    older = parse_duration(args.older_than) if args.older_than else None
    doomed = ec2_gc.prune_plan(list(target.list_images()), keep=args.keep, project=project.id,
                               label=name, legacy_name=project.name if args.force else None,
                               older_than=older, everything=args.all)
    if doomed and not args.force:
        used = _in_use(ec2_gc, target, [img.id for img, _ in doomed])
        for img, _ in doomed:
            if img.id in used:
                print(f"keeping {img.id}: in use by {used[img.id]} (--force removes it)",
                      file=sys.stderr)
        doomed = [(img, why) for img, why in doomed if img.id not in used]
    verb = "would remove" if args.dry_run else "removing"
    for img, why in doomed:
        print(f"{verb} {img.id} ({why})", file=sys.stderr)
    if not doomed:
        print(f"nothing to prune of {name}", file=sys.stderr)
    if args.dry_run or not doomed:
        return 0
    finals = [img for img, _ in doomed
              if img.tags.get(contract.TAG_KIND, contract.KIND_FINAL) == contract.KIND_FINAL]
    if finals and not args.yes:
        if not sys.stdin.isatty():
            print(f"amic: not removing {len(finals)} final AMI(s) of {name} without --yes "
                  "(nothing was removed)", file=sys.stderr)
            return 1
        answer = input(f"remove {len(doomed)} AMI(s) of {name}, {len(finals)} of them final? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("amic: nothing removed", file=sys.stderr)
            return 1
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
        description="Find instances, key pairs, security groups, volumes and leases tagged by "
        "amic whose build died (its owner process on this host is gone, or its heartbeat "
        "stopped) or whose amic:expires time has passed (or of one --build-id), and snapshots "
        "whose image is gone; remove them. Builds still running are listed (owner, last "
        "heartbeat) and left alone. Use --dry-run first.")
    add_aws_options(p)
    p.add_argument("--dry-run", "-n", action="store_true",
                   help="only list what would go (and the builds still running)")
    p.add_argument("--build-id", metavar="ID", help="only resources of this build")
    p.add_argument("--force", action="store_true",
                   help="ignore amic:expires and whether the build runs (with --build-id: "
                   "remove a kept --on-error=abort build)")
    p.add_argument("--json", action="store_true",
                   help="print what would go as JSON on stdout (running builds stay on stderr)")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("ami", help="list and prune amic's AMIs on EC2 (cache layers and finals)")
    asub = p.add_subparsers(dest="ami_command", metavar="COMMAND", required=True)
    q = asub.add_parser("ls", help="list final AMIs (--all: layer checkpoints too)")
    add_aws_options(q)
    q.add_argument("--all", "-a", action="store_true", help="include layer checkpoints")
    add_project_options(q, "only this project's")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_ami_ls)
    q = asub.add_parser(
        "prune", help="deregister a project's old AMIs and delete their snapshots",
        description="Of one project's AMIs (tag amic:project: the project of ./Amifile or "
        "--file, named by its NAME or --name; or --project ID from `amic ami ls`; never "
        "another project's, whatever its name): keep the newest --keep "
        "final keys and the layer checkpoints any kept image was built from, one image per "
        "key (the newest); remove the rest (only those older than --older-than, if given). "
        "An AMI an instance (pending to stopped), a launch template version or an Auto "
        "Scaling launch configuration uses, or one shared with other accounts, stays unless "
        "--force. Removing final AMIs asks first (on a terminal) or needs --yes.")
    add_aws_options(q)
    add_project_options(q, "the project to prune", default_file=True)
    q.add_argument("--keep", type=count_argument, default=1, metavar="N",
                   help="final AMIs kept (default: 1)")
    q.add_argument("--older-than", metavar="AGE", help="only remove AMIs older than this (30d, 12h)")
    q.add_argument("--all", action="store_true", help="remove every AMI of the project")
    q.add_argument("--force", action="store_true",
                   help="also remove AMIs in use or shared with other accounts, and select "
                   "images without amic:project (built before it) by their amic:name alone")
    q.add_argument("--yes", "-y", action="store_true", help="remove final AMIs without asking")
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
    p.add_argument("--boot-timeout", type=seconds_argument, default=900, metavar="SECONDS",
                   help="wait this long for the boot hook (default: 900)")
    p.add_argument("--command", "-c", metavar="COMMAND",
                   help="also run COMMAND on the instance after boot (its exit status counts)")
    p.add_argument("--on-error", choices=["cleanup", "abort"], default="cleanup",
                   help=argparse.SUPPRESS)
    add_ec2_build_options(p, command="launch")
    p.set_defaults(func=cmd_launch)


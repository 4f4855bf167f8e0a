"""``amic compile``: the stage2 tarball, its scripts (``--print``) or its plan (``--json``)."""

from __future__ import annotations

import argparse
import json
import sys

from amic.cli.common import (add_amifile_argument, add_build_arg_option, add_context_option,
                             load_plan, warn)


def register(sub) -> None:
    p = sub.add_parser("compile", help="write the stage2 tarball, or show its scripts or plan",
                       description="Compile an Amifile into the stage2 tarball. The tarball is "
                       "byte-for-byte reproducible: same inputs, same bytes.")
    add_amifile_argument(p)
    p.add_argument("-o", "--output", default="stage2.tar", metavar="FILE",
                   help="where to write the tarball ('-' for stdout; default: stage2.tar); a "
                   "device or FIFO is written in place (a FIFO's reader is waited for 10s), a "
                   "file replaced atomically; a symbolic link is followed only when root or "
                   "you own it")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--print", action="store_true",
                      help="print every generated script with a header naming service and phase")
    mode.add_argument("--json", action="store_true",
                      help="print the plan: services in order, requirements, layer keys, final key")
    add_build_arg_option(p)
    add_context_option(p)
    p.add_argument("--base", metavar="IMAGE_ID", dest="base_image_id",
                   help="the image id FROM resolves to on the target (as `amic build --dry-run "
                   "--json` prints it in base_image_id): the keys chain it as a build's do, so "
                   "the tarball is byte for byte the one that build installs and the final key "
                   "is the one it prints (default: no image id; keys then differ from a build's)")
    p.set_defaults(func=cmd_compile)


def cmd_compile(args: argparse.Namespace) -> int:
    from amic.compile import artifact

    from amic.fsutil import check_output, open_output

    if not (args.json or args.print) and args.output != "-":
        check_output(args.output)  # before the work: a typo in -o costs nothing
    plan = load_plan(args.amifile, args.build_arg, base_image_id=args.base_image_id,
                     context=args.context)
    if plan.missing_args:
        warn(f"ARG without a value or default: {', '.join(plan.missing_args)} "
             "(pass --build-arg NAME=VALUE or set it in the environment)")
    if args.json:
        sys.stdout.write(json.dumps(plan.to_json(), indent=2) + "\n")   # one write, not 100k
        return 0
    if args.print:
        sys.stdout.write(artifact.print_text(plan))
        return 0
    # Streamed: the tarball of a large Amifile is never held in memory whole.
    if args.output == "-":
        artifact.write_artifact(plan, sys.stdout.buffer)
        return 0
    with open_output(args.output) as out:
        size = artifact.write_artifact(plan, out)
    print(f"wrote {args.output} ({size} bytes, final key {plan.final_key[:12]})",
          file=sys.stderr)
    return 0

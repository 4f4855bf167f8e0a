"""``amic build``: argument parsing and output.

Import-light on purpose: the engine, the targets and the compiler are imported
inside the handler, and an unchanged build is answered by the build memo
(``amic.engine.memo.answer``) before any of them is imported; on ec2, once the
target confirmed it with two DescribeImages calls (``Ec2Target.confirm_memo``,
without boto3). Each target adds its own options (``add_ec2_build_options``,
``add_ssh_build_options``).
"""

from __future__ import annotations

import json
import sys

TARGET_HELP = ("where to build: local (root filesystems on this machine), ec2, or "
               "ssh://user@host[:port] (default: $AMIC_TARGET; else ec2 when AWS is configured in the "
               "environment or ~/.aws; else local)")


def register(sub) -> None:
    from amic.cli.common import (add_amifile_argument, add_build_arg_option, add_context_option,
                                 add_secret_options, path_argument)

    p = sub.add_parser(
        "build", help="bake an image: run each service's init, reusing cached layers",
        description="Build an image from an Amifile. Cached layers are reused (a layer is one "
        "service's init); a line per layer says CACHED or RUN, why it ran and how long it took. "
        "The final image id alone goes to stdout; everything else to stderr.")
    add_amifile_argument(p)
    p.add_argument("--target", metavar="TARGET", help=TARGET_HELP)
    p.add_argument("--name", metavar="NAME",
                   help="the project's image name (tag amic:name; default: NAME in the "
                   "Amifile, else its directory's name); an explicit name is also part of "
                   "the project's identity (tag amic:project, which ami ls/prune and "
                   "images/prune select on; docs/build.md, \"Project identity\")")
    add_build_arg_option(p)
    add_secret_options(p)
    add_context_option(p)
    p.add_argument("--no-cache", action="store_true",
                   help="run every layer even if it is cached (the results replace the cached "
                   "images under the same keys)")
    p.add_argument("--checkpoint", metavar="POLICY",
                   help="which layers to keep as reusable images: none, last, all, auto (when "
                   "init time since the last checkpoint exceeds a snapshot's cost), or service "
                   "names separated by commas; the last layer is always kept unless none "
                   "(default: the target's; local: all, ec2: auto, ssh: none). Given explicitly, "
                   "it is honoured when the image is cached too: checkpoints it asks for that an "
                   "earlier build skipped are made (the image stays)")
    p.add_argument("--on-error", choices=["cleanup", "abort", "ask"], default="cleanup",
                   help="abort: leave the failed machine for debugging and print how to reach it; "
                   "ask (Packer's -on-error=ask): on the terminal, clean up, abort or retry the "
                   "failed step (launching, waiting for SSH, uploading the stage2, an INIT, "
                   "prepare-image; ec2: creating the image, its attributes, a region copy; "
                   "no retry where a step cannot run again) (default: cleanup)")
    p.add_argument("--keep-going", action="store_true",
                   help="with several --arch: a failed build does not stop the others")
    p.add_argument("--debug", action="store_true",
                   help="Packer's -debug: pause until Enter before the launch, after every "
                   "layer and before the final image (needs a terminal)")
    p.add_argument("--progress", choices=["auto", "tty", "plain"], default="auto",
                   help="live status line (tty) or one line per event (plain: a timestamped "
                   "line when a step starts, and one every $AMIC_HEARTBEAT_SECONDS, default 30, "
                   "while it is silent); default: tty when stderr is a terminal")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only warnings, errors and the image id")
    p.add_argument("--dry-run", action="store_true",
                   help="resolve the base and say per layer CACHED or RUN (with the reason and "
                   "the image it would start from) and whether the final image exists; creates "
                   "and changes nothing (ec2: Describe* calls only); needs no SECRET value, "
                   "it names the secrets the build would need")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON on stdout instead of the bare image id")
    p.add_argument("--manifest", metavar="FILE", type=path_argument,
                   help="also write the JSON result (image id, keys, timings) to FILE")
    try:  # the ec2 target's options (region, subnet, AMI name, ...), when it is installed
        from amic.cli.ec2 import add_ec2_build_options
    except ImportError:
        pass
    else:
        add_ec2_build_options(p)
    from amic.cli.ssh import add_ssh_build_options

    add_ssh_build_options(p)
    p.set_defaults(func=cmd_build)


def _emit(args, result: dict) -> None:
    text = json.dumps(result, indent=2)
    if args.manifest:
        from amic.fsutil import write_output

        write_output(args.manifest, text + "\n")
    if args.json:
        print(text)
    else:
        print(result["image_id"])


def cmd_build(args) -> int:
    from amic.cli.common import build_args_from, secrets_from
    from amic.engine.progress import Reporter
    from amic.targets import MEMO, default_target_spec, get_target, split_spec

    _terminal_prompt(args)      # --on-error ask / --debug without a terminal: refused first
    if "," in (getattr(args, "arch", None) or ""):     # --arch x86_64,arm64: a build each
        from amic.cli import multiarch

        return multiarch.run(args, sys.argv[sys.argv.index("build") + 1:],
                             lambda result: _emit(args, result))
    build_args = build_args_from(args.build_arg)
    secrets = secrets_from(args.secret)
    if args.manifest:   # a typo in the path must cost nothing: checked before the build
        from amic.fsutil import check_output

        check_output(args.manifest)
    spec = args.target or default_target_spec()
    scheme, rest = split_spec(spec)
    if args.dry_run:
        return _dry_run(args, spec, build_args, secrets)
    reporter = Reporter(mode=args.progress, quiet=args.quiet)
    target = None
    if scheme in MEMO and not rest:     # a target with a build memo
        from amic.engine import memo as buildmemo

        result, target = buildmemo.answer(
            args.amifile, build_args, scheme, checkpoint=args.checkpoint,
            no_cache=args.no_cache, context=args.context, reporter=reporter,
            confirm=(lambda: get_target(spec, args)) if MEMO[scheme] else None)
        if result is not None:
            _emit(args, result)
            return 0
    target = target or get_target(spec, args)
    options = _build_options(args, build_args, secrets)
    resolved = None
    if target.keeps_images:
        from amic.engine.build import load_amifile

        resolved = load_amifile(options.amifile)
        _warn_without_identity(options, resolved)
    _emit(args, _full_build(target, options, reporter, resolved).to_json())
    return 0


def _full_build(target, options, reporter, resolved):
    from amic.engine.build import build
    from amic.errors import AmicError

    try:                       # build() gives the reporter the secret values first thing
        return build(target, options, reporter, resolved=resolved)
    except AmicError as exc:   # the message (a failed layer's last lines too) without secrets
        raise reporter.redact.error(exc) from None
    finally:
        reporter.close()


def _warn_without_identity(options, resolved) -> None:
    """Images without a project identity are never pruned without --force: say so, and how."""
    from amic import contract
    from amic.cli.project import NO_IDENTITY_HINT

    if contract.project_id(options.origin, options.name or resolved.name) is None:
        print("amic: warning: this project has no identity (tag amic:project), so `prune` and "
              f"`ami prune` select its images only with --force: {NO_IDENTITY_HINT}",
              file=sys.stderr)


def _build_options(args, build_args, secrets):
    from amic.cli.project import repo_origin
    from amic.engine.build import BuildOptions

    return BuildOptions(amifile=args.amifile, name=args.name, origin=repo_origin(args.amifile),
                        build_args=build_args,
                        context=args.context, secrets=secrets,
                        allow_missing_args=args.allow_missing_args, no_cache=args.no_cache,
                        checkpoint=args.checkpoint, on_error=args.on_error,
                        debug=args.debug, prompt=_terminal_prompt(args))


def _terminal_prompt(args):
    """What asks the user for ``--on-error ask`` and ``--debug``: the terminal on stdin, or
    a usage error (nobody to answer; Packer would wait forever)."""
    from amic.errors import UsageError

    if args.on_error != "ask" and not args.debug:
        return None
    if not sys.stdin.isatty():
        flag, instead = (("--on-error ask", "--on-error cleanup or abort") if args.on_error == "ask"
                         else ("--debug", "no --debug"))
        raise UsageError(f"{flag} asks on the terminal, and stdin is not one "
                         f"(use {instead} in scripts and CI)")

    def prompt(text: str) -> str:
        print(text, end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:        # end of input: nobody answers, so the safe default
            return ""
        return line
    return prompt


def _dry_run(args, spec: str, build_args, secrets) -> int:
    """``--dry-run``: the plan on stdout (text, or JSON with ``--json``); no memo, no build."""
    from amic.engine.dryrun import dry_run
    from amic.engine.progress import Reporter
    from amic.errors import AmicError
    from amic.targets import get_target

    target = get_target(spec, args)
    options = _build_options(args, build_args, secrets)
    reporter = Reporter(mode=args.progress, quiet=args.quiet)
    try:
        plan = dry_run(target, options, reporter)
    except AmicError as exc:
        raise reporter.redact.error(exc) from None
    finally:
        reporter.close()
    print(json.dumps(plan.to_json(), indent=2) if args.json else plan.text())
    return 0


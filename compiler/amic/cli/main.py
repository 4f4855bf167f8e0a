"""The ``amic`` command line: argument parsing, output and exit codes only.

Exit codes: 0 success; 1 a bad Amifile, lint findings at/above the threshold,
or a failed build; 2 a usage mistake; 130 interrupted (Ctrl-C / SIGTERM).
Heavy modules (boto3, paramiko, lark) are imported inside the handlers that
need them, so ``amic --help`` and an unchanged build start fast.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from amic import __version__
from amic.cli.common import add_amifile_argument, add_build_arg_option, load_plan, warn
from amic.errors import AmicError

EPILOG = """\
commands by task:
  write and check     amic lint, amic compile --print
  bake an image       amic build [--target local|ec2|ssh://user@host]
  inspect the cache   amic images, amic prune
docs: docs/language.md (Amifile), docs/lint-rules.md, docs/build.md, docs/ec2.md
"""


def cmd_compile(args: argparse.Namespace) -> int:
    from amic.compile import artifact

    plan = load_plan(args.amifile, args.build_arg)
    if plan.missing_args:
        warn(f"ARG without a value or default: {', '.join(plan.missing_args)} "
             "(pass --build-arg NAME=VALUE or set it in the environment)")
    if args.json:
        json.dump(plan.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if args.print:
        sys.stdout.write(artifact.print_text(plan))
        return 0
    data = artifact.artifact_bytes(plan)
    if args.output == "-":
        sys.stdout.buffer.write(data)
        return 0
    from amic.fsutil import write_atomic

    write_atomic(args.output, data)
    print(f"wrote {args.output} ({len(data)} bytes, final key {plan.final_key[:12]})",
          file=sys.stderr)
    return 0


def cmd_lint(args: argparse.Namespace) -> int:
    from amic import lint

    paths = args.files or ["Amifile"]
    ignore = {code.strip() for item in args.ignore for code in item.split(",") if code.strip()}
    return lint.run(paths, fmt=args.format, threshold=args.failure_threshold, ignore=ignore,
                    out=sys.stdout)


def cmd_list_rules(args: argparse.Namespace) -> int:
    from amic import lint

    for rule in lint.RULES:
        print(f"{rule.id}  {rule.severity:<7}  {rule.summary}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amic", description="Compile an Amifile into a stage2 artifact and bake machine "
        "images from it (AMIs, local images, or any SSH host).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"amic {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("compile", help="write the stage2 tarball, or show its scripts or plan",
                       description="Compile an Amifile into the stage2 tarball. The tarball is "
                       "byte-for-byte reproducible: same inputs, same bytes.")
    add_amifile_argument(p)
    p.add_argument("-o", "--output", default="stage2.tar", metavar="FILE",
                   help="where to write the tarball ('-' for stdout; default: stage2.tar)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--print", action="store_true",
                      help="print every generated script with a header naming service and phase")
    mode.add_argument("--json", action="store_true",
                      help="print the plan: services in order, requirements, layer keys, final key")
    add_build_arg_option(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("lint", help="check Amifiles (rules AMxxxx, shellcheck SCxxxx)",
                       description="Lint Amifiles. Exit 0 when no finding reaches the failure "
                       "threshold, 1 otherwise. Ignore a rule for the next instruction with "
                       "'# amic ignore=AM3001,SC2086', for the file with '# amic global ignore=...'.")
    p.add_argument("files", nargs="*", metavar="AMIFILE", help="files to lint (default: ./Amifile)")
    p.add_argument("--format", "-f", choices=["text", "json", "sarif", "github"], default="text",
                   help="output format (default: text)")
    p.add_argument("--failure-threshold", "-t", default="warning",
                   choices=["error", "warning", "info", "style", "none"],
                   help="lowest severity that makes the exit code 1 (default: warning)")
    p.add_argument("--ignore", action="append", default=[], metavar="ID[,ID...]",
                   help="rule ids to skip everywhere")
    p.add_argument("--list-rules", action="store_true", help="list every rule and exit")
    p.set_defaults(func=lambda a: cmd_list_rules(a) if a.list_rules else cmd_lint(a))

    from amic.cli import build as cli_build

    from amic.cli import ec2 as ec2_cli

    cli_build.add_build_parsers(sub)
    ec2_cli.add_ec2_parsers(sub)
    return parser


def _sigterm(signum, frame):  # noqa: ARG001
    # Unwind exactly like Ctrl-C so every ExitStack cleanup runs.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return int(args.func(args) or 0)
    except AmicError as exc:
        print(exc.render(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("amic: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())

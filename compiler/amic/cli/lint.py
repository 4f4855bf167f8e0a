"""``amic lint``: check Amifiles against the AMxxxx rules and shellcheck."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
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
    p.add_argument("--no-shellcheck", action="store_true",
                   help="skip shellcheck (otherwise a missing or broken shellcheck is an "
                   "error, exit 2); the shellcheck used is $AMIC_SHELLCHECK, else the one "
                   "installed with amic, else shellcheck on PATH")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say on stderr which shellcheck ran (said anyway when it is not the one "
                   "installed with amic)")
    p.add_argument("--list-rules", action="store_true", help="list every rule and exit")
    p.set_defaults(func=lambda a: cmd_list_rules(a) if a.list_rules else cmd_lint(a))


def cmd_lint(args: argparse.Namespace) -> int:
    from amic import lint

    paths = args.files or ["Amifile"]
    ignore = {code.strip() for item in args.ignore for code in item.split(",") if code.strip()}
    return lint.run(paths, fmt=args.format, threshold=args.failure_threshold, ignore=ignore,
                    out=sys.stdout, err=sys.stderr, shellcheck=not args.no_shellcheck,
                    verbose=args.verbose)


def cmd_list_rules(args: argparse.Namespace) -> int:  # noqa: ARG001
    from amic import lint

    for rule in lint.RULES:
        print(f"{rule.id}  {rule.severity:<7}  {rule.summary}")
    return 0

"""The ``amic`` command line: argument parsing, output and exit codes only.

Exit codes: 0 success; 1 a bad Amifile, lint findings at/above the threshold,
or a failed build; 2 a usage mistake; 130 interrupted (Ctrl-C / SIGTERM).
Each command group is a module listed once, in :data:`COMMAND_GROUPS`. Heavy
modules (boto3, paramiko, lark) are imported inside the handlers that need
them, so ``amic --help`` and an unchanged build start fast.
"""

from __future__ import annotations

import argparse
import signal
import sys

from amic import __version__
from amic.cli import (build, compile, completion, devvm, ec2, images,  # the command modules,
                      lint, starter)                                  # each import-light
from amic.cli.common import error_text
from amic.cli.options import Parser
from amic.errors import AmicError

# Every command group, in the order ``amic --help`` lists its commands; each
# function adds the group's subcommands. A new group is one module and one row.
COMMAND_GROUPS = (
    starter.register,      # init
    compile.register,      # compile
    lint.register,         # lint
    build.register,        # build
    images.register,       # run, images, prune, export, shell, rmi (the local target)
    devvm.register,        # up, ssh, ps, stop, rm, logs (dev VMs)
    ec2.add_ec2_parsers,   # gc, ami ls|prune, launch
    completion.register,   # completion
)

EPILOG = """\
commands by task:
  start and check     amic init, amic lint, amic compile --print
  bake an image       amic build [--target local|ec2|ssh://user@host] [--dry-run]
  a developer VM      amic up [-p 8080:80] [--mount .], amic ssh, amic ps, amic stop, amic rm
  a disk to hand out  amic export IMAGE --format qcow2, amic run IMAGE --vm
  inspect the cache   amic images, amic rmi, amic prune; amic ami ls, amic ami prune, amic gc
  shell completion    source <(amic completion bash)   (also zsh, fish)
docs: docs/language.md (Amifile), docs/services.md, docs/lint-rules.md, docs/build.md, docs/ec2.md, docs/devvm.md
"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="amic", description="Compile an Amifile into a stage2 artifact and bake machine "
        "images from it (AMIs, local images, or any SSH host).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"amic {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMAND_GROUPS:
        register(sub)
    parser.set_defaults(root_parser=parser)    # what `amic completion` walks
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
        print(error_text(exc, args), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("amic: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except OSError as exc:  # a file the user named, unreadable or unwritable: no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"amic: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except RecursionError:  # a bug, but never a 1,000-frame traceback from a deep input
        print("amic: error: input nested too deeply (please report this Amifile)", file=sys.stderr)
        return 1
    except Exception as exc:  # an AWS error no handler explained: its message, no traceback
        if not type(exc).__module__.startswith("botocore."):
            raise
        from amic.targets.ec2.session import hint

        print(f"amic: error: {exc}{hint(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Small pieces shared by the subcommand modules (kept import-light for startup time)."""

from __future__ import annotations

import argparse
import os
import sys

from amic.errors import UsageError

DEFAULT_AMIFILE = "Amifile"


def add_amifile_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("amifile", nargs="?", default=DEFAULT_AMIFILE, metavar="AMIFILE",
                        type=amifile_argument,
                        help="the Amifile to read, or a directory holding one (default: ./Amifile)")


def amifile_argument(value: str) -> str:
    """argparse ``type``: a directory means its Amifile; a special file (FIFO, device,
    socket) is refused before anything opens it (a usage error, exit 2). A missing
    path is left for :func:`load_plan` to report."""
    from amic.amifile.parser import amifile_path
    from amic.errors import AmifileError

    try:
        return amifile_path(value)
    except FileNotFoundError:
        return os.path.join(value, DEFAULT_AMIFILE) if os.path.isdir(value) else value
    except AmifileError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{value}: {exc.strerror}") from None


def add_build_arg_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--build-arg", action="append", default=[], metavar="NAME[=VALUE]",
                        help="value for an ARG; NAME alone takes it from the environment. "
                             "Without this flag an ARG is taken from the environment variable of "
                             "the same name, then its default. Values reach INIT scripts at build "
                             "time and are never written into the artifact or image.")


def add_context_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--context", metavar="DIR",
                        help="the build context: COPY reads only files inside DIR (default: the "
                             "Amifile's directory); its .amicignore leaves files out")


def build_args_from(values: list[str]) -> dict[str, str]:
    """``--build-arg`` values as a dict (``NAME`` alone reads the environment, like docker)."""
    out: dict[str, str] = {}
    for item in values:
        name, eq, value = item.partition("=")
        if not name or not name.replace("_", "a").isalnum() or name[0].isdigit():
            raise UsageError(f"--build-arg {item!r}: expected NAME=VALUE")
        if not eq:
            if name not in os.environ:
                raise UsageError(f"--build-arg {name}: no value given and {name} is not set "
                                 "in the environment")
            value = os.environ[name]
        out[name] = value
    return out


def warn(message: str) -> None:
    print(f"amic: warning: {message}", file=sys.stderr)


def load_plan(amifile: str, build_arg_values: list[str], *, base_image_id: str | None = None,
              context: str | None = None):
    """Parse, resolve and plan an Amifile; warn about unused or missing build args.

    ``context``: the ``--context`` directory (None: the Amifile's directory)."""
    from amic.compile import plan
    from amic.amifile import resolve

    build_args = build_args_from(build_arg_values)
    if not os.path.exists(amifile):
        raise UsageError(f"{amifile}: no such file"
                         + (" (write an Amifile here or name one: amic compile path/to/Amifile)"
                            if amifile == DEFAULT_AMIFILE else ""))
    resolved = resolve.load(amifile)
    declared = {a.name for a in resolved.args}
    unused = sorted(set(build_args) - declared)
    if unused:
        warn(f"build args not declared with ARG (ignored): {', '.join(unused)}")
    return plan.make_plan(resolved, build_args, base_image_id=base_image_id, context=context)

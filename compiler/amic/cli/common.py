"""Small pieces shared by the subcommand modules (kept import-light for startup time)."""

from __future__ import annotations

import argparse
import os
import re
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
    from amic.amifile.source import amifile_path
    from amic.errors import AmifileError

    try:
        return amifile_path(value)
    except FileNotFoundError:
        return os.path.join(value, DEFAULT_AMIFILE) if os.path.isdir(value) else value
    except AmifileError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{value}: {exc.strerror}") from None


def seconds_argument(value: str) -> float:
    """argparse ``type``: a finite number of seconds above zero (not ``inf``, ``nan``, ``-5``)."""
    import math

    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: give a finite number of seconds above 0")
    return seconds


def count_argument(value: str) -> int:
    """argparse ``type``: a whole number, 0 or more (``--keep -1`` would keep nothing)."""
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: give 0 or more")
    return count


def path_argument(value: str) -> str:
    """argparse ``type``: a non-empty path (``--manifest ""`` would silently write nothing)."""
    if not value:
        raise argparse.ArgumentTypeError("the path is empty")
    return value


def add_build_arg_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--build-arg", action="append", default=[], metavar="NAME[=VALUE]",
                        help="value for an ARG (a build parameter: part of the cache keys of the "
                             "layers that see it). NAME alone takes the value from the "
                             "environment variable NAME, which keeps it out of `ps`; NAME=VALUE "
                             "is visible to every user of this host while the build runs. "
                             "Without this flag an ARG is taken from the environment variable of "
                             "the same name, then its default. For credentials use SECRET and "
                             "--secret.")


def add_secret_options(parser: argparse.ArgumentParser) -> None:
    """``--secret`` (BuildKit's forms) and ``--allow-missing-args``: ``amic build`` only."""
    parser.add_argument("--secret", action="append", default=[],
                        metavar="id=NAME,src=FILE | id=NAME,env=VAR | NAME",
                        help="value for a SECRET: the contents of FILE (one trailing newline "
                             "dropped), the environment variable VAR, or NAME alone for the "
                             "environment variable NAME. The value reaches INIT scripts in their "
                             "environment only: it is in no cache key, file, image, tag or log, "
                             "and every value is shown as *** in the build's output and errors "
                             "(one under 4 characters is not masked: the build warns).")
    parser.add_argument("--allow-missing-args", action="store_true",
                        help="build even if an ARG has no value and no default (it is empty); "
                             "without this flag that is an error")


def add_context_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--context", metavar="DIR",
                        help="the build context: COPY reads only files inside DIR (default: the "
                             "Amifile's directory); its .amicignore leaves files out")


CREDENTIAL_NAME = re.compile(
    r"(PASS(WORD|WD)?|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|ACCESS_?KEY|CREDENTIAL|AUTH)",
    re.IGNORECASE)
"""ARG names that look like they hold a credential (``--build-arg`` warns about a value on the
command line for one; lint rule AM2004 uses its own list for defaults)."""


def _valid_name(name: str) -> bool:
    return bool(name) and name.replace("_", "a").isalnum() and name.isascii() \
        and not name[0].isdigit()


def build_args_from(values: list[str]) -> dict[str, str]:
    """``--build-arg`` values as a dict (``NAME`` alone reads the environment, like docker)."""
    from amic.amifile.ir import RESERVED_PREFIX

    out: dict[str, str] = {}
    for item in values:
        name, eq, value = item.partition("=")
        if not _valid_name(name):
            raise UsageError(f"--build-arg {name!r}: expected NAME=VALUE or NAME")
        if name.startswith(RESERVED_PREFIX):
            raise UsageError(f"--build-arg {name}: names starting with {RESERVED_PREFIX} "
                             "are amic's own (no ARG may have one)")
        if eq and CREDENTIAL_NAME.search(name):
            warn(f"--build-arg {name}=...: the value is on the command line (visible in `ps`) "
                 f"and in the cache keys; for a credential declare SECRET {name} and pass "
                 f"--secret {name} (or pass --build-arg {name} to read the environment)")
        if not eq:
            if name not in os.environ:
                raise UsageError(f"--build-arg {name}: no value given and {name} is not set "
                                 "in the environment")
            value = os.environ[name]
        out[name] = value
    return out


def secrets_from(values: list[str], environ=None) -> dict[str, str]:
    """``--secret`` values as a dict, read now; no error message shows a value."""
    environ = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for item in values:
        fields = dict(f.partition("=")[::2] for f in item.split(",")) if "=" in item \
            else {"id": item}
        name = fields.pop("id", "")
        kind = fields.pop("type", None)
        src = fields.pop("src", None) or fields.pop("source", None)
        var = fields.pop("env", None)
        if not _valid_name(name) or fields or kind not in (None, "file", "env") or (src and var):
            raise UsageError(f"--secret {item.split(',')[0]!r}...: expected id=NAME,src=FILE, "
                             "id=NAME,env=VAR or NAME (a shell variable name)")
        if src is not None or kind == "file":
            out[name] = _secret_file(name, src or name)
            continue
        var = var or name
        if var not in environ:
            raise UsageError(f"--secret {name}: the environment variable {var} is not set")
        out[name] = _secret_text(name, os.fsencode(environ[var]),
                                 f"the environment variable {var} is")
    return out


MAX_SECRET_BYTES = 1024 * 1024


def _secret_file(name: str, path: str) -> str:
    """The value in ``path``: a regular file (opened without blocking: a FIFO, device or
    directory is refused, never waited on), at most 1 MiB, UTF-8 text without NUL."""
    from amic import safeopen

    try:
        fd = safeopen.open_side_file(path)
        try:
            data = safeopen.read_at_most(fd, MAX_SECRET_BYTES)
        finally:
            os.close(fd)
    except OSError as exc:
        raise UsageError(f"--secret {name}: cannot read {path}: {exc.strerror} (src= names a "
                         "regular file; for a value from a pipe or a program use env=VAR)"
                         ) from None
    if len(data) > MAX_SECRET_BYTES or b"\0" in data:
        raise UsageError(f"--secret {name}: {path} is not a secret an environment variable can "
                         "hold (over 1 MiB, or a NUL byte)")
    data = data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") else data
    return _secret_text(name, data, f"{path} is")


def _secret_text(name: str, data: bytes, what: str) -> str:
    # Text only: the build's output is read as UTF-8 (bad bytes replaced) before values are
    # masked, so bytes that are not UTF-8 could not be found there and hidden.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--secret {name}: {what} not UTF-8 text (a secret is masked in the "
                         "build's text output, so it must be text: encode binary data, with "
                         "base64 say, and decode it in the INIT)") from None


def command_name(args: argparse.Namespace) -> str:
    """The command as typed: ``prune``, ``run``, ``ami prune``."""
    words = [getattr(args, "command", None) or "amic"]
    if getattr(args, "ami_command", None):
        words.append(args.ami_command)
    return " ".join(words)


def error_text(exc, args: argparse.Namespace) -> str:
    """What the command line prints for an AmicError: a failure names the command that
    failed (``amic: prune failed: ...``), never a build that did not run."""
    from amic.errors import BuildError

    if isinstance(exc, BuildError):
        return exc.render(command_name(args))
    return exc.render()


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
    p = plan.make_plan(resolved, build_args, base_image_id=base_image_id, context=context)
    unused = sorted(set(build_args) - {a.name for a in p.declared_args})
    if unused:
        warn(f"build args not declared with ARG (ignored): {', '.join(unused)}")
    return p

"""Targets by name, imported lazily so ``amic`` starts fast.

``--target`` takes ``local``, ``ec2`` or ``ssh://user@host[:port]``. Each
entry maps a scheme to ``module:Class``; the class is called with the text
after the scheme (``""`` for bare names) as its only positional argument.

The default target is chosen by :func:`default_target_spec`: ``$AMIC_TARGET``,
else ``ec2`` when AWS is configured (credentials, profile or region in the
environment or in ``~/.aws``), else ``local``.

A target that takes options declares them as data, one :class:`Option` row each
(``amic.targets.ec2.options``); the command line turns the rows into flags
(``amic.cli.options``) and hands the parsed values back through
:func:`option_values`, so no target imports argparse or the CLI.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

REGISTRY: dict[str, str] = {
    "local": "amic.targets.local.target:LocalTarget",
    "ssh": "amic.targets.ssh.target:SshTarget",
    "ec2": "amic.targets.ec2.target:Ec2Target",
}

MEMO: dict[str, bool] = {"local": False, "ec2": True}
"""Schemes whose target has ``fast_rebuild`` (an unchanged build answered from the build
memo, before anything heavy is imported), and whether a hit needs the target's
``confirm_memo`` (ec2: two DescribeImages calls) before it answers."""


class Option(NamedTuple):
    """One command-line option of a target: its flags, where its value goes, its --help line.

    A NamedTuple, not an attrs class: every ``amic`` start builds its parser from
    these rows, and creating an attrs class costs milliseconds there.
    """

    flags: Sequence[str]
    dest: str
    """Name of the value: the argparse ``dest`` and the key in an option values mapping."""
    group: str
    """Title of the --help section it is listed in."""
    help: str | None = None
    metavar: str | None = None
    action: str = "store"
    """``store``, ``append`` (repeatable), ``store_true`` or ``store_false``."""
    type: Callable[[str], object] | None = None
    """Parses the flag's text (argparse ``type``): a bad value is a usage error there."""
    choices: Sequence[str] | None = None
    field: str | None = None
    """The options attribute it sets, when not ``dest`` (``--expire-after`` sets ``ttl``)."""
    convert: Callable[[object], object] | None = None
    """Turns the parsed value into the attribute's (a duration text into a timedelta)."""
    default: object = None
    """The value when the flag is not given, as the flag would spell it (``4h``), converted
    like a given one: the options class takes its field's default from here
    (:func:`defaults`), so it is written once. None: no value (see ``unset``)."""
    unset: str | None = None
    """What not giving the flag means, when that is more than ``default`` (``the subnet's
    setting``; with a default, what comes before it: ``AWS_RETRY_MODE`` or standard)."""
    commands: Sequence[str] | None = None
    """The commands that use it (``build``); None: every command its table is added to.
    Another command refuses it (``amic launch --ami-name`` is a usage error, not ignored)."""

    def taken_by(self, command: str | None) -> bool:
        return command is None or self.commands is None or command in self.commands

    @property
    def attribute(self) -> str:
        return self.field or self.dest

    @property
    def default_text(self) -> str | None:
        """The default as ``--help`` shows it; None for a flag that is off unless given."""
        value = None if self.default is None else _spell(self.default)
        if self.unset and value is not None:
            return f"{self.unset} or {value}"
        return self.unset or value

    @property
    def help_text(self) -> str | None:
        """The --help line: ``help`` and the default, which no help string repeats."""
        shown = self.default_text
        if shown is None or self.help is None and self.action != "store":
            return self.help
        return f"{self.help} (default: {shown})" if self.help else f"default: {shown}"


def _spell(value: object) -> str:
    """A default as a user types it: ``600`` for 600.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def defaults(rows: Iterable[Option]) -> dict[str, object]:
    """``{attribute: default}`` of the rows that have one, converted like a given value: the
    options class's field defaults (the one place they are written is the table)."""
    return {row.attribute: row.convert(row.default) if row.convert else row.default
            for row in rows if row.default is not None}


def option_values(args, rows: Iterable[Option], *names: str) -> dict[str, object]:
    """``{dest: value}`` of ``rows`` (and of ``names``) read from parsed arguments; a value
    the parser did not define is None, as is one not given (the options' default applies)."""
    dests = [row.dest for row in rows] + list(names)
    return {dest: getattr(args, dest, None) for dest in dests}


def given(values: Mapping[str, object], rows: Iterable[Option]) -> dict[str, object]:
    """The options attributes ``values`` sets (None and absent mean: the default)."""
    out: dict[str, object] = {}
    for row in rows:
        value = values.get(row.dest)
        if value is not None:
            out[row.attribute] = row.convert(value) if row.convert else value
    return out


CONFIG_FILE = "amic.toml"
"""Option values a team keeps versioned next to its Amifile: a ``[TABLE]`` per target."""


def config_values(amifile: str | os.PathLike | None, table: str, rows: Iterable[Option],
                  command: str = "build") -> dict[str, object]:
    """``{dest: value}`` from ``[table]`` of the ``amic.toml`` next to ``amifile`` (none there:
    empty). Keys are the flags without ``--`` (``ami-tag = ["team=web"]``), read by the same
    rows as the command line, so they parse and convert alike; the command line wins."""
    import tomllib

    from amic.errors import UsageError

    if amifile is None or str(amifile) == "-":
        return {}
    path = os.path.join(os.path.dirname(os.path.abspath(amifile)), CONFIG_FILE)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: {exc}") from None
    section = data.get(table, {})
    if not isinstance(section, dict):
        raise UsageError(f"{path}: [{table}] must be a table")
    by_key = {flag[2:]: row for row in rows if row.taken_by(command) for flag in row.flags}
    out: dict[str, object] = {}
    for key, value in section.items():
        row = by_key.get(key)
        if row is None:
            raise UsageError(f"{path}: [{table}] {key}: no such option of `amic {command}` "
                             f"(keys are the flags without --)")
        out[row.dest] = _config_value(row, value, f"{path}: [{table}] {key}")
    return out


def _config_value(row: Option, value: object, where: str) -> object:
    from amic.errors import UsageError

    if row.action in ("store_true", "store_false"):
        if not isinstance(value, bool):
            raise UsageError(f"{where}: expected true or false")
        return (value if row.action == "store_true" else not value) if value else None
    items = value if isinstance(value, list) else [value]
    if row.action != "append" and len(items) != 1:
        raise UsageError(f"{where}: expected one value")
    parsed = []
    for item in items:
        if not isinstance(item, (str, int, float)) or isinstance(item, bool):
            raise UsageError(f"{where}: expected a string or a number, got {item!r}")
        text = str(item)
        if row.choices is not None and text not in row.choices:
            raise UsageError(f"{where}: {text!r}: expected one of {', '.join(row.choices)}")
        try:
            parsed.append(row.type(text) if row.type else text)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: {text!r}: not a valid value") from None
    return parsed if row.action == "append" else parsed[0]


_AWS_ENV = ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_REGION", "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2", "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")


def aws_configured() -> str | None:
    """Where AWS configuration was found (an env variable or a file), without importing boto3."""
    for name in _AWS_ENV:
        if os.environ.get(name):
            return f"${name}"
    for var, default in (("AWS_CONFIG_FILE", "~/.aws/config"),
                         ("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")):
        path = os.path.expanduser(os.environ.get(var) or default)
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            return path
    return None


def default_target_spec() -> str:
    """``$AMIC_TARGET``; else ``ec2`` when AWS is configured (docs/ec2.md); else ``local``."""
    return os.environ.get("AMIC_TARGET") or ("ec2" if aws_configured() else "local")


def split_spec(spec: str) -> tuple[str, str]:
    """``ssh://u@h:22`` -> (``ssh``, ``u@h:22``); ``local`` -> (``local``, ``""``)."""
    if "://" in spec:
        scheme, _, rest = spec.partition("://")
        return scheme, rest
    return spec, ""


def get_target(spec: str | None = None, args=None):
    """Instantiate the target named by ``spec`` (``--target`` text); UsageError if unknown.

    With parsed command-line ``args``, a target class that has a ``from_args(args)``
    classmethod (ec2: region, subnet, ...) is made with it, or with
    ``from_spec(rest, args)`` when the spec has a rest (ssh); both read ``args``
    through the target's option table (:func:`option_values`). Otherwise the class
    is called with the text after ``scheme://`` (nothing for bare names).
    """
    from amic.errors import UsageError

    spec = spec or default_target_spec()
    scheme, rest = split_spec(spec)
    entry = REGISTRY.get(scheme)
    if entry is None:
        raise UsageError(f"unknown target {spec!r}; use one of: local, ec2, ssh://user@host[:port]")
    module_name, _, cls_name = entry.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"target {scheme!r} is not available: {exc}") from None
    cls = getattr(module, cls_name)
    if args is not None and rest and hasattr(cls, "from_spec"):
        return cls.from_spec(rest, args)   # ssh://user@host plus --ssh-* options
    if args is not None and not rest and hasattr(cls, "from_args"):
        return cls.from_args(args)
    return cls(rest) if rest else cls()

"""A target's option table (``amic.targets.Option`` rows) as argparse flags.

The rows are the target's; this module only knows argparse. Every flag's
argparse default is None (repeatable ones too): an option not given stays
unset, and the target's options class supplies its default, which it takes from
the row; --help shows the row's (:attr:`amic.targets.Option.help_text`).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from amic.targets import Option


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose flags can be walked (``amic completion``), its
    subcommands' parsers being of this class too (argparse makes them ``type(self)``)."""

    @property
    def actions(self) -> list[argparse.Action]:
        return list(self._actions)


def add_option_table(parser: argparse.ArgumentParser, title: str,
                     rows: Iterable[Option], command: str | None = None) -> None:
    """One --help section ``title`` with a flag per row ``command`` uses
    (:meth:`Option.taken_by`); the others it refuses, as argparse refuses any unknown flag."""
    rows = [row for row in rows if row.taken_by(command)]
    if not rows:
        return
    group = parser.add_argument_group(title)
    for row in rows:
        kwargs: dict = {"dest": row.dest, "action": row.action, "default": None}
        if row.help_text is not None:
            kwargs["help"] = help_string(row)
        if row.action in ("store", "append"):
            for key in ("metavar", "type", "choices"):
                value = getattr(row, key)
                if value is not None:
                    kwargs[key] = list(value) if key == "choices" else value
        group.add_argument(*row.flags, **kwargs)


def help_string(row: Option) -> str | None:
    """The row's --help line for argparse, which reads ``%`` as a format."""
    text = row.help_text
    return None if text is None else text.replace("%", "%%")


def add_option_groups(parser: argparse.ArgumentParser, rows: Iterable[Option],
                      command: str | None = None) -> None:
    """A section per ``group`` of ``rows``, in the order the groups first appear; for
    ``command``, only the rows it takes."""
    groups: dict[str, list[Option]] = {}
    for row in rows:
        groups.setdefault(row.group, []).append(row)
    for title, members in groups.items():
        add_option_table(parser, title, members, command)

"""Command-line options as data: each target owns one table of :class:`Option` rows.

The same rows drive ``amic build --help`` (``amic.cli.options.add_option_table``
turns a table into argparse arguments) and the target's own options record (it
reads the parsed values back by :attr:`Option.field` with :func:`option_values`),
so a flag is written down once. Nothing here imports argparse: the library never
sees the command line, only the values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs


@attrs.frozen
class Option:
    """One option: the arguments of one ``add_argument`` call, as a value.

    A field left at ``None`` is not passed to argparse, so argparse's own default
    applies (``False`` for ``store_true``, ``None`` otherwise).
    """

    flags: tuple[str, ...] = attrs.field(converter=tuple)
    """``("--ssh-key",)``; the first long flag is the one messages name."""
    field: str
    """The argparse ``dest`` and the name the target reads the value by."""
    help: str
    metavar: str | None = None
    type: Callable[[str], Any] | None = None
    """Converts the text (``int``, ``float``, a parser of durations, ...)."""
    action: str | None = None
    """``store_true``, ``store_false``, ``append``, ...; ``None``: store the value."""
    choices: tuple | None = attrs.field(default=None, converter=attrs.converters.optional(tuple))
    default: Any = None
    group: str | None = None
    """Rows of one table with the same group name exclude each other (one
    mutually exclusive group, in table order)."""

    @property
    def flag(self) -> str:
        return next((f for f in self.flags if f.startswith("--")), self.flags[0])


def option_values(source: Mapping[str, Any] | object | None,
                  rows: Iterable[Option]) -> dict[str, Any]:
    """The value of each row's field in ``source`` (a mapping, a parsed namespace or
    any object with attributes); a field it lacks gets what argparse would have
    given: the row's default, ``False`` for ``store_true``, ``True`` for ``store_false``."""
    values: dict[str, Any] = {}
    for row in rows:
        fallback = row.default
        if fallback is None and row.action in ("store_true", "store_false"):
            fallback = row.action == "store_false"
        if isinstance(source, Mapping):
            values[row.field] = source.get(row.field, fallback)
        else:
            values[row.field] = getattr(source, row.field, fallback)
    return values

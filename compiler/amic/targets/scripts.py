"""Shell scripts the targets run, shipped as package data (``<target>/scripts/*.sh``).

They are files, not Python strings, so that shellcheck and the shells they must run
under (dash, busybox sh) see exactly what runs (tests/unit/test_shipped_scripts.py).
Values reach them as positional arguments or environment variables, never by
formatting them into the text: the text is a constant, so no value can be quoted wrongly.
"""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def script(package: str, name: str) -> str:
    """The text of ``scripts/<name>`` in ``package`` (e.g. ``amic.targets.ssh``), read once."""
    return (resources.files(package) / "scripts" / name).read_text(encoding="utf-8")

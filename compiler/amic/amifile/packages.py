"""Package names, checked as the Amifile is read against what the package managers accept.

A ``PACKAGES`` word is ``[MANAGER:]SPEC``. Only the known prefixes are
prefixes: ``apt:`` (apt-get), ``rpm:`` (dnf, yum, zypper), ``dnf:``, ``yum:``,
``zypper:``, ``apk:``; anything else before a ``:`` is part of the name, so
``libc6:i386`` is libc6 for i386 on every manager and ``apt:libc6:i386`` is
the same for apt only. The SPEC grammar per manager (docs/language.md,
"PACKAGES", cites the rules it follows):

- apt: ``NAME[:ARCH][=VERSION | /RELEASE]``, NAME as Debian Policy 5.6.1 has it
  (lower case letters, digits, ``+ - .``, at least two, starting alphanumeric),
  VERSION as Policy 5.6.12 (``[EPOCH:]UPSTREAM[-REVISION]``).
- rpm, dnf, yum, zypper: ``NAME[-[EPOCH:]VERSION[-RELEASE]][.ARCH]`` in the
  characters Fedora's naming guidelines allow (``A-Z a-z 0-9 - . _ +``; ``~ ^``
  in versions).
- apk: ``NAME[@TAG][OP VERSION]`` with OP one of ``= ~ < > <= >=`` (apk-world(5)).
- no prefix: any of the forms that are not manager-specific syntax,
  ``NAME[:ARCH][=VERSION | /RELEASE]`` with NAME in ``A-Z a-z 0-9 + - . _``.

Whatever the manager, a word never starts with ``-`` (an option), never ends
with ``-`` or ``_`` (apt-get's action suffixes: ``NAME-`` removes the package,
``NAME_`` purges it, whatever the rest of the word is), never carries a second
manager prefix (``apt:apt:hello``), never holds whitespace, a glob character, a
quote, a NUL or any other byte a shell or a package manager would treat
specially. A word without a prefix reaches apt-get on a Debian machine, so the
suffix rule holds for every word, not only ``apt:`` ones. The runner quotes every name as well
(runtime/amic, ``install_packages``), and refuses a leading ``-`` and the action
suffixes again.

``assembly.py`` checks every PACKAGES word here, at its own position (so ``amic lint``
reports it too); ``amic.compile.packages`` checks a plan's IR again.
"""

from __future__ import annotations

import re

MANAGERS: dict[str, tuple[str, ...]] = {
    "apt": ("apt-get",), "rpm": ("dnf", "yum", "zypper"), "dnf": ("dnf",), "yum": ("yum",),
    "zypper": ("zypper",), "apk": ("apk",),
}
"""The prefixes a PACKAGES word may carry and the managers each one selects."""
MAX_NAME_CHARS = 256
HINT = ("PACKAGES takes package names only; options and versions in other forms belong in "
        "an INIT")
"""The hint of every package-name error."""

_ARCH = r"[a-z0-9][a-z0-9-]*"
_DEB_VERSION = r"(?:[0-9]+:)?[0-9A-Za-z][A-Za-z0-9.+~-]*"
_RELEASE = r"[a-z0-9][a-z0-9.+-]*"
_SPECS: dict[str | None, re.Pattern[str]] = {
    "apt": re.compile(rf"[a-z0-9][a-z0-9+.-]+(?::{_ARCH})?(?:={_DEB_VERSION}|/{_RELEASE})?"),
    "rpm": re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*(?:-(?:[0-9]+:)?[A-Za-z0-9._+~^-]+)?"),
    "apk": re.compile(r"[a-z0-9][a-z0-9._+-]*(?:@[a-z0-9][a-z0-9._-]*)?"
                      r"(?:(?:=|~|<|>|<=|>=)[0-9][A-Za-z0-9._+~-]*)?"),
    None: re.compile(rf"[A-Za-z0-9][A-Za-z0-9+._-]*(?::{_ARCH})?"
                     rf"(?:=[0-9A-Za-z][A-Za-z0-9.+~:_-]*|/{_RELEASE})?"),
}
_SPECS.update({"dnf": _SPECS["rpm"], "yum": _SPECS["rpm"], "zypper": _SPECS["rpm"]})
_FORMS = {
    "apt": "NAME[:ARCH][=VERSION|/RELEASE] in lower case (Debian Policy 5.6.1, 5.6.12)",
    "rpm": "NAME[-[EPOCH:]VERSION[-RELEASE]][.ARCH] (Fedora package naming guidelines)",
    "apk": "NAME[@TAG][=|~|<|>|<=|>=VERSION] in lower case (apk-world(5))",
    None: "NAME[:ARCH][=VERSION|/RELEASE], NAME of letters, digits and + - . _",
}
_GLOB = set("*?[]")
_ACTION_SUFFIXES = {"-": "remove", "_": "purge"}
"""apt-get's suffixes that turn ``install NAME-`` into a removal, and what they do."""


def split_prefix(word: str) -> tuple[str | None, str]:
    """``(manager prefix or None, spec)``: only the known prefixes count."""
    head, sep, rest = word.partition(":")
    if sep and head in MANAGERS:
        return head, rest
    return None, word


def problem(word: str) -> str | None:
    """Why ``word`` is not a package name any manager it is meant for accepts (None: fine)."""
    manager, spec = split_prefix(word)
    shown = f"{manager}:" if manager else "package name"
    if not spec:
        return f"{word!r} names no package" if manager else "empty package name"
    if len(word) > MAX_NAME_CHARS:
        return f"package name longer than {MAX_NAME_CHARS} characters"
    if spec.startswith("-"):
        return (f"package name {spec!r} starts with '-': the package manager would take it "
                "as an option")
    bad = next((c for c in spec if c.isspace() or c == "\0" or not c.isprintable()), None)
    if bad is not None:
        what = "a NUL byte" if bad == "\0" else "whitespace" if bad.isspace() else \
            f"the control character {bad!r}"
        return f"package name {word!r} contains {what}; write each package as its own word"
    if spec.endswith(tuple(_ACTION_SUFFIXES)) and manager not in (None, "apt"):
        return f"{shown} {spec!r} ends with {spec[-1]!r}: not a package name"
    if spec.endswith(tuple(_ACTION_SUFFIXES)):
        return (f"package name {word!r} ends with {spec[-1]!r}: apt-get would "
                f"{_ACTION_SUFFIXES[spec[-1]]} the package instead of installing one; drop "
                f"the {spec[-1]!r} (to remove a package, write the command in an INIT)")
    inner, _, _ = spec.partition(":")
    if manager and inner in MANAGERS:
        return (f"package name {word!r} has two manager prefixes: write "
                f"{manager}:NAME (prefixes: {', '.join(p + ':' for p in MANAGERS)})")
    glob = next((c for c in spec if c in _GLOB), None)
    if glob is not None:
        return f"package name {word!r} contains {glob!r}: package names take no glob patterns"
    key = "rpm" if manager in ("dnf", "yum", "zypper") else manager
    if not _SPECS[manager].fullmatch(spec):
        return f"{shown} {spec!r} is not a package name: expected {_FORMS[key]}"
    return None

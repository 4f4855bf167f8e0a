"""The Amifile as typed, frozen values (the IR).

The parser (``parser.py``) produces an :class:`Amifile`; ``resolve.py`` merges
INCLUDEs and orders services; ``plan.py`` turns it into layers with cache keys.
Nothing here knows about syntax or about any target.

Every node keeps its :class:`~amic.errors.Pos` so lint and runtime errors can
point back at the Amifile. Positions are excluded from equality-sensitive
hashing by the planner (cache keys are computed from values, never from
positions), so moving an instruction or adding a comment does not bust caches.
"""

from __future__ import annotations

import re

import attrs

from amic import contract
from amic.errors import Pos

SERVICE_NAME_RE = contract.SERVICE_NAME_RE
"""The rule of :data:`amic.contract.SERVICE_NAME_RE` (``amic run --service`` takes it too)."""

VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")

RESERVED_PREFIX = "AMIC_"
"""ARG, ENV and SECRET names may not start with it: the runner's own variables
(``AMIC_STATE_DIR``, ``AMIC_LOG_DIR``, ``AMIC_STAGE2``, ``AMIC_SECRET_NAMES``, ...) would
take the value, and an image would be baked without its init records."""


@attrs.frozen
class BaseImage:
    """``FROM``: a portable name (``debian:12``), an ``ami-…`` id, or an AMI filter."""

    ref: str
    """What the user wrote, e.g. ``debian:12`` or ``ami-0abc`` or ``owner=136693071363 name=debian-12-*``."""
    pos: Pos = attrs.field(eq=False)


@attrs.frozen
class Arg:
    """``ARG NAME[=default]``: a build parameter. Its value is in the cache keys of the layers
    that see it (every layer for a global ARG; a service's own for one in its block) and in
    those INITs' environment; never in the artifact or image."""

    name: str
    default: str | None
    pos: Pos = attrs.field(eq=False)


@attrs.frozen
class Secret:
    """``SECRET NAME``: a value from ``amic build --secret`` that only INIT commands see.
    Never in a key, a file, an image, a tag or a log (every value is redacted to ``***``)."""

    name: str
    pos: Pos = attrs.field(eq=False)


@attrs.frozen
class Env:
    """``ENV NAME=value``: baked into the artifact and exported to every phase."""

    name: str
    value: str
    pos: Pos = attrs.field(eq=False)


@attrs.frozen
class ImageName:
    """``NAME image-name``: the project's image name, as written (targets normalise it)."""

    value: str
    pos: Pos = attrs.field(eq=False)


@attrs.frozen
class Label:
    """``LABEL key=value``: becomes an image tag."""

    key: str
    value: str
    pos: Pos = attrs.field(eq=False)


@attrs.frozen
class Include:
    """``INCLUDE name-or-path``: a stock service from ``services/`` or an Amifile fragment."""

    ref: str
    pos: Pos = attrs.field(eq=False)


@attrs.frozen
class Script:
    """The body of one ``INIT`` or ``UPDATE`` (heredoc already dedented)."""

    text: str
    """Shell text, ending in a newline."""
    pos: Pos = attrs.field(eq=False)
    """Where the instruction is."""
    body_line: int = attrs.field(eq=False, default=0)
    """Amifile line of the script's first line (for mapping shellcheck findings); 0 = same as pos."""


@attrs.frozen
class Copy:
    """``COPY [--mode=0644] SRC... DEST``: files from the build context into the image."""

    sources: tuple[str, ...] = attrs.field(converter=tuple)
    dest: str
    mode: str | None
    """Octal string such as ``0644``; ``None`` keeps the source file modes."""
    context: str = attrs.field(eq=False)
    """Directory relative sources are read from (the directory of the Amifile that says COPY)."""
    pos: Pos = attrs.field(eq=False)


@attrs.frozen
class Requirement:
    """One name in ``REQUIRES``."""

    name: str
    pos: Pos = attrs.field(eq=False)


@attrs.frozen
class Service:
    """A ``SERVICE`` block."""

    name: str
    pos: Pos = attrs.field(eq=False)
    requires: tuple[Requirement, ...] = attrs.field(converter=tuple, default=())
    packages: tuple[str, ...] = attrs.field(converter=tuple, default=())
    copies: tuple[Copy, ...] = attrs.field(converter=tuple, default=())
    envs: tuple[Env, ...] = attrs.field(converter=tuple, default=())
    """``ENV`` inside the block: visible to this service's phases only."""
    args: tuple[Arg, ...] = attrs.field(converter=tuple, default=())
    """``ARG`` inside the block: seen by this service's INIT only, in its layer's key only."""
    secrets: tuple[Secret, ...] = attrs.field(converter=tuple, default=())
    """``SECRET`` inside the block: given to this service's INIT only."""
    inits: tuple[Script, ...] = attrs.field(converter=tuple, default=())
    updates: tuple[Script, ...] = attrs.field(converter=tuple, default=())
    packages_pos: Pos | None = attrs.field(eq=False, default=None)
    """Where the first ``PACKAGES`` is (for errors on the machine)."""


@attrs.frozen
class Amifile:
    """One parsed Amifile (before or after INCLUDE resolution)."""

    path: str
    base: BaseImage | None = None
    args: tuple[Arg, ...] = attrs.field(converter=tuple, default=())
    secrets: tuple[Secret, ...] = attrs.field(converter=tuple, default=())
    """Global ``SECRET``: given to every service's INIT."""
    envs: tuple[Env, ...] = attrs.field(converter=tuple, default=())
    labels: tuple[Label, ...] = attrs.field(converter=tuple, default=())
    name: ImageName | None = None
    """``NAME``: the project's image name (tag ``amic:name``)."""
    includes: tuple[Include, ...] = attrs.field(converter=tuple, default=())
    enables: tuple[Requirement, ...] = attrs.field(converter=tuple, default=())
    """``ENABLE a b``: services the image runs by default. None given = every service declared
    in this file (not the ones only pulled in by INCLUDE, unless required)."""
    services: tuple[Service, ...] = attrs.field(converter=tuple, default=())

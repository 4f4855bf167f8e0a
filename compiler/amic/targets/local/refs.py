"""Image references on the local target: what ``run``, ``shell``, ``export``, ``rmi`` (and
``up``) take, resolved in one place (:func:`resolve`).

A reference is one of:

``latest``
    THIS project's newest final image: the project is the one whose Amifile the command
    runs next to (``--file``), by its identity (tag ``amic:project``, :mod:`amic.project`),
    never another project's newest (two projects on one machine each have their own
    ``latest``). A project without an identity matches its finals without ``amic:project``
    by their readable name.
``NAME:latest``
    the newest final image named ``NAME`` (tag ``amic:name``, or a project identity
    ``p-...``); when projects in different repositories share the name, this project's if
    it is one of them, else an error that lists them.
``NAME@ID``
    the image ``ID`` (an id prefix), checked to be named ``NAME``.
``ID``
    an image id prefix (at least 4 hex digits, ``sha256:`` allowed) or a full cache key.

Every failure is a :class:`UsageError` naming the candidates (``amic images`` shows more).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from amic.contract import KIND_FINAL, TAG_KIND, TAG_NAME, TAG_PROJECT
from amic.errors import UsageError
from amic.project import Project
from amic.targets.base import Image

LATEST = "latest"
SHORT = 12
HEX = re.compile(r"^(sha256:)?[0-9a-f]{4,64}$")
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
SHOWN = 8
"""Candidates an error lists before ``...``."""
LONGEST = 200
"""Characters a reference may have (NAME@ID with a 64-digit id is under 140)."""


def lookup(store, ref: str, project_of: Callable[[], Project | None]) -> Image:
    """The image ``ref`` names in ``store`` (an :class:`ImageStore`). ``project_of()`` gives
    the project ``latest`` means (the command line's: the Amifile it runs next to, or
    ``--file``); called only when ``ref`` needs it, so a broken ./Amifile never stands in
    the way of an id. For ``NAME:latest`` it only breaks a tie, and an error from it is
    ignored."""
    from amic.errors import AmicError

    project = None
    if ref.strip() == LATEST:
        project = project_of()
    elif ":" in ref and not ref.startswith("sha256:"):
        try:
            project = project_of()
        except AmicError:
            project = None
    return store.lookup(ref, project)


def resolve(images: list[Image], ref: str, *, project: Project | None = None,
            find_key=None) -> Image:
    """The image ``ref`` names among ``images`` (see the module docstring); ``project`` is
    the one ``latest`` means, ``find_key(key)`` looks a full cache key up."""
    ref = ref.strip()
    if len(ref) > LONGEST:
        raise UsageError(f"image reference {ref[:40]!r}... ({len(ref)} characters): too long "
                         f"for one (at most {LONGEST})")
    if ref == LATEST:
        return latest(images, project)
    if "@" in ref:
        name, _, ident = ref.partition("@")
        image = by_id(images, ident, find_key)
        if image.tags.get(TAG_NAME) != name and image.tags.get(TAG_PROJECT) != name:
            raise UsageError(f"image {image.id[:SHORT]} is named "
                             f"{image.tags.get(TAG_NAME) or '(nothing)'}, not {name!r}")
        return image
    if ":" in ref and not ref.startswith("sha256:"):
        name, _, tag = ref.rpartition(":")
        if tag != LATEST:
            raise UsageError(f"image reference {ref!r}: the only tag is 'latest' "
                             f"(NAME:latest, NAME@ID or an id)")
        return named_latest(images, name, project)
    if HEX.match(ref):
        return by_id(images, ref, find_key)
    if NAME.match(ref):
        raise UsageError(f"no image id {ref!r}; for the newest image named {ref!r} say "
                         f"{ref}:latest ({candidates(finals(images))})")
    raise UsageError(f"image reference {ref!r}: give NAME:latest, NAME@ID, an id prefix "
                     "(4+ hex digits, see `amic images`) or 'latest'")


def finals(images: list[Image]) -> list[Image]:
    """The final images, newest first."""
    out = [i for i in images if i.tags.get(TAG_KIND) == KIND_FINAL]
    return sorted(out, key=lambda i: i.created or "", reverse=True)


def mine(image: Image, project: Project) -> bool:
    if project.id is not None:
        return image.tags.get(TAG_PROJECT) == project.id
    return TAG_PROJECT not in image.tags and image.tags.get(TAG_NAME) == project.name


def latest(images: list[Image], project: Project | None) -> Image:
    every = finals(images)
    if project is None:
        raise UsageError("'latest' is this project's newest image, and there is no ./Amifile "
                         "here: run where the project's Amifile is, pass --file AMIFILE, or "
                         f"name one ({candidates(every)})")
    own = [i for i in every if mine(i, project)]
    if not own:
        raise UsageError(f"project {project.label} has no local image yet: run `amic build` "
                         f"first ({candidates(every, 'other images')})")
    return own[0]


def named_latest(images: list[Image], name: str, project: Project | None) -> Image:
    every = finals(images)
    named = [i for i in every if name in (i.tags.get(TAG_NAME), i.tags.get(TAG_PROJECT))]
    if not named:
        raise UsageError(f"no local image named {name!r} ({candidates(every)})")
    if project is not None and any(mine(i, project) for i in named):
        named = [i for i in named if mine(i, project)]
    projects = {i.tags.get(TAG_PROJECT) for i in named}
    if len(projects) > 1:
        newest = {}
        for image in named:
            newest.setdefault(image.tags.get(TAG_PROJECT), image)
        listed = ", ".join(f"{name}@{i.id[:SHORT]} (project {p or 'none'})"
                           for p, i in newest.items())
        raise UsageError(f"{name}:latest is ambiguous: {len(projects)} projects are named "
                         f"{name!r}: {listed}; say NAME@ID or {next(iter(newest))}:latest")
    return named[0]


def by_id(images: list[Image], ref: str, find_key=None) -> Image:
    ident = ref.removeprefix("sha256:")
    if len(ident) == 64 and find_key is not None:
        found = find_key(ident)
        if found is not None:
            return found
    if not HEX.match(ident):
        raise UsageError(f"image id {ref!r}: give 4 or more hex digits (see `amic images`)")
    matches = [i for i in images if i.id.startswith(ident)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"no local image {ref!r} (see `amic images`)")
    listed = ", ".join(f"{i.id[:SHORT]} ({i.tags.get(TAG_KIND, '?')} "
                       f"{i.tags.get(TAG_NAME) or '-'})" for i in matches[:SHOWN])
    raise UsageError(f"image id {ref!r} is ambiguous: {listed}"
                     + (" ..." if len(matches) > SHOWN else "") + "; give more digits")


def candidates(images: list[Image], what: str = "images here") -> str:
    """``what: app:latest (3f2a...), ...`` for an error, the newest of each name."""
    seen: dict[tuple, Image] = {}
    for image in images:
        seen.setdefault((image.tags.get(TAG_NAME), image.tags.get(TAG_PROJECT)), image)
    if not seen:
        return "there are no local images; run `amic build`"
    shown = [f"{(i.tags.get(TAG_NAME) or '?')}@{i.id[:SHORT]}" for i in seen.values()]
    return f"{what}: " + ", ".join(shown[:SHOWN]) + (" ..." if len(shown) > SHOWN else "")

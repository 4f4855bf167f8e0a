"""``--name``, ``--project``, ``--file``: which project a listing or prune is about.

The identity itself (the git remote and the Amifile's path in the repository, read without
running git) is :mod:`amic.project`; this module only turns the flags into one.
"""

from __future__ import annotations

import os

from amic import contract
from amic.project import NO_IDENTITY_HINT, PROJECT_ID, Project, derive, repo_origin

__all__ = ["NO_IDENTITY_HINT", "add_project_options", "project_here", "project_to_prune",
           "repo_origin"]


def add_project_options(parser, what: str, *, default_file: bool = False) -> None:
    """``--name``, ``--project``, ``--file``: which project a listing or prune is about
    (``default_file``: ./Amifile's when none is given, else every project)."""
    parser.add_argument("--name", metavar="NAME",
                        help=f"{what}: the one named NAME (over the Amifile's NAME; in a git "
                        "clone the identity also holds the remote and ./Amifile's or --file's "
                        "path: docs/build.md, \"Project identity\")")
    parser.add_argument("--project", metavar="ID",
                        help=f"{what}: the project identity ID (tag amic:project, as "
                        "`amic ami ls` and `amic images --json` show it)")
    parser.add_argument("--file", "-f", metavar="AMIFILE",
                        help=f"{what}: that of this Amifile"
                        + (" (default: ./Amifile)" if default_file else ""))


def project_to_prune(args) -> Project:
    """The project ``--project``, ``--name`` and ``--file`` (default ./Amifile) designate;
    UsageError when there is none (nothing is ever selected by a readable name alone)."""
    from amic.errors import UsageError

    name = contract.normal_name(args.name) if args.name else None
    if args.project:
        if not PROJECT_ID.match(args.project):
            raise UsageError(f"--project {args.project!r}: not a project identity (p- and "
                             f"{contract.PROJECT_ID_HEX} hex digits, as `amic ami ls` shows)")
        return Project(id=args.project, name=name)
    path = args.file or "Amifile"
    if os.path.isdir(path):
        path = os.path.join(path, "Amifile")
    if os.path.exists(path) or args.file:
        from amic.amifile import resolve

        explicit = args.name or resolve.load(path).name
        project = derive(path, explicit)
        if project.id is None:
            raise UsageError(f"{path}: this project has no identity to select its images by: "
                             f"{NO_IDENTITY_HINT} (docs/build.md, \"Project identity\")")
        return project
    if name:
        return Project(id=contract.project_id(None, name), name=name)
    raise UsageError("which project? run this where the project's Amifile is, or pass "
                     "--file AMIFILE, --name NAME (a project named by NAME outside git) or "
                     "--project ID (see `amic ami ls` / `amic images`)")


def project_here(amifile: str | None = None) -> Project | None:
    """The project whose image ``latest`` is: that of ``amifile`` (``--file``: a file, or a
    directory holding ``Amifile``), else of ./Amifile; None when none was named and there is
    no ./Amifile. A project without an identity is its readable name alone (id None)."""
    from amic.errors import UsageError

    path = amifile or "Amifile"
    if os.path.isdir(path):
        path = os.path.join(path, "Amifile")
    if not os.path.isfile(path):
        if amifile is None:
            return None
        raise UsageError(f"--file {amifile}: no Amifile there")
    from amic.amifile import resolve

    project = derive(path, resolve.load(path).name)
    return project if project.id else Project(None, contract.project_name(path, project.name))

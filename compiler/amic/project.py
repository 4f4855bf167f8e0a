"""A project's identity: where its Amifile lives in its git repository, read at the edge.

(The command line's ``--name``/``--project``/``--file`` selection is ``amic.cli.project``.)

Images are selected (``ami ls``, ``ami prune``, ``images``, ``prune``) by the identity
``contract.project_id(origin, name)`` (tag ``amic:project``), never by the readable name
alone: two teams' ``app/Amifile`` share a folder name, not an identity. ``origin`` is the
repository's remote URL, normalised so that every clone of one repository gives the same
text (``git@github.com:Team/app.git``, ``https://user:token@GitHub.com/Team/app`` and
``ssh://git@github.com:22/Team/app.git/`` are all ``github.com/Team/app``), followed by the
Amifile's path inside the repository (``github.com/Team/app//deploy/Amifile``).

The repository's configuration is parsed here, not by running ``git``: amic runs as root on
checkouts others wrote, and ``git`` would read include files, honour ``core.fsmonitor`` and
more. Only ``.git`` (a directory, or a ``gitdir:`` file as in worktrees and submodules) and
its ``config`` are read, each a regular file that is not a symlink, at most ``MAX_CONFIG``
bytes, owned by this user, root or the sudo caller (like git's ``safe.directory``: a
``/tmp/.git`` planted by someone else gives no identity). ``include``/``includeIf`` and
``url.*.insteadOf`` are not followed. The remote is ``origin``, else the only remote.
"""

from __future__ import annotations

import os
import re
import stat
from typing import NamedTuple

from amic import contract

MAX_CONFIG = 1024 * 1024
"""The largest ``.git/config`` read; a bigger one gives no identity."""
MAX_GITFILE = 4096
MAX_DEPTH = 256
"""Directories walked up from the Amifile's looking for ``.git``."""

NO_IDENTITY_HINT = ("set NAME in the Amifile (or pass --name NAME), or build in a git clone "
                    "with a remote 'origin'")


class Project(NamedTuple):
    """What is known of a project before anything is built or pruned (a NamedTuple: the
    command line imports this module when it registers its commands, attrs it does not)."""

    id: str | None
    """``amic:project``; None = no identity could be derived."""
    name: str | None
    """The readable name (``amic:name``); None when only ``--project`` was given."""
    origin: str | None = None
    """Normalised remote and the Amifile's path in the repository (None: not in a clone)."""

    @property
    def label(self) -> str:
        return self.name or self.id or "?"


PROJECT_ID = re.compile(r"^p-[0-9a-f]{%d}$" % contract.PROJECT_ID_HEX)


def derive(amifile: str, explicit_name: str | None) -> Project:
    """The project of ``amifile``, named ``explicit_name`` (``--name``, else its ``NAME``)."""
    origin = repo_origin(amifile)
    return Project(id=contract.project_id(origin, explicit_name),
                   name=contract.project_name(amifile, explicit_name), origin=origin)


def repo_origin(amifile: str) -> str | None:
    """``<normalised remote>//<path of the Amifile in the repository>``, or None."""
    path = os.path.abspath(amifile)
    found = find_git(os.path.dirname(path))
    if found is None:
        return None
    root, config = found
    text = _read_small(config, MAX_CONFIG)
    if text is None:
        return None
    url = remote_url(text)
    remote = normal_remote(url, root) if url else None
    if remote is None:
        return None
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    return f"{remote}//{rel}"


def find_git(start: str) -> tuple[str, str] | None:
    """(work tree root, path of its config) of the repository holding ``start``, or None."""
    here = start
    for _ in range(MAX_DEPTH):
        dotgit = os.path.join(here, ".git")
        try:
            st = os.lstat(dotgit)
        except OSError:
            st = None
        if st is not None:
            if not _trusted(st):
                return None
            if stat.S_ISDIR(st.st_mode):
                return here, os.path.join(dotgit, "config")
            if stat.S_ISREG(st.st_mode):
                config = _config_of_gitfile(here, dotgit)
                return None if config is None else (here, config)
            return None
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent
    return None


def _config_of_gitfile(root: str, gitfile: str) -> str | None:
    """A ``.git`` file (``gitdir: PATH``): its config, or that of its ``commondir`` (worktrees)."""
    text = _read_small(gitfile, MAX_GITFILE)
    if text is None or not text.startswith("gitdir:"):
        return None
    gitdir = os.path.join(root, text[len("gitdir:"):].strip())
    common = _read_small(os.path.join(gitdir, "commondir"), MAX_GITFILE)
    if common is not None and common.strip():
        gitdir = os.path.join(gitdir, common.strip())
    return os.path.join(gitdir, "config")


def _trusted(st: os.stat_result) -> bool:
    owners = {os.geteuid(), 0}
    sudo_uid = os.environ.get("SUDO_UID", "")
    if sudo_uid.isdigit():
        owners.add(int(sudo_uid))
    return st.st_uid in owners


def _read_small(path: str, limit: int) -> str | None:
    """A regular file's text (not through a symlink, owned by a trusted user, at most
    ``limit`` bytes), else None: never blocks on a FIFO, never reads a device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY
                     | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit or not _trusted(st):
            return None
        data = os.read(fd, limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) > limit:
        return None
    return data.decode("utf-8", "replace")


# -- git's config syntax (the parts a remote URL needs) ----------------------------------

_SECTION = re.compile(r'\s*\[\s*([A-Za-z0-9.-]+)(?:\s+"((?:[^"\\\n]|\\.)*)")?\s*\]')
_KEY = re.compile(r"\s*([A-Za-z][A-Za-z0-9-]*)\s*(?:=(.*))?$", re.S)
_ESCAPES = {"n": "\n", "t": "\t", "b": "\b", '"': '"', "\\": "\\"}


def remote_url(config: str) -> str | None:
    """``remote.origin.url`` of a git config text, else the url of its only remote."""
    urls: dict[str, str] = {}
    section: tuple[str, str | None] = ("", None)
    lines = iter(config.splitlines())
    for first in lines:
        parts = [first]
        while parts[-1].endswith("\\") and not parts[-1].endswith("\\\\"):   # continued
            parts[-1] = parts[-1][:-1]
            parts.append(next(lines, ""))
        line = "".join(parts)      # joined once: linear in the config's size
        head = _SECTION.match(line)
        if head:
            sub = head.group(2)
            section = (head.group(1).lower(),
                       None if sub is None else re.sub(r"\\(.)", r"\1", sub))
            continue
        key = _KEY.match(line)
        if not key or section[0] != "remote" or section[1] is None:
            continue
        if key.group(1).lower() == "url" and key.group(2) is not None:
            urls.setdefault(section[1], config_value(key.group(2)))
    if "origin" in urls:
        return urls["origin"]
    return next(iter(urls.values())) if len(urls) == 1 else None


def config_value(raw: str) -> str:
    """A value as git reads it: quotes removed, escapes taken, comments and outer blanks cut."""
    out: list[str] = []
    quoted = False
    pending = ""             # blanks kept only if something follows them
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == "\\" and i + 1 < len(raw):
            out.append(pending + _ESCAPES.get(raw[i + 1], raw[i + 1]))
            pending = ""
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif not quoted and c in "#;":
            break
        elif not quoted and c.isspace():
            pending += c if out else ""
        else:
            out.append(pending + c)
            pending = ""
        i += 1
    return "".join(out)


# -- one text per repository, however it was cloned ------------------------------------

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^?#]*)")
_SCP = re.compile(r"^(?:[^@/]+@)?(\[[^\]/]+\]|[^:/]+):(.*)$")


def normal_remote(url: str, root: str = "/") -> str | None:
    """``host/path`` of a remote URL: no scheme, user, password or port, the host in lower
    case, no ``.git`` or slashes at the ends. A local path (or ``file://``) is ``file:`` and
    its absolute path (``root``: what a relative one is relative to). None if unusable."""
    url = url.strip()
    if not url or len(url) > 4096 or any(ord(c) < 32 for c in url):
        return None
    m = _URL.match(url)
    if m:
        scheme, authority, path = m.group(1).lower(), m.group(2), m.group(3)
        if scheme == "file":
            return "file:" + _path_part(os.path.normpath(path or "/"))
        host = authority.rpartition("@")[2]
        host = host[:host.index("]") + 1] if host.startswith("[") and "]" in host \
            else host.partition(":")[0]
    else:
        m = _SCP.match(url)
        if not m or "/" in url.partition(":")[0]:
            return "file:" + _path_part(os.path.normpath(os.path.join(root, url)))
        host, path = m.group(1), m.group(2)
    host = host.lower().rstrip(".")
    path = _path_part(path)
    if not host or not path:
        return None
    return f"{host}/{path}"


def _path_part(path: str) -> str:
    path = re.sub(r"/+", "/", path).strip("/")
    if path.endswith(".git"):
        path = path[:-4].rstrip("/")
    return path

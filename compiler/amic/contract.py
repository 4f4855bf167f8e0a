"""Names the compiler, the runtime and the builders must agree on, defined once.

The runtime (``runtime/amic``, POSIX sh) cannot import this module, so every
value here that the runner also uses is checked against the runner's text by
``tests/unit/test_contract_names.py``.
"""

from __future__ import annotations

import re

# -- where the runner lives on a machine --------------------------------------------

STATE_DIR = "/var/lib/amic"
"""Runtime state on the machine (``runtime/amic``: ``AMIC_STATE``)."""
RUNNER = f"{STATE_DIR}/stage2/amic"
"""The installed runner: ``init``, ``update``, ``status``, ``install-boot-hook``, ..."""
UPLOAD_PATH = "/tmp/amic-stage2.tar"
"""Where a build uploads the stage2 tarball before ``sh stage2/amic install``."""

INSTALL_POLICY_VAR = "AMIC_INSTALL_POLICY"
"""``keep``: ``amic install`` refuses to replace an installed stage2 that has initialised
services the new one lacks (their UPDATE would stop running at boot); ``replace`` (the
default): it replaces it. The ssh target, which provisions hosts in place, asks for ``keep``
unless ``--ssh-replace-stage2``."""

SERVICE_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}\Z")
"""Service names are used as directory names, shell words and tag values: an Amifile's
SERVICE and ``amic run --service`` take this rule alike. (``\\Z``, not ``$``: ``$`` also
matches before a final newline.)"""
SERVICE_NAME_RULE = ("service names are 1-63 characters: lowercase letters, digits, '-' and "
                     "'_', starting with a letter")
"""The rule in words: the hint given with every refused service name."""

IGNORE_FILE = ".amicignore"
"""At the top of a build context: what COPY leaves out (read by compile, watched by the memo)."""

BUILD_KEY_MARK = "amic-build-key"
"""The comment on every authorized_keys line a builder adds (``runner build-key mark``):
prepare-image and every checkpoint remove all lines that carry it."""

# -- progress markers the runner prints (``amic: <svc>: <phase>: <event> ...``) ------
# A builder gives each runner command a nonce (MARK_VAR); the runner then starts every line
# of its own with ``amic[NONCE]: `` (:func:`own_prefix`), and the builder takes only lines
# with its nonce for the runner's: a script's output, or a secret's value masked out of a
# line, cannot make or hide a marker (docs/runtime.md, "Markers and masking").

MARK_VAR = "AMIC_MARK"
"""The runner's environment variable for the builder's nonce: 16 to 64 lowercase hex digits
(the runner ignores anything else, and unsets it before running a script)."""


def new_mark() -> str:
    """A fresh nonce for :data:`MARK_VAR` (128 random bits)."""
    import secrets

    return secrets.token_hex(16)


def own_prefix(mark: str | None) -> str:
    """How the runner starts a line of its own: ``amic[MARK]: ``, or ``amic: `` without one."""
    return f"amic[{mark}]: " if mark else "amic: "


MARKER = re.compile(r"^amic: (?P<svc>[a-z][a-z0-9_-]*): (?P<phase>[a-z-]+): "
                    r"(?P<event>begin|ok|skipped|FAILED)\b ?(?P<rest>.*)$")
"""A progress marker, on a line of the runner's own with its prefix written ``amic: ``."""
FAILED_AT = re.compile(r"exit (?P<code>\d+)(?: at (?P<where>\S+))?")

MASK_MIN = 4
"""Secret values (each line of one) shorter than this many bytes, blanks around them not
counted, are not masked (runtime/amic ``MASK_MIN``): *** in place of every ``a`` or ``ok`` in
the output hides more than it protects. A build warns about such a secret."""

# -- tags on every image a build records ----------------------------------------------
# Targets store them as they can (EC2 tags, the local target's meta.json) and give
# them back in ``Image.tags``; labels from the Amifile are added under their own names.

TAG_KEY = "amic:key"
"""The cache key the image was recorded under."""
TAG_KIND = "amic:kind"
"""``layer`` (a checkpoint after one service's init), ``final``, or ``base`` (local)."""
TAG_SERVICE = "amic:service"
"""For layer checkpoints: the service whose init the layer ends with."""
TAG_PARENT_KEY = "amic:parent-key"
TAG_AMIFILE = "amic:amifile"
"""Base name of the Amifile the image was built from."""
TAG_NAME = "amic:name"
"""The project's readable image name (``amic build --name``, else ``NAME``, else the Amifile's
directory, see :func:`project_name`): shown and used in AMI names, never selected on alone."""
TAG_PROJECT = "amic:project"
"""The project's identity (:func:`project_id`): ``ami ls``/``ami prune``/``amic images``/
``amic prune`` select on it. Absent on images built before it existed, and on images of a
build that had no identity (no NAME/--name, no git remote): prune selects those only with
``--force``."""
TAG_SOURCE = "amic:source"
"""Read only: images made before ``amic:name`` carried a digest of the Amifile's absolute
path here, and local prune still groups those by it. No build writes it any more (a
path is guessable, so its digest is not private)."""
TAG_BUILD = "amic:build-id"
"""The build that created an image or a temporary resource."""
TAG_BASE = "amic:base"
"""The base reference an image was built on (``FROM`` as written; ec2 adds the AMI id)."""
TAG_INPUT_PREFIX = "amic:in:"
"""``amic:in:<input>`` = digest of one input of the layer (see ``plan.Layer.inputs``);
compared with a new plan's to say why a layer missed the cache."""
TAG_LAYER_PREFIX = "amic:layer:"
"""On final images: ``amic:layer:<service>`` = that layer's key."""

KIND_LAYER = "layer"
KIND_FINAL = "final"
KIND_BASE = "base"


# -- a project's image name ------------------------------------------------------------

NAME_MAX = 64
"""Leaves room in EC2's 128 characters for the key, a millisecond timestamp and the build id."""


def normal_name(text: str) -> str:
    """``text`` as an image name: lower case, ``[a-z0-9][a-z0-9._-]*``, at most 64 characters."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.strip().lower())
    name = re.sub(r"^[^a-z0-9]+", "", name)[:NAME_MAX].rstrip("-.")
    return name or "amic"


def project_name(amifile_path: str, name: str | None = None) -> str:
    """The readable name: the explicit ``name`` (normalised), else that of the directory
    holding the Amifile. Not an identity (``teamA/app`` and ``teamB/app`` are both ``app``):
    images are selected by :func:`project_id`."""
    import os

    if name:
        return normal_name(name)
    return normal_name(os.path.basename(os.path.dirname(os.path.abspath(amifile_path))))


# -- a project's identity ----------------------------------------------------------------

PROJECT_ID_HEX = 24
"""96 bits of SHA-256: no two projects meet by chance."""


def project_id(origin: str | None, name: str | None) -> str | None:
    """The identity of a project (tag ``amic:project``), or None when none can be derived.

    ``origin`` is where the Amifile lives in its git repository (the normalised remote URL
    and the Amifile's path inside the repository, ``amic.project.repo_origin``): the
    same in every clone, on every machine, under any folder name. ``name`` is an explicit
    name (``--name``, else the Amifile's ``NAME``), normalised. With an origin the name is
    part of the identity too (``--name prod`` and ``--name staging`` of one Amifile are two
    image lines); without one, the explicit name alone is the identity: a name the user chose
    is shared on purpose, by everyone who builds with it. Neither: None (not prunable).
    """
    name = normal_name(name) if name else ""
    if origin:
        text = f"amic-project\0git\0{origin}\0{name}"
    elif name:
        text = f"amic-project\0name\0{name}"
    else:
        return None
    import hashlib

    return "p-" + hashlib.sha256(text.encode()).hexdigest()[:PROJECT_ID_HEX]

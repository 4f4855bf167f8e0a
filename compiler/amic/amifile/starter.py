"""``amic init``: a commented starter Amifile that ``amic lint`` passes clean
(tests/unit/test_init_completion.py lints it)."""

from __future__ import annotations

import os

from amic import contract
from amic.diagnostics import escape_controls
from amic.errors import UsageError
from amic.fsutil import write_atomic

STARTER = """\
# A starter Amifile, written by `amic init`. Lines starting with # are comments.
#
#   amic lint                       check it (file:line:col for every finding)
#   amic build --target local       bake an image on this machine
#   amic run --keep                 boot this project's newest image, keep it running
#   amic shell latest               a root shell in it (changes are discarded)
#
# The language: docs/language.md; the stock services: docs/services.md.

# The base: a Debian release, bootstrapped once and cached.
FROM debian:12

# The project's image name (`amic images`, `amic run {name}:latest`); also part of
# its identity, which keeps its images apart from other projects'.
NAME {name}

# A stock service shipped with amic (httpd, nginx, nodejs, perl, python):
# INCLUDE it, then REQUIRE it from a service of yours.
INCLUDE nginx

# The services baked into the image; each one's UPDATE runs at every boot.
ENABLE web

SERVICE web
    REQUIRES nginx
    # Installed once, when the image is baked (apt: on Debian, rpm: on the RPM family).
    PACKAGES curl
    # INIT runs once, at bake time (or when the service is requested on a machine).
    INIT <<~EOF
        echo "hello from {name}" > /var/www/html/index.html
    EOF
    # UPDATE runs at every boot, after INIT: fetch configuration, register, ...
    UPDATE curl -fsS http://127.0.0.1/ >/dev/null
"""


def starter(folder: str) -> str:
    """The starter Amifile for a project in ``folder`` (named after it)."""
    name = contract.normal_name(os.path.basename(os.path.abspath(folder)))
    return STARTER.replace("{name}", name)


def write_starter(path: str, *, force: bool = False) -> str:
    """Write the starter Amifile to ``path`` (refused when something is there, unless
    ``force``); return its text. Written atomically; never through a symbolic link."""
    if os.path.isdir(path):
        path = os.path.join(path, "Amifile")
    shown = escape_controls(path)
    if os.path.islink(path):        # a starter never goes where a link points
        raise UsageError(f"{shown} is a symbolic link; not writing through it")
    if os.path.lexists(path) and not os.path.isfile(path):   # a FIFO, a device, a directory
        raise UsageError(f"{shown} exists and is not a regular file; amic init writes a new "
                         "Amifile or replaces one, never anything else")
    if os.path.lexists(path) and not force:
        raise UsageError(f"{shown} exists; pass --force to overwrite it")
    text = starter(os.path.dirname(os.path.abspath(path)))
    write_atomic(path, text)
    return text

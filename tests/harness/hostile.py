"""The real CLI on hostile input: bounded in time (and, when asked, in memory), and
failing without a traceback. Shared by the hostile-input unit modules."""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

from tests.harness.cli import run_amic


def run(*args: str, cwd: Path, env: dict | None = None, timeout: float = 60,
        memory: int | None = None) -> subprocess.CompletedProcess:
    """``amic ARGS`` with a timeout (a hang fails the test) and optionally an address-space
    limit in bytes."""
    def limit() -> None:
        if memory:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return run_amic(*args, cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout,
                    preexec_fn=limit)


def clean(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def listing(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}

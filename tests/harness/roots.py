"""Helpers for the runtime tests: compile real stage2 artifacts and run them in throwaway roots.

Every command runs chrooted in an overlay of the cached debootstrap base
(``amic.targets.local.rootfs``) in a private mount namespace: the test machine's
own ``/`` is never touched. Files the runner writes land in ``Root.upper``,
where the test can read them directly.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from amic.compile import artifact

from amic.compile import plan

from amic.amifile import resolve
from amic.targets.local import rootfs

RUNNER = "/var/lib/amic/stage2/amic"

# How to run the runner under each shell we promise to support. "busybox-userland"
# also puts busybox applets first in PATH (no GNU coreutils, no flock: the mkdir lock).
SHELLS = {
    "dash": "dash",
    "busybox": "busybox sh",
    "bash-posix": "bash --posix",
    "busybox-userland": "busybox sh",
}


def compile_stage2(workdir: Path, amifile: str, files: Mapping[str, str | bytes | tuple] | None = None,
                   build_args: Mapping[str, str] | None = None) -> bytes:
    """Write ``amifile`` (and its COPY sources) to ``workdir`` and compile it with the real chain."""
    workdir.mkdir(parents=True, exist_ok=True)
    for rel, content in (files or {}).items():
        p = workdir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        mode = None
        if isinstance(content, tuple):
            content, mode = content
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
        if mode is not None:
            p.chmod(mode)
    (workdir / "Amifile").write_text(amifile)
    resolved = resolve.load(workdir / "Amifile")
    return artifact.artifact_bytes(plan.make_plan(resolved, build_args or {}))


def manifest_value(tar_bytes: bytes, name: str) -> str:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        text = tar.extractfile("stage2/manifest").read().decode()
    for line in text.splitlines():
        if line.startswith(name + "="):
            return shlex.split(line.split("=", 1)[1])[0] if line.split("=", 1)[1] else ""
    raise KeyError(name)


class Root:
    """One throwaway root: the shared base as lower layer, a private upper directory."""

    def __init__(self, workdir: Path, lowers: list[Path] | None = None) -> None:
        self.base = rootfs.ensure_base()
        self.lowers = lowers or [self.base]
        self.upper = workdir / "upper"
        self.upper.mkdir(parents=True, exist_ok=True)

    def run(self, command: str, *, env: Mapping[str, str] | None = None,
            check: int | None = 0) -> tuple[int, str]:
        """Run ``sh -c command`` in the root; return (exit status, merged output)."""
        lines: list[str] = []
        rc = rootfs.run_in_root(self.lowers, self.upper, command, env=env, on_output=lines.append)
        out = "\n".join(lines)
        if check is not None and rc != check:
            raise AssertionError(f"exit {rc} (wanted {check}) from {command!r}:\n{out}")
        return rc, out

    def start(self, command: str, *, env: Mapping[str, str] | None = None):
        """Start ``command`` in the root in the background: (Popen, scratch dir). Kill with ``kill``."""
        scratch = Path(tempfile.mkdtemp(prefix=".amic-run-", dir=self.upper.parent))
        argv = rootfs.chroot_argv(self.lowers, self.upper, scratch, ["/bin/sh", "-c", command])
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True,
                                env={**rootfs.CLEAN_ENV, **(env or {})}, start_new_session=True)
        return proc, scratch

    @staticmethod
    def kill(proc, scratch: Path) -> str:
        """SIGKILL everything the command started (its PID namespace dies with it)."""
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)
        return out

    def put(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        p = self.upper / path.lstrip("/")
        self._mkdirs(p.parent)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        p.chmod(mode)

    def _mkdirs(self, d: Path) -> None:
        """Create upper-layer directories with the modes they have below (/tmp stays 1777)."""
        if d == self.upper or d.exists():
            return
        self._mkdirs(d.parent)
        d.mkdir()
        rel = d.relative_to(self.upper)
        for lower in self.lowers:
            if (lower / rel).is_dir():
                d.chmod((lower / rel).stat().st_mode & 0o7777)
                break

    def file(self, path: str) -> Path:
        """A file as the root sees it (upper layer first, then the lower layers)."""
        for layer in (self.upper, *self.lowers):
            p = layer / path.lstrip("/")
            if p.exists() or p.is_symlink():
                return p
        return self.upper / path.lstrip("/")

    def read(self, path: str) -> str:
        return self.file(path).read_text()

    def exists(self, path: str) -> bool:
        p = self.upper / path.lstrip("/")
        if p.is_char_device():      # overlayfs whiteout: deleted in the root
            return False
        return self.file(path).exists()

    def install_stage2(self, tar_bytes: bytes, shell: str = "sh", *, env=None) -> str:
        """Upload the tarball like a builder does, unpack it in /tmp and run ``stage2/amic install``."""
        self.put("/tmp/stage2.tar", tar_bytes)
        _, out = self.run(f"cd /tmp && rm -rf stage2 && tar -xf stage2.tar && {shell} stage2/amic install",
                          env=env)
        return out

    def status(self, shell: str = "sh") -> dict:
        rc, out = self.run(f"{shell} {RUNNER} status --json 2>/dev/null", check=None)
        return json.loads(out.strip().splitlines()[-1])


def markers(output: str) -> list[str]:
    """The progress marker lines (``amic: <svc>: <phase>: ...``), without the ``amic: `` prefix."""
    out = []
    for line in output.splitlines():
        if line.startswith("amic: "):
            parts = line[6:].split(": ", 2)
            if len(parts) == 3 and parts[1] in ("init", "update"):
                out.append(line[6:])
    return out


def wait_for(pred, timeout: float = 30.0, interval: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return False

"""A dockerd of the test's own, that changes nothing of the host.

Debian's ``docker.io`` (installed by ``tools/setup`` with its service kept from
starting) provides the daemon; the test starts one:

- in a private mount namespace (``unshare --mount``), so its overlay2 and
  container mounts never appear on the host;
- with ``/etc`` as an overlay whose upper directory is the test's: dockerd
  20.10 writes its trust key to ``/etc/docker/key.json`` whatever its flags say;
- ``--bridge=none --iptables=false --ip6tables=false``: no bridge, no NAT
  rules, no network change on the host (containers run with ``--network none``);
- data, exec root, socket and pid file under a fresh directory, removed after.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

_ENTER = r"""
set -eu
work=$1; shift
mkdir -p "$work/etc-upper" "$work/etc-work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$work/etc-upper,workdir=$work/etc-work" /etc
exec "$@"
"""


def available() -> bool:
    return bool(shutil.which("dockerd") and shutil.which("docker") and os.geteuid() == 0)


@contextlib.contextmanager
def private_dockerd(timeout: float = 60.0) -> Iterator[dict[str, str]]:
    """Start the daemon; yield the environment (``DOCKER_HOST``) a ``docker`` client needs."""
    # short paths: containerd's socket lives under the exec root (108-byte socket paths)
    work = Path(tempfile.mkdtemp(prefix="amic-dk-", dir="/tmp"))
    sock = work / "docker.sock"
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _ENTER, "amic-dockerd",
            str(work), shutil.which("dockerd") or "dockerd",
            "--bridge=none", "--iptables=false", "--ip6tables=false",
            "--data-root", str(work / "root"), "--exec-root", str(work / "exec"),
            "--pidfile", str(work / "docker.pid"), "-H", f"unix://{sock}"]
    log = open(work / "dockerd.log", "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            ok = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                                env=env, capture_output=True, text=True)
            if ok.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("dockerd did not come up:\n"
                                   + (work / "dockerd.log").read_text(errors="replace")[-3000:])
            time.sleep(0.3)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        # the mounts went with the namespace; what is left is plain files
        shutil.rmtree(work, ignore_errors=True)

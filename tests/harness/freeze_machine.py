"""A machine whose root is a loop-mounted ext4: for the freeze guard (runtime/freeze).

An ext4 image made in a temporary directory is loop-mounted in a private mount (and
PID) namespace, given the host's ``/usr`` read-only and its own ``/proc``, and becomes
the root of PID 1 there (``exec chroot``), the guard installed at
``/var/lib/amic/stage2/freeze`` as on a build machine. Used by
tests/runtime/test_freeze_guard.py and tests/targets/test_freeze_ssh.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GUARD = REPO / "runtime" / "freeze"
SHELLS = {"dash": "/bin/dash", "busybox": "/bin/busybox sh"}

# Mount the image and make it the root of PID 1 (the namespace's init): a machine.
SETUP = r"""
set -eu
T=$1; shift
mount -o loop "$T/out/fs.img" "$T/mnt"
mountpoint -q "$T/mnt"
R=$T/mnt
mkdir -p "$R/usr" "$R/proc" "$R/dev" "$R/outside" "$R/data" "$R/var/lib/amic/stage2"
for d in bin sbin lib lib64; do
    if [ -L "/$d" ]; then ln -sfn "$(readlink "/$d")" "$R/$d"
    elif [ -d "/$d" ]; then mkdir -p "$R/$d"; mount --bind -o ro "/$d" "$R/$d"; fi
done
mount --bind -o ro /usr "$R/usr"
[ -e "$R/dev/null" ] || mknod -m 666 "$R/dev/null" c 1 3
mount -t proc proc "$R/proc"
mount --bind "$T/out" "$R/outside"
cp "$T/guard" "$R/var/lib/amic/stage2/freeze"
[ "$(stat -c %m "$R")" = "$R" ]
exec chroot "$R" "$@"
"""

# Shared by the scenarios (run inside the machine, as PID 1): a writer appending to /data
# and recording its progress outside the image, and a way to wait for it to move.
COMMON = r"""
set -u
GUARD=/var/lib/amic/stage2/freeze
writer() {
    i=0
    while :; do
        i=$((i + 1))
        printf 'record %s\n' "$i" >> /data/log
        printf '%s\n' "$i" > /data/last.tmp && mv /data/last.tmp /data/last
        printf '%s\n' "$i" > /outside/progress.tmp && mv /outside/progress.tmp /outside/progress
    done
}
progress() { cat /outside/progress 2>/dev/null || echo 0; }
# tenths of a second (by the clock) until the writer moves past $1 (at most $2 tenths)
moves_after() {
    t0=$(date +%s%N)
    n=0
    while [ "$(progress)" = "$1" ] && [ "$n" -lt "$2" ]; do
        sleep 0.05; n=$(( ($(date +%s%N) - t0) / 100000000 ))
    done
    echo "$n"
}
writer &
W=$!
while [ "$(progress)" -lt 50 ]; do sleep 0.1; done
mkfifo /outside/guard.out
"""


class Machine:
    """A temporary directory with an ext4 image; runs a scenario with the image as root."""

    def __init__(self, tmp: Path) -> None:
        for tool in ("unshare", "mkfs.ext4", "e2fsck", "fsfreeze", "chroot", "mountpoint"):
            if shutil.which(tool) is None:
                pytest.fail(f"{tool} is missing (util-linux, e2fsprogs, coreutils)")
        self.tmp = tmp
        (tmp / "mnt").mkdir()
        (tmp / "out").mkdir()
        self.image = tmp / "out" / "fs.img"
        subprocess.run(["truncate", "-s", "96M", str(self.image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True)
        shutil.copy(GUARD, tmp / "guard")
        (tmp / "setup.sh").write_text(SETUP)

    def argv(self, script: str, shell: str = SHELLS["dash"], *,
             pid_namespace: bool = True) -> list[str]:
        """The command that runs ``script`` as PID 1 of the machine."""
        (self.tmp / "out" / "scenario.sh").write_text(f"SH='{shell}'\n" + script)
        unshare = ["unshare", "--mount", "--propagation", "private"]
        if pid_namespace:
            unshare += ["--pid", "--fork", "--kill-child"]
        return [*unshare, "sh", str(self.tmp / "setup.sh"), str(self.tmp),
                *shell.split(), "/outside/scenario.sh"]

    def run(self, script: str, shell: str = SHELLS["dash"], *, pid_namespace: bool = True,
            timeout: float = 120) -> str:
        proc = subprocess.run(self.argv(script, shell, pid_namespace=pid_namespace),
                              capture_output=True, text=True, timeout=timeout, check=False)
        assert proc.returncode in (0, 143), proc.stdout + proc.stderr
        return proc.stdout

    def progress(self) -> int:
        """The writer's count (it writes the file outside the image, renamed into place)."""
        try:
            return int((self.tmp / "out" / "progress").read_text())
        except (OSError, ValueError):
            return 0

    def fsck(self, name: str) -> tuple[bool, str]:
        """Whether ``e2fsck -fn`` finds the copy clean: exit 0, no journal left to recover,
        nothing it would fix (with -n a wrong free count still exits 0)."""
        proc = subprocess.run(["e2fsck", "-fn", str(self.tmp / "out" / name)],
                              capture_output=True, text=True, check=False)
        said = proc.stdout + proc.stderr
        return (proc.returncode == 0 and "journal recovery" not in said
                and "Fix?" not in said), said

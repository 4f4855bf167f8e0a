"""The freeze guard (runtime/freeze) on a real kernel: a loop-mounted ext4 as a machine's root.

Every scenario runs in a private mount and PID namespace (``unshare``): an ext4
image made here in a temporary directory is loop-mounted, given the host's
``/usr`` read-only and its own ``/proc``, and becomes the root of PID 1 of the
namespace (``exec chroot``), the guard installed at
``/var/lib/amic/stage2/freeze`` as on a build machine. So the only filesystem
the guard can freeze is that image: it freezes nothing but ``/``, and ``/``
here is the loop mount (checked before the chroot: ``mountpoint``). The host's
disk is never frozen: where ``/`` is not a mount of its own (a chroot of a
directory, as the EC2 stand-in's instances are) or not PID 1's root, the guard
refuses, and these tests show that too.

A writer keeps writing to the image while the guard holds it; the "builder" is a
process reading the guard's stdout through a FIFO, as sshd relays it.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.harness.freeze_machine import COMMON, GUARD, SHELLS, Machine

pytestmark = pytest.mark.root

FREEZE_COPY_THAW = COMMON + r"""
$SH $GUARD hold 30 > /outside/guard.out &
G=$!
exec 3< /outside/guard.out
IFS= read -r first <&3
echo "guard said: $first"
sleep 0.5
a=$(progress); sleep 1; b=$(progress)
echo "while frozen: $a $b"
cp /outside/fs.img /outside/frozen.img
exec 3<&-                       # the builder closes its channel: thaw
wait "$G"; echo "guard exit: $?"
echo "moved after: $(moves_after "$b" 50)"
fsfreeze --unfreeze / 2>/dev/null     # (a failed thaw fails the test, it must not hang it)
kill "$W"
"""

UNFROZEN_COPY = COMMON + r"""
cp /outside/fs.img /outside/unfrozen.img
echo "copied while writing: $(progress)"
fsfreeze --unfreeze / 2>/dev/null     # (a failed thaw fails the test, it must not hang it)
kill "$W"
"""

BUILDER_KILLED = COMMON + r"""
$SH $GUARD hold 30 > /outside/guard.out &
G=$!
( exec 3< /outside/guard.out; IFS= read -r l <&3; echo "$l" > /outside/builder-saw; exec sleep 600 ) &
B=$!
while [ ! -s /outside/builder-saw ]; do sleep 0.05; done
echo "builder saw: $(cat /outside/builder-saw)"
sleep 0.5
a=$(progress); sleep 1; b=$(progress)
echo "while frozen: $a $b"
kill -9 "$B"                    # the builder dies: its end of the channel closes
echo "moved after: $(moves_after "$b" 100)"
wait "$G"; echo "guard exit: $?"
fsfreeze --unfreeze / 2>/dev/null     # (a failed thaw fails the test, it must not hang it)
kill "$W"
"""

# The guard's parent never reaps it (an exec'd sleep): killed, it stays a zombie, which
# the watchdog must take for dead too.
GUARD_KILLED = COMMON + r"""
( $SH $GUARD hold 30 > /outside/guard.out & echo $! > /outside/guard.pid; exec sleep 600 ) &
P=$!
exec 3< /outside/guard.out
IFS= read -r first <&3
echo "guard said: $first"
G=$(cat /outside/guard.pid)
sleep 0.5
a=$(progress); sleep 1; b=$(progress)
echo "while frozen: $a $b"
kill -9 "$G"                    # the guard itself dies: the watchdog thaws
echo "moved after: $(moves_after "$b" 100)"
echo "guard state: $(cut -d')' -f2 /proc/$G/stat | cut -c2)"
kill "$P"
fsfreeze --unfreeze / 2>/dev/null     # (a failed thaw fails the test, it must not hang it)
kill "$W"
"""

BUILDER_HANGS = COMMON + r"""
$SH $GUARD hold 3 > /outside/guard.out &
G=$!
exec 3< /outside/guard.out
IFS= read -r first <&3
echo "guard said: $first"
sleep 0.5
b=$(progress)
echo "moved after: $(moves_after "$b" 150)"     # the builder never lets go: the timeout
kill "$G"
fsfreeze --unfreeze / 2>/dev/null     # (a failed thaw fails the test, it must not hang it)
kill "$W"
"""


def number(pattern: str, text: str) -> list[int]:
    found = re.search(pattern, text)
    assert found, text
    return [int(g) for g in found.groups()]


@pytest.fixture
def machine(tmp_path):
    return Machine(tmp_path)


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_frozen_copy_is_clean_and_the_writer_resumes(machine, shell):
    out = machine.run(FREEZE_COPY_THAW, SHELLS[shell])
    assert "guard said: amic-freeze: frozen" in out
    a, b = number(r"while frozen: (\d+) (\d+)", out)
    assert a == b, out                      # the writer is held while / is frozen
    assert "guard exit: 0" in out
    tenths = number(r"moved after: (\d+)", out)[0]
    assert tenths < 10, out                 # thawed at once (< 1 s)
    print(f"\n{shell}: writer held at record {a} for 1 s; moved {tenths / 10:.1f}s after the thaw")
    clean, said = machine.fsck("frozen.img")
    assert clean, said
    # the writer really wrote into the image (the copy holds its records)
    assert a > 50


def test_a_copy_without_freeze_is_not_clean(machine):
    """The control: the same copy, the writer running, no freeze. e2fsck finds the journal
    not recovered (at best), which the frozen copy never has."""
    out = machine.run(UNFROZEN_COPY)
    assert "copied while writing" in out
    clean, said = machine.fsck("unfrozen.img")
    assert not clean, said


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_builder_killed_thaws_at_once(machine, shell):
    out = machine.run(BUILDER_KILLED, SHELLS[shell])
    assert "builder saw: amic-freeze: frozen" in out
    a, b = number(r"while frozen: (\d+) (\d+)", out)
    assert a == b, out
    tenths = number(r"moved after: (\d+)", out)[0]
    assert tenths < 10, out                 # the next tick fails: thawed within ~0.2 s
    print(f"\n{shell}: builder killed -9 while frozen; writer moved {tenths / 10:.1f}s later")
    assert "guard exit: 0" in out


def test_guard_killed_the_watchdog_thaws(machine):
    out = machine.run(GUARD_KILLED)
    a, b = number(r"while frozen: (\d+) (\d+)", out)
    assert a == b, out
    tenths = number(r"moved after: (\d+)", out)[0]
    assert tenths < 25, out                 # within ~1 s of the kill
    assert "guard state: Z" in out, out     # (it was a zombie all along)
    print(f"\nguard killed -9 while frozen; the watchdog thawed, writer moved {tenths / 10:.1f}s later")


def test_builder_hangs_the_timeout_thaws(machine):
    out = machine.run(BUILDER_HANGS)
    tenths = number(r"moved after: (\d+)", out)[0]
    assert 15 <= tenths < 50, out           # 3 s after the freeze (0.5 s of them gone)
    print(f"\nbuilder never lets go; timeout 3 s: writer moved {0.5 + tenths / 10:.1f}s after the freeze")


# -- refusals: nothing is frozen -----------------------------------------------------

def test_refuses_a_root_that_is_not_pid_1s(machine):
    """The image mounted and chrooted into, but in the host's PID namespace: PID 1 (the host's
    init) has another root, so this is a chroot inside a bigger machine."""
    out = machine.run('$SH /var/lib/amic/stage2/freeze hold 5; echo "exit $?"',
                      pid_namespace=False)
    assert re.search(r"amic-freeze: not frozen: (/ is not PID 1's root|cannot see the root of "
                     r"PID 1)", out), out
    assert "exit 3" in out


def test_refuses_a_chroot_of_a_directory(tmp_path):
    """As the EC2 stand-in's instances are: / is a directory of the host's disk, no mount of
    its own. The guard says why and freezes nothing."""
    root = tmp_path / "root"
    (root / "var/lib/amic/stage2").mkdir(parents=True)
    shutil.copy(GUARD, root / "var/lib/amic/stage2/freeze")
    script = (f"set -e; R={root}; for d in usr proc dev; do mkdir -p $R/$d; done; "
              "for d in bin sbin lib lib64; do [ -L /$d ] && ln -sfn $(readlink /$d) $R/$d; done; "
              "mount --bind -o ro /usr $R/usr; mount -t proc proc $R/proc; "
              "mknod -m 666 $R/dev/null c 1 3; "
              "chroot $R /bin/sh /var/lib/amic/stage2/freeze hold 5; echo exit $?")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
                           "--kill-child", "sh", "-c", script.replace("; echo", " || echo")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert "amic-freeze: not frozen: / is not a mount point of its own" in proc.stdout, proc
    assert "exit 3" in proc.stdout


def test_refuses_anywhere_but_its_install_path():
    """Run from the repository (as a test or a user on a host would), it refuses first."""
    for shell in SHELLS.values():
        proc = subprocess.run([*shell.split(), str(GUARD), "hold", "1"], capture_output=True,
                              text=True, timeout=30, check=False)
        assert proc.returncode == 3, proc
        assert "not frozen: run as" in proc.stdout
        for bad in ("0", "-1", "1x", "007"):
            proc = subprocess.run([*shell.split(), str(GUARD), "hold", bad], capture_output=True,
                                  text=True, timeout=30, check=False)
            assert proc.returncode == 3 and "expected whole seconds" in proc.stdout, (bad, proc)


def test_shellcheck_clean_and_parses_everywhere():
    exe = shutil.which("shellcheck")
    assert exe, "shellcheck is missing (.ci/run installs it)"
    proc = subprocess.run([exe, "-s", "sh", str(GUARD)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    for shell in ("dash", "busybox sh", "bash --posix"):
        proc = subprocess.run([*shell.split(), "-n", str(GUARD)], capture_output=True, text=True)
        assert proc.returncode == 0, (shell, proc.stderr)

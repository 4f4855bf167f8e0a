"""A command in a local root cannot reach the host (rootfs.chroot_argv, local/confine.py).

INIT, UPDATE, ``amic shell`` and the exports run as root in an overlay of the image. Under a
plain ``chroot`` with every capability, a hostile INIT read and wrote the host's files
through the double-chroot escape and could mount, ``mknod`` and change the host's kernel
settings. These tests make each of those attempts for real, in real namespaces, and check
that the host saw nothing: the escape through the CLI (an INIT of an Amifile), the rest in
a throwaway root of the cached base.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from amic.targets.local import confine

from tests.harness.cli import run_amic
from tests.harness.roots import Root

pytestmark = [pytest.mark.root]

ESCAPE = """\
perl -e 'mkdir "/esc"; chroot "/esc" or die "chroot: $!"; chdir ".." for 1..64;
chroot "." or die "chroot: $!";
if (open(my $in, "<", "{marker}")) {{ print "ESCAPED: ", <$in> }}
if (open(my $out, ">", "{planted}")) {{ print $out "written from a root\\n"; print "WROTE\\n" }}
print "escape attempt done\\n"'
"""


def escape_script(marker: Path, planted: Path) -> str:
    return ESCAPE.format(marker=marker, planted=planted)


@pytest.fixture
def root(tmp_path) -> Root:
    return Root(tmp_path / "root")


@pytest.fixture
def host_files(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "host" / "marker"
    marker.parent.mkdir()
    marker.write_text("host secret\n")
    return marker, tmp_path / "host" / "planted"


@pytest.mark.slow
def test_an_init_cannot_escape_its_root_with_a_double_chroot(tmp_path, local_store, host_files):
    """The classic escape (chroot into a subdirectory, ``..`` past the old root, chroot
    ".") as an Amifile's INIT, through ``amic build``: it ends in the image's own root,
    neither reading the host's marker nor writing beside it."""
    marker, planted = host_files
    project = tmp_path / "project"
    project.mkdir()
    init = escape_script(marker, planted).replace("\n", " ")
    (project / "Amifile").write_text(f"FROM debian:12\nSERVICE esc\n    INIT {init}\n")
    proc = run_amic("build", "--target", "local", cwd=project, timeout=900,
                    env={**os.environ, "AMIC_CACHE_DIR": str(local_store)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "escape attempt done" in proc.stderr, proc.stderr[-3000:]
    assert "ESCAPED" not in proc.stderr and "host secret" not in proc.stderr
    assert "WROTE" not in proc.stderr and not planted.exists()


def test_the_escape_from_a_root_ends_in_the_root(root, host_files):
    marker, planted = host_files
    rc, out = root.run(escape_script(marker, planted))
    assert rc == 0, out
    assert "escape attempt done" in out and "ESCAPED" not in out and "WROTE" not in out
    assert not planted.exists()


def test_a_root_command_has_a_containers_capabilities_only(root):
    _, out = root.run("grep '^Cap' /proc/self/status")
    caps = dict(line.split(":\t") for line in out.splitlines())
    kept = confine.kept_mask(pivoted=True)
    assert int(caps["CapBnd"], 16) == kept, out
    assert int(caps["CapEff"], 16) == kept and int(caps["CapPrm"], 16) == kept, out
    assert int(caps["CapInh"], 16) == 0 and int(caps["CapAmb"], 16) == 0, out
    for dropped in (21, 16, 17, 27, 12, 13, 2, 22, 25):  # sys_admin ... sys_time
        assert not kept >> dropped & 1, dropped


def test_setuid_root_programs_get_no_more(root):
    """The bounding set caps what any later exec gains: ``su`` (setuid root) to root again
    and the capabilities are still the kept ones."""
    _, out = root.run("su -s /bin/sh -c \"grep '^CapEff' /proc/self/status\" root")
    assert int(out.split()[-1], 16) == confine.kept_mask(pivoted=True), out


def test_mounts_devices_and_kernel_settings_are_refused(root):
    host_name = socket.gethostname()
    try:
        rc, out = root.run("mount -t tmpfs none /mnt && echo MOUNTED; "
                           "mknod /tmp/disk b 8 0 && echo MKNOD; "
                           "echo evil > /proc/sys/kernel/hostname && echo SYSCTL; "
                           "hostname evil && echo HOSTNAME; "
                           "mount -o remount,rw /proc/sys && echo REMOUNT; "
                           "mount -o remount,rw /sys && echo SYSFS; "
                           "umount -l /proc/sys && echo UNMASKED; echo done", check=None)
    finally:
        # under the plain chroot this test replaced, the first two renamed the host itself
        if socket.gethostname() != host_name:
            socket.sethostname(host_name)
            pytest.fail("a command in a root renamed the host")
    assert out.splitlines()[-1] == "done", out
    for word in ("MOUNTED", "MKNOD", "SYSCTL", "HOSTNAME", "REMOUNT", "SYSFS", "UNMASKED"):
        assert word not in out.split(), out
    assert socket.gethostname() == host_name


def test_the_hosts_tree_is_not_mounted_in_the_root(root, tmp_path):
    """No mount in the root's namespace shows a host path."""
    _, out = root.run("cut -d' ' -f5 /proc/1/mountinfo")
    points = out.split()
    assert "/" in points and "/proc" in points
    host_only = [p for p in points if p.startswith(("/work", "/tmp/pytest", str(tmp_path)))]
    assert host_only == [], out


def test_kernel_files_that_reveal_or_change_the_host_are_masked(root):
    masked = [f for f in ("keys", "timer_list", "kallsyms", "sysrq-trigger", "kcore")
              if Path("/proc", f).exists()]
    _, out = root.run("for f in " + " ".join(masked) + "; do "
                      "stat -c '%n %F %t,%T' /proc/$f; done; echo end")
    for f in masked:
        assert f"/proc/{f} character special file 1,3" in out, out


def test_the_hostname_of_a_root_is_its_own(root):
    """A UTS namespace of its own: a package that reads the hostname sees the host's name,
    and nothing a root does to it (refused above anyway) could reach the host."""
    _, out = root.run("readlink /proc/self/ns/uts")
    assert out.strip() != os.readlink("/proc/self/ns/uts")


def test_without_a_mount_point_root_the_chroot_capability_is_dropped_too():
    assert confine.kept_mask(pivoted=False) == confine.kept_mask(pivoted=True) & ~(1 << 18)


def test_the_host_check_reads_mountinfo():
    """This machine's ``/`` is a mount point (not an initramfs): the pivot_root path."""
    with open("/proc/self/mountinfo") as fh:
        root_line = next(line for line in fh if line.split()[4] == "/")
    fstype = root_line.split(" - ", 1)[1].split()[0]
    assert confine.root_is_mount_point() == (fstype not in ("rootfs", "ramfs"))


def test_confine_refuses_a_bad_command_line():
    proc = subprocess.run(["python3", "-I", "-S", confine.__file__], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "usage: confine.py ROOT COMMAND" in proc.stderr


def _run_argv(root: Root, argv: list[str]) -> subprocess.CompletedProcess:
    scratch = root.upper.parent / "scratch"
    scratch.mkdir(exist_ok=True)
    from amic.targets.local import rootfs
    return subprocess.run(rootfs.chroot_argv(root.lowers, root.upper, scratch, argv),
                          capture_output=True, text=True, env=rootfs.CLEAN_ENV, timeout=120)


def test_a_command_named_without_a_path_is_found_in_the_roots_path(root):
    """As ``amic export`` runs ``tar``: looked up in the root after the host's tree is gone
    (``os.execvp`` would import a module there and fail, exit 1, which tar's callers take
    for "a file changed")."""
    proc = _run_argv(root, ["tar", "--version"])
    assert proc.returncode == 0 and "GNU tar" in proc.stdout, proc.stderr


def test_a_command_missing_from_the_root_is_a_clear_error(root):
    proc = _run_argv(root, ["no-such-program", "x"])
    assert proc.returncode == 127, proc
    assert "no-such-program: not found in the root" in proc.stderr
    assert "Traceback" not in proc.stderr

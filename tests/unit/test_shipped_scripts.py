"""The shell scripts amic ships (``*.sh`` package data): shellcheck-clean, shipped, and
working under dash and busybox sh, as ``runtime/amic`` is.

The targets' scripts live in ``compiler/amic/targets/<target>/scripts/`` and are read
with :func:`amic.targets.scripts.script`; values reach them as arguments or environment
variables, so the tests below give them names no string formatting would survive.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shlex
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

from amic.targets.local import disk, rootfs
from amic.targets.scripts import script
from tests.harness import tools
from tests.harness.diskroot import HOSTILE_NAME, SHELLS, debugfs, run_make_root

REPO = Path(__file__).resolve().parents[2]
SHIPPED_TREES = ("compiler", "runtime", "services")
SHELL_SCRIPTS = sorted(p for tree in SHIPPED_TREES for p in (REPO / tree).rglob("*.sh"))
# Stand-in for a host whose userland is busybox (Alpine): its applets first in PATH.
USERLANDS = ["dash", "busybox", "busybox-userland"]


def setuptools_config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def package_dir(config: dict, package: str) -> Path:
    """The folder setuptools takes ``package`` from (its ``package-dir`` mapping)."""
    mapping = config.get("package-dir", {})
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in mapping:
            return REPO.joinpath(mapping[prefix], *parts[n:])
    return REPO.joinpath(mapping.get("", "."), *parts)


def unshipped(config: dict, files: list[Path]) -> list[str]:
    """The files a wheel built with ``config`` would leave out: each must be in a listed
    package's folder and matched by a package-data pattern of that package or a parent."""
    dirs = {package_dir(config, p): p for p in config["packages"]}
    data = config.get("package-data", {})
    missing = []
    for f in files:
        covered = f.parent in dirs and any(
            fnmatch.fnmatch(f.relative_to(d).as_posix(), pattern)
            for d, package in dirs.items() if f.is_relative_to(d)
            for pattern in (*data.get(package, ()), *data.get("*", ()), *data.get("", ())))
        if not covered:
            missing.append(f.relative_to(REPO).as_posix())
    return missing


def test_the_targets_scripts_are_found() -> None:
    names = {p.relative_to(REPO / "compiler/amic/targets").as_posix() for p in SHELL_SCRIPTS
             if p.is_relative_to(REPO / "compiler")}
    assert {"local/scripts/enter.sh", "local/scripts/vm-layer.sh", "local/scripts/make-root.sh",
            "local/scripts/nspawn-boot.sh",
            "ssh/scripts/stop-session.sh", "ssh/scripts/install-upload.sh"} <= names, names


def test_every_sh_file_is_package_data() -> None:
    assert unshipped(setuptools_config(), SHELL_SCRIPTS) == []


def test_a_sh_file_left_out_of_package_data_is_found() -> None:
    # Positive control: without its package-data line, or its package, a script is caught.
    no_data, no_package = setuptools_config(), setuptools_config()
    del no_data["package-data"]["amic.targets.ssh.scripts"]
    no_package["packages"].remove("amic.targets.ssh.scripts")
    for config in (no_data, no_package):
        assert unshipped(config, SHELL_SCRIPTS) == [
            "compiler/amic/targets/ssh/scripts/install-upload.sh",
            "compiler/amic/targets/ssh/scripts/stop-session.sh"]


def test_every_sh_file_passes_the_pinned_shellcheck() -> None:
    proc = subprocess.run([tools.pinned_shellcheck(), "-s", "sh", *map(str, SHELL_SCRIPTS)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck_here_catches_a_bashism(tmp_path: Path) -> None:
    # Positive control for the test above: the same call fails on a non-POSIX script.
    bad = tmp_path / "bad.sh"
    bad.write_text('# shellcheck shell=sh\nif [[ -n "$1" ]]; then echo "$1"; fi\n')
    proc = subprocess.run([tools.pinned_shellcheck(), "-s", "sh", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "SC3010" in proc.stdout


@pytest.mark.parametrize("shell", SHELLS)
def test_every_sh_file_parses_under_each_shell(shell: str) -> None:
    tools.require(SHELLS[shell][0])
    for path in SHELL_SCRIPTS:
        proc = subprocess.run([*SHELLS[shell], "-n", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{path}: {proc.stderr}"


def shell_env(userland: str, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """The shell command and environment a script runs with on a host of ``userland``."""
    shell = SHELLS["busybox" if userland.startswith("busybox") else userland]
    exe = tools.require(shell[0])
    env = dict(rootfs.CLEAN_ENV)
    if userland == "busybox-userland":
        applets = tmp_path / "bb"
        applets.mkdir()
        subprocess.run([exe, "--install", "-s", str(applets)], check=True)
        env["PATH"] = f"{applets}:{env['PATH']}"
    return shell, env


# Inside a PID namespace of its own: three sleeps, two of the session to stop (one ignores
# TERM), one of another session; the script; then which had ended and, once everything
# left is killed, how each ended (128 + signal).
STOP_DRIVER = r"""
AMIC_SESSION=mine sleep 60 & mine=$!
AMIC_SESSION=mine sh -c 'trap "" TERM; exec sleep 60' & stubborn=$!
AMIC_SESSION=other sleep 60 & other=$!
for _ in $(seq 200); do   # until all three are the sleep (the trap is set), not a fork
    [ "$(cat /proc/$mine/comm /proc/$stubborn/comm /proc/$other/comm | sort -u)" = sleep ] && break
    sleep 0.05
done
AMIC_STOP_TOKEN=mine $SHELL_CMD -c "$STOP_SCRIPT"; echo "script exit $?"
state() {   # ended: reaped already, or a zombie
    case $(cut -d' ' -f3 /proc/$1/stat 2>/dev/null) in ''|Z) echo ended ;; *) echo running ;; esac
}
for pid in $mine $stubborn; do   # a KILL sent as the script exits takes effect soon after
    for _ in $(seq 100); do [ "$(state $pid)" = ended ] && break; sleep 0.05; done
    state $pid
done
state $other
kill -s KILL $mine $stubborn $other 2>/dev/null
for pid in $mine $stubborn $other; do wait $pid; echo $?; done
"""


@pytest.mark.root
@pytest.mark.parametrize("userland", USERLANDS)
def test_stop_session_stops_its_session_and_nothing_else(userland: str, tmp_path: Path) -> None:
    shell, env = shell_env(userland, tmp_path)
    env.update(SHELL_CMD=shlex.join(shell),
               STOP_SCRIPT=script("amic.targets.ssh", "stop-session.sh"))
    # util-linux's unshare (PATH may start with busybox's): --kill-child ends the namespace
    proc = subprocess.run([tools.require("unshare"), "--pid", "--fork", "--kill-child",
                           "--mount-proc", *shell, "-c", STOP_DRIVER],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["script", "exit", "0", "ended", "ended", "running",
                                  "143", "137", "137"], \
        proc.stdout + proc.stderr


def run_install_upload(shell: list[str], env: dict[str, str], tmp_path: Path, dest: Path,
                       mode: str = "640") -> tuple[subprocess.CompletedProcess, Path]:
    upload_dir = tmp_path / "upload"
    upload_dir.mkdir(mode=0o700)
    (upload_dir / "file").write_text("payload\n")
    env = {**env, "AMIC_UPLOAD_FILE": str(upload_dir / "file"), "AMIC_UPLOAD_DIR": str(upload_dir),
           "AMIC_UPLOAD_PART": f"{dest}.amic-0123", "AMIC_UPLOAD_DEST": str(dest),
           "AMIC_UPLOAD_MODE": mode}
    proc = subprocess.run([*shell, "-c", script("amic.targets.ssh", "install-upload.sh")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    return proc, upload_dir


@pytest.mark.root
@pytest.mark.parametrize("userland", USERLANDS)
def test_install_upload_moves_the_file_into_place_as_root(userland: str, tmp_path: Path) -> None:
    shell, env = shell_env(userland, tmp_path)
    target = tmp_path / HOSTILE_NAME
    target.mkdir()
    dest = target / HOSTILE_NAME
    dest.write_text("old\n")
    proc, upload_dir = run_install_upload(shell, env, tmp_path, dest)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    st = dest.stat()
    assert dest.read_text() == "payload\n"
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, 0)
    assert sorted(os.listdir(target)) == [HOSTILE_NAME]   # no temporary name left
    assert not upload_dir.exists() and not (tmp_path / "pwned").exists()


@pytest.mark.root
@pytest.mark.parametrize("userland", USERLANDS)
def test_install_upload_fails_into_a_missing_folder_and_still_cleans_up(
        userland: str, tmp_path: Path) -> None:
    shell, env = shell_env(userland, tmp_path)
    proc, upload_dir = run_install_upload(shell, env, tmp_path, tmp_path / "missing" / "x")
    assert proc.returncode != 0
    assert not upload_dir.exists()


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.parametrize("shell", SHELLS)
def test_enter_runs_a_command_in_the_overlay_under_each_shell(shell: str, tmp_path: Path) -> None:
    tools.require(SHELLS[shell][0])
    upper = tmp_path / "upper"
    argv = rootfs.chroot_argv([rootfs.ensure_base()], upper, tmp_path / "scratch",
                              ["/bin/sh", "-c", 'echo "$0 $1" > /marker; test -c /dev/null; '
                               "readlink /dev/ptmx; cat /etc/debian_version >/dev/null; "
                               'echo "pid $$"', HOSTILE_NAME, "two words"])
    at = argv.index("sh")
    assert argv[at + 1] == "-c"
    argv[at:at + 1] = SHELLS[shell]
    proc = subprocess.run(argv, env=rootfs.CLEAN_ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == ["pts/ptmx", "pid 1"], proc.stdout + proc.stderr
    assert (upper / "marker").read_text() == f"{HOSTILE_NAME} two words\n"
    assert not (upper / "dev").exists() and not (upper / "pwned").exists()


# The VM layer's key hashes VM_SCRIPT: a change to vm-layer.sh makes every user's VM layer
# again (minutes of apt and GRUB per image). When that is meant, update this pin with it.
VM_SCRIPT_SHA256 = "c72fe29d36e3372c3b61ea5bd627effc075dab604ee75f4176cbfc055f509641"


def test_the_vm_layer_script_is_the_text_its_key_was_made_from() -> None:
    assert hashlib.sha256(disk.VM_SCRIPT.encode()).hexdigest() == VM_SCRIPT_SHA256
    # what finds the root at boot and what labels it agree with disk.py
    assert f"search --no-floppy --label {disk.ROOT_LABEL} --set=root\n" in disk.VM_SCRIPT
    assert f" -L {disk.ROOT_LABEL} " in script("amic.targets.local", "make-root.sh")


def heredoc(text: str, opener: str) -> str:
    """The body of the quoted here-document that starts with the line ``opener``."""
    body = text.split(f"\n{opener} <<'EOF'\n", 1)[1]
    return body[:body.index("\nEOF\n") + 1]


def test_the_growroot_script_the_vm_layer_installs_is_clean(tmp_path: Path) -> None:
    # A quoted here-document inside vm-layer.sh: shellcheck does not look into it there.
    grow = tmp_path / "growroot.sh"
    grow.write_text(heredoc(disk.VM_SCRIPT, "cat > /usr/lib/amic-vm/growroot"))
    assert "resize2fs" in grow.read_text()
    proc = subprocess.run([tools.pinned_shellcheck(), "-s", "sh", str(grow)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for shell in SHELLS.values():
        tools.require(shell[0])
        proc = subprocess.run([*shell, "-n", str(grow)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{shell}: {proc.stderr}"


def masked_units(raw: Path) -> set[str]:
    """Units masked in the disk's /etc/systemd/system (symbolic links to /dev/null)."""
    listing = debugfs(raw, "ls -l /etc/systemd/system")
    names = {line.split()[-1] for line in listing.splitlines() if line.strip()}
    return {name for name in names - {".", ".."}
            if debugfs(raw, f"stat /etc/systemd/system/{name}").find('Fast link dest: "/dev/null"')
            >= 0}


@pytest.mark.root
@pytest.mark.parametrize("shell", SHELLS)
def test_make_root_writes_the_root_file_system_of_a_disk(shell: str, tmp_path: Path) -> None:
    scratch, raw, root_uuid = run_make_root(shell, tmp_path)
    out = scratch / "out"
    assert (out / "core.img").read_text() == "usr/lib/amic-vm/core.img\n"
    root_mib = int((out / "root-mib").read_text())
    assert root_mib == (int((out / "used-kib").read_text()) * 5 // 4 + 256 * 1024) // 1024 + 1
    assert raw.stat().st_size == disk.ROOT_START + root_mib * disk.MIB + disk.TAIL
    fs = f"{raw}?offset={disk.ROOT_START}"
    listing = subprocess.run(["dumpe2fs", "-h", fs], capture_output=True, text=True).stdout
    assert f"Filesystem volume name:   {disk.ROOT_LABEL}" in listing, listing
    assert f"Filesystem UUID:          {root_uuid}" in listing, listing

    def cat(path: str) -> str:
        return debugfs(raw, f"cat {path}")

    grub = cat("/boot/grub/grub.cfg")
    # EC2 (no profile): the console on the screen and the serial port, everything printed
    assert (f"linux /boot/vmlinuz-6.1.0-28-cloud-amd64 root=UUID={root_uuid} ro "
            "console=tty0 console=ttyS0,115200n8\n") in grub, grub
    assert "initrd /boot/initrd.img-6.1.0-28-cloud-amd64" in grub, grub
    assert cat("/etc/fstab") == f"UUID={root_uuid} / ext4 defaults,errors=remount-ro 0 1\n"
    assert cat("/root/.ssh/authorized_keys") == "ssh-ed25519 AAAA test\n"
    assert cat("/etc/hostname") == "etc/hostname\n"
    assert "jq.deb" not in debugfs(raw, "ls /var/cache/apt/archives")
    assert masked_units(raw) == set()
    assert not list((scratch / "merged").iterdir())     # unmounted with its namespace
    assert not (tmp_path / "pwned").exists()


# Units a dev VM's disk must never mask: what the boot hook waits for (the network, the host
# keys, the hook itself), sshd, the serial console's getty, journald, and logind (it turns
# the ACPI power button into a clean power-off: `amic stop`).
KEEP_UNITS = re.compile(r"^(amic.*|systemd-network.*|systemd-resolved.*|ssh.*|serial-getty@.*"
                        r"|systemd-journald.*|systemd-logind.*|systemd-udev.*|dbus.*"
                        r"|.*\.target)$")


@pytest.mark.root
def test_make_root_makes_a_dev_vm_disk_quiet_and_trimmed(tmp_path: Path) -> None:
    scratch, raw, root_uuid = run_make_root("dash", tmp_path, "devvm")
    grub = debugfs(raw, "cat /boot/grub/grub.cfg")
    # serial only (no VGA console to draw under emulation), warnings and worse, and no IPv6
    # duplicate address detection to wait for (kernelboot.CONSOLE: a direct boot's too)
    assert (f"linux /boot/vmlinuz-6.1.0-28-cloud-amd64 root=UUID={root_uuid} ro "
            "console=ttyS0,115200n8 quiet sysctl.net.ipv6.conf.default.dad_transmits=0 "
            "random.trust_cpu=on\n"
            ) in grub, grub
    masked = masked_units(raw)
    assert {"getty@tty1.service", "apt-daily.timer", "systemd-update-utmp.service"} <= masked
    assert not {u for u in masked if KEEP_UNITS.match(u)}, masked
    assert debugfs(raw, "cat /etc/systemd/system/multi-user.target.wants/ssh.service") \
        == "etc/systemd/system/multi-user.target.wants/ssh.service\n"
    assert not (tmp_path / "pwned").exists()

"""The compiled stage2 on real Debian root filesystems.

Each test compiles an Amifile with the real compiler chain, uploads and
unpacks the tarball in a throwaway overlay of the cached debootstrap base and
runs the runner there with real package installs from the Debian archive.
The boot test boots the root for real with ``systemd-nspawn -b`` so the
systemd unit fires after network-online.target, three times: first boot of
the baked image, a reboot, and a boot with one more service requested.
Nothing runs on the test machine's own ``/``.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.harness.roots import RUNNER, Root, compile_stage2, markers, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.root]


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


PACKAGES_AMIFILE = """\
ENABLE tools broken after-broken solo missing-pkg

SERVICE tools
    PACKAGES hello jq
    COPY --mode=0755 bin/greet /usr/local/bin/greet
    INIT <<~EOF
        hello > "$AMIC_DATA_DIR/hello.out"
        echo '{"a": 41}' | jq '.a + 1' > "$AMIC_DATA_DIR/jq.out"
    EOF
    UPDATE greet >> /root/updates

SERVICE broken
    REQUIRES tools
    INIT echo "broken ran" >> /root/ran
    INIT <<~EOF
        echo "about to fail"
        exit 7
    EOF

SERVICE after-broken
    REQUIRES broken
    INIT echo "after-broken ran" >> /root/ran

SERVICE solo
    INIT echo "solo ran" >> /root/ran
    UPDATE echo "solo updated" >> /root/updates

SERVICE missing-pkg
    PACKAGES amic-no-such-package-xyz
    INIT echo "missing-pkg ran" >> /root/ran
"""


def test_real_packages_and_failing_init(tmp_path: Path) -> None:
    root = Root(tmp_path)
    tar = compile_stage2(tmp_path / "ctx", PACKAGES_AMIFILE,
                         {"bin/greet": ("#!/bin/sh\necho greetings from $AMIC_SERVICE\n", 0o644)})
    root.install_stage2(tar)

    rc, out = root.run(f"{RUNNER} init", check=None)
    assert rc == 1, out
    ms = markers(out)
    assert re.fullmatch(r"tools: init: ok \d+s", ms[1]), ms
    # the failing INIT names the service and the Amifile line of the command that failed
    fail_line = [i for i, line in enumerate(PACKAGES_AMIFILE.splitlines(), 1)
                 if line.strip() == "exit 7"][0]
    assert f"broken: init: FAILED exit 7 at Amifile:{fail_line}" in ms, ms
    assert "amic: broken: init: INIT script 02 failed (exit 7)" in out
    assert "after-broken: init: skipped (requires broken, which did not initialise)" in ms
    assert re.search(r"solo: init: ok \d+s", out)   # unrelated services go on
    # a failed package install points at the PACKAGES line
    pkg_line = line_of(PACKAGES_AMIFILE, "PACKAGES amic-no-such-package-xyz")
    assert any(re.fullmatch(rf"missing-pkg: init: FAILED exit \d+ at Amifile:{pkg_line}", m) for m in ms), ms
    assert "Unable to locate package amic-no-such-package-xyz" in out
    assert "refreshing the package index (apt-get update)" in out   # stale index: refresh once, retry
    assert root.read("/root/ran").splitlines() == ["broken ran", "solo ran"]

    # the real packages are there and the COPY got its mode
    root.run("dpkg -s hello jq >/dev/null && hello --version >/dev/null")
    assert root.read("/var/lib/amic/data/tools/jq.out") == "42\n"
    assert root.file("/usr/local/bin/greet").stat().st_mode & 0o777 == 0o755

    st = {s["name"]: s for s in root.status()["services"]}
    assert st["broken"]["init"]["state"] == "failed" and st["broken"]["init"]["failed_exit"] == "7"
    assert st["broken"]["init"]["failed_where"] == f"Amifile:{fail_line}"
    assert st["tools"]["init"]["state"] == "current" and st["after-broken"]["init"]["state"] == "missing"
    rc, text = root.run(f"{RUNNER} status", check=None)
    assert rc == 1 and "FAILED" in text

    # re-running init: done services are skipped, the package install is not repeated
    rc, out = root.run(f"{RUNNER} init tools solo", check=None)
    assert rc == 0, out
    assert [m.split(" (")[0] for m in markers(out)] == ["tools: init: skipped", "solo: init: skipped"]
    assert "apt-get" not in out and "installing packages" not in out

    rc, out = root.run(f"{RUNNER} update", check=None)
    assert rc == 1     # broken (and its dependent) are enabled but not initialised
    assert root.read("/root/updates").splitlines() == ["greetings from tools", "solo updated"]
    assert "broken: update: skipped (init failed)" in markers(out) or \
        "broken: update: skipped (not initialised; run: amic init broken)" in markers(out)


KILL_AMIFILE = """\
SERVICE first
    INIT echo "first ran" >> /root/ran

SERVICE slow
    REQUIRES first
    INIT <<~EOF
        echo "slow started" >> /root/ran
        if [ ! -e "$AMIC_DATA_DIR/was-killed" ]; then
            touch "$AMIC_DATA_DIR/was-killed"
            sleep 300
        fi
        echo "slow finished" >> /root/ran
    EOF

SERVICE last
    REQUIRES slow
    INIT echo "last ran" >> /root/ran
"""


def test_kill_in_the_middle_of_init_then_rerun(tmp_path: Path) -> None:
    root = Root(tmp_path)
    root.install_stage2(compile_stage2(tmp_path / "ctx", KILL_AMIFILE))
    proc, scratch = root.start(f"{RUNNER} init")
    try:
        assert wait_for(lambda: (root.upper / "var/lib/amic/data/slow/was-killed").exists(), 60)
    finally:
        out = Root.kill(proc, scratch)
    assert "slow: init: begin" in out and "slow: init: ok" not in out

    # the unfinished init is not recorded as done; the finished one is
    assert root.exists("/var/lib/amic/init/first")
    assert not root.exists("/var/lib/amic/init/slow")
    assert root.exists("/var/lib/amic/init/slow.running")
    st = {s["name"]: s for s in root.status()["services"]}
    assert st["slow"]["init"]["state"] == "interrupted" and st["last"]["init"]["state"] == "missing"

    # the re-run does only what did not finish (and is not blocked by the dead run's lock)
    rc, out = root.run(f"timeout 60 {RUNNER} init", check=None)
    assert rc == 0, out
    assert re.search(r"amic: slow: an init started \S+ did not finish: re-running it from the start", out)
    assert [m.split(" (")[0].rsplit(" ", 1)[0] if " ok " in m else m.split(" (")[0]
            for m in markers(out)] == ["first: init: skipped", "slow: init: begin", "slow: init: ok",
                                       "last: init: begin", "last: init: ok"]
    assert root.read("/root/ran").splitlines() == [
        "first ran", "slow started", "slow started", "slow finished", "last ran"]
    assert not root.exists("/var/lib/amic/init/slow.running")


BOOT_AMIFILE = """\
ENABLE web

SERVICE base
    PACKAGES openssh-server
    INIT echo "init base" >> /root/order
    UPDATE echo "update base network-online=$(systemctl is-active network-online.target)" >> /root/order

SERVICE web
    REQUIRES base
    INIT echo "init web" >> /root/order
    UPDATE echo "update web" >> /root/order

SERVICE mid
    REQUIRES base
    INIT echo "init mid" >> /root/order
    UPDATE echo "update mid" >> /root/order

SERVICE extra
    REQUIRES mid
    INIT echo "init extra" >> /root/order
    UPDATE echo "update extra" >> /root/order
"""

# Test only: once amic.service is done, record what systemd says about it, then power off.
POWEROFF_UNIT = """\
[Unit]
Description=amic test: record the boot hook's outcome and power off
After=amic.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'n=$(cat /root/boots 2>/dev/null || echo 0); n=$((n+1)); echo $n > /root/boots; \
systemctl show -p Result -p ExecMainStatus -p ActiveState amic.service > /root/boot-$n.unit; \
journalctl -b -o cat -u amic.service > /root/boot-$n.journal 2>&1; \
ls /etc/ssh > /root/boot-$n.ssh'
ExecStartPost=/bin/systemctl poweroff --no-block

[Install]
WantedBy=multi-user.target
"""


def nspawn_boot(root: Root, timeout: int = 180) -> str:
    """Boot the root with systemd-nspawn -b (the overlay mounted in a private mount namespace)."""
    scratch = Path(tempfile.mkdtemp(prefix=".nspawn-", dir=root.upper.parent))
    (scratch / "m").mkdir()
    (scratch / "w").mkdir()
    lowers = ":".join(str(p) for p in root.lowers)
    script = (f'mount -t overlay overlay -o "lowerdir={lowers},upperdir={root.upper},'
              f'workdir={scratch}/w" "{scratch}/m" && '
              f'exec systemd-nspawn --register=no --keep-unit -q --private-network -D "{scratch}/m" -b')
    proc = subprocess.run(["timeout", str(timeout), "unshare", "--mount", "--propagation", "private",
                           "sh", "-c", script], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"boot failed or hung (exit {proc.returncode}):\n{out[-4000:]}"
    return out


def test_boot_hook_under_systemd_nspawn(tmp_path: Path) -> None:
    root = Root(tmp_path)
    root.install_stage2(compile_stage2(tmp_path / "ctx", BOOT_AMIFILE))
    build_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAmicBuildKey amic-build-test"

    # bake: init the enabled set, install the hook, clean up for imaging
    root.put("/root/.ssh/authorized_keys", build_key + "\n", 0o600)
    rc, out = root.run(f"{RUNNER} init && {RUNNER} install-boot-hook && "
                       f"{RUNNER} prepare-image --remove-authorized-key '{build_key}'", check=None)
    assert rc == 0, out
    assert root.read("/root/order").splitlines() == ["init base", "init web"]
    _, keys = root.run("ls /etc/ssh")
    assert "ssh_host_ed25519_key" not in keys and "sshd_config" in keys
    assert root.read("/root/.ssh/authorized_keys") == ""
    root.put("/etc/systemd/system/amic-test-poweroff.service", POWEROFF_UNIT)
    root.run("ln -sf ../amic-test-poweroff.service "
             "/etc/systemd/system/multi-user.target.wants/amic-test-poweroff.service")

    # first boot of the image: UPDATE runs (after network-online), INIT does not
    console = nspawn_boot(root)
    assert "amic: boot: ok" in console
    assert root.read("/root/order").splitlines()[2:] == [
        "update base network-online=active", "update web"]
    assert "Result=success" in root.read("/root/boot-1.unit")
    journal = root.read("/root/boot-1.journal")
    assert "amic: web: init: skipped" in journal and "amic: web: update: ok" in journal
    assert "ssh_host_ed25519_key" in root.read("/root/boot-1.ssh")   # regenerated before sshd
    assert root.read("/etc/machine-id").strip()

    # reboot: UPDATE again, still no INIT
    nspawn_boot(root)
    assert root.read("/root/order").splitlines()[4:] == [
        "update base network-online=active", "update web"]

    # request one more service for this machine: its missing dependency, then it, then updates
    root.put("/etc/amic/services", "extra\n")
    nspawn_boot(root)
    assert root.read("/root/order").splitlines()[6:] == [
        "init mid", "init extra",
        "update base network-online=active", "update web", "update mid", "update extra"]
    journal = root.read("/root/boot-3.journal")
    assert "amic: base: init: skipped" in journal and "amic: mid: init: begin" in journal
    st = {s["name"]: s for s in root.status()["services"]}
    assert all(st[s]["enabled"] and st[s]["init"]["state"] == "current"
               and st[s]["update"]["result"] == "ok" for s in ("base", "web", "mid", "extra"))
    assert root.read("/root/boots").strip() == "3"

"""``amic up`` and the dev VM commands against real QEMU (TCG here, KVM where it works).

One image is built for the module in a store of this run's own (the debootstrap base
and the package download cache are shared, as in ``test_devvm.py``); its Amifile's
``web`` service is busybox httpd on port 80 serving ``/srv/www``. ONE VM is booted for
the whole module (each boot costs ~45 s of CPU under TCG): ``amic up -p HOST:80 --mount
www:/srv/www``, then, through the real CLI, HTTP from the host through the forwarded
port, the shared folder edited on both sides, ``ssh``, ``ps`` (table and JSON),
``logs``, ``stop`` (ACPI power-off), ``ps`` showing it exited and ``rm``. An ``amic run
--keep`` machine (nspawn) is listed by ``ps`` too, running, then exited. The network is
QEMU user networking with ``restrict=on`` and every forward bound to 127.0.0.1.

Without a boot: the command line's refusals, a registry entry whose pid is alive but
not its QEMU (a reused pid) shown as exited, and ``amic run --vm`` with KVM forced on
this host (kvm_pvm, which boots no stock kernel) named as a VM that did not boot, with
the hint, and its Ctrl-C saying what it does (a second one forces it off).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from amic.targets.local import machines, vm

from tests.harness.cli import AMIC, run_amic

pytestmark = [pytest.mark.slow, pytest.mark.root]

RUNS = Path("/var/cache/amic/e2e-devvm-up-runs")
STORE = RUNS / str(os.getpid())
AMIFILE = """\
FROM debian:12
NAME webdev
ENABLE web
SERVICE web
    PACKAGES busybox
    INIT <<~EOF
        mkdir -p /srv/www
        cat > /etc/systemd/system/webdev-httpd.service <<'UNIT'
        [Unit]
        Description=the project's web service
        After=amic-mounts.service
        [Service]
        ExecStart=/bin/busybox httpd -f -p 80 -h /srv/www
        [Install]
        WantedBy=multi-user.target
        UNIT
        systemctl enable webdev-httpd.service
    EOF
"""


def env() -> dict[str, str]:
    out = {**os.environ, "AMIC_CACHE_DIR": str(STORE)}
    out.pop("AMIC_TARGET", None)
    return out


def amic(*args: str, cwd: Path, check: bool = True, timeout: float | None = None,
         extra: dict | None = None) -> subprocess.CompletedProcess:
    proc = run_amic(*args, cwd=cwd, env={**env(), **(extra or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"amic {' '.join(args)}: exit {proc.returncode}\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}")
    return proc


def figure(name: str, value) -> None:
    line = f"FIGURE {name}: {value}"
    print(line)
    if os.environ.get("AMIC_FIGURES"):
        with open(os.environ["AMIC_FIGURES"], "a") as fh:
            fh.write(line + "\n")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[Path]:
    from amic.targets.local import rootfs

    base = rootfs.ensure_base("debian:12")
    for left in RUNS.glob("*"):
        if left.name.isdigit() and not Path("/proc", left.name).exists():
            shutil.rmtree(left, ignore_errors=True)
    STORE.mkdir(parents=True)
    (STORE / "bases").symlink_to(base.parent)
    shared_packages = rootfs.cache_dir() / "local" / "packages"
    shared_packages.mkdir(parents=True, exist_ok=True)
    (STORE / "local").mkdir()
    (STORE / "local" / "packages").symlink_to(shared_packages)
    proj = tmp_path_factory.mktemp("devvm-up") / "webdev"
    proj.mkdir()
    (proj / "Amifile").write_text(AMIFILE)
    (proj / "www").mkdir()
    (proj / "www" / "index.html").write_text("hello from the host\n")
    amic("build", "--target", "local", "-q", cwd=proj)
    yield proj
    for name in machines.names(_store()):      # a failed test's VM: never left running
        run_amic("rm", "--force", name, cwd=proj, env=env(), timeout=120)
    shutil.rmtree(STORE, ignore_errors=True)


def _store():
    from amic.targets.local.store import ImageStore

    return ImageStore(STORE / "local")


def get(url: str, timeout: float = 10) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.read().decode()


def make_disk() -> None:
    """The image's VM disk, as ``amic up`` and ``run --vm`` make it first (once per image)."""
    from amic.targets.local.target import LocalTarget

    t0 = time.monotonic()
    saved = os.environ.get("AMIC_CACHE_DIR")
    os.environ["AMIC_CACHE_DIR"] = str(STORE)       # as the CLI's environment has it
    try:
        target = LocalTarget(store=STORE / "local")
        vm.cached_disk(target, target.lookup("webdev:latest"), log=lambda line: None)
    finally:
        if saved is None:
            os.environ.pop("AMIC_CACHE_DIR")
        else:
            os.environ["AMIC_CACHE_DIR"] = saved
    figure("the image's VM disk made or found", f"{time.monotonic() - t0:.1f}s")


@pytest.fixture(scope="module")
def web(project: Path) -> Iterator[tuple[Path, int]]:
    """The module's one VM: ``amic up`` with the web port forwarded and www/ shared."""
    make_disk()                  # made once per image: not what is timed
    port = vm.free_port()
    t0 = time.monotonic()
    up = amic("up", "-p", f"{port}:80", "--mount", f"{project / 'www'}:/srv/www", cwd=project)
    assert "webdev is up" in up.stdout and "boot hook ok" in up.stdout, up.stdout + up.stderr
    while True:
        try:
            status, body = get(f"http://127.0.0.1:{port}/", timeout=5)
            break
        except OSError:
            assert time.monotonic() - t0 < 1200, "the web service never answered"
            time.sleep(0.5)
    figure("amic up -> first HTTP answer through -p (" + up.stdout.split("(")[1].split(",")[0]
           + ")", f"{time.monotonic() - t0:.1f}s")
    boot = up.stdout.split("after ")[1].split("s)")[0]
    figure("amic up: power-on -> boot hook done", f"{boot}s")
    assert (status, body) == (200, "hello from the host\n")
    yield project, port


def test_up_serves_the_web_service_on_a_loopback_port(web) -> None:
    project, port = web
    record = machines.load(_store(), "webdev")
    cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes().split(b"\0")
    net = next(a.decode() for a in cmdline if a.startswith(b"user,"))
    assert f"hostfwd=tcp:127.0.0.1:{port}-:80" in net and "restrict=on" in net, net
    assert all(f.startswith("tcp:127.0.0.1:") for f in net.split("hostfwd=")[1:]), net
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                               text=True).stdout
    assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{port}"], \
        listening                       # the local address: loopback alone


def test_the_shared_folder_is_read_write_both_ways(web) -> None:
    project, port = web
    (project / "www" / "from-host.txt").write_text("edited on the host\n")
    seen = amic("ssh", "webdev", "--", "cat", "/srv/www/from-host.txt", cwd=project)
    assert seen.stdout == "edited on the host\n", seen.stdout + seen.stderr
    assert get(f"http://127.0.0.1:{port}/from-host.txt") == (200, "edited on the host\n")
    amic("ssh", "--", "sh", "-c", "'echo written in the guest > /srv/www/from-guest.txt'",
         cwd=project)
    assert (project / "www" / "from-guest.txt").read_text() == "written in the guest\n"
    (project / "www" / "from-host.txt").write_text("changed again\n")
    again = amic("ssh", "--", "cat", "/srv/www/from-host.txt", cwd=project)
    assert again.stdout == "changed again\n", again.stdout
    mounts = amic("ssh", "--", "findmnt", "-no", "FSTYPE,OPTIONS", "/srv/www", cwd=project)
    assert mounts.stdout.startswith("virtiofs") and "rw" in mounts.stdout, mounts.stdout


def test_ssh_runs_a_command_and_passes_its_exit_status(web) -> None:
    project, _ = web
    ok = amic("ssh", "webdev", "--", "/var/lib/amic/stage2/amic", "status", cwd=project)
    assert "web" in ok.stdout, ok.stdout
    failed = amic("ssh", "webdev", "--", "exit", "7", cwd=project, check=False)
    assert failed.returncode == 7, failed


def test_ssh_checks_the_host_key_amic_gave_the_vm(web) -> None:
    # amic made the VM's host key and pinned it (known_hosts in the VM's directory); the
    # guest installed it from the SMBIOS credential instead of making one, and no private
    # key is left on the host. A different key under the alias is refused by ssh itself.
    project, _ = web
    vdir = machines.vm_dir(_store(), "webdev")
    known = vdir / "known_hosts"
    alias, kind, blob = known.read_text().split()
    assert alias == "amic-vm-webdev" and kind == "ssh-ed25519"
    guest = amic("ssh", "webdev", "--", "cat", "/etc/ssh/ssh_host_ed25519_key.pub",
                 "/run/credentials/@system/amic.ssh-host-key.pub", cwd=project).stdout
    assert guest.split()[:2] == [kind, blob] and guest.split()[2:4] == [kind, blob], guest
    keys = amic("ssh", "webdev", "--", "ls", "/etc/ssh", cwd=project).stdout.split()
    assert "ssh_host_ecdsa_key" not in keys, keys           # the guest made no key
    assert not [p.name for p in vdir.iterdir() if p.name.endswith(".smbios")]
    saved = known.read_text()
    other = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(vdir / "other")], check=True)
    try:
        known.write_text(f"{alias} {(vdir / 'other.pub').read_text().split()[0]} "
                         f"{(vdir / 'other.pub').read_text().split()[1]}\n")
        refused = amic("ssh", "webdev", "--", "true", cwd=project, check=False)
        assert refused.returncode == 255, refused
        assert "host key" in refused.stderr.lower(), refused.stderr
    finally:
        known.write_text(saved)
        for name in ("other", "other.pub"):
            (vdir / name).unlink()
    assert other.returncode == 0
    amic("ssh", "webdev", "--", "true", cwd=project)


def test_two_vcpus_and_the_guests_crng_ready_before_the_second_one_starts(web) -> None:
    # Two vCPUs (under TCG too); the emulated CPU's RDRAND seeds the kernel's CRNG before
    # the second vCPU is brought up, so it never flips its getrandom code under running
    # callers, where two emulated vCPUs hung now and then (vm.TCG_CPU). With KVM the guest
    # has the host's CPU: the order holds where that CPU has RDRAND.
    project, _ = web
    assert amic("ssh", "webdev", "--", "nproc", cwd=project).stdout.strip() == "2"
    # and the kernel told to trust it, whatever its own default
    assert "random.trust_cpu=on" in amic("ssh", "webdev", "--", "cat", "/proc/cmdline",
                                          cwd=project).stdout.split()
    flags = amic("ssh", "webdev", "--", "grep", "-m1", "^flags", "/proc/cpuinfo",
                 cwd=project).stdout.split()
    if machines.load(_store(), "webdev").accel == "tcg":
        assert "rdrand" in flags, flags
    if "rdrand" not in flags:
        return
    dmesg = amic("ssh", "webdev", "--", "dmesg", cwd=project).stdout

    def at(text: str) -> float:
        (line,) = [ln for ln in dmesg.splitlines() if text in ln]
        return float(line.split("]", 1)[0].strip("[ "))

    assert at("random: crng init done") < at("smp: Bringing up secondary CPUs"), dmesg[:3000]


def test_ps_lists_the_vm_with_project_image_ports_and_uptime(web) -> None:
    project, port = web
    rows = json.loads(amic("ps", "--json", cwd=project).stdout)
    images = json.loads(amic("images", "--json", cwd=project).stdout)
    (row,) = [r for r in rows if r["name"] == "webdev"]
    assert row["project"] == "webdev" and row["state"] == "running", row
    assert row["image"] == images[0]["id"], (row, images[0])
    assert row["ports"] == [{"host": port, "guest": 80}] and row["uptime"] > 0, row
    table = amic("ps", cwd=project).stdout
    assert "webdev" in table and f"127.0.0.1:{port}->80" in table and "running" in table, table


def test_logs_show_the_boot_log_and_the_console(web) -> None:
    project, _ = web
    out = amic("logs", "webdev", cwd=project).stdout
    assert "==> amic boot log <==" in out and "boot hook ok" in out, out[-2000:]
    assert "amic: boot: ok" in out and "==> serial console <==" in out, out[-2000:]


def test_stop_powers_off_then_ps_shows_exited_and_rm_cleans(web) -> None:
    project, _ = web
    refused = amic("rm", "webdev", cwd=project, check=False)
    assert refused.returncode == 2 and "amic stop webdev" in refused.stderr, refused.stderr
    follower = subprocess.Popen([AMIC, "logs", "--follow", "webdev"], cwd=project, env=env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    stop = amic("stop", "webdev", cwd=project)
    assert "webdev: powered off" in stop.stdout, stop.stdout + stop.stderr
    figure("amic stop (ACPI power-off)", f"{time.monotonic() - t0:.1f}s")
    followed, _ = follower.communicate(timeout=60)      # it ends with the VM
    assert follower.returncode == 0 and "amic: boot: ok" in followed, followed[-2000:]
    assert "Power down" in followed or "Powering off" in followed, followed[-2000:]
    (row,) = json.loads(amic("ps", "--json", cwd=project).stdout)
    assert row["state"] == "exited" and row["uptime"] is None, row
    ssh = amic("ssh", "webdev", cwd=project, check=False)
    assert ssh.returncode == 2 and "not running" in ssh.stderr, ssh.stderr
    amic("rm", "webdev", cwd=project)
    assert not machines.vm_dir(_store(), "webdev").exists()
    assert json.loads(amic("ps", "--json", cwd=project).stdout) == []


def test_a_vm_whose_pid_now_belongs_to_another_process_shows_exited(project: Path) -> None:
    store = _store()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        record = machines.VmRecord(name="ghost", project="webdev", project_id=None,
                                   image="0" * 64, base="/nonexistent", ssh_port=1, key="k",
                                   pid=sleeper.pid, started=time.time(), booted=time.time())
        machines.vm_dir(store, "ghost").mkdir(parents=True)
        machines.save(store, record)
        rows = json.loads(amic("ps", "--json", cwd=project).stdout)
        assert [(r["name"], r["state"]) for r in rows] == [("ghost", "exited")], rows
        assert "was not running" in amic("stop", "ghost", cwd=project).stdout
        amic("rm", "ghost", cwd=project)
        assert sleeper.poll() is None        # the process that had the pid is left alone
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("args, message", [
    (["-p", "99999:80"], "expected HOST:GUEST"),
    (["-p", "80"], None),
    (["--mount", "/nonexistent-dir"], "is not a directory"),
    (["--mount", ".:relative"], "must be absolute"),
    (["--name", "Bad Name"], "VM name"),
    (["--memory", "0"], "above 0"),
])
def test_up_refuses_bad_options_before_booting(project: Path, args, message) -> None:
    if message is None:         # a taken host port
        import socket

        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen()
            port = held.getsockname()[1]
            proc = amic("up", "-p", f"{port}:80", cwd=project, check=False, timeout=60)
        assert proc.returncode == 2 and "is taken" in proc.stderr, proc.stderr
        return
    proc = amic("up", *args, cwd=project, check=False, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_vm_with_kvm_forced_where_it_cannot_boot_says_so(project: Path) -> None:
    if vm.kvm_usable():
        pytest.fail("this test needs a host whose KVM cannot run a stock kernel (kvm_pvm)")
    make_disk()
    start = time.monotonic()
    proc = amic("run", "--vm", "--timeout", "120", cwd=project, check=False,
                extra={"AMIC_QEMU_ACCEL": "kvm"}, timeout=600)
    took = time.monotonic() - start
    assert proc.returncode == 1, proc
    assert "run failed: the VM did not boot" in proc.stderr, proc.stderr[-3000:]
    assert "AMIC_QEMU_ACCEL=tcg" in proc.stderr and "qemu-system-x86_64" in proc.stderr, \
        proc.stderr[-3000:]
    assert "build failed" not in proc.stderr and "Traceback" not in proc.stderr
    assert took < 120, took         # not the boot timeout, let alone twice it
    figure("run --vm, KVM forced on kvm_pvm: error after", f"{took:.1f}s")


def test_ctrl_c_during_a_vm_boot_says_it_powers_off_and_a_second_forces_it(
        project: Path) -> None:
    """On an exported .qcow2 a colleague sent, which ``run --vm`` boots on an overlay."""
    missing = amic("run", "--vm", "nowhere.qcow2", cwd=project, check=False)
    assert missing.returncode == 2 and "no such disk" in missing.stderr, missing.stderr
    disk = project / "colleague.qcow2"
    amic("export", "latest", "--format", "qcow2", "-o", str(disk), cwd=project)
    before = disk.stat()
    child = subprocess.Popen([AMIC, "run", "--vm", str(disk), "--timeout", "600"], cwd=project,
                             env={**env(), "AMIC_QEMU_ACCEL": "tcg"}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    tmp = STORE / "local" / "tmp"
    try:
        deadline = time.monotonic() + 600      # the VM's disk may be made first
        while not list(tmp.glob("vm-run-*/qmp.sock")):
            assert time.monotonic() < deadline and child.poll() is None, child.communicate()
            time.sleep(0.2)
        time.sleep(1)                          # in the firmware: no ACPI handler yet
        child.send_signal(signal.SIGINT)
        time.sleep(2)
        second = child.poll() is None
        if second:
            child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130, err
    assert "powering the VM off" in err and "Ctrl-C again to force" in err, err
    assert not second or "forced off" in err, err
    assert not list(tmp.glob("vm-run-*")), "the overlay was left"
    assert "booting colleague.qcow2" in err, err
    after = disk.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    disk.unlink()


def test_ps_lists_a_machine_amic_run_keep_left(project: Path) -> None:
    run = amic("run", "--keep", cwd=project, timeout=900)
    pid = int(run.stderr.split("left running (pid ")[1].split(")")[0])
    try:
        rows = [r for r in json.loads(amic("ps", "--json", cwd=project).stdout)
                if r["kind"] == "machine"]
        assert len(rows) == 1 and rows[0]["state"] == "running", rows
        assert rows[0]["project"] == "webdev" and rows[0]["uptime"] > 0, rows
        assert "machine" in amic("ps", cwd=project).stdout
    finally:
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 120
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    rows = [r for r in json.loads(amic("ps", "--json", cwd=project).stdout)
            if r["kind"] == "machine"]
    assert [r["state"] for r in rows] == ["exited"], rows
    shutil.rmtree(rows[0]["dir"])

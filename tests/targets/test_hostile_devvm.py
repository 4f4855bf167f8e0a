"""Hostile inputs for the dev VM commands (``up``, ``ssh``, ``ps``, ``stop``, ``rm``, ``logs``,
``init``, ``completion``, ``run --vm FILE``), through the real CLI and without booting a VM.

The registry (``<store>/vms/NAME/``) is written by hand, as someone with a hand in it might:
a planted pid, a damaged ``vm.json``, links and FIFOs where logs, sockets and locks go. A
"running" VM is a fake QEMU: a Python process whose argv[0] is ``qemu-system-x86_64`` and
whose ``-qmp`` names the VM's socket, answering QMP as QEMU does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.cli import run_amic

SECRET = "SECRET-LINE-never-printed"

FAKE_QEMU = r"""
import json, socket, sys
path = sys.argv[sys.argv.index("-qmp") + 1][len("unix:"):].split(",")[0]
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(1)
while True:
    conn, _ = srv.accept()
    f = conn.makefile("rw")
    f.write(json.dumps({"QMP": {"version": {}}}) + "\n"); f.flush()
    for line in f:
        cmd = json.loads(line)["execute"]
        f.write(json.dumps({"return": {}}) + "\n"); f.flush()
        if cmd == "system_powerdown":
            sys.exit(0)
"""


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "cache"


def amic(store: Path, *args: str, cwd=None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "AMIC_CACHE_DIR": str(store), "AMIC_TARGET": "local"}
    proc = run_amic(*args, cwd=cwd, env=env, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    return proc


def vdir(store: Path, name: str) -> Path:
    return store / "local" / "vms" / name


def plant(store: Path, vm: str, **fields) -> Path:
    """A VM record as ``amic up`` writes one (``fields`` replace its values)."""
    d = vdir(store, vm)
    d.mkdir(parents=True, exist_ok=True)
    record = {"name": vm, "project": "p", "project_id": None, "image": "ab" * 32,
              "base": "/nonexistent.qcow2", "ssh_port": 2222, "key": "/nonexistent",
              "pid": None, **fields}
    (d / "vm.json").write_text(json.dumps(record))
    return d


def spawn(argv: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, **kw)


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:       # each leads a session of its own: the group goes (bash's sleep)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def fake_qemu(store: Path, name: str, procs, *, qmp: Path | None = None) -> subprocess.Popen:
    """A process amic takes for VM ``name``'s QEMU; it serves QMP on ``qmp`` (default the
    VM's own qmp.sock) and exits at system_powerdown."""
    sock = vdir(store, name) / "qmp.sock"
    serve = qmp or sock
    exe = store.parent / "bin" / "qemu-system-x86_64"     # argv[0] as QEMU's, Python's code
    if not exe.exists():
        exe.parent.mkdir(exist_ok=True)
        exe.symlink_to(os.path.realpath(sys.executable))
    argv = [str(exe), "-c", FAKE_QEMU, "-qmp", f"unix:{serve},server=on,wait=off"]
    if qmp:
        argv += ["-qmp", f"unix:{sock},server=on,wait=off"]
    proc = spawn(argv)
    procs.append(proc)
    deadline = time.monotonic() + 10
    while not serve.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    return proc


# -- names ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ok\n", "../x", "a/b", "a\x1bb", "x" * 64, "\uff41bc", ".",
                                  "..", "-x", "Abc"])
@pytest.mark.parametrize("command", ["stop", "rm", "logs"])
def test_bad_vm_names_refused_and_nothing_made(store, name, command):
    proc = amic(store, command, "--", name)
    assert proc.returncode == 2
    assert "use lowercase letters" in proc.stderr and "\x1b" not in proc.stderr
    vms = store / "local" / "vms"
    assert not vms.exists() or os.listdir(vms) == []     # no lock file for 'ok\n'


# -- the record -----------------------------------------------------------------------------

@pytest.mark.parametrize("fields", [{"forwards": 5}, {"forwards": [[1]]}, {"mounts": "x"},
                                    {"pid": "1"}, {"ssh_port": "22 -oProxyCommand=x"},
                                    {"helpers": [0]}, {"started": "x"}, {"image": None}])
def test_damaged_record_listed_refused_and_removable(store, fields):
    d = plant(store, "v1", **fields)
    ps = amic(store, "ps")
    assert ps.returncode == 0 and "damaged" in ps.stdout
    stop = amic(store, "stop", "v1")
    assert stop.returncode == 2 and "damaged" in stop.stderr
    assert amic(store, "rm", "v1").returncode == 0
    assert not d.exists()


@pytest.mark.parametrize("kind", ["fifo", "link", "huge", "list"])
def test_vm_json_special_never_read(store, tmp_path, kind):
    d = plant(store, "v1")
    record = d / "vm.json"
    record.unlink()
    secret = tmp_path / "secret"
    secret.write_text(json.dumps({"x": SECRET}))
    if kind == "fifo":
        os.mkfifo(record)
    elif kind == "link":
        record.symlink_to(secret)
    elif kind == "huge":
        record.write_text(" " * (2 << 20) + "{}")
    else:
        record.write_text("[]")
    ps = amic(store, "ps", "--json", timeout=20)
    assert ps.returncode == 0 and json.loads(ps.stdout)[0]["state"] == "damaged"
    assert amic(store, "logs", "v1", timeout=20).returncode == 2
    assert amic(store, "rm", "v1", timeout=20).returncode == 0
    assert not d.exists() and SECRET in secret.read_text()


def test_control_characters_in_a_record_escaped_by_ps(store):
    plant(store, "v1", project="\x1b]0;owned\x07p")
    ps = amic(store, "ps")
    assert ps.returncode == 0 and "\x1b" not in ps.stdout and "\\x1b" in ps.stdout


# -- processes: a planted pid is never signalled ----------------------------------------------

def test_stop_never_kills_a_process_that_only_names_the_vm_dir(store, procs):
    """The old identity check: the pid's command line contains ``vms/v1`` (here as a prefix
    of ``vms/v10``). Not QEMU, not this VM's: stop leaves it alone."""
    plant(store, "v1")
    decoy = spawn(["bash", "-c", "sleep 600; true", str(vdir(store, "v10")) + "/console.log"])
    procs.append(decoy)
    plant(store, "v1", pid=decoy.pid, helpers=[decoy.pid])
    assert "exited" in amic(store, "ps").stdout
    proc = amic(store, "stop", "v1", "--timeout", "1")
    assert proc.returncode == 0 and "was not running" in proc.stdout
    rm = amic(store, "rm", "--force", "v1")
    assert rm.returncode == 0
    time.sleep(0.3)
    assert decoy.poll() is None


def test_stop_never_kills_another_vms_qemu_named_in_a_record(store, procs):
    """vms/v1/vm.json claims name 'v2' and v2's QEMU pid: the record's name is its
    directory's, so v2's QEMU is not v1's."""
    plant(store, "v2")
    other = fake_qemu(store, "v2", procs)
    plant(store, "v1", name="v2", pid=other.pid)
    proc = amic(store, "stop", "v1", "--timeout", "1")
    assert proc.returncode == 0 and "was not running" in proc.stdout
    assert other.poll() is None


def test_stop_powers_off_a_vm_it_recognises(store, procs):
    """The control: a process that is the VM's QEMU is stopped through its own QMP."""
    plant(store, "v1")
    qemu = fake_qemu(store, "v1", procs)
    plant(store, "v1", pid=qemu.pid)
    assert "running" in amic(store, "ps").stdout or "booting" in amic(store, "ps").stdout
    proc = amic(store, "stop", "v1", "--timeout", "10")
    assert proc.returncode == 0 and "powered off" in proc.stdout, proc.stderr


def test_stop_never_speaks_qmp_through_a_planted_link(store, tmp_path, procs):
    """qmp.sock is a link to another QEMU's monitor: stop never connects through it (it
    forces the VM's own QEMU off instead)."""
    plant(store, "v1")
    victim_sock = tmp_path / "victim.sock"
    victim = fake_qemu(store, "v1", procs, qmp=victim_sock)     # serves victim.sock only
    (vdir(store, "v1") / "qmp.sock").symlink_to(victim_sock)
    plant(store, "v1", pid=victim.pid)
    proc = amic(store, "stop", "v1", "--timeout", "1")
    assert proc.returncode == 0 and "forced off" in proc.stdout, proc.stdout + proc.stderr
    assert "symbolic link" in proc.stderr
    victim.wait(10)
    assert victim.returncode == -signal.SIGKILL      # not system_powerdown over the link


def test_boot_log_appends_never_land_in_a_linked_file(store, tmp_path, procs):
    plant(store, "v1")
    qemu = fake_qemu(store, "v1", procs)
    plant(store, "v1", pid=qemu.pid)
    victim = tmp_path / "victim"
    victim.write_text(SECRET)
    (vdir(store, "v1") / "boot.log").symlink_to(victim)
    proc = amic(store, "stop", "v1", "--timeout", "5")
    assert proc.returncode == 2 and "symbolic link" in proc.stderr
    assert victim.read_text() == SECRET
    assert qemu.poll() is None      # nothing was done to it


# -- files in the registry ------------------------------------------------------------------

@pytest.mark.parametrize("log", ["console.log", "boot.log"])
@pytest.mark.parametrize("kind", ["link", "fifo"])
@pytest.mark.parametrize("follow", [False, True])
def test_logs_never_print_a_link_nor_block_on_a_fifo(store, tmp_path, log, kind, follow):
    d = plant(store, "v1")
    secret = tmp_path / "shadow"
    secret.write_text(SECRET + "\n")
    if kind == "link":
        (d / log).symlink_to(secret)
    else:
        os.mkfifo(d / log)
    proc = amic(store, "logs", "v1", *(["--follow"] if follow else []), timeout=20)
    assert proc.returncode == 2
    assert ("symbolic link" if kind == "link" else "not a regular file") in proc.stderr


def test_rm_of_a_linked_vm_directory_keeps_what_it_names(store, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious").write_text("keep")
    plant(store, "v2")
    (vdir(store, "v2") / "vm.json").rename(other / "vm.json")
    vdir(store, "v2").rmdir()
    vdir(store, "v2").symlink_to(other)
    assert "v2" not in amic(store, "ps").stdout
    assert amic(store, "logs", "v2").returncode == 2
    proc = amic(store, "rm", "v2")
    assert proc.returncode == 0
    assert not os.path.lexists(vdir(store, "v2"))
    assert sorted(os.listdir(other)) == ["precious", "vm.json"]


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_a_planted_lock_file_is_never_followed_nor_blocked_on(store, tmp_path, kind):
    plant(store, "v1")
    lock = vdir(store, "v1").parent / "v1.lock"
    target = tmp_path / "created-through-link"
    if kind == "link":
        lock.symlink_to(target)
    else:
        os.mkfifo(lock)
    proc = amic(store, "stop", "v1", timeout=20)
    assert proc.returncode == 2 and "lock file" in proc.stderr
    assert not target.exists()


# -- amic up's mounts and ports (refused before anything is looked up) ---------------------

def test_up_refuses_a_host_port_given_twice(store, tmp_path):
    proc = amic(store, "up", "-p", "18080:80", "-p", "18080:81", cwd=tmp_path)
    assert proc.returncode == 2 and "given twice" in proc.stderr


def _mount_sources(tmp_path: Path) -> dict[str, str]:
    comma = tmp_path / "a,source=" / "etc"
    comma.mkdir(parents=True)
    newline = tmp_path / "new\nline"
    newline.mkdir()
    (tmp_path / "etc-link").symlink_to("/etc")
    (tmp_path / "data").symlink_to("/usr")
    os.mkfifo(tmp_path / "fifo")
    return {"comma": str(tmp_path / "a,source=/etc"), "newline": str(newline),
            "link": str(tmp_path / "etc-link"), "link-inside": str(tmp_path / "data" / "lib"),
            "link-dotdot": str(tmp_path / "data" / ".." / "etc-link" / ".."), "fifo": str(tmp_path / "fifo"),
            "device": "/dev/null", "missing": str(tmp_path / "missing"), "empty": ":/srv",
            "guest-newline": f"{tmp_path}:/srv/x\n", "guest-dots": f"{tmp_path}:/srv/../etc",
            "guest-relative": f"{tmp_path}:srv", "guest-comma": f"{tmp_path}:/srv,x=y",
            "proc": "/proc/self/fd/0"}


@pytest.mark.parametrize("case", ["comma", "newline", "link", "link-inside", "link-dotdot",
                                  "fifo", "device", "missing",
                                  "empty", "guest-newline", "guest-dots", "guest-relative",
                                  "guest-comma", "proc"])
def test_up_refuses_hostile_mounts(store, tmp_path, case):
    """A comma in the host path would split virtiofsd's ``-o source=`` (``a,source=/etc``
    shares /etc); a link would share what it names."""
    work = tmp_path / "work"
    work.mkdir()
    spec = _mount_sources(work)[case]
    proc = amic(store, "up", "--mount", spec, cwd=work)
    assert proc.returncode == 2 and "--mount" in proc.stderr, proc.stderr
    assert "\n" not in proc.stderr.strip()


# -- run --vm FILE.qcow2 --------------------------------------------------------------------

def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-utils")
@pytest.mark.parametrize("case", ["backing", "data-file", "raw", "fifo", "empty"])
def test_run_vm_refuses_a_disk_that_reads_host_files(store, tmp_path, case):
    """A qcow2 whose backing file (or external data file) is a host file would hand it to
    the guest; a raw file named .qcow2 is not a qcow2. Refused before anything boots."""
    secret = tmp_path / "shadow"
    secret.write_bytes(SECRET.encode() * 4096)
    disk = tmp_path / "colleague.qcow2"
    if case == "backing":
        _qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(disk))
    elif case == "data-file":
        _qemu_img("create", "-q", "-f", "qcow2", "-o",
                  f"data_file={secret},data_file_raw=on", str(disk), "1M")
    elif case == "raw":
        disk.write_bytes(b"\0" * (1 << 20))
    elif case == "fifo":
        os.mkfifo(disk)
    else:
        disk.write_bytes(b"")
    start = time.monotonic()
    proc = amic(store, "run", "--vm", str(disk), "--timeout", "5", timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "booting" not in proc.stderr
    assert time.monotonic() - start < 30


# -- amic init, completion -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "dir", "link"])
@pytest.mark.parametrize("force", [False, True])
def test_init_never_replaces_nor_blocks_on_a_special_amifile(store, tmp_path, kind, force):
    target = tmp_path / "Amifile"
    outside = tmp_path / "outside"
    outside.write_text(SECRET)
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "dir":
        target.mkdir()
        (target / "Amifile").mkdir()
    else:
        target.symlink_to(outside)
    start = time.monotonic()
    proc = amic(store, "init", *(["--force"] if force else []), cwd=tmp_path, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert time.monotonic() - start < 8
    assert outside.read_text() == SECRET
    assert os.path.lexists(target) and not target.is_file() or target.is_symlink()


def test_init_into_a_device_is_refused(store, tmp_path):
    proc = amic(store, "init", "--force", "/dev/null")
    assert proc.returncode == 2 and "not a regular file" in proc.stderr


def test_init_keeps_an_existing_amifile_and_escapes_its_path(store, tmp_path):
    (tmp_path / "Amifile").write_text("mine")
    assert amic(store, "init", cwd=tmp_path).returncode == 2
    assert (tmp_path / "Amifile").read_text() == "mine"
    odd = tmp_path / "\x1b[31mred"
    odd.mkdir()
    proc = amic(store, "init", str(odd))
    assert proc.returncode == 0 and "\x1b" not in proc.stderr and "\\x1b" in proc.stderr


@pytest.mark.parametrize("shell", ["tcsh", "", "b\x1bash", "bash\n"])
def test_completion_unknown_shell(store, shell):
    proc = amic(store, "completion", shell)
    assert proc.returncode == 2 and "\x1b" not in proc.stderr


# -- amic up's flags (refused before anything is looked up) ---------------------------------

@pytest.mark.parametrize("flag", [["-p", "0:80"], ["-p", "65536:80"], ["-p", "80:0"],
                                  ["-p", "abc"], ["-p", "1:2:3"], ["-p", ""],
                                  ["--memory", "0"], ["--memory", "-1"], ["--memory", "nan"],
                                  ["--memory", str(1 << 40)], ["--cpus", "0"],
                                  ["--cpus", "100000"], ["--cpus", "1.5"],
                                  ["--cpus", "\u0661"], ["--timeout", "nan"],
                                  ["--name", "ok\n"], ["--name", "../etc"]])
def test_up_refuses_bad_flags_early(store, tmp_path, flag):
    proc = amic(store, "up", *flag, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "no local image" not in proc.stderr and "Amifile" not in proc.stderr




@pytest.mark.parametrize("command", [["rmi"], ["up"], ["run", "--vm"], ["export", "--format",
                                                                       "raw", "--for", "ec2",
                                                                       "-o", "x.raw"]])
def test_a_very_long_image_reference_is_refused_briefly(store, tmp_path, command):
    ref = "a" * 100_000
    proc = amic(store, *command[:1], ref, *command[1:], cwd=tmp_path)
    assert proc.returncode == 2 and "too long" in proc.stderr
    assert len(proc.stderr) < 500


def test_up_takes_a_plain_directory_to_share(store, tmp_path):
    """The control for the refusals above: a real directory passes --mount, and up goes on
    to look the image up."""
    (tmp_path / "src").mkdir()
    proc = amic(store, "up", "--mount", f"{tmp_path / 'src'}:/srv/app", "--mount", ".",
                cwd=tmp_path)
    assert proc.returncode == 2 and "--mount" not in proc.stderr
    assert "latest" in proc.stderr


@pytest.mark.parametrize("disk", ["none", "fifo", "link"])
def test_prune_and_rmi_go_on_past_a_damaged_vm(store, tmp_path, disk):
    """A damaged record (or a FIFO or link as its overlay) neither stops prune nor hangs it."""
    d = plant(store, "v1", forwards=5)
    if disk == "fifo":
        os.mkfifo(d / "disk.qcow2")
    elif disk == "link":
        (d / "disk.qcow2").symlink_to(tmp_path)
    proc = amic(store, "prune", "--dry-run", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert amic(store, "rmi", "abcd", timeout=30).returncode == 2

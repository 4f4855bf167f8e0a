"""Image references, ``rmi`` and ``prune`` of the local target through the real CLI (issue 22).

Real builds (the cached debootstrap base, systemd-nspawn) of two projects, ``stack`` and
``pyweb``, into a store of the module's own:

- ``latest`` (the default of ``run``, ``shell``, ``export``) is THIS project's newest image,
  never the newer image of the other project; ``NAME:latest``, ``NAME@ID`` and ``--file``;
  without a project, an error that lists the candidates; ``amic status`` by plain name in
  the image; ``run --keep``'s console log gets the boot output;
- ``rmi`` refuses an image a shell uses, then removes it;
- ``prune`` removes an old image with its VM layer and cached VM disk (made by the same
  code ``amic run --vm`` uses, without booting), keeps the VM layer and disk of the image
  it keeps and what a running QEMU (paused, real) boots from, removes the directories of
  stopped VMs and kept machines, and the bytes it prints are those ``du`` of the store
  loses.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.cli import AMIC, run_amic
from tests.harness.targets import cache_sharing_bases, share_packages

pytestmark = [pytest.mark.slow, pytest.mark.root]

AMIFILE = """\
FROM debian:12
NAME {name}
SERVICE app
    INIT echo {name}-{version} > /etc/who
    UPDATE echo "app of {name} updated"
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return share_packages(cache_sharing_bases(tmp_path_factory))


@pytest.fixture(scope="module")
def env(cache) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMIC_", "GIT_"))}
    env.update(AMIC_CACHE_DIR=str(cache), AMIC_TARGET="local")
    return env


@pytest.fixture(scope="module")
def amic(env):
    def run(*args: str, cwd: Path, code: int = 0) -> subprocess.CompletedProcess:
        proc = run_amic(*args, cwd=cwd, env=env, timeout=1200)
        assert proc.returncode == code, f"amic {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr
        return proc

    return run


def build(amic, folder: Path, name: str, version: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Amifile").write_text(AMIFILE.format(name=name, version=version))
    return json.loads(amic("build", "--json", cwd=folder).stdout)["image_id"]


@pytest.fixture(scope="module")
def projects(amic, tmp_path_factory) -> dict:
    top = tmp_path_factory.mktemp("projects")
    stack = build(amic, top / "stack", "stack", "v1")
    pyweb = build(amic, top / "pyweb", "pyweb", "v1")     # the newest image on the machine
    return {"top": top, "stack": stack, "pyweb": pyweb}


def who(amic, ref: str, cwd: Path, *extra: str) -> str:
    return amic("shell", ref, *extra, "-c", "cat /etc/who", cwd=cwd).stdout.strip()


def test_latest_is_this_projects_image(amic, projects):
    top, stack, pyweb = projects["top"], projects["stack"], projects["pyweb"]
    assert who(amic, "latest", top / "stack") == "stack-v1"
    assert who(amic, "latest", top / "pyweb") == "pyweb-v1"
    assert who(amic, "latest", top / "stack", "--file", str(top / "pyweb")) == "pyweb-v1"
    assert who(amic, "pyweb:latest", top / "stack") == "pyweb-v1"
    assert who(amic, f"stack@{stack[:8]}", top) == "stack-v1"
    assert who(amic, pyweb[:10], top / "stack") == "pyweb-v1"
    # where there is no project, `latest` names nobody's image: the candidates are listed
    proc = amic("shell", "latest", "-c", "true", cwd=top, code=2)
    assert "no ./Amifile here" in proc.stderr
    assert f"stack@{stack[:12]}" in proc.stderr and f"pyweb@{pyweb[:12]}" in proc.stderr
    proc = amic("export", f"pyweb@{stack[:12]}", "-o", str(top / "x.tar"), cwd=top, code=2)
    assert f"image {stack[:12]} is named stack, not 'pyweb'" in proc.stderr
    proc = amic("shell", "nosuch:latest", "-c", "true", cwd=top, code=2)
    assert "no local image named 'nosuch'" in proc.stderr
    # `amic` by plain name inside the image
    status = amic("shell", "latest", "-c", "amic status", cwd=top / "stack").stdout
    assert re.search(r"^app\s", status, re.M), status


def test_run_keep_boots_this_projects_image_with_its_console_log(amic, projects, env):
    top, stack = projects["top"], projects["stack"]
    proc = amic("run", "--keep", "--timeout", "300", cwd=top / "stack")   # the default: latest
    assert f"booting {stack[:12]}" in proc.stderr, proc.stderr
    m = re.search(r"left running \(pid (\d+)\); console: (\S+?);", proc.stderr)
    assert m, proc.stderr
    pid, console = int(m.group(1)), Path(m.group(2))
    try:
        text = console.read_text(errors="replace")
        assert "app of stack updated" in text, text[-3000:]      # the boot hook's UPDATE
        assert "amic: boot: ok" in text, text[-3000:]
        # a kept machine uses the image: rmi refuses it
        proc = amic("rmi", stack[:12], cwd=top, code=1)
        assert "amic: rmi failed: image" in proc.stderr
        assert "in use by a running shell, run, export or kept machine" in proc.stderr
    finally:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.5)


def test_rmi_refuses_an_image_in_use_then_removes_it(amic, projects, env):
    top = projects["top"]
    v2 = build(amic, top / "stack", "stack", "v2")
    assert who(amic, "latest", top / "stack") == "stack-v2"
    shell = subprocess.Popen([AMIC, "shell", f"stack@{v2[:12]}", "-c", "touch /tmp/x; sleep 60"],
                             cwd=top, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        proc = amic("rmi", "stack:latest", cwd=top, code=1)
        assert f"image {v2[:12]} is in use by a running shell" in proc.stderr, proc.stderr
        assert "--force" in proc.stderr
    finally:
        shell.kill()
        shell.wait()
    proc = amic("rmi", "--dry-run", "stack:latest", cwd=top)
    assert f"would remove final {v2[:12]}" in proc.stdout
    proc = amic("rmi", "latest", cwd=top / "stack")
    assert f"removed final {v2[:12]}" in proc.stdout and "freed" in proc.stderr
    listed = {row["id"] for row in json.loads(amic("images", "--json", cwd=top).stdout)}
    assert v2 not in listed and projects["stack"] in listed
    assert who(amic, "latest", top / "stack") == "stack-v1"       # the one before it again


def make_vm_disk(env, image_id: str) -> Path:
    """The cached disk ``amic run --vm`` boots from (VM layer and qcow2), made by its code."""
    code = ("import sys\nfrom amic.targets import get_target\nfrom amic.targets.local import vm\n"
            "t = get_target('local')\nprint(vm.cached_disk(t, t.lookup(sys.argv[1])))")
    proc = subprocess.run([sys.executable, "-c", code, image_id], env=env, text=True,
                          capture_output=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def du(path: Path) -> int:
    out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(out.split()[0])


def freed(stderr: str) -> int:
    m = re.search(r"freed \S+ \S+ \((\d+) bytes\)", stderr)
    assert m, stderr
    return int(m.group(1))


def test_prune_removes_vm_disks_with_their_images_and_counts_every_byte(amic, projects, env,
                                                                        cache):
    top, old = projects["top"], projects["stack"]
    store = cache / "local"
    old_disk = make_vm_disk(env, old)
    # a disk exported without a key: said before it is written, and how to mean it
    out = top / "nokey.qcow2"
    proc = amic("export", f"stack@{old[:12]}", "--format", "qcow2", "-o", str(out), cwd=top)
    assert "warning: no --authorized-key: nobody can log in to this disk" in proc.stderr
    assert proc.stderr.index("warning:") < proc.stderr.index("exported") and out.stat().st_size
    out.unlink()
    proc = amic("export", f"stack@{old[:12]}", "--format", "qcow2", "--no-authorized-key",
                "--authorized-key", str(out), "-o", str(out), cwd=top, code=2)
    assert "exclude each other" in proc.stderr
    new = build(amic, top / "stack", "stack", "v3")
    new_disk = make_vm_disk(env, new)
    old_size = old_disk.stat().st_blocks * 512
    assert old_disk != new_disk and old_size > 100_000_000
    layers = {row["id"]: row for row in json.loads(amic("images", "--all", "--json",
                                                        cwd=top).stdout)}
    vm_layers = {row["id"][:12] for row in layers.values() if row["service"] == "vm-kernel"}
    assert vm_layers == {old_disk.stem, new_disk.stem}
    # a VM that stopped (its QEMU gone) and one running from the old image's disk (real
    # QEMU, paused: it boots nothing, it only holds the disk)
    runs = store / "vm" / "runs"
    dead, live = runs / f"{old[:12]}-dead", runs / f"{old[:12]}-live"
    for d in (dead, live):
        d.mkdir(parents=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                        str(old_disk), str(d / "disk.qcow2")], check=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    (dead / "qemu.pid").write_text(f"{gone.pid}\n")
    qemu = subprocess.Popen(["qemu-system-x86_64", "-S", "-accel", "tcg", "-m", "64",
                             "-display", "none", "-monitor", "none", "-serial", "none",
                             "-nic", "none", "-drive", f"file={live / 'disk.qcow2'},if=virtio"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        (live / "qemu.pid").write_text(f"{qemu.pid}\n")
        time.sleep(2)
        assert qemu.poll() is None, qemu.stderr.read()
        proc = amic("prune", cwd=top)
        assert f"kept final {old[:12]}: in use by a running VM ({live})" in proc.stderr
        assert f"removed stopped VM vm/runs/{dead.name}" in proc.stdout
        assert old_disk.exists() and new_disk.exists() and not dead.exists()
    finally:
        qemu.kill()
        qemu.wait()
    before = du(store)
    proc = amic("prune", cwd=top)
    after = du(store)
    out = proc.stdout
    assert f"removed final {old[:12]}" in out
    assert f"removed VM layer {old_disk.stem}" in out
    assert f"removed VM disk vm/{old_disk.name}" in out
    assert f"removed stopped VM vm/runs/{live.name}" in out
    assert not old_disk.exists() and not live.exists()
    # kept: the newest image of each project, the VM layer and disk of the one kept
    assert new_disk.exists()
    listed = {row["id"] for row in json.loads(amic("images", "--all", "--json", cwd=top).stdout)}
    assert {new, projects["pyweb"]} <= listed and old not in listed
    assert any(i.startswith(new_disk.stem) for i in listed)
    # every byte: what prune printed is what the store's file system got back
    print(f"FIGURE prune: du -sB1 store {before} -> {after} (dropped {before - after}); "
          f"prune printed {freed(proc.stderr)} bytes; VM disk {old_disk.name} was "
          f"{old_size} bytes on disk")
    assert before - after == freed(proc.stderr), (before, after, proc.stderr)
    assert freed(proc.stderr) > 100_000_000

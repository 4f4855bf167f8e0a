"""Exports and the local store under attack or interruption, through the real CLI (issue 18).

- ``export --format tar|oci`` into a shared directory seeded with links (owned by another
  user) at every predictable name, the ``.NAME.part`` of the report among them: nothing is
  written through them, the output is complete.
- ``export --format oci`` onto a full file system (a small tmpfs in a private mount
  namespace): an error naming the output, nothing left on it or in the store.
- ``kill -9`` during an export: its scratch (``tmp/oci-*``) is kept by prune while the
  export lives, removed by the next prune once it is dead, with the bytes freed reported.
- ``prune`` while ``export --format raw`` builds the VM layer: refused (the VM layer is built
  under the build lock), the machine being built is not touched.
- ``build --manifest FIFO`` with no reader: an error after ``FIFO_WAIT`` seconds, no hang.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from amic.fsutil import FIFO_WAIT, STAGING_MARK

from tests.harness.cli import AMIC, run_amic

pytestmark = [pytest.mark.slow, pytest.mark.root]

AMIFILE = """\
FROM debian:12
SERVICE web
    INIT echo hi > /etc/web-seen
"""
NOBODY = 65534


def env_for(store: Path) -> dict:
    return {**os.environ, "AMIC_CACHE_DIR": str(store), "AMIC_TARGET": "local"}


def amic(store: Path, cwd: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return run_amic(*args, cwd=cwd, env=env_for(store), timeout=timeout)


def clean(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    for needle in needles:
        assert needle in proc.stderr, proc.stderr[-3000:]


def wait_for(what, timeout: float = 300, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def store(local_store) -> Path:
    return local_store


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("project")
    (d / "Amifile").write_text(AMIFILE)
    return d


@pytest.fixture(scope="module")
def built(store, project) -> str:
    proc = amic(store, project, "build", "-q")
    clean(proc, 0)
    return proc.stdout.strip()


def scratch_dirs(store: Path) -> list[Path]:
    tmp = store / "local" / "tmp"
    return sorted(tmp.iterdir()) if tmp.is_dir() else []


@pytest.mark.parametrize("fmt", ["oci", "tar"])
def test_export_never_writes_through_links_planted_beside_the_output(store, built, tmp_path,
                                                                    fmt):
    """The report's reproduction (``ln -s victim .dev.oci.tar.part``) and every other name a
    staging scheme without randomness could use."""
    victims = tmp_path / "victims"
    victims.mkdir()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    out = "dev.oci.tar"
    names = [f".{out}.part", f"{out}.part", f".{out}.tmp", f".{out}.amic-part",
             f".{out}{STAGING_MARK}0000000000000000", "output.part", ".amic-part"]
    planted = {}
    for i, name in enumerate(names):
        victim = victims / f"victim{i}"
        victim.write_text("precious\n")
        victim.chmod(0o644)
        os.symlink(victim, shared / name)
        os.lchown(shared / name, NOBODY, NOBODY)
        planted[name] = victim
    proc = amic(store, tmp_path, "export", built, "--format", fmt, "-o", str(shared / out))
    clean(proc, 0)
    for name, victim in planted.items():
        assert victim.read_text() == "precious\n", f"written through {name}"
        assert victim.stat().st_mode & 0o777 == 0o644, f"chmod'ed through {name}"
    assert sorted(p.name for p in shared.iterdir()) == sorted([*names, out])
    result = shared / out
    assert not result.is_symlink() and result.stat().st_mode & 0o777 == 0o600
    with tarfile.open(result) as tf:
        assert ("oci-layout" if fmt == "oci" else "./etc/web-seen") in tf.getnames()
    assert scratch_dirs(store) == []


def test_an_oci_export_onto_a_full_disk_names_the_output(store, built, tmp_path):
    """An 8 MiB tmpfs mounted in a private mount namespace: the layer (in the store) fits,
    the archive does not."""
    small = tmp_path / "small"
    small.mkdir()
    script = f"""
mount -t tmpfs -o size=8m tmpfs {small} || exit 99
{AMIC} export {built} --format oci -o {small}/dev.oci.tar
echo "rc=$?"
echo "left=$(ls -A {small} | tr '\\n' ' ')"
"""
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          env=env_for(store), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert out["rc"] == "1", proc.stderr
    assert f"cannot write {small}/dev.oci.tar: No space left on device" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert out["left"].split() == []
    assert scratch_dirs(store) == []


def test_prune_keeps_a_live_export_scratch_and_frees_a_killed_one(store, built, tmp_path):
    legacy = store / "local" / ".oci-leftover"       # where amic put scratch before tmp/
    legacy.mkdir(parents=True)
    (legacy / "layer.tar").write_bytes(b"x" * 100_000)
    export = subprocess.Popen([AMIC, "export", built, "--format", "oci", "-o",
                               str(tmp_path / "dev.oci.tar")], cwd=tmp_path, env=env_for(store),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def growing_layer():
            for d in scratch_dirs(store):
                layer = d / "layer.tar"
                if layer.exists() and layer.stat().st_size > 1 << 20:
                    return d
            return None
        live = wait_for(growing_layer, step=0.02)
        proc = amic(store, tmp_path, "prune")
        clean(proc, 0, f"kept temporary tmp/{live.name}: in use")
        assert live.is_dir() and f"tmp/{live.name}" not in proc.stdout
        assert "removed temporary .oci-leftover (" in proc.stdout
        assert not legacy.exists()
        os.kill(export.pid, signal.SIGKILL)
    finally:
        export.kill()
        export.communicate(timeout=60)
    assert live.is_dir(), "the killed export's scratch is there for prune to find"
    size = sum(p.stat().st_blocks * 512 for p in live.rglob("*") if not p.is_symlink())
    proc = amic(store, tmp_path, "prune")
    clean(proc, 0, "freed")
    assert f"removed temporary tmp/{live.name} (" in proc.stdout
    assert scratch_dirs(store) == []
    freed = proc.stderr.rsplit("freed ", 1)[1].split(";")[0].split(" (")[0].strip()
    value, unit = freed.split()
    scale = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
    assert abs(float(value) * scale - size) <= max(0.06 * size, 1e5), (freed, size)
    assert sorted(p.name for p in tmp_path.iterdir()) == []    # nothing beside the output


def test_prune_refuses_while_the_vm_layer_is_being_built(store, built, tmp_path):
    machines = store / "local" / "machines"
    export = subprocess.Popen([AMIC, "export", built, "--format", "raw", "-o",
                               str(tmp_path / "dev.raw")], cwd=tmp_path, env=env_for(store),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        machine = wait_for(lambda: next(iter(machines.glob("vm-*")), None)
                           if machines.is_dir() else None, step=0.02)
        proc = amic(store, tmp_path, "prune", "--all")
        assert "Traceback" not in proc.stderr
        assert proc.returncode == 1, proc.stderr
        assert "build is running" in proc.stderr
        assert machine.is_dir(), "prune removed the VM layer's machine while it was built"
    finally:
        export.send_signal(signal.SIGTERM)      # amic unwinds as on Ctrl-C
        _, err = export.communicate(timeout=120)
    assert "Traceback" not in err
    assert not machine.exists(), "the interrupted VM layer left its machine"
    assert scratch_dirs(store) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_build_manifest_into_a_fifo_without_reader_is_an_error(store, built, project, tmp_path):
    fifo = tmp_path / "manifest"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    proc = amic(store, project, "build", "-q", "--manifest", str(fifo), timeout=FIFO_WAIT + 120)
    clean(proc, 2, f"cannot write {fifo}: the FIFO has no reader (waited {FIFO_WAIT:g}s)")
    assert time.monotonic() - t0 >= FIFO_WAIT
    assert fifo.is_fifo()
    # with a reader it is written
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    proc = amic(store, project, "build", "-q", "--manifest", str(fifo))
    clean(proc, 0)
    assert f'"image_id": "{built}"' in reader.communicate(timeout=60)[0].decode()


def test_prune_removes_the_staging_beside_the_output_of_a_killed_export(store, built,
                                                                        tmp_path):
    """``export --format tar`` streams into its staging file beside ``-o``; killed, that file
    is noted in its scratch, and prune removes both (nothing else beside it)."""
    out = tmp_path / "outdir"
    out.mkdir()
    (out / "keep.txt").write_text("mine\n")
    export = subprocess.Popen([AMIC, "export", built, "-o", str(out / "dev.tar")], cwd=tmp_path,
                              env=env_for(store), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        def growing_part():
            for part in out.glob(f".dev.tar{STAGING_MARK}*"):
                if part.stat().st_size > 1 << 20:
                    return part
            return None
        staging = wait_for(growing_part, step=0.02)
        os.kill(export.pid, signal.SIGKILL)
    finally:
        export.kill()
        export.communicate(timeout=60)
    assert staging.is_file()
    # a planted look-alike (not the noted file) stays
    decoy = out / f".other{STAGING_MARK}0123456789abcdef"
    decoy.mkdir()
    proc = amic(store, tmp_path, "prune")
    clean(proc, 0, "freed")
    assert not staging.exists(), proc.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(["keep.txt", decoy.name])
    assert scratch_dirs(store) == []


def test_an_oci_export_streams_into_a_fifo(store, built, tmp_path):
    """The archive is written as a stream (a FIFO cannot seek: ``Illegal seek`` before)."""
    fifo = tmp_path / "out.pipe"
    os.mkfifo(fifo)
    got = tmp_path / "got.tar"
    reader = subprocess.Popen(f"cat {fifo} > {got}", shell=True)
    proc = amic(store, tmp_path, "export", built, "--format", "oci", "-o", str(fifo))
    assert reader.wait(timeout=120) == 0
    clean(proc, 0)
    assert fifo.is_fifo()
    with tarfile.open(got) as tf:
        assert "oci-layout" in tf.getnames()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["got.tar", "out.pipe"]


def test_an_export_writes_no_host_file_through_links_the_image_planted(store, tmp_path):
    # The disk's own files (fstab, grub.cfg, the key) are written into the image's root
    # from the host's mount namespace: an INIT's absolute link would name the host's file.
    host = tmp_path / "host"
    host.mkdir()
    fstab, keys = host / "fstab", host / "authorized_keys"
    for victim in (fstab, keys):
        victim.write_text("the host's own\n")
    project = tmp_path / "planted"
    project.mkdir()
    (project / "Amifile").write_text(
        "FROM debian:12\nSERVICE planted\n"
        f"    INIT ln -sf {fstab} /etc/fstab && mkdir -p /root/.ssh && "
        f"ln -sf {keys} /root/.ssh/authorized_keys\n")
    proc = amic(store, project, "build", "-q")
    clean(proc, 0)
    image = proc.stdout.strip()
    proc = amic(store, project, "export", image, "--format", "raw", "-o", str(tmp_path / "a.raw"))
    clean(proc, 0)
    key = tmp_path / "key.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5MDAwMDAwMDAwMDAwMDAwMDAwMDAw t\n")
    proc = amic(store, project, "export", image, "--format", "raw", "--authorized-key", str(key),
                "-o", str(tmp_path / "b.raw"))
    clean(proc, 1, "the image's /root/.ssh/authorized_keys is not a regular file")
    assert not (tmp_path / "b.raw").exists()
    assert fstab.read_text() == keys.read_text() == "the host's own\n"

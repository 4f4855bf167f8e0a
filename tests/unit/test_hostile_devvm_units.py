"""Units behind tests/targets/test_hostile_devvm.py: what the CLI tests cannot reach without
booting a VM (the overlay's forbidden backing, QMP's bounds, the process identity)."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
from pathlib import Path

import attrs
import pytest

from amic.errors import BuildError, UsageError
from amic.targets.local import machines, qmp, vmdisks, vmfiles


@attrs.frozen
class Store:
    root: Path


@pytest.mark.skipif(shutil.which("qemu-io") is None, reason="qemu-utils")
def test_an_overlay_of_a_checked_disk_never_reads_a_backing_file_added_later(tmp_path):
    """The check passes a self-contained qcow2; it is then swapped for one with a backing
    file. The overlay names it with "backing": null, so the guest still reads none of it."""
    from amic.targets.local.vm import overlay_of

    host = tmp_path / "host-file"
    host.write_bytes(b"A" * 65536)
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1M"], check=True)
    name = vmdisks.self_contained(disk)
    disk.unlink()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(host),
                    str(disk)], check=True)
    overlay = tmp_path / "overlay.qcow2"
    overlay_of(name, overlay)
    out = subprocess.run(["qemu-io", "-r", "-c", "read -v 0 16", str(overlay)],
                         capture_output=True, text=True, check=True).stdout
    assert "41 41" not in out and "00 00" in out
    with pytest.raises(UsageError, match="backing file"):
        vmdisks.self_contained(disk)


def test_qmp_answers_are_bounded_and_checked():
    with pytest.raises(BuildError, match="not a QMP message"):
        qmp._read(io.StringIO("x" * (qmp.MAX_LINE + 10) + "\n"), "greeting")
    with pytest.raises(BuildError, match="not a QMP message"):
        qmp._read(io.StringIO('"return"\n'), "cmd")
    with pytest.raises(OSError):
        qmp._read(io.StringIO(""), "cmd")


def test_a_process_is_a_vms_only_by_its_exact_qmp_socket(tmp_path):
    store = Store(tmp_path)
    sleeper = subprocess.Popen(["bash", "-c", "sleep 60; true",
                                f"unix:{machines.vm_dir(store, 'v10')}/qmp.sock"],
                               start_new_session=True)
    try:
        assert not machines.is_vm_process(store, "v1", sleeper.pid)
        assert not machines.signal_vm(store, "v1", sleeper.pid, signal.SIGKILL)
        assert not machines.is_vm_process(store, "v1", -1)
        assert not machines.is_vm_process(store, "v1", 0)
        assert sleeper.poll() is None
    finally:
        os.killpg(sleeper.pid, signal.SIGKILL)
        sleeper.wait()


def test_registry_files_refuse_links_and_fifos(tmp_path):
    target = tmp_path / "target"
    target.write_text("x")
    (tmp_path / "link").symlink_to(target)
    os.mkfifo(tmp_path / "fifo")
    for name in ("link", "fifo"):
        with pytest.raises(UsageError):
            vmfiles.append_line(tmp_path / name, "line\n")
        with pytest.raises(UsageError):
            list(vmfiles.chunks(tmp_path / name))
        with pytest.raises(UsageError):
            vmfiles.create_fresh(tmp_path / name)
    assert target.read_text() == "x"
    assert vmfiles.read_record(tmp_path / "missing") is None

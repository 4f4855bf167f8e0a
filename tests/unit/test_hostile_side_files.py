"""Side files and names amic reads but does not parse, through the real CLI: a secret's
``src=`` (FIFO, directory, device, bytes that are not UTF-8), file names and ARG values
that are not UTF-8, an Amifile that cannot be read. Clear errors naming the path, exit 1
or 2, no traceback, no value echoed, no wait.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from amic.errors import BuildError
from amic.targets.local.rootfs import env_file

from tests.harness.cli import AMIC, run_amic

SECRET_VALUE = "s3cr3t-value-9d1"


def fails(proc, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert SECRET_VALUE not in proc.stderr + proc.stdout
    return proc.stderr


def build(amic_cli, where: Path, *args: str, env: dict | None = None):
    (where / "Amifile").write_text("SECRET T\nSERVICE s\n    INIT true\n")
    return amic_cli("build", "--dry-run", *args, cwd=where, env=env)


def test_a_secret_from_a_fifo_is_refused_without_waiting(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "Amifile").write_text("SECRET T\nSERVICE s\n    INIT true\n")
    # it blocked forever: the timeout makes that a failure, not a hung test run
    proc = run_amic("build", "--dry-run", "--secret", f"id=T,src={tmp_path / 'fifo'}",
                    cwd=tmp_path, timeout=60)
    err = fails(proc, 2)
    assert f"--secret T: cannot read {tmp_path / 'fifo'}: is a FIFO" in err, err
    assert "env=VAR" in err


@pytest.mark.parametrize("path,kind", [(".", "is a directory"),
                                       ("/dev/zero", "is a character device")])
def test_a_secret_from_a_directory_or_device_is_refused(tmp_path, amic_cli, path, kind):
    src = tmp_path if path == "." else Path(path)
    err = fails(build(amic_cli, tmp_path, "--secret", f"id=T,src={src}"), 2)
    assert f"--secret T: cannot read {src}: {kind}" in err, err


def test_a_secret_through_a_symlink_to_a_fifo(tmp_path, amic_cli):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to("fifo")
    err = fails(build(amic_cli, tmp_path, "--secret", f"id=T,src={tmp_path / 'link'}"), 2)
    assert "is a FIFO" in err


def test_a_secret_that_is_not_utf8(tmp_path, amic_cli):
    (tmp_path / "bin").write_bytes(SECRET_VALUE.encode() + b"\xff\xfe\n")
    err = fails(build(amic_cli, tmp_path, "--secret", f"id=T,src={tmp_path / 'bin'}"), 2)
    assert f"--secret T: {tmp_path / 'bin'} is not UTF-8 text" in err, err
    assert "base64" in err
    err = fails(build(amic_cli, tmp_path, "--secret", "id=T,env=BIN",
                      env={"BIN": os.fsdecode(SECRET_VALUE.encode() + b"\xff")}), 2)
    assert "--secret T: the environment variable BIN is not UTF-8 text" in err, err


def test_a_readable_secret_still_works(tmp_path, amic_cli):
    (tmp_path / "tok").write_text(SECRET_VALUE + "\n")
    proc = build(amic_cli, tmp_path, "--secret", f"id=T,src={tmp_path / 'tok'}")
    assert "Traceback" not in proc.stderr and SECRET_VALUE not in proc.stdout + proc.stderr
    assert "--secret" not in proc.stderr, proc.stderr


def _names(tar_bytes: bytes) -> list[bytes]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), encoding="utf-8",
                      errors="surrogateescape") as tar:
        return [os.fsencode(m.name) for m in tar.getmembers()]


def test_copy_of_a_directory_with_names_that_are_not_utf8(tmp_path, amic_cli):
    d = tmp_path / "d"
    d.mkdir()
    raw = os.fsencode(d) + b"/caf\xe9.txt"       # latin-1, not UTF-8
    with open(raw, "wb") as fh:
        fh.write(b"latin\n")
    os.symlink(b"caf\xe9.txt", os.fsencode(d) + b"/ln\xff")
    (tmp_path / "Amifile").write_text("SERVICE s\n    COPY d /d\n")
    out = tmp_path.parent / f"{tmp_path.name}.tar"
    proc = amic_cli("compile", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = _names(out.read_bytes())
    assert b"stage2/services/s/files/01/caf\xe9.txt" in names
    assert b"stage2/services/s/files/01/ln\xff" in names
    with tarfile.open(out, encoding="utf-8", errors="surrogateescape") as tar:
        assert tar.extractfile(os.fsdecode(b"stage2/services/s/files/01/caf\xe9.txt")).read() \
            == b"latin\n"
        assert os.fsencode(tar.getmember(os.fsdecode(b"stage2/services/s/files/01/ln\xff"))
                           .linkname) == b"caf\xe9.txt"
    key = json.loads(amic_cli("compile", "--json", cwd=tmp_path, check=True).stdout)["final_key"]
    # another name that is not UTF-8 (the same after a lossy decoding) is another key
    os.rename(raw, os.fsencode(d) + b"/caf\xe8.txt")
    other = json.loads(amic_cli("compile", "--json", cwd=tmp_path, check=True).stdout)
    assert other["final_key"] != key


def test_an_arg_value_that_is_not_utf8(tmp_path, amic_cli):
    (tmp_path / "Amifile").write_text("ARG X\nSERVICE s\n    INIT echo \"$X\"\n")
    keys = []
    for value in (b"\xff", b"\xfe"):
        proc = amic_cli("compile", "--json", cwd=tmp_path, env={"X": os.fsdecode(value)})
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        keys.append(json.loads(proc.stdout)["final_key"])
    assert keys[0] != keys[1]


def test_env_file_passes_bytes_through_and_refuses_what_is_no_byte():
    fd = env_file({"X": os.fsdecode(b"a\xffb")})
    try:
        assert os.pread(fd, 100, 0) == b"export X='a\xffb'\n"
    finally:
        os.close(fd)
    with pytest.raises(BuildError, match="not text amic can pass on"):
        env_file({"X": "a\ud800b"})


@pytest.mark.parametrize("command", [["compile"], ["lint"], ["build", "--dry-run"]])
def test_an_amifile_that_cannot_be_read_is_named(tmp_path, amic_cli, command):
    # /proc/self/mem is a "regular file" whose read at offset 0 fails (EIO)
    proc = amic_cli(*command, "/proc/self/mem", cwd=tmp_path)
    fails(proc, 1)
    said = proc.stdout + proc.stderr     # lint reports on stdout
    assert "/proc/self/mem" in said and "Input/output error" in said, said
    assert "amic: error: Input/output error" not in said


def test_a_file_name_with_escape_sequences_is_not_echoed_raw(tmp_path, amic_cli):
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "d" / "x\x1b[2J\x1b]0;owned\x07")
    (tmp_path / "Amifile").write_text("SERVICE s\n    COPY d /d\n")
    err = fails(amic_cli("compile", "-o", "out.tar", cwd=tmp_path), 1)
    assert "\x1b" not in err and "\x07" not in err
    assert "x\\x1b[2J\\x1b]0;owned\\x07 is a FIFO" in err, err


def test_a_copy_too_deep_for_a_path_is_a_clear_error(tmp_path, amic_cli):
    fd = os.open(tmp_path, os.O_RDONLY)
    os.mkdir("d", dir_fd=fd)
    for name in ["d"] + ["a"] * 2100:       # past PATH_MAX (4096) below the context
        if name == "a":
            os.mkdir(name, dir_fd=fd)
        nfd = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(fd)
    try:
        (tmp_path / "Amifile").write_text("SERVICE s\n    COPY d /d\n")
        err = fails(amic_cli("compile", "-o", "out.tar", cwd=tmp_path), 1)
        assert err.rstrip().endswith("/a: cannot be read: File name too long"), err[-300:]
    finally:
        remove_deep(tmp_path / "d")


def remove_deep(top: Path) -> None:
    """Remove a chain of single directories too deep for shutil.rmtree's recursion (and
    for pytest's clean-up of old temporary directories): lift each child in its turn."""
    lifted = top.with_name(top.name + ".next")
    while (top / "a").is_dir():
        (top / "a").rename(lifted)
        shutil.rmtree(top)
        lifted.rename(top)
    shutil.rmtree(top)


@pytest.mark.root
def test_without_proc_the_reads_still_hold(tmp_path):
    # No /proc (a chroot, a minimal container): files are re-opened by name with an inode
    # check instead of through /proc/self/fd. A private mount namespace hides /proc from
    # amic only; the host's /proc is not touched.
    (tmp_path / "d").mkdir()
    (tmp_path / "d/f").write_text("hi\n")
    (tmp_path / "d/l").symlink_to("f")
    (tmp_path / "Amifile").write_text("SECRET T\nSERVICE s\n    COPY d /d\n    COPY d/f /f\n")
    os.mkfifo(tmp_path / "p")
    out = tmp_path.parent / f"{tmp_path.name}.tar"
    script = ('mount -t tmpfs none /proc && test ! -e /proc/self && '
              '"$0" compile -o "$1" && "$0" build --dry-run --secret id=T,src=p; echo "rc=$?"')
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                           AMIC, str(out)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.strip() == "rc=2", (proc.stdout, proc.stderr)
    assert "--secret T: cannot read p: is a FIFO" in proc.stderr
    with tarfile.open(out) as tar:
        assert tar.extractfile("stage2/services/s/files/01/f").read() == b"hi\n"
        assert tar.extractfile("stage2/services/s/files/02").read() == b"hi\n"
        assert tar.getmember("stage2/services/s/files/01/l").linkname == "f"

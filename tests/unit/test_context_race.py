"""A build context changing under amic: nothing from outside it reaches the artifact.

Another process swaps a directory of the context with a symlink to a directory
outside it (``renameat2(RENAME_EXCHANGE)``, atomic, as fast as it can) while amic
compiles, hundreds of times. Every compile either gives an artifact made of the
context's own files or fails with a message naming the path; the outside
directory's canary is in no artifact. Run through the library in a loop (fast,
both the ``openat2`` path and the ``O_NOFOLLOW`` walk) and through the real CLI.
"""

from __future__ import annotations

import mmap
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from amic import safeopen
from amic.amifile import resolve
from amic.compile import artifact, plan
from amic.errors import AmicError

CANARY = b"CANARY-outside-the-context-7f3a"
INSIDE = b"inside the context\n"
SWAPPER = textwrap.dedent("""\
    import ctypes, mmap, os, signal, struct, sys
    libc = ctypes.CDLL(None, use_errno=True)
    RENAME_EXCHANGE = 2
    a, b = (os.fsencode(p) for p in sys.argv[1:3])
    with open(sys.argv[3], "r+b") as fh:
        shared = mmap.mmap(fh.fileno(), 8)     # the count so far, for the test to read
    swaps = 0
    def stop(*_):
        # an even number of swaps leaves the directory where it was
        if swaps % 2:
            libc.renameat2(-100, a, -100, b, RENAME_EXCHANGE)
        print(swaps, flush=True)
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    while True:
        if libc.renameat2(-100, a, -100, b, RENAME_EXCHANGE) != 0:
            sys.exit("renameat2: " + os.strerror(ctypes.get_errno()))
        swaps += 1
        if swaps % 64 == 0:
            struct.pack_into("q", shared, 0, swaps)
""")
EXPECTED_ERRORS = ("is outside the build context", "changed while", "does not exist")


def make_context(tmp_path: Path, copy: str) -> Path:
    """ctx/data (a directory with a file) and ctx/link -> ../outside (with the canary)."""
    ctx = tmp_path / "ctx"
    (ctx / "data").mkdir(parents=True)
    (ctx / "data/file.txt").write_bytes(INSIDE)
    (ctx / "data/more.txt").write_bytes(INSIDE * 3)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/file.txt").write_bytes(CANARY)
    (tmp_path / "outside/more.txt").write_bytes(CANARY)
    (ctx / "link").symlink_to("../outside")
    (ctx / "Amifile").write_text(f"SERVICE s\n    {copy}\n")
    return ctx


class Swapper:
    """The racing process: swaps ``a`` and ``b`` until stopped; :meth:`stop` gives the count."""

    def __init__(self, a: Path, b: Path) -> None:
        count = a.parent.parent / "swaps"
        count.write_bytes(bytes(8))
        self.proc = subprocess.Popen([sys.executable, "-c", SWAPPER, str(a), str(b), str(count)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline() == "ready\n"
        with open(count, "rb") as fh:
            self.shared = mmap.mmap(fh.fileno(), 8, access=mmap.ACCESS_READ)

    @property
    def swaps(self) -> int:
        """Swaps so far (to the last 64)."""
        return struct.unpack_from("q", self.shared, 0)[0]

    def stop(self) -> int:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, out
        return int(out.strip())


def check_error(message: str) -> None:
    """A failure under the race is one of the clear messages, naming the path."""
    assert any(e in message for e in EXPECTED_ERRORS), message
    assert "data" in message or "link" in message, message
    assert message.strip() not in ("Invalid argument", "amic: error: Invalid argument"), message


COPIES = {"directory": "COPY data /srv/data", "single file": "COPY data/file.txt /srv/file"}


@pytest.mark.parametrize("walk", [False, True], ids=["openat2", "nofollow-walk"])
@pytest.mark.parametrize("kind", list(COPIES))
def test_a_swapped_directory_never_brings_outside_files_in(tmp_path, monkeypatch, kind, walk):
    if walk:
        monkeypatch.setattr(safeopen, "use_openat2", False)
    ctx = make_context(tmp_path, COPIES[kind])
    resolved = resolve.load(ctx / "Amifile")
    clean = artifact.artifact_bytes(plan.make_plan(resolved))
    assert INSIDE in clean and CANARY not in clean   # the control, before the race
    runs, built, failures = 0, 0, []
    swapper = Swapper(ctx / "data", ctx / "link")
    started = time.monotonic()
    try:
        # at least 300 compiles and 500 swaps, and both outcomes seen (a busy machine may
        # starve the swapper for a while): bounded by 5000 compiles and 5 minutes
        while runs < 5000 and time.monotonic() - started < 300 and not (
                runs >= 300 and swapper.swaps >= 500 and failures and built):
            runs += 1
            try:
                data = artifact.artifact_bytes(plan.make_plan(resolved))
            except AmicError as e:
                failures.append(str(e))
                continue
            assert CANARY not in data
            assert data == clean    # the context's own files, whole
            built += 1
    finally:
        swaps = swapper.stop()
    assert swaps >= 500, swaps
    assert built + len(failures) == runs
    for message in failures:
        check_error(message)
    # the race was real: some compiles were refused, and some got through whole
    assert failures and built, (len(failures), built)


@pytest.mark.parametrize("kind", list(COPIES))
def test_the_cli_under_the_race(tmp_path, amic_cli, kind):
    ctx = make_context(tmp_path, COPIES[kind])
    out = tmp_path / "out.tar"
    swapper = Swapper(ctx / "data", ctx / "link")
    results = []
    try:
        while len(results) < 12 or (swapper.swaps < 500 and len(results) < 60):
            out.unlink(missing_ok=True)
            proc = amic_cli("compile", "-o", str(out), cwd=ctx)
            results.append((proc.returncode, proc.stderr, out.read_bytes() if out.exists()
                            else b""))
    finally:
        swaps = swapper.stop()
    assert swaps >= 500, swaps
    for rc, stderr, data in results:
        assert "Traceback" not in stderr
        assert CANARY not in data
        if rc == 0:
            assert INSIDE in data
        else:
            assert rc == 1 and not data, stderr
            check_error(stderr)


# ---- the artifact writes the bytes the plan hashed, from the file it hashed -----------------


def planned(tmp_path: Path, copy: str):
    ctx = make_context(tmp_path, copy)
    return ctx, plan.make_plan(resolve.load(ctx / "Amifile"))


@pytest.mark.parametrize("kind", list(COPIES))
def test_content_changed_after_the_plan_is_refused(tmp_path, kind):
    ctx, p = planned(tmp_path, COPIES[kind])
    (ctx / "data/file.txt").write_bytes(b"x" * len(INSIDE))   # same size, other bytes
    with pytest.raises(AmicError, match=r"data/file.txt changed while compiling \(other content\)"):
        artifact.artifact_bytes(p)


@pytest.mark.parametrize("kind", list(COPIES))
def test_a_file_replaced_after_the_plan_is_refused(tmp_path, kind):
    ctx, p = planned(tmp_path, COPIES[kind])
    (ctx / "data/new").write_bytes(INSIDE)
    (ctx / "data/new").rename(ctx / "data/file.txt")     # same bytes, another file
    with pytest.raises(AmicError, match="another file"):
        artifact.artifact_bytes(p)


@pytest.mark.parametrize("kind", list(COPIES))
def test_a_fifo_swapped_in_after_the_plan_is_refused_without_waiting(tmp_path, kind):
    import os
    ctx, p = planned(tmp_path, COPIES[kind])
    (ctx / "data/file.txt").unlink()
    os.mkfifo(ctx / "data/file.txt")
    with pytest.raises(AmicError, match="is a FIFO"):
        artifact.artifact_bytes(p)


def test_a_directory_swapped_after_the_plan_is_refused(tmp_path):
    ctx, p = planned(tmp_path, COPIES["directory"])
    (ctx / "data").rename(ctx / "data.old")
    (ctx / "data").symlink_to("../outside")
    with pytest.raises(AmicError, match="data/file.txt changed while compiling"):
        artifact.artifact_bytes(p)


# ---- the context directory itself swapped ------------------------------------------------


def test_the_context_directory_itself_swapped(tmp_path):
    # --context CTX, and CTX itself swapped with a symlink (another user's) to a directory
    # outside: the link is never followed, so no compile reads the outside directory
    (tmp_path / "ctx/data").mkdir(parents=True)
    (tmp_path / "ctx/data/file.txt").write_bytes(INSIDE)
    (tmp_path / "outside/data").mkdir(parents=True)
    (tmp_path / "outside/data/file.txt").write_bytes(CANARY)
    (tmp_path / "link").symlink_to("outside")
    os.lchown(tmp_path / "link", 1000, 1000)      # planted by someone else
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj/Amifile").write_text("SERVICE s\n    COPY ../ctx/data /d\n")
    resolved = resolve.load(tmp_path / "proj/Amifile")
    clean = artifact.artifact_bytes(plan.make_plan(resolved, context=str(tmp_path / "ctx")))
    assert INSIDE in clean
    runs, built, failures = 0, 0, []
    swapper = Swapper(tmp_path / "ctx", tmp_path / "link")
    started = time.monotonic()
    try:
        while runs < 5000 and time.monotonic() - started < 300 and not (
                runs >= 300 and swapper.swaps >= 500 and failures and built):
            runs += 1
            try:
                data = artifact.artifact_bytes(plan.make_plan(resolved,
                                                              context=str(tmp_path / "ctx")))
            except AmicError as e:
                failures.append(str(e))
                continue
            assert CANARY not in data
            assert data == clean
            built += 1
    finally:
        swapper.stop()
    for message in failures:
        assert "Traceback" not in message and "ctx" in message, message
        assert any(w in message for w in ("symlink owned by uid 1000", "changed while",
                                          "outside the build context", "replaced")), message
    assert failures and built, (len(failures), built)


def test_a_context_through_another_users_symlink_is_refused(tmp_path, amic_cli):
    (tmp_path / "real").mkdir()
    (tmp_path / "real/f").write_text("f\n")
    (tmp_path / "ctx").symlink_to("real")
    (tmp_path / "Amifile").write_text("SERVICE s\n    COPY ctx/f /f\n")
    ok = amic_cli("compile", "-o", "out.tar", "--context", "ctx", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr        # a symlink of root's (this user's) is followed
    os.lchown(tmp_path / "ctx", 1000, 1000)
    proc = amic_cli("compile", "-o", "out.tar", "--context", "ctx", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "--context ctx: goes through a symlink owned by uid 1000" in proc.stderr, proc.stderr
    assert "name the real directory" in proc.stderr


def test_an_output_that_fails_is_not_blamed_on_the_source(tmp_path):
    import errno
    import io

    class FullDisk(io.RawIOBase):
        """An output with room for the headers only: the first payload write fails."""

        def writable(self):
            return True

        def write(self, data):
            if INSIDE in bytes(data):
                raise OSError(errno.ENOSPC, "No space left on device")
            return len(data)

    ctx, p = planned(tmp_path, COPIES["single file"])
    with pytest.raises(OSError) as caught:
        artifact.write_artifact(p, FullDisk())
    assert caught.value.errno == errno.ENOSPC and "changed" not in str(caught.value)

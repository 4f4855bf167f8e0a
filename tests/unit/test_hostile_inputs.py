"""Hostile inputs through the real CLI: a clear error and exit 1 or 2, never a traceback, a
hang or a write outside the asked path (issue 11).

Each case asserts the exit code, the message, the absence of a traceback and that the
directory it ran in holds nothing new. Special files are made in a temporary directory;
``-o /dev/null`` runs in a private mount namespace with its own ``/dev`` (the machine's
``/dev/null`` is never at risk).
"""

from __future__ import annotations

import os
import socket
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from amic.amifile.parser import MAX_AMIFILE_BYTES, MAX_LINE_CHARS

from tests.harness.cli import AMIC
from tests.harness.hostile import clean, listing, run

SIMPLE = "SERVICE web\n    INIT echo hi\n"


# ------------------------------------------------------------------ what AMIFILE names


def test_a_directory_means_its_amifile(tmp_path):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "Amifile").write_text(SIMPLE)
    proc = run("compile", "proj", "-o", "out.tar", cwd=tmp_path)
    clean(proc, 0)
    assert (tmp_path / "out.tar").stat().st_size > 0
    proc = run("compile", "proj", "--json", cwd=tmp_path)
    clean(proc, 0)
    assert '"web"' in proc.stdout


def test_a_directory_without_an_amifile(tmp_path):
    (tmp_path / "empty").mkdir()
    before = listing(tmp_path)
    for command in ("compile", "build"):
        proc = run(command, "empty", cwd=tmp_path, env={"AMIC_TARGET": "local"})
        clean(proc, 2, "empty/Amifile: no such file")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("command", ["compile", "build"])
def test_a_fifo_is_refused_without_opening_it(tmp_path, command):
    fifo = tmp_path / "Amifile"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    proc = run(command, str(fifo), cwd=tmp_path, env={"AMIC_TARGET": "local"}, timeout=30)
    clean(proc, 2, "is a FIFO, not an Amifile")
    assert time.monotonic() - t0 < 30
    # the default ./Amifile too
    proc = run(command, cwd=tmp_path, env={"AMIC_TARGET": "local"}, timeout=30)
    clean(proc, 2, "is a FIFO, not an Amifile")
    assert listing(tmp_path) == {"Amifile"}


def test_lint_reports_a_fifo_without_opening_it(tmp_path):
    # lint reports a file it cannot take as a finding (AM1000, exit 1), never a hang
    fifo = tmp_path / "Amifile"
    os.mkfifo(fifo)
    proc = run("lint", "--no-shellcheck", str(fifo), cwd=tmp_path, timeout=30)
    clean(proc, 1)
    assert "AM1000" in proc.stdout and "is a FIFO, not an Amifile" in proc.stdout, proc.stdout


def test_devices_and_sockets_are_refused(tmp_path):
    proc = run("compile", "/dev/null", cwd=tmp_path)
    clean(proc, 2, "/dev/null: is a character device, not an Amifile")
    proc = run("compile", "/dev/zero", cwd=tmp_path, timeout=30, memory=1 << 30)
    clean(proc, 2, "is a character device")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "sock"))
        proc = run("compile", "sock", cwd=tmp_path)
        clean(proc, 2, "sock: is a socket, not an Amifile")
    finally:
        sock.close()
    assert listing(tmp_path) == {"sock"}


def test_an_included_fifo_is_an_error_at_the_include(tmp_path):
    os.mkfifo(tmp_path / "part.amifile")
    (tmp_path / "Amifile").write_text("INCLUDE ./part.amifile\n" + SIMPLE)
    proc = run("compile", "--json", cwd=tmp_path, timeout=30)
    clean(proc, 1, "Amifile:1:9: INCLUDE ./part.amifile:", "is a FIFO, not an Amifile")


def test_the_parser_refuses_a_fifo_swapped_in_after_the_check(tmp_path):
    """read_source opens with O_NONBLOCK and checks the open descriptor: even a FIFO
    that replaced the file between the check and the open cannot hang it."""
    from amic.amifile import parser
    from amic.errors import AmifileError

    os.mkfifo(tmp_path / "f")
    real_stat = os.stat
    calls = []

    def stat_says_regular(path, *a, **kw):  # the check sees a regular file...
        calls.append(path)
        return real_stat(tmp_path / "regular") if path == str(tmp_path / "f") else \
            real_stat(path, *a, **kw)

    (tmp_path / "regular").write_text(SIMPLE)
    os.stat, saved = stat_says_regular, os.stat
    try:
        with pytest.raises(AmifileError, match="is a FIFO"):  # ...the open one is a FIFO
            parser.read_source(str(tmp_path / "f"))
    finally:
        os.stat = saved
    assert calls


# ------------------------------------------------------------------ limits


def test_a_file_over_the_size_limit(tmp_path):
    (tmp_path / "Amifile").write_text(SIMPLE + "# padding\n" * (MAX_AMIFILE_BYTES // 10 + 1))
    proc = run("compile", "--json", cwd=tmp_path, memory=1 << 30)
    clean(proc, 1, f"the Amifile is larger than {MAX_AMIFILE_BYTES} bytes")
    assert len(proc.stderr) < 500


def test_a_huge_file_is_refused_without_reading_it(tmp_path):
    """1 GB (sparse): refused from its size, under a 512 MB address-space limit."""
    with open(tmp_path / "Amifile", "wb") as fh:
        fh.truncate(1 << 30)
    proc = run("compile", "--json", cwd=tmp_path, memory=512 << 20, timeout=30)
    clean(proc, 1, "larger than")


def test_a_long_garbage_line_is_not_echoed(tmp_path):
    (tmp_path / "Amifile").write_text(SIMPLE + "x" * (3 << 20) + "\n")
    proc = run("compile", "--json", cwd=tmp_path, memory=1 << 30)
    clean(proc, 1, f"Amifile:3:1: line longer than {MAX_LINE_CHARS} characters")
    assert len(proc.stderr) < 500


def test_a_line_at_the_limit_is_fine(tmp_path):
    (tmp_path / "Amifile").write_text(SIMPLE + "# " + "x" * (MAX_LINE_CHARS - 2) + "\n")
    clean(run("compile", "--json", cwd=tmp_path), 0)


@pytest.mark.parametrize("text, where", [
    ('SERVICE web\n    ENV A="x\0y"\n    INIT true\n', "Amifile:2:13:"),
    ("SERVICE web\n    PACKAGES hel\0lo\n", "Amifile:2:17:"),
    ("SERVICE w\0eb\n    INIT true\n", "Amifile:1:10:"),
    ("SERVICE web\n    INIT <<EOF\n    echo \0\nEOF\n", "Amifile:3:10:"),
    ("\0", "Amifile:1:1:"),
])
def test_nul_bytes_are_rejected_with_a_position(tmp_path, text, where):
    (tmp_path / "Amifile").write_bytes(text.encode())
    proc = run("compile", "-o", "out.tar", cwd=tmp_path)
    clean(proc, 1, where, "NUL byte")
    assert "\0" not in proc.stderr
    assert listing(tmp_path) == {"Amifile"}


def test_a_requires_chain_10000_deep_declared_before_its_targets(tmp_path):
    n = 10_000
    text = "".join(f"SERVICE s{i}\n    REQUIRES s{i + 1}\n    INIT true\n" for i in range(n))
    (tmp_path / "Amifile").write_text(text + f"SERVICE s{n}\n    INIT true\n")
    proc = run("compile", "--json", cwd=tmp_path, timeout=300)
    clean(proc, 0)
    assert "RecursionError" not in proc.stderr


def test_a_requires_cycle_10000_long(tmp_path):
    n = 10_000
    text = "".join(f"SERVICE s{i}\n    REQUIRES s{(i + 1) % n}\n    INIT true\n" for i in range(n))
    (tmp_path / "Amifile").write_text(text)
    proc = run("compile", "--json", cwd=tmp_path, timeout=300)
    # placed where lint places AM4002: the requirement by which s0 enters the cycle
    clean(proc, 1, "Amifile:2:14: REQUIRES cycle: s0 -> s1 -> s2",
          "... 9985 more ...", "s9999 -> s0")
    assert len(proc.stderr) < 1000


def test_an_include_chain_2000_deep(tmp_path):
    n = 2000
    for i in range(n):
        (tmp_path / f"p{i}.amifile").write_text(f"INCLUDE ./p{i + 1}.amifile\n"
                                                 f"SERVICE s{i}\n    INIT true\n")
    (tmp_path / f"p{n}.amifile").write_text(f"SERVICE s{n}\n    INIT true\n")
    (tmp_path / "Amifile").write_text("INCLUDE ./p0.amifile\n")
    proc = run("compile", "--json", cwd=tmp_path, timeout=300)
    clean(proc, 0)


def test_parse_time_is_linear_in_the_input():
    """Doubling the input at most ~2.5x the time (the machine is shared: generous)."""
    from amic.amifile import parser

    def took(n: int) -> float:
        text = "".join(f"SERVICE s{i}\n    PACKAGES a \\\n  b \\\n  c\n    INIT true\n"
                       for i in range(n))
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            parser.parse_text(text, "Amifile")
            best = min(best, time.perf_counter() - t0)
        return best

    parser.parser()
    small, large = took(2000), took(8000)
    assert large < small * 4 * 2.5, (small, large)


# ------------------------------------------------------------------ outputs


def test_output_into_a_missing_directory(tmp_path):
    (tmp_path / "Amifile").write_text(SIMPLE)
    proc = run("compile", "-o", str(tmp_path / "missing" / "x.tar"), cwd=tmp_path)
    clean(proc, 2, f"cannot write {tmp_path}/missing/x.tar: directory {tmp_path}/missing "
                   "does not exist")
    assert listing(tmp_path) == {"Amifile"}


def test_build_manifest_into_a_missing_directory_fails_before_the_build(tmp_path):
    # checked before anything is built: no target is even made (an unknown one would say so)
    (tmp_path / "Amifile").write_text(SIMPLE)
    proc = run("build", "--target", "nosuchtarget", "--manifest",
               str(tmp_path / "missing" / "m.json"), cwd=tmp_path)
    clean(proc, 2, f"cannot write {tmp_path}/missing/m.json: directory {tmp_path}/missing "
                   "does not exist")
    assert "unknown target" not in proc.stderr
    assert listing(tmp_path) == {"Amifile"}


def test_output_onto_a_directory(tmp_path):
    (tmp_path / "Amifile").write_text(SIMPLE)
    (tmp_path / "d").mkdir()
    proc = run("compile", "-o", "d", cwd=tmp_path)
    clean(proc, 2, "cannot write d: it is a directory")
    assert listing(tmp_path) == {"Amifile", "d"}


def test_output_into_a_fifo_is_written_through(tmp_path):
    (tmp_path / "Amifile").write_text(SIMPLE)
    os.mkfifo(tmp_path / "out")
    reader = subprocess.Popen(["cat", str(tmp_path / "out")], stdout=subprocess.PIPE)
    proc = run("compile", "-o", "out", cwd=tmp_path)
    data = reader.communicate(timeout=30)[0]
    clean(proc, 0)
    assert data[257:262] == b"ustar"
    assert (tmp_path / "out").is_fifo()
    assert listing(tmp_path) == {"Amifile", "out"}


def test_output_replaces_a_regular_file_atomically_and_keeps_it_on_failure(tmp_path):
    (tmp_path / "Amifile").write_text(SIMPLE)
    (tmp_path / "out.tar").write_text("old")
    clean(run("compile", "-o", "out.tar", cwd=tmp_path), 0)
    assert (tmp_path / "out.tar").read_bytes()[257:262] == b"ustar"
    (tmp_path / "Amifile").write_text("SERVICE web\n    COPY missing /x\n")
    (tmp_path / "out.tar").write_text("old")
    clean(run("compile", "-o", "out.tar", cwd=tmp_path), 1)
    assert (tmp_path / "out.tar").read_text() == "old"
    assert listing(tmp_path) == {"Amifile", "out.tar"}


@pytest.mark.root
def test_output_to_dev_null_in_a_private_dev(tmp_path):
    """``-o /dev/null``: written in place, /dev/null is still a character device after.
    Runs in its own mount namespace with a tmpfs /dev and a fresh null device, so the
    machine's /dev/null is never at risk."""
    (tmp_path / "Amifile").write_text(SIMPLE)
    script = f"""
set -e
mount -t tmpfs -o mode=755 tmpfs /dev
mknod -m 666 /dev/null c 1 3
before=$(stat -c '%F %t:%T %i' /dev/null)
{shlex.quote(str(AMIC))} compile {shlex.quote(str(tmp_path))}/Amifile -o /dev/null
echo "rc=$?"
after=$(stat -c '%F %t:%T %i' /dev/null)
echo "before=$before"
echo "after=$after"
echo "dev=$(ls -A /dev | tr '\\n' ' ')"
"""
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert out["rc"] == "0"
    assert out["before"] == out["after"]
    assert out["after"].startswith("character special file 1:3")
    assert out["dev"].split() == ["null"]  # nothing left beside it (no .amic-* temporary)
    assert "wrote /dev/null" in proc.stderr
    assert os.path.exists("/dev/null") and not Path("/dev/null").is_file()


# ------------------------------------------------------------------ AWS configuration


@pytest.mark.parametrize("args", [["ami", "ls"], ["gc"], ["build", "--target", "ec2"]])
def test_a_broken_aws_config_is_a_usage_error(tmp_path, args):
    (tmp_path / "Amifile").write_text(SIMPLE)
    (tmp_path / "config").write_text("[default\nregion = us-east-1\n[[[\n")
    env = {"AWS_CONFIG_FILE": str(tmp_path / "config"), "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
           "AMIC_CACHE_DIR": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    env.pop("AWS_REGION", None)
    proc = run(*args, cwd=tmp_path, env=env, timeout=60)
    clean(proc, 2, "the AWS configuration is broken", "Unable to parse config file",
          str(tmp_path / "config"))


def test_copy_to_double_slash(tmp_path):
    """``COPY d //``: ``//`` is an absolute path (the root); never "must be an absolute path"."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    (tmp_path / "Amifile").write_text("SERVICE web\n    COPY d //\n")
    proc = run("compile", "--json", cwd=tmp_path)
    assert "Traceback" not in proc.stderr
    assert "must be an absolute path" not in proc.stderr
    assert proc.returncode in (0, 1), proc.stderr

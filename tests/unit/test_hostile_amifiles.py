"""Hostile Amifiles, round two (issue 18), through the real CLI: nothing a file holds is
echoed unless it is an Amifile, control characters never reach the terminal, instruction
words are ASCII, a lone CR is an error, ``AMIC_*`` names are amic's own.

Each case asserts the exit code, the message and that no traceback was printed
(``clean``), and what must *not* be in the output.
"""

from __future__ import annotations

import pytest

from tests.harness.hostile import clean, listing, run

SECRET = "hunter2-d0nt-print-me"


def all_output(proc) -> str:
    return proc.stdout + proc.stderr


# ------------------------------------------------------------------ nothing echoed


@pytest.fixture
def planted(tmp_path):
    """Host files an INCLUDE could name, each holding SECRET on its first line."""
    files = tmp_path / "host"
    files.mkdir()
    (files / "shadow").write_text(f"root:{SECRET}:19000:0:99999:7:::\nbin:*:19000::::::\n")
    (files / "token").write_text(f"{SECRET}\n")
    (files / "words").write_text(f"password {SECRET}\n")   # letters first, like an instruction
    (files / "binary").write_bytes(b"\x7fELF\x02\x01" + SECRET.encode() + b"\xff\xfe\n")
    (files / "environ").write_bytes(f"TOKEN={SECRET}\0HOME=/root\0".encode())
    return files


@pytest.mark.parametrize("name, message", [
    ("shadow", "shadow:1:1: | not an Amifile: its first line is no instruction"),
    ("token", "token:1:1: | not an Amifile"),
    ("words", "words:1:1: | not an Amifile"),
    ("binary", "binary:1:28: | invalid UTF-8 (byte 0xff)"),
    ("environ", "environ:1:28: | NUL byte in an Amifile"),
])
@pytest.mark.parametrize("command", [
    ("compile", "--json"), ("lint",), ("lint", "--format", "json"),
    ("build", "--dry-run", "--target", "local"),
])
def test_an_included_host_file_is_never_echoed(tmp_path, planted, name, message, command):
    (tmp_path / "Amifile").write_text(f"FROM debian:12\nINCLUDE {planted / name}\n"
                                      "SERVICE web\n    INIT true\n")
    # build --dry-run: a private, empty cache (no base is looked at: the parse fails first)
    proc = run(*command, cwd=tmp_path, env={"AMIC_CACHE_DIR": str(tmp_path / "cache")})
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1, proc.stderr
    out = all_output(proc)
    where, what = message.split(" | ")
    assert what in out, out
    assert "json" in command or where in out, out   # json: fields of their own
    assert SECRET not in out
    assert "\0" not in out


def test_proc_self_environ_is_not_printed(tmp_path):
    """The reproduction from the issue: amic's own environment (credentials) stays unseen."""
    (tmp_path / "Amifile").write_text("INCLUDE /proc/self/environ\nSERVICE web\n")
    proc = run("compile", "--json", cwd=tmp_path, env={"AWS_SECRET_ACCESS_KEY": SECRET})
    clean(proc, 1, "/proc/self/environ:1:", "NUL byte in an Amifile")
    assert SECRET not in all_output(proc)
    assert "AWS_SECRET_ACCESS_KEY" not in all_output(proc)


def test_the_root_amifile_is_not_echoed_either(tmp_path, planted):
    proc = run("compile", "--json", str(planted / "shadow"), cwd=tmp_path)
    clean(proc, 1, "not an Amifile")
    assert SECRET not in all_output(proc)


def test_a_typo_in_the_first_line_still_shows_the_line(tmp_path):
    (tmp_path / "Amifile").write_text("FORM debian:12\nSERVICE web\n")
    proc = run("compile", "--json", cwd=tmp_path)
    clean(proc, 1, "Amifile:1:1: unknown instruction 'FORM'; did you mean FROM?",
          "    FORM debian:12\n    ^")


@pytest.mark.parametrize("text, where", [
    ("FROM debian:12\nSERVICE \x1b[2Jweb\n", "Amifile:2:9: | invalid service name '\\x1b[2Jweb'"),
    ("FROM debian:12\nSERVICE web\n  ENV \x1b]0;pwned\x07=1\n", "Amifile:3:7: | invalid ENV name"),
    ("FROM debian:12\nSERVICE web\n  \x1b[31mINIT true\n",
     "Amifile:3:3: | expected an instruction"),
    ("FROM debian:12\nSERVICE web\n  COPY \u202egpj.exe /x\n", "Amifile:3:| COPY"),
])
@pytest.mark.parametrize("command", [("compile", "--json"), ("lint",)])
def test_control_characters_are_escaped(tmp_path, text, where, command):
    (tmp_path / "Amifile").write_text(text)
    proc = run(*command, cwd=tmp_path)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1, proc.stderr
    out = all_output(proc)
    position, message = where.split("| ")
    assert position in out and message in out, out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "\\x1b" in out or "\\u202e" in out


def test_the_caret_stays_under_the_column_after_an_escape(tmp_path):
    (tmp_path / "Amifile").write_text("SERVICE web\n  ENV A\x1bB=1 9x=2\n")
    proc = run("compile", "--json", cwd=tmp_path)
    clean(proc, 1, "Amifile:2:7: invalid ENV name 'A\\x1bB'")
    line, caret = proc.stderr.splitlines()[1:3]
    assert line == "      ENV A\\x1bB=1 9x=2"
    assert caret.index("^") == line.index("A\\x1b")


# ------------------------------------------------------------------ keywords, line ends


@pytest.mark.parametrize("word", ["SERV\u0131CE", "\u017fERVICE", "SERV\u0130CE".lower()])
def test_instruction_words_are_ascii(tmp_path, word):
    """str.upper() maps the dotless i (and the long s) to ASCII letters: not a keyword."""
    (tmp_path / "Amifile").write_text(f"FROM debian:12\n{word} web\n    INIT true\n")
    proc = run("compile", "--json", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "Amifile:2:1:" in proc.stderr and proc.stdout == ""


def test_a_lone_cr_is_an_error_not_part_of_a_name(tmp_path):
    (tmp_path / "Amifile").write_bytes(b"FROM debian:12\rSERVICE web\r    INIT true\r")
    proc = run("compile", "-o", "out.tar", cwd=tmp_path)
    clean(proc, 1, "Amifile:1:15: carriage return (CR) without a line feed", "dos2unix")
    assert "\r" not in proc.stderr
    assert listing(tmp_path) == {"Amifile"}


def test_crlf_still_reads_as_lf(tmp_path):
    (tmp_path / "Amifile").write_bytes(b"FROM debian:12\r\nSERVICE web\r\n    INIT true\r\n")
    proc = run("compile", "--json", cwd=tmp_path)
    clean(proc, 0)
    assert '"base": "debian:12"' in proc.stdout


# ------------------------------------------------------------------ AMIC_* names


@pytest.mark.parametrize("text, where", [
    ("ARG AMIC_STATE_DIR=/tmp/x\nSERVICE web\n    INIT true\n", "Amifile:1:5: ARG name"),
    ("ARG A=1 AMIC_LOG_DIR\nSERVICE web\n    INIT true\n", "Amifile:1:9: ARG name"),
    ("SERVICE web\n    ARG AMIC_ETC_DIR=/x\n    INIT true\n", "Amifile:2:9: ARG name"),
    ("ENV AMIC_STAGE2=/x\nSERVICE web\n    INIT true\n", "Amifile:1:5: ENV name"),
    ("SECRET AMIC_SECRET_NAMES\nSERVICE web\n    INIT true\n", "Amifile:1:8: SECRET name"),
])
def test_amic_names_are_reserved(tmp_path, text, where):
    (tmp_path / "Amifile").write_text(text)
    proc = run("compile", "-o", "out.tar", cwd=tmp_path)
    clean(proc, 1, where, "is reserved: names starting with AMIC_ are amic's own")
    assert listing(tmp_path) == {"Amifile"}


@pytest.mark.parametrize("arg", ["AMIC_STATE_DIR=/tmp/x", "AMIC_SECRET_NAMES"])
def test_a_build_arg_named_amic_is_refused(tmp_path, arg):
    (tmp_path / "Amifile").write_text("SERVICE web\n    INIT true\n")
    proc = run("compile", "--json", "--build-arg", arg, cwd=tmp_path,
               env={"AMIC_SECRET_NAMES": "x"})
    clean(proc, 2, f"--build-arg {arg.split('=')[0]}: names starting with AMIC_ are amic's own")

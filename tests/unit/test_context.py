"""The build context: COPY confinement, .amicignore, modes, special files, the size limit.

Most cases run the real ``amic compile`` (the ``amic_cli`` fixture) and check the
exit status, the ``file:line:col`` of the message (the source's own column) and
that nothing was written; the ``.amicignore`` matcher also has unit tests.
"""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import time
from pathlib import Path

import attrs
import pytest

from amic.compile.context import copy_limit
from amic.compile.ignore import parse_ignore
from amic.errors import UsageError


def write(root: Path, files: dict[str, str | tuple[str, int]]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = None
        if isinstance(content, tuple):
            content, mode = content
        path.write_text(content)
        if mode is not None:
            path.chmod(mode)
    return root


def members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(path.read_bytes())) as tar:
        return {m.name: m for m in tar.getmembers()}


def payload(path: Path, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(path.read_bytes())) as tar:
        return tar.extractfile(name).read()


def compile_fails(amic_cli, where: Path, *args: str, env: dict | None = None):
    (where / "out.tar").unlink(missing_ok=True)
    proc = amic_cli("compile", "-o", "out.tar", *args, cwd=where, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (where / "out.tar").exists()
    return proc.stderr


# ---- escapes ---------------------------------------------------------------------------


def test_absolute_source_outside_the_context(tmp_path, amic_cli):
    write(tmp_path, {"Amifile": "SERVICE s\n    COPY /etc/shadow /x\n"})
    err = compile_fails(amic_cli, tmp_path)
    assert err.startswith("Amifile:2:10: COPY source '/etc/shadow' is outside the build context "
                          ". (the Amifile's directory)"), err
    assert "        COPY /etc/shadow /x\n" + " " * 13 + "^" in err


def test_dotdot_source_outside_the_context(tmp_path, amic_cli):
    write(tmp_path, {"secret": "s3cret\n", "proj/Amifile": "SERVICE s\n    COPY a ../secret /x/\n",
                     "proj/a": "a\n"})
    err = compile_fails(amic_cli, tmp_path / "proj")
    assert err.startswith("Amifile:2:12: COPY source '../secret' is outside the build context"), err
    # a `..` that stays inside is fine
    write(tmp_path, {"proj/Amifile": "SERVICE s\n    COPY sub/../a /x\n", "proj/sub/b": ""})
    amic_cli("compile", "-o", "out.tar", cwd=tmp_path / "proj", check=True)


def test_symlink_out_of_the_context(tmp_path, amic_cli):
    write(tmp_path, {"outside/secret": "s3cret\n", "proj/Amifile": "SERVICE s\n    COPY link /x\n"})
    (tmp_path / "proj/link").symlink_to(tmp_path / "outside/secret")
    err = compile_fails(amic_cli, tmp_path / "proj")
    assert err.startswith("Amifile:2:10: COPY source 'link' is outside the build context"), err
    # through a symlinked directory in the middle of the path, and with --mode first
    (tmp_path / "proj/dirlink").symlink_to("../outside")
    write(tmp_path, {"proj/Amifile": "SERVICE s\n    COPY --mode=0644 dirlink/secret /x\n"})
    err = compile_fails(amic_cli, tmp_path / "proj")
    assert err.startswith("Amifile:2:22: COPY source 'dirlink/secret' is outside"), err


def test_symlink_inside_the_context_is_followed(tmp_path, amic_cli):
    write(tmp_path, {"Amifile": "SERVICE s\n    COPY link /etc/x\n", "real.conf": ("r\n", 0o640)})
    (tmp_path / "link").symlink_to("real.conf")
    amic_cli("compile", "-o", "out.tar", cwd=tmp_path, check=True)
    m = members(tmp_path / "out.tar")
    assert m["stage2/services/s/files/01"].isfile() and m["stage2/services/s/files/01"].mode == 0o640
    assert payload(tmp_path / "out.tar", "stage2/services/s/files/01") == b"r\n"


def test_symlink_loop(tmp_path, amic_cli):
    write(tmp_path, {"Amifile": "SERVICE s\n    COPY loop /x\n"})
    (tmp_path / "loop").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop")
    err = compile_fails(amic_cli, tmp_path)
    assert err.startswith("Amifile:2:10: COPY source 'loop' is a symlink loop"), err


def test_context_option_widens_the_context(tmp_path, amic_cli):
    write(tmp_path, {"shared/app.conf": "c\n", "deploy/Amifile":
                     "SERVICE s\n    COPY ../shared/app.conf /etc/app.conf\n"})
    err = compile_fails(amic_cli, tmp_path / "deploy")
    assert "outside the build context" in err
    amic_cli("compile", "-o", "out.tar", "--context", "..", cwd=tmp_path / "deploy", check=True)
    assert payload(tmp_path / "deploy/out.tar", "stage2/services/s/files/01") == b"c\n"
    # the option narrows it just as well
    write(tmp_path, {"deploy/Amifile": "SERVICE s\n    COPY files/a /a\n", "deploy/files/a": "a\n",
                     "deploy/inner/.keep": ""})
    err = compile_fails(amic_cli, tmp_path / "deploy", "--context", "inner")
    assert "outside the build context inner (--context)" in err


def test_context_option_must_be_a_directory(tmp_path, amic_cli):
    write(tmp_path, {"Amifile": "SERVICE s\n    INIT true\n"})
    proc = amic_cli("compile", "--context", "nope", cwd=tmp_path)
    assert proc.returncode == 2 and "--context nope: not a directory" in proc.stderr


def test_included_fragment_outside_the_context(tmp_path, amic_cli):
    write(tmp_path, {"common/web.amifile": "SERVICE web\n    COPY web.conf /etc/web.conf\n",
                     "common/web.conf": "w\n", "proj/Amifile": "INCLUDE ../common/web.amifile\n"})
    err = compile_fails(amic_cli, tmp_path / "proj")
    assert err.startswith("../common/web.amifile:2:10: COPY source 'web.conf' is outside"), err
    amic_cli("compile", "-o", "out.tar", "--context", "..", cwd=tmp_path / "proj", check=True)


def test_stock_service_has_its_own_directory_as_context(tmp_path, amic_cli):
    stock = write(tmp_path / "stock", {"mysvc/Amifile": "SERVICE mysvc\n    COPY conf /etc/mysvc\n",
                                       "mysvc/conf/a.conf": "a\n",
                                       "bad/Amifile": "SERVICE bad\n    COPY ../mysvc/conf /x\n"})
    proj = write(tmp_path / "proj", {"Amifile": "INCLUDE mysvc\n"})
    env = {"AMIC_SERVICES_PATH": str(stock)}
    amic_cli("compile", "-o", "out.tar", cwd=proj, env=env, check=True)
    assert payload(proj / "out.tar", "stage2/services/mysvc/files/01/a.conf") == b"a\n"
    write(proj, {"Amifile": "INCLUDE bad\n"})
    err = compile_fails(amic_cli, proj, env=env)
    assert "COPY source '../mysvc/conf' is outside the build context" in err
    assert "(the stock service's directory)" in err


def test_stock_services_inside_the_build_context_use_it(tmp_path, amic_cli):
    """A project that keeps its own services path inside its checkout: the project is the context."""
    proj = write(tmp_path / "proj", {"Amifile": "INCLUDE local\n", "shared/app.conf": "s\n",
                                     "services/local/Amifile":
                                     "SERVICE local\n    COPY ../../shared/app.conf /etc/app.conf\n"})
    amic_cli("compile", "-o", "out.tar", cwd=proj, check=True,
             env={"AMIC_SERVICES_PATH": str(proj / "services")})
    assert payload(proj / "out.tar", "stage2/services/local/files/01") == b"s\n"


# ---- .amicignore --------------------------------------------------------------------------


IGNORE = """\
# build junk
*.log
!keep.log
secret/
**/cache
tree/sub/[ab].txt
"""


def test_amicignore_keeps_files_out_and_the_key_unchanged(tmp_path, amic_cli):
    write(tmp_path, {"Amifile": "SERVICE s\n    COPY . /srv/app\n", ".amicignore": IGNORE,
                     "app.py": "print()\n", "debug.log": "1\n", "keep.log": "k\n",
                     "secret/key": "k\n", "tree/cache/x": "x\n", "tree/sub/a.txt": "a\n",
                     "tree/sub/c.txt": "c\n", "cache/y": "y\n"})
    out = tmp_path.parent / f"{tmp_path.name}.tar"   # not in the context it copies
    amic_cli("compile", "-o", str(out), cwd=tmp_path, check=True)
    prefix = "stage2/services/s/files/01/"
    got = sorted(n[len(prefix):] for n in members(out) if n.startswith(prefix))
    assert got == [".amicignore", "Amifile", "app.py", "keep.log", "tree", "tree/sub",
                   "tree/sub/c.txt"]
    first = out.read_bytes()
    key = json.loads(amic_cli("compile", "--json", cwd=tmp_path, check=True).stdout)["final_key"]
    # an ignored file changes (and a new one appears): same key, same bytes
    write(tmp_path, {"debug.log": "2\n" * 1000, "secret/key": "other\n", "tree/cache/z": "z\n"})
    amic_cli("compile", "-o", str(out), cwd=tmp_path, check=True)
    assert out.read_bytes() == first
    assert json.loads(amic_cli("compile", "--json", cwd=tmp_path,
                               check=True).stdout)["final_key"] == key
    # a file that is not ignored changes the key
    write(tmp_path, {"keep.log": "k2\n"})
    assert json.loads(amic_cli("compile", "--json", cwd=tmp_path,
                               check=True).stdout)["final_key"] != key


def test_copy_of_an_ignored_source_is_an_error(tmp_path, amic_cli):
    write(tmp_path, {"Amifile": "SERVICE s\n    COPY app.py secret/key /x/\n",
                     ".amicignore": "secret\n", "app.py": "", "secret/key": "k\n"})
    err = compile_fails(amic_cli, tmp_path)
    assert err.startswith("Amifile:2:17: COPY source 'secret/key' is excluded by ./.amicignore"), err


def test_reincluded_file_below_an_ignored_directory(tmp_path, amic_cli):
    write(tmp_path, {"Amifile": "SERVICE s\n    COPY d/ /d\n", ".amicignore": "d/x\n!d/x/keep\n",
                     "d/x/keep": "k\n", "d/x/drop": "d\n", "d/y": "y\n"})
    amic_cli("compile", "-o", "out.tar", cwd=tmp_path, check=True)
    prefix = "stage2/services/s/files/01/"
    got = sorted(n[len(prefix):] for n in members(tmp_path / "out.tar") if n.startswith(prefix))
    assert got == ["x", "x/keep", "y"]


def test_bad_ignore_pattern_points_at_its_line(tmp_path, amic_cli):
    write(tmp_path, {"Amifile": "SERVICE s\n    COPY a /a\n", "a": "", ".amicignore": "ok\n[oops\n"})
    err = compile_fails(amic_cli, tmp_path)
    assert err.startswith("./.amicignore:2:1: bad .amicignore pattern '[oops'"), err


@pytest.mark.parametrize("pattern,path,excluded", [
    ("*.log", "a.log", True),
    ("*.log", "sub/a.log", False),          # dockerignore: from the top, unlike gitignore
    ("**/*.log", "sub/deep/a.log", True),
    ("**/*.log", "a.log", True),
    ("*/temp*", "somedir/temporary.txt", True),
    ("*/*/temp*", "a/b/temp", True),
    ("temp?", "temp1", True),
    ("temp?", "temp12", False),
    ("dir", "dir/any/file", True),          # a matching directory takes what is below it
    ("/lead", "lead", True),
    ("a/**", "a/b/c", True),
    ("[a-c].txt", "b.txt", True),
    ("[!a-c].txt", "b.txt", False),
    ("\\*.txt", "*.txt", True),
    ("\\*.txt", "x.txt", False),
    ("./x/../y", "y", True),
])
def test_ignore_patterns(pattern, path, excluded):
    assert parse_ignore(pattern + "\n", ".amicignore").excluded(path) is excluded


def test_ignore_last_match_wins_and_comments():
    rules = parse_ignore("# *.md\n*.md\n!README.md\nREADME.md\n\n  \n", ".amicignore")
    assert rules.excluded("README.md") and rules.excluded("x.md") and not rules.excluded("#x")
    rules = parse_ignore("*.md\n!README*.md\nREADME-secret.md\n", ".amicignore")
    assert not rules.excluded("README.md") and rules.excluded("README-secret.md")


# ---- modes, special files, size --------------------------------------------------------------


def test_modes_are_kept(tmp_path, amic_cli):
    write(tmp_path, {"Amifile": "SERVICE s\n    COPY d/ /d\n    COPY key /etc/key\n"
                                "    COPY --mode=4755 tool /usr/local/bin/tool\n",
                     "d/private": ("p\n", 0o600), "d/group": ("g\n", 0o640), "d/run.sh": ("\n", 0o750),
                     "key": ("k\n", 0o600), "tool": ("t\n", 0o755)})
    (tmp_path / "d/sub").mkdir(mode=0o700)
    (tmp_path / "d/sub").chmod(0o700)
    (tmp_path / "d/suid").write_text("s\n")
    (tmp_path / "d/suid").chmod(0o4755)
    amic_cli("compile", "-o", "out.tar", cwd=tmp_path, check=True)
    m = members(tmp_path / "out.tar")
    base = "stage2/services/s/files/"
    assert {n[len(base) + 3:]: m[n].mode for n in m if n.startswith(base + "01/")} == {
        "private": 0o600, "group": 0o640, "run.sh": 0o750, "sub": 0o700, "suid": 0o755}
    assert m[base + "02"].mode == 0o600
    assert m[base + "03"].mode == 0o4755   # only --mode sets setuid


def test_fifo_in_a_copied_directory_is_an_error(tmp_path, amic_cli):
    write(tmp_path, {"Amifile": "SERVICE s\n    COPY --mode=0644 d/ /d\n", "d/a": "a\n"})
    os.mkfifo(tmp_path / "d/pipe")
    started = time.monotonic()
    err = compile_fails(amic_cli, tmp_path)
    assert time.monotonic() - started < 30
    assert err.startswith("Amifile:2:22: COPY source 'd/': pipe is a FIFO; only regular files, "
                          "directories and symlinks can be copied"), err
    # ignoring it is the way out
    write(tmp_path, {".amicignore": "d/pipe\n"})
    amic_cli("compile", "-o", "out.tar", cwd=tmp_path, check=True)


def test_fifo_and_socket_sources(tmp_path, amic_cli):
    write(tmp_path, {"Amifile": "SERVICE s\n    COPY pipe /x\n"})
    os.mkfifo(tmp_path / "pipe")
    err = compile_fails(amic_cli, tmp_path)
    assert err.startswith("Amifile:2:10: COPY source 'pipe' is a FIFO"), err
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "d.sock"))
        write(tmp_path, {"Amifile": "SERVICE s\n    COPY d.sock /x\n"})
        err = compile_fails(amic_cli, tmp_path)
        assert "COPY source 'd.sock' is a socket" in err
    finally:
        sock.close()


def test_size_limit_refuses_before_reading(tmp_path, amic_cli):
    write(tmp_path, {"Amifile": "SERVICE s\n    COPY small /a\n    COPY big/ /b\n", "small": "s\n"})
    (tmp_path / "big").mkdir()
    with open(tmp_path / "big/sparse.img", "wb") as fh:
        fh.truncate(3 * 1024 ** 3)   # 3 GiB, no blocks: refused without reading it
    started = time.monotonic()
    err = compile_fails(amic_cli, tmp_path)
    assert time.monotonic() - started < 20
    assert err.startswith("Amifile:3:10: COPY would read more than 2 GiB from the build context"), err
    assert "AMIC_COPY_LIMIT" in err
    (tmp_path / "big/sparse.img").unlink()
    write(tmp_path, {"big/f": "x" * 2048})
    err = compile_fails(amic_cli, tmp_path, env={"AMIC_COPY_LIMIT": "1K"})
    assert "more than 1 KiB" in err
    amic_cli("compile", "-o", "out.tar", cwd=tmp_path, env={"AMIC_COPY_LIMIT": "4K"}, check=True)


def test_copy_limit_values():
    assert copy_limit({}) == 2 * 1024 ** 3
    assert copy_limit({"AMIC_COPY_LIMIT": "512M"}) == 512 * 1024 ** 2
    assert copy_limit({"AMIC_COPY_LIMIT": "8GiB"}) == 8 * 1024 ** 3
    assert copy_limit({"AMIC_COPY_LIMIT": "1000"}) == 1000
    with pytest.raises(UsageError):
        copy_limit({"AMIC_COPY_LIMIT": "lots"})


def test_bad_copy_limit_is_a_usage_error(tmp_path, amic_cli):
    write(tmp_path, {"Amifile": "SERVICE s\n    COPY a /a\n", "a": ""})
    proc = amic_cli("compile", cwd=tmp_path, env={"AMIC_COPY_LIMIT": "huge"})
    assert proc.returncode == 2 and "AMIC_COPY_LIMIT='huge'" in proc.stderr


def test_destination_of_only_slashes(tmp_path, amic_cli):
    write(tmp_path, {"Amifile": "SERVICE s\n    COPY d //\n", "d/a": "a\n"})
    amic_cli("compile", "-o", "out.tar", cwd=tmp_path, check=True)
    copies = payload(tmp_path / "out.tar", "stage2/services/s/copies").decode()
    assert copies == "01\t-\t/\n"


# ---- .amicignore: linear matching ------------------------------------------------------


def _old_regex(pattern: str):
    """The regular expression amic built from a pattern before the matcher was linear (the
    reference for the semantics; it backtracks exponentially on repeated ``**/``)."""
    import re
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 1
                if i + 1 < n and pattern[i + 1] == "/":
                    i += 1
                out.append(".*" if i + 1 == n else "(?:.*/)?")
            else:
                out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("^", "!") else i + 1)
            body = pattern[i + 1:end]
            negate = body[:1] in ("^", "!")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def test_ignore_matcher_agrees_with_the_regular_expressions_it_replaces():
    import random
    rng = random.Random(18)
    atoms = ["a", "b", "/", "*", "?", "**/", "**", "[ab]", "[!a]", "a/", "*/"]
    compared = 0
    for _ in range(4000):
        pattern = "".join(rng.choice(atoms) for _ in range(rng.randint(1, 6)))
        line = os.path.normpath(pattern).lstrip("/") or "."
        regex = _old_regex(line)
        rules = parse_ignore(pattern + "\n", ".amicignore")
        for _ in range(5):
            path = "/".join("".join(rng.choice("ab") for _ in range(rng.randint(1, 3)))
                            for _ in range(rng.randint(1, 5)))
            parts = path.split("/")
            expected = any(regex.fullmatch("/".join(parts[:k])) for k in range(1, len(parts) + 1))
            assert rules.excluded(path) is expected, (pattern, path)
            # the set-of-states matcher too, where the regular expression answered
            nfa = attrs.evolve(rules.rules[0][0], regex=None) if rules.rules else None
            assert nfa is None or nfa.matches_prefix(path) is expected, (pattern, path)
            compared += 1
    assert compared == 20000


@pytest.mark.parametrize("k", [8, 30])
def test_repeated_double_star_is_linear(tmp_path, amic_cli, k):
    # 40 directories deep, and a pattern of k '**/' that matches nothing: the regular
    # expression took 46 s at k=8 and never finished at k=30
    deep = Path(*[f"d{i}" for i in range(40)])
    write(tmp_path, {"Amifile": "SERVICE s\n    COPY d0 /d\n", str(deep / "f.txt"): "f\n",
                     ".amicignore": "**/" * k + "nomatch\n" + "**/" * k + "f.txt.x\n"})
    started = time.monotonic()
    rules = parse_ignore((tmp_path / ".amicignore").read_text(), ".amicignore")
    assert not rules.excluded(str(deep / "f.txt"))
    assert time.monotonic() - started < 5
    started = time.monotonic()
    amic_cli("compile", "-o", "out.tar", cwd=tmp_path, check=True)
    assert time.monotonic() - started < 60   # generous: a shared CPU; the regex never ended
    assert f"stage2/services/s/files/01/{Path(*deep.parts[1:])}/f.txt" in members(tmp_path / "out.tar")
    # and a repeated '**/' that does match still leaves the file out
    write(tmp_path, {".amicignore": "**/" * k + "f.txt\n"})
    amic_cli("compile", "-o", "out.tar", cwd=tmp_path, check=True)
    assert not any(n.endswith("/f.txt") for n in members(tmp_path / "out.tar"))


@pytest.mark.parametrize("pattern", ["**/d1/" * 30 + "nomatch", "*d" * 30 + "x", "*/" * 39 + "*x",
                                     "**/*d*" * 30 + "/x"])
def test_patterns_that_backtrack_as_regular_expressions_are_linear(pattern):
    path = "/".join(["d1"] * 40) + "/" + "d" * 2000
    started = time.monotonic()
    for _ in range(10):
        assert not parse_ignore(pattern + "\n", ".amicignore").excluded(path)
    assert time.monotonic() - started < 10   # about 0.2 s here; a backtracking regex: hours

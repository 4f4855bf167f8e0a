#!/usr/bin/env python3
"""Compile and lint time for a generated N-service Amifile, against peers.

Peers, measured in the same run on the same inputs:
  compile  vs  GNU tar writing the same scripts as a reproducible tarball
               (--sort=name --mtime=@0 --owner=0 --group=0), i.e. the bare I/O
               and archiving cost without parsing, resolving or hashing;
  lint     vs  shellcheck run directly on the same INIT/UPDATE bodies, i.e.
               what a team would do without amic (amic lint runs shellcheck too):
               "1 process" is every body in one shellcheck call, "per CPU" is
               the bodies split into os.cpu_count() calls run at once (what
               amic lint does). The same shellcheck binary as amic lint's.

amic lint is timed cold (a fresh, empty result cache each time), warm (the
cache the cold run left: an unchanged Amifile) and without shellcheck.
--shape chain makes s0 REQUIRES s1 REQUIRES ... (each requirement declared
after its user) instead of the default graph (each service requires up to
three earlier ones).

    .venv/bin/python benchmarks/bench_compile_lint.py [--services 1000] [--repeat 3]
        [--shape bench|chain]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def generate(n: int) -> str:
    lines = ["FROM debian:12", "ARG RELEASE=dev", "ENV APP_HOME=/srv/app", ""]
    for i in range(n):
        lines.append(f"SERVICE svc{i:04d}")
        reqs = [f"svc{j:04d}" for j in (i - 1, i // 2, i // 3) if 0 <= j < i]
        if reqs:
            lines.append(f"    REQUIRES {' '.join(sorted(set(reqs)))}")
        lines.append(f"    PACKAGES pkg{i % 50} lib{i % 7}")
        lines.append("    INIT <<~EOF")
        lines.append(f'        echo "init {i} $RELEASE"')
        lines.append(f'        mkdir -p "$APP_HOME/svc{i}"')
        lines.append("    EOF")
        lines.append(f'    UPDATE echo "update {i}" > "$APP_HOME/svc{i}/updated"')
        lines.append("")
    return "\n".join(lines)


def generate_chain(n: int) -> str:
    lines = ["FROM debian:12", "ARG RELEASE=dev", "ENV APP_HOME=/srv/app", ""]
    for i in range(n):
        lines.append(f"SERVICE svc{i:04d}")
        if i + 1 < n:
            lines.append(f"    REQUIRES svc{i + 1:04d}")
        lines += ["    INIT <<~EOF", f'        echo "init {i} $RELEASE"',
                  f'        mkdir -p "$APP_HOME/svc{i}"', "    EOF",
                  f'    UPDATE echo "update {i}" > "$APP_HOME/svc{i}/updated"', ""]
    return "\n".join(lines)


def timed(argv: list[str] | None, cwd: Path, repeat: int, *, env: dict | None = None,
          before=None, run=None) -> float:
    """Best wall time of ``repeat`` runs of ``argv`` (or of ``run()``); ``before()`` runs
    untimed ahead of each."""
    best = float("inf")
    for _ in range(repeat):
        if before:
            before()
        start = time.perf_counter()
        if run is not None:
            run()
        else:
            proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                                  env={**os.environ, **(env or {})})
            if proc.returncode not in (0, 1):
                raise SystemExit(f"{argv} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        best = min(best, time.perf_counter() - start)
    return best


def shellcheck_per_cpu(shellcheck: str, files: list[str], cwd: Path) -> None:
    cpus = os.cpu_count() or 1
    batches = [files[k::cpus] for k in range(cpus) if files[k::cpus]]
    argv = [shellcheck, "-s", "sh", "-f", "json1"]
    with ThreadPoolExecutor(len(batches)) as pool:
        list(pool.map(lambda b: subprocess.run([*argv, *b], cwd=cwd, capture_output=True),
                      batches))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--shape", choices=["bench", "chain"], default="bench")
    opts = ap.parse_args()
    amic = str(VENV_BIN / "amic")
    shellcheck = os.environ.get("AMIC_SHELLCHECK") or str(VENV_BIN / "shellcheck")
    version = subprocess.run([shellcheck, "--version"], capture_output=True,
                             text=True).stdout.split("version:")[1].split()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        text = generate(opts.services) if opts.shape == "bench" else generate_chain(opts.services)
        (work / "Amifile").write_text(text)
        # The peers' inputs: the same script bodies as plain files.
        scripts = work / "scripts"
        scripts.mkdir()
        for i in range(opts.services):
            (scripts / f"svc{i:04d}-init.sh").write_text(
                f'echo "init {i} $RELEASE"\nmkdir -p "$APP_HOME/svc{i}"\n')
            (scripts / f"svc{i:04d}-update.sh").write_text(
                f'echo "update {i}" > "$APP_HOME/svc{i}/updated"\n')
        files = [f"scripts/{n}" for n in sorted(os.listdir(scripts))]
        lint = [amic, "lint", "Amifile", "--failure-threshold", "none"]
        cache = {"XDG_CACHE_HOME": str(work / "cache"), "AMIC_SHELLCHECK": shellcheck}

        def forget() -> None:
            subprocess.run(["rm", "-rf", str(work / "cache")], check=True)

        results = {
            "amic compile": timed([amic, "compile", "Amifile", "-o", "out.tar"], work,
                                  opts.repeat),
            "tar (peer)": timed(["tar", "--sort=name", "--mtime=@0", "--owner=0", "--group=0",
                                 "-cf", "peer.tar", "scripts"], work, opts.repeat),
            "amic lint (cold)": timed(lint, work, opts.repeat, env=cache, before=forget),
            "amic lint (warm)": timed(lint, work, opts.repeat, env=cache),
            "amic lint --no-sc": timed([*lint, "--no-shellcheck"], work, opts.repeat),
            "shellcheck 1 proc": timed([shellcheck, "-s", "sh", "-f", "json1", *files], work,
                                       opts.repeat),
            "shellcheck per CPU": timed(None, work, opts.repeat,
                                        run=lambda: shellcheck_per_cpu(shellcheck, files, work)),
        }
    print(f"{opts.services} services ({opts.shape}), best of {opts.repeat}, "
          f"{os.cpu_count()} CPUs, shellcheck {version} ({shellcheck})")
    for name, secs in results.items():
        print(f"  {name:<20} {secs * 1000:8.0f} ms")
    cold = results["amic lint (cold)"]
    print(f"  compile / tar             {results['amic compile'] / results['tar (peer)']:8.1f}x")
    print(f"  lint cold / sc 1 proc     {cold / results['shellcheck 1 proc']:8.2f}x")
    print(f"  lint cold / sc per CPU    {cold / results['shellcheck per CPU']:8.2f}x")


if __name__ == "__main__":
    main()

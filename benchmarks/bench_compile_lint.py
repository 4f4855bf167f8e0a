#!/usr/bin/env python3
"""Compile and lint time for a generated 1,000-service Amifile, against peers.

Peers, measured in the same run on the same inputs:
  compile  vs  GNU tar writing the same scripts as a reproducible tarball
               (--sort=name --mtime=@0 --owner=0 --group=0), i.e. the bare I/O
               and archiving cost without parsing, resolving or hashing;
  lint     vs  shellcheck run directly on the same INIT/UPDATE bodies, i.e.
               what a team would do without amic (amic lint runs shellcheck too).

    .venv/bin/python benchmarks/bench_compile_lint.py [--services 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
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


def timed(argv: list[str], cwd: Path, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if proc.returncode not in (0, 1):
            raise SystemExit(f"{argv} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        best = min(best, elapsed)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    opts = ap.parse_args()
    amic = str(VENV_BIN / "amic")
    shellcheck = shutil.which("shellcheck") or str(VENV_BIN / "shellcheck")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "Amifile").write_text(generate(opts.services))
        # The peers' inputs: the same script bodies as plain files.
        scripts = work / "scripts"
        scripts.mkdir()
        for i in range(opts.services):
            (scripts / f"svc{i:04d}-init.sh").write_text(
                f'echo "init {i} $RELEASE"\nmkdir -p "$APP_HOME/svc{i}"\n')
            (scripts / f"svc{i:04d}-update.sh").write_text(
                f'echo "update {i}" > "$APP_HOME/svc{i}/updated"\n')
        names = sorted(os.listdir(scripts))
        env_lint = [amic, "lint", "Amifile", "--failure-threshold", "none"]
        results = {
            "amic compile": timed([amic, "compile", "Amifile", "-o", "out.tar"], work, opts.repeat),
            "tar (peer)": timed(["tar", "--sort=name", "--mtime=@0", "--owner=0", "--group=0",
                                 "-cf", "peer.tar", "scripts"], work, opts.repeat),
            "amic lint": timed(env_lint, work, opts.repeat),
            "shellcheck (peer)": timed([shellcheck, "-s", "sh", "-f", "json1",
                                        *[f"scripts/{n}" for n in names]], work, opts.repeat),
        }
    print(f"{opts.services} services, best of {opts.repeat}, {os.cpu_count()} CPUs")
    for name, secs in results.items():
        print(f"  {name:<20} {secs * 1000:8.0f} ms")
    print(f"  compile / tar        {results['amic compile'] / results['tar (peer)']:8.1f}x")
    print(f"  lint / shellcheck    {results['amic lint'] / results['shellcheck (peer)']:8.2f}x")


if __name__ == "__main__":
    main()

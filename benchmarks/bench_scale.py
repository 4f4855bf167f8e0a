#!/usr/bin/env python3
"""Compile and dry-run time against the number of services: is it linear? (issue 18)

Three generated Amifiles, one SERVICE a line (the shape of the issue's 4 MiB case):
10,000 services, 40,000 services, and as many as fit in the size limit
(``parser.MAX_AMIFILE_BYTES``, 4 MiB: about 325,000 short names). For each, best of
``--repeat`` runs of the real CLI:

  compile   ``amic compile -o out.tar`` (parse, resolve, plan, the tarball written out)
  dry-run   ``amic build --dry-run --target local`` with ``AMIC_CACHE_DIR`` a fresh
            temporary directory in which the base is marked bootstrapped (an empty
            ``bases/bookworm-minbase/.amic-base-complete``): the dry run then looks every
            layer up in the (empty) local store and explains it, the whole path a real
            dry run takes, and no real base, store or cache is read or touched.

Printed: wall seconds, peak RSS of the amic process (``wait4``), and the ratio of each
size to the 10k run next to the ratio of service counts: linear means the two match
(t(40k)/t(10k) ~ 4). The peer of every figure is the 10k run of the same command in
the same invocation, so a busy machine shifts both.

    .venv/bin/python benchmarks/bench_scale.py [--repeat 2] [--sizes 10000,40000,limit]

Figures (``--repeat 1``, the 2-CPU dev box shared with other work, load 4.2 to 4.8 during
these runs, so CPU seconds are the ones to compare; "before" is main's checkout with its
own venv, ``/work/main/.venv/bin/python benchmarks/bench_scale.py --repeat 1``, run just
before "after", ``.venv/bin/python benchmarks/bench_scale.py --repeat 1``):

  ======== ========= ======================= =======================
  run      services  before: CPU, peak RSS   after: CPU, peak RSS
  ======== ========= ======================= =======================
  compile     10,000  0.68 s,  45 MiB          0.52 s,  38 MiB
  compile     40,000  2.14 s,  93 MiB          1.52 s,  72 MiB
  compile    325,379  17.1 s, 551 MiB          8.60 s, 381 MiB
  dry-run     10,000  0.65 s,  45 MiB          0.64 s,  40 MiB
  dry-run     40,000  2.21 s,  94 MiB          1.23 s,  72 MiB
  dry-run    325,379  18.0 s, 552 MiB          8.90 s, 372 MiB
  ======== ========= ======================= =======================

After, the ratio to 10k is 2.9 (40k) and 16.5 (325k) for compile, 1.9 and 13.9 for the
dry run, against 4 and 32.5 times the services: linear, the 10k run being mostly the
interpreter's start and imports (about 0.4 s). What "after" changed (issue 18, third pass):
a service with nothing but a name and REQUIRES has no directory in the stage2, only a line
of its index (the stage2 of the 4 MiB Amifile: 62 MB in 11 entries, was 1.3 GB in 2.3
million); lines of plain words skip lark's LALR loop (the lexer makes their records) and
go to the assembly as they are made (not all held at once); services with no input of
their own share one inputs mapping and the key blob around the parent; the final key is
hashed as its JSON is made; the cyclic collector is paused in the dry run too, and what a
step made is frozen out of the collector's sight after it; the local target lists its keys
once for a dry run's look-ups instead of an open per layer. What remains is the per-service
Python objects of each step (tokens, records, IR, plan, layer): about 25 us a service.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AMIC = shutil.which("amic", path=str(Path(sys.executable).parent)) or "amic"


def generate(services: int | None, limit: int) -> tuple[str, int]:
    """FROM, then ``services`` one-line SERVICE blocks (None: as many as fit in ``limit``)."""
    out, size, count = ["FROM debian:12\n"], len("FROM debian:12\n"), 0
    for name in _names():
        line = f"SERVICE {name}\n"
        if (services is not None and count == services) or size + len(line) > limit:
            break
        out.append(line)
        size += len(line)
        count += 1
    return "".join(out), count


def _names():
    """Short distinct service names: a..z, a0..z9, aa0.., shortest first."""
    rest = string.ascii_lowercase + string.digits
    for n in itertools.count(0):
        for first in string.ascii_lowercase:
            for tail in itertools.product(rest, repeat=n):
                yield first + "".join(tail)


def run_once(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (bytes) of one run; a failure
    stops the benchmark."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    secs = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}): {stderr.decode()[-2000:]}")
    return secs, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--sizes", default="10000,40000,limit",
                    help="comma-separated service counts; 'limit' fills the size limit")
    opts = ap.parse_args()
    from amic.amifile.source import MAX_AMIFILE_BYTES

    sizes = [None if s == "limit" else int(s) for s in opts.sizes.split(",")]
    results: dict[str, dict[int, tuple[float, float, int]]] = {"compile": {}, "dry-run": {}}
    with tempfile.TemporaryDirectory(prefix="amic-bench-scale-") as tmp:
        for size in sizes:
            text, count = generate(size, MAX_AMIFILE_BYTES)
            work = Path(tmp) / f"s{count}"
            work.mkdir()
            (work / "Amifile").write_text(text)
            cache = work / "cache"
            (cache / "bases" / "bookworm-minbase").mkdir(parents=True)
            (cache / "bases" / "bookworm-minbase" / ".amic-base-complete").touch()
            env = {**os.environ, "AMIC_CACHE_DIR": str(cache)}
            commands = {"compile": [AMIC, "compile", "-o", str(work / "out.tar")],
                        "dry-run": [AMIC, "build", "--dry-run", "--target", "local"]}
            for name, argv in commands.items():
                runs = [run_once(argv, work, env) for _ in range(opts.repeat)]
                results[name][count] = (min(r[0] for r in runs), min(r[1] for r in runs),
                                        max(r[2] for r in runs))
                secs, cpu, rss = results[name][count]
                print(f"{name:<8} {count:>7} services ({len(text) / 2**20:5.2f} MiB): "
                      f"{secs:7.2f} s wall {cpu:7.2f} s CPU  peak RSS {rss / 2**20:6.0f} MiB",
                      flush=True)
            (work / "out.tar").unlink(missing_ok=True)
    print(f"\nratios to the smallest size (best of {opts.repeat}; linear: time ratio ~ "
          "services ratio; CPU time is the steadier one on a shared machine)")
    for name, by_count in results.items():
        base_count = min(by_count)
        base_wall, base_cpu, _ = by_count[base_count]
        for count, (secs, cpu, _) in sorted(by_count.items()):
            if count != base_count:
                print(f"  {name:<8} t({count})/t({base_count}) = {secs / base_wall:5.2f} wall, "
                      f"{cpu / base_cpu:5.2f} CPU  (services x{count / base_count:.2f})")


if __name__ == "__main__":
    main()

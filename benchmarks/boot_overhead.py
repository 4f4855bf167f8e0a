#!/usr/bin/env python3
"""Time `amic boot` adds when nothing is new to init, against running the same UPDATEs by hand.

A compiled stage2 with N services (a REQUIRES chain, each with one trivial
UPDATE) is installed and initialised in a throwaway overlay of the cached
Debian base (amic.targets.local.rootfs; needs root). Then, inside the same chroot
and the same process, interleaved R times each:

  amic boot   /var/lib/amic/stage2/amic boot (lock, manifest, drop-ins, init
              records, instance id, N updates with markers, state and log)
  peer        for each service: sh -e services/<svc>/update/01.sh
              i.e. the bare cost of running the same UPDATE scripts

and prints the medians, the difference (the runner's overhead) and the ratio.

    sudo .venv/bin/python benchmarks/boot_overhead.py [--services 10] [--repeat 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness.roots import RUNNER, Root, compile_stage2  # noqa: E402

LOOP = r"""
set -eu
cd /var/lib/amic/stage2
ns() { date +%s%N; }
i=0
while [ $i -lt {repeat} ]; do
    t0=$(ns); {runner} boot 2>/dev/null; t1=$(ns)
    for s in {services}; do sh -e services/$s/update/01.sh; done; t2=$(ns)
    echo "sample $((t1 - t0)) $((t2 - t1))"
    i=$((i + 1))
done
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--shell", default="sh", help="shell to run the runner with: sh (dash on Debian), dash or \"bash --posix\"")
    args = ap.parse_args()
    names = [f"svc{i:02d}" for i in range(args.services)]
    text = "".join(f"SERVICE {n}\n" + (f"    REQUIRES {names[i - 1]}\n" if i else "")
                   + f"    INIT echo init {n} > /dev/null\n    UPDATE echo update {n} > /dev/null\n"
                   for i, n in enumerate(names))
    with tempfile.TemporaryDirectory(prefix="amic-bench-") as tmp:
        root = Root(Path(tmp))
        root.install_stage2(compile_stage2(Path(tmp) / "ctx", text))
        root.run(f"{RUNNER} init >/dev/null 2>&1 && {RUNNER} boot >/dev/null 2>&1")  # warm
        runner = RUNNER if args.shell == "sh" else f"{args.shell} {RUNNER}"
        _, out = root.run(LOOP.replace("{repeat}", str(args.repeat))
                          .replace("{runner}", runner).replace("{services}", " ".join(names)))
    samples = [tuple(int(x) / 1e6 for x in line.split()[1:]) for line in out.splitlines()
               if line.startswith("sample ")]
    boot = statistics.median(s[0] for s in samples)
    peer = statistics.median(s[1] for s in samples)
    print(f"services: {args.services}   repeats: {len(samples)}   runner shell: {args.shell}")
    print(f"amic boot (nothing new to init): median {boot:8.1f} ms   "
          f"(min {min(s[0] for s in samples):.1f}, max {max(s[0] for s in samples):.1f})")
    print(f"peer: the same UPDATEs with sh:  median {peer:8.1f} ms")
    print(f"overhead of amic boot:           {boot - peer:8.1f} ms   "
          f"({(boot - peer) / args.services:.1f} ms per service), ratio {boot / peer:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``amic build --target local`` vs ``podman build --isolation chroot``, side by side.

Same machine, same run, same debootstrap base (the local target's, imported
into podman with ``podman import``), same packages and steps
(``benchmarks/local/Amifile`` and ``benchmarks/local/Containerfile``). Three
scenarios, each timed wall-clock around the CLI (process start included):

- cold: nothing cached but the base (amic: a fresh store; podman: --no-cache);
- unchanged: rebuild with no change (amic answers from its cache and build memo);
- middle: change the middle step (its INIT / RUN text), so it and the last one rerun.

amic's package cache (``$AMIC_CACHE_DIR/local/packages``, docs/devvm.md) is per
store: the cold runs start empty, the middle runs find what the cold run downloaded.
``--no-package-cache`` measures without it (``AMIC_PACKAGE_CACHE=off``).

Run as root:  .venv/bin/python benchmarks/bench_local_vs_podman.py [--repeat N] [--json FILE]
Targets (issue 5): cold no slower than podman; unchanged within 1.5x of podman;
(issue 13) middle <= 0.5x of podman.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent / "local"
BASE_TAG = "amic-bench-base"


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs of cold and middle (default 3)")
    ap.add_argument("--repeat-unchanged", type=int, default=15)
    ap.add_argument("--json", metavar="FILE", help="write the figures as JSON too")
    ap.add_argument("--no-package-cache", action="store_true",
                    help="amic without its package cache (AMIC_PACKAGE_CACHE=off)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (chroot, mount namespaces)")
    amic = shutil.which("amic", path=os.path.dirname(sys.executable)) or "amic"
    podman = shutil.which("podman") or sys.exit("podman is not installed")

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compiler"))
    from amic.targets.local import rootfs

    base = rootfs.ensure_base("debian:12", log=print)
    work = Path(tempfile.mkdtemp(prefix="amic-bench-"))
    env = {**os.environ}
    env.pop("AMIC_TARGET", None)
    if args.no_package_cache:
        env["AMIC_PACKAGE_CACHE"] = "off"
    try:
        print(f"importing the base {base} into podman as {BASE_TAG}", file=sys.stderr)
        tar = subprocess.Popen(["tar", "-C", str(base), "--numeric-owner", "-c", "."],
                               stdout=subprocess.PIPE)
        subprocess.run([podman, "import", "-", BASE_TAG], stdin=tar.stdout, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tar.wait()

        proj = work / "proj"
        proj.mkdir()
        amifile_t = (HERE / "Amifile").read_text()
        container_t = (HERE / "Containerfile").read_text()

        def write(mark: str) -> None:
            (proj / "Amifile").write_text(amifile_t.replace("MARK", mark))
            (proj / "Containerfile").write_text(container_t.replace("MARK", mark))

        pod = [podman, "build", "--isolation", "chroot", "-q", "-t", "amic-bench", "."]
        results: dict[str, dict[str, list[float]]] = {"cold": {}, "unchanged": {}, "middle": {}}

        def record(scenario: str, tool: str, seconds: float) -> None:
            results[scenario].setdefault(tool, []).append(seconds)
            print(f"{scenario:<10} {tool:<7} {seconds:8.3f}s", file=sys.stderr)

        for i in range(args.repeat):
            write("cold")
            store = work / f"store-{i}"
            store.mkdir()
            (store / "bases").symlink_to(base.parent)
            aenv = {**env, "AMIC_CACHE_DIR": str(store)}
            # alternate who goes first, so a warm apt mirror cache favours neither
            order = ["amic", "podman"] if i % 2 == 0 else ["podman", "amic"]
            for tool in order:
                if tool == "amic":
                    record("cold", "amic", timed([amic, "build", "--target", "local", "-q"], proj, aenv))
                else:
                    record("cold", "podman", timed(pod[:2] + ["--no-cache"] + pod[2:], proj, env))
        aenv = {**env, "AMIC_CACHE_DIR": str(work / f"store-{args.repeat - 1}")}
        write("cold")
        timed([amic, "build", "--target", "local", "-q"], proj, aenv)  # warm both caches for this exact text
        timed(pod, proj, env)
        for _ in range(args.repeat_unchanged):
            record("unchanged", "amic", timed([amic, "build", "--target", "local", "-q"], proj, aenv))
            record("unchanged", "podman", timed(pod, proj, env))
        for i in range(args.repeat):
            write(f"change {i}")
            record("middle", "amic", timed([amic, "build", "--target", "local", "-q"], proj, aenv))
            record("middle", "podman", timed(pod, proj, env))

        summary = {}
        print(f"\n{'scenario':<10} {'amic':>9} {'podman':>9} {'ratio':>7}   (median seconds)")
        for scenario, tools in results.items():
            a, p = statistics.median(tools["amic"]), statistics.median(tools["podman"])
            summary[scenario] = {"amic": a, "podman": p, "ratio": a / p, "runs": tools}
            print(f"{scenario:<10} {a:9.3f} {p:9.3f} {a / p:7.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        subprocess.run([podman, "rmi", "-f", "amic-bench"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``amic build --target ec2 --arch x86_64,arm64``: one build per architecture, in parallel.

Each architecture is its own ``amic build --arch A`` process (this command line with
``--arch`` narrowed, ``--progress plain``): its own instance, base image, layer keys
(the base differs, so the cache does), leases and AMI, and its own cleanup, which a
process has whatever happens to the others. This process only starts them, prefixes
their lines with ``[arch]``, and ends them: when one fails the others get SIGINT (the
Ctrl-C every build already cleans up after) unless ``--keep-going``; a Ctrl-C (or
SIGTERM) here goes to every one, and this process waits until all have cleaned up.
The result (``--json``, ``--manifest``) lists every architecture's.

``--instance-type`` with several architectures: each build takes the types of its own
architecture from the list (default: ``t3.micro`` and ``t4g.micro``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

from amic.errors import BuildError, UsageError

DEFAULT_TYPES = {"x86_64": "t3.micro", "arm64": "t4g.micro"}
VALUE_FLAGS = ("--arch", "--instance-type", "--manifest", "--progress")
"""Flags this module sets per build (their values in the user's line are dropped)."""


def arches(text: str | None) -> list[str]:
    """``x86_64,arm64`` as EC2's names (``amd64``/``aarch64`` accepted), each once."""
    from amic.targets.ec2.bases import ARCH_ALIASES

    out: list[str] = []
    for word in (text or "").split(","):
        name = ARCH_ALIASES.get(word.strip())
        if name is None:
            raise UsageError(f"--arch {text!r}: expected x86_64, arm64 or both, comma-separated")
        if name not in out:
            out.append(name)
    return out


def child_argv(argv: list[str], arch: str, instance_type: str | None) -> list[str]:
    """The user's ``amic build`` arguments for one architecture."""
    out: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
            continue
        flag = word.split("=", 1)[0]
        if flag in VALUE_FLAGS or flag in ("--json", "--keep-going"):
            skip = flag in VALUE_FLAGS and "=" not in word
            continue
        out.append(word)
    from amic.targets.ec2.bases import arch_for_instance_type

    types = [t for t in (instance_type or DEFAULT_TYPES[arch]).split(",")
             if arch_for_instance_type(t.strip()) == arch]
    if not types:
        raise UsageError(f"--instance-type {instance_type}: no {arch} type in the list "
                         f"(add one, e.g. {DEFAULT_TYPES[arch]})")
    return [*out, "--arch", arch, "--instance-type", ",".join(types), "--progress", "plain",
            "--json"]


def run(args, argv: list[str], emit) -> int:
    """Build every ``--arch`` at once; ``emit(result)`` with all the results when all made
    theirs; 1 when any failed (after every build ended), 130 on interrupt."""
    wanted = arches(args.arch)
    for given, flag in ((args.dry_run, "--dry-run"), (args.debug, "--debug"),
                        (args.on_error == "ask", "--on-error ask")):
        if given:   # one terminal cannot answer two builds; plans are per architecture
            raise UsageError(f"{flag} takes one --arch at a time")
    cmd = [sys.executable, "-m", "amic.cli.main", "build"]
    argvs = {arch: [*cmd, *child_argv(argv, arch, args.instance_type)] for arch in wanted}
    procs = {arch: subprocess.Popen(argvs[arch], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True,   # signals: from us only
                                    preexec_fn=_interrupt_when_parent_dies)
             for arch in wanted}
    outputs: dict[str, list[str]] = {arch: [] for arch in wanted}
    ended = threading.Condition()
    interrupted: list[int] = []

    def pump(arch: str, proc: subprocess.Popen) -> None:
        def out() -> None:
            outputs[arch].append(proc.stdout.read())
        reader = threading.Thread(target=out, daemon=True)
        reader.start()
        for line in proc.stderr:
            print(f"[{arch}] {line}", end="", file=sys.stderr, flush=True)
        reader.join()
        proc.wait()
        with ended:
            ended.notify_all()

    def stop_all(reason: str) -> None:
        for arch, proc in procs.items():
            if proc.poll() is None:
                print(f"amic: stopping the {arch} build ({reason})", file=sys.stderr, flush=True)
                proc.send_signal(signal.SIGINT)

    def on_signal(signum, frame) -> None:
        interrupted.append(signum)
        stop_all("interrupted; each build cleans up")

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        pumps = [threading.Thread(target=pump, args=item, daemon=True) for item in procs.items()]
        for t in pumps:
            t.start()
        stopped = False
        with ended:
            while any(p.poll() is None for p in procs.values()):
                failed = [a for a, p in procs.items() if p.poll() not in (None, 0)]
                if failed and not stopped and not args.keep_going and not interrupted:
                    stop_all(f"the {failed[0]} build failed")
                    stopped = True
                ended.wait(0.5)
        for t in pumps:
            t.join()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if interrupted:
        return 130
    results, failed = {}, []
    for arch, proc in procs.items():
        if proc.returncode == 0:
            results[arch] = json.loads("".join(outputs[arch]))
        else:
            failed.append(f"{arch} (exit {proc.returncode})")
    if results:
        emit({"builds": [{"arch": arch, **res} for arch, res in results.items()],
              "image_id": ",".join(res["image_id"] for res in results.values())})
    if failed:
        raise BuildError(f"--arch {','.join(wanted)}: failed: {', '.join(failed)}"
                         + ("" if args.keep_going else
                            " (a failure stops the other builds, which clean up; "
                            "--keep-going lets them finish)"))
    return 0


def _interrupt_when_parent_dies() -> None:
    """``preexec_fn``: an arch build gets SIGINT (and cleans up as on Ctrl-C) when this
    process dies, even by SIGKILL: in its own session nothing else would reach it, and it
    would go on building as an orphan."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGINT, 0, 0, 0)


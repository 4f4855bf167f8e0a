"""Using a local image outside a build: ``amic run`` (boot), ``amic shell``, ``amic export``.

Each works on a throwaway upper directory over the image's chain, so the
image itself never changes. ``amic run`` (:func:`run`) boots for real with
``systemd-nspawn -b`` (the boot hook runs as systemd starts it), with the
services it was asked for in ``services.d``, and reads the boot hook's report;
shell and export run in the same overlay + chroot as a build (:mod:`rootfs`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

import attrs

from amic.contract import SERVICE_NAME_RE, SERVICE_NAME_RULE
from amic.errors import BuildError, UsageError
from amic.fsutil import open_output
from amic.targets.base import Image
from amic.targets.local import rootfs
from amic.targets.local.store import SHORT, ImageStore
from amic.targets.scripts import script

LOGIN_SHELL = "exec /bin/bash -l || exec /bin/sh"

REPORT_UNIT = """\
[Unit]
Description=amic run: report status and power off once the boot hook is done
After=amic.service multi-user.target
DefaultDependencies=no

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'r=/var/lib/amic-run-report; /var/lib/amic/stage2/amic status > $$r 2>&1; \
rc=$$?; if [ $$rc -ne 0 ]; then echo "--- boot hook log (journalctl -b -u amic.service) ---" \
>> $$r; journalctl -b -u amic.service --no-pager -o cat >> $$r 2>&1 || \
tail -n 80 /var/log/amic/amic.log >> $$r 2>&1; fi; echo "exit $$rc" >> $$r; systemctl poweroff --no-block'

[Install]
WantedBy=multi-user.target
"""
"""Written into a non-interactive boot: ``amic status`` into the report, then power off."""

CONSOLE_FORWARD = """\
[Journal]
ForwardToConsole=yes
TTYPath=/dev/console
MaxLevelConsole=info
"""
"""A kept machine's console (``console.log``, nspawn's read-only console: a terminal in the
container, copied to the file) gets the whole journal, the boot hook's lines too."""
JOURNALD_DROPIN = "/etc/systemd/journald.conf.d/amic-run-console.conf"

REPORT_PATH = "var/lib/amic-run-report"
SERVICES_DIR = "/etc/amic/services.d"
SERVICES_FILE = f"{SERVICES_DIR}/amic-run"
"""Where ``amic run --service`` requests go: the boot hook inits what is listed there."""


@attrs.frozen
class RunOutcome:
    """What ``amic run`` ends with."""

    exit_code: int
    status: str | None = None
    """``amic status`` as the boot hook reported it (its ``exit`` line taken off); None when
    the boot was interactive, or the machine stopped before the hook reported."""


def check_services(names: Sequence[str]) -> tuple[str, ...]:
    """``amic run --service`` names, by the rule an Amifile's SERVICE follows: UsageError on
    the first other one (before anything boots)."""
    for name in names:
        if not SERVICE_NAME_RE.match(name):
            raise UsageError(f"--service: invalid service name {name!r}\nhint: {SERVICE_NAME_RULE}")
    return tuple(names)


def run(store: ImageStore, image: Image, services: Sequence[str] = (), *,
        interactive: bool = False, keep: bool = False, timeout: float = 600.0,
        on_output=None, log=print) -> RunOutcome:
    """``amic run``: boot ``image`` requesting ``services`` (detached with ``keep``, unless
    ``interactive``), and what its boot hook reported."""
    services = check_services(services)
    prepare = request_services(services)
    log(f"booting {image.id[:SHORT]} with systemd-nspawn"
        + (f"; requested: {' '.join(services)}" if services else ""))
    if keep and not interactive:
        rc, report = boot_kept(store, image, timeout=timeout, prepare=prepare, log=log)
    else:
        rc, report = boot(store, image, interactive=interactive, timeout=timeout,
                          on_output=on_output, prepare=prepare)
    return RunOutcome(rc) if interactive else read_report(report)


def request_services(services: Sequence[str]):
    """The ``prepare`` of a boot that requests ``services`` (None: nothing to request)."""
    if not services:
        return None

    def prepare(lowers: list[Path], upper: Path) -> None:
        src = upper.parent / "services"
        src.write_text("\n".join(services) + "\n")
        rc = rootfs.run_in_root(lowers, upper, f"mkdir -p {SERVICES_DIR} && cat > {SERVICES_FILE}",
                                stdin_path=src)
        if rc != 0:
            raise BuildError(f"could not write {SERVICES_FILE}")

    return prepare


def read_report(report: str) -> RunOutcome:
    """The report of a non-interactive boot: ``amic status``'s output, then ``exit N`` (its
    status). Exit 0 only when it says 0; an empty report means the hook never reported."""
    if not report:
        return RunOutcome(1)
    lines = report.rstrip("\n").splitlines()
    status_rc = 1
    if lines and lines[-1].startswith("exit "):
        code = lines.pop()[5:]
        # written inside the image: anything but ASCII digits is a failure, not a traceback
        status_rc = int(code) if code.isascii() and code.isdigit() else 1
    return RunOutcome(0 if status_rc == 0 else 1, "\n".join(lines))


def export(store: ImageStore, image: Image, out: Path) -> None:
    """Write the image's whole root filesystem to ``out`` as a tarball (mode 0600)."""
    with store.use(image.id) as lowers, store.scratch("export-") as scratch:
        argv = rootfs.chroot_argv(lowers, scratch / "upper", scratch / "s",
                                  ["tar", "--one-file-system", "--numeric-owner", "--xattrs",
                                   "-cpf", "-", "-C", "/", "."])
        with open_output(out, mode=0o600, record_in=scratch) as fh:  # atomic, or in place
            proc = subprocess.run(argv, stdout=fh, stderr=subprocess.PIPE, text=False,
                                  env=rootfs.CLEAN_ENV, preexec_fn=rootfs.die_with_parent)
            if proc.returncode not in (0, 1):  # 1: a file changed while read (cannot here)
                raise BuildError(f"export failed: {proc.stderr.decode(errors='replace')[-500:]}")


def shell(store: ImageStore, what: str, command: str | None = None, project=None) -> int:
    """Interactive shell in a kept machine directory (``--on-error=abort``) or a throwaway copy
    of an image."""
    path = Path(what)
    if (path / "machine.json").exists():
        info = json.loads((path / "machine.json").read_text())
        return rootfs.run_in_root([Path(p) for p in info["lowers"]], path / "upper",
                                  command or LOGIN_SHELL, interactive=True)
    image = store.lookup(what, project)
    with store.use(image.id) as lowers, store.scratch("shell-") as scratch:
        return rootfs.run_in_root(lowers, scratch / "upper",
                                  command or LOGIN_SHELL, interactive=True)


def boot(store: ImageStore, image: Image, *, interactive: bool, timeout: float,
         on_output=None, prepare=None) -> tuple[int, str]:
    """Boot ``image`` with ``systemd-nspawn -b`` on a throwaway upper; return (exit, report).

    ``prepare(lowers, upper)`` may write files into the boot's root first
    (extra services requested). Unless ``interactive``, a oneshot unit
    shuts the machine down once the boot hook has finished and writes
    ``amic status`` into the report.
    """
    if shutil.which("systemd-nspawn") is None:
        raise BuildError("systemd-nspawn is not installed (apt-get install systemd-container)")
    store.ensure_dirs()
    # Not under machines/ (prune removes those as dead builds'); the use-lock keeps the
    # image and its chain from being pruned while it boots, the scratch's lock its upper.
    with store.use(image.id) as lowers, store.scratch("run-") as scratch:
        upper = scratch / "upper"
        upper.mkdir()
        if prepare:
            prepare(lowers, upper)
        if not interactive:
            install_report_unit(lowers, upper, scratch)
        argv = nspawn_argv(image, lowers, scratch, interactive=interactive)
        if interactive:
            env = {**rootfs.CLEAN_ENV, "TERM": os.environ.get("TERM", "dumb")}
            rc = subprocess.run(argv, env=env, preexec_fn=rootfs.die_with_parent).returncode
        else:
            rc = run_console(argv, timeout=timeout, on_output=on_output)
        report_file = upper / REPORT_PATH
        report = report_file.read_text(errors="replace") if report_file.exists() else ""
        return rc, report


def boot_kept(store: ImageStore, image: Image, *, timeout: float, prepare=None,
              log=print) -> tuple[int, str]:
    """``amic run --keep``: boot detached, wait for the boot hook's report, leave it running.

    The machine keeps the image's use-locks (shared ``flock``s inherited by the
    namespace's shell, which waits for nspawn), so prune leaves its layers alone
    until it stops. Stop it with ``kill -- -PID`` (nspawn powers the machine off).
    """
    import fcntl
    import time

    kept = store.root / "kept"
    kept.mkdir(parents=True, exist_ok=True)
    with store.lock("store.lock"):      # locked before prune can see it (as scratch dirs)
        scratch = Path(tempfile.mkdtemp(prefix=f"{image.id[:SHORT]}-", dir=kept))
        alive = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(alive, fcntl.LOCK_EX)
    upper = scratch / "upper"
    upper.mkdir()
    with store.use(image.id) as lowers:
        locks = []
        for current in store.chain_ids(image.id):   # locked again, as descriptors to pass on
            fh = open(store.use_lock_path(current), "a")
            fcntl.flock(fh, fcntl.LOCK_SH)
            locks.append(fh)
        if prepare:
            prepare(lowers, upper)
        install_report_unit(lowers, upper, scratch, poweroff=False)
        write_in_root(lowers, upper, scratch, CONSOLE_FORWARD, JOURNALD_DROPIN)
        argv = nspawn_argv(image, lowers, scratch, interactive=False)
        # A console the machine can write to without anyone reading it: --console=pipe
        # gives a container no /dev/console at all, and its output went nowhere.
        argv[argv.index("--console=pipe")] = "--console=read-only"
        argv[argv.index("-c") + 1] = argv[argv.index("-c") + 1].replace('exec "$@"', '"$@"')
        with open(scratch / "console.log", "wb") as console:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    pass_fds=[alive, *(fh.fileno() for fh in locks)])
        for fh in locks:
            fh.close()          # the child's copies keep the locks
        os.close(alive)         # held by the machine until it stops: then prune takes it
    report_file = upper / REPORT_PATH
    deadline = time.monotonic() + timeout
    while not report_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(0.5)             # the report's last line
    report = report_file.read_text(errors="replace") if report_file.exists() else ""
    log(f"left running (pid {proc.pid}); console: {scratch}/console.log; stop it with "
        f"`kill -- -{proc.pid}` (then `amic prune` removes {scratch})")
    return (0 if report else 1), report


def write_in_root(lowers: list[Path], upper: Path, scratch: Path, text: str, path: str) -> None:
    """Write ``text`` to ``path`` in the boot's root (its throwaway upper, never a layer)."""
    src = scratch / f"in-{uuid.uuid4().hex[:8]}"
    src.write_text(text)
    rc = rootfs.run_in_root(lowers, upper, f'mkdir -p "$(dirname {path})" && cat > {path}',
                            stdin_path=src)
    if rc != 0:
        raise BuildError(f"could not write {path} for `amic run`")


def install_report_unit(lowers: list[Path], upper: Path, scratch: Path, *,
                        poweroff: bool = True) -> None:
    unit = scratch / f"in-{uuid.uuid4().hex[:8]}"
    unit.write_text(REPORT_UNIT if poweroff else
                    REPORT_UNIT.replace("; systemctl poweroff --no-block", ""))
    rc = rootfs.run_in_root(
        lowers, upper,
        "mkdir -p /etc/systemd/system/multi-user.target.wants && "
        "cat > /etc/systemd/system/amic-run-report.service && "
        "ln -sf ../amic-run-report.service "
        "/etc/systemd/system/multi-user.target.wants/amic-run-report.service",
        stdin_path=unit)
    if rc != 0:
        raise BuildError("could not install the report unit for `amic run`")


def nspawn_argv(image: Image, lowers: list[Path], scratch: Path, *,
                interactive: bool) -> list[str]:
    """``systemd-nspawn -b`` on an overlay mounted in a private mount namespace, so nothing
    stays mounted on the host whatever happens to the boot."""
    upper, merged, work = scratch / "upper", scratch / "merged", scratch / "work"
    merged.mkdir()
    work.mkdir()
    lowerdir = ":".join(str(p) for p in lowers)
    nspawn = ["systemd-nspawn", "--register=no", "--keep-unit", "-q", "-D", str(merged),
              "--machine", f"amic-{image.id[:SHORT]}", "-b"]
    if not interactive:
        nspawn.insert(-1, "--console=pipe")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            script(__package__, "nspawn-boot.sh"), "amic-boot",
            lowerdir, str(upper), str(work), str(merged), *nspawn]


def run_console(argv: list[str], *, timeout: float, on_output=None) -> int:
    """Run the boot with its console on a pipe, killed after ``timeout`` seconds."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace",
                            env=rootfs.CLEAN_ENV, preexec_fn=rootfs.die_with_parent)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if on_output:
                on_output(line.rstrip("\n"))
        return proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        timer.cancel()

"""Root filesystems on this machine: cached debootstrap bases and isolated runs in them.

Shared by the ``local`` target and by the tests that run the runtime for
real. Nothing here touches the host's own ``/``: every command runs in an
overlay (read-only lower layers + one writable upper directory) mounted inside
private mount, PID, UTS and IPC namespaces created by ``unshare``, entered with
``pivot_root`` and a container's capabilities (``confine.py``). When the
command ends, or is killed, the namespace and every mount in it disappear
with it, so a crash cannot leave mounts behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from amic.errors import BaseRefError, BuildError, UsageError
from amic.fsutil import file_lock
from amic.targets.local import pkgcache
from amic.targets.scripts import script

# Portable base names the local target can build itself. Values are
# debootstrap suites; the mirror is debootstrap's default unless
# AMIC_DEBIAN_MIRROR says otherwise.
DEBIAN_SUITES = {
    "debian:11": "bullseye",
    "debian:12": "bookworm",
    "debian:13": "trixie",
    "debian:bookworm": "bookworm",
    "debian:trixie": "trixie",
}
DEFAULT_BASE = "debian:12"

# systemd + dbus so the image can be booted with systemd-nspawn -b (the boot
# hook is a systemd unit); ca-certificates so INIT scripts can use https.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "ca-certificates")


def cache_dir() -> Path:
    """Where bases (and the local target's images) live: ``$AMIC_CACHE_DIR`` or ``/var/cache/amic``."""
    return Path(os.environ.get("AMIC_CACHE_DIR") or "/var/cache/amic")


def ensure_base(ref: str = DEFAULT_BASE, *, log=None) -> Path:
    """Return a pristine root filesystem for ``ref``, running debootstrap once and caching it.

    Concurrent callers (parallel tests, two builds) wait on a lock instead of
    bootstrapping twice; a half-made base is never visible under its final name.
    Callers must treat the returned directory as read-only (use it as an
    overlay lower layer). A name it cannot make is a UsageError (a mistake in FROM).
    """
    suite = DEBIAN_SUITES.get(ref)
    if suite is None:
        raise BaseRefError(f"the local target cannot make base image {ref!r}; "
                         f"known: {', '.join(sorted(DEBIAN_SUITES))}")
    bases = cache_dir() / "bases"
    bases.mkdir(parents=True, exist_ok=True)
    final = bases / f"{suite}-minbase"
    if (final / ".amic-base-complete").exists():
        return final
    with file_lock(bases / f"{suite}.lock"):
        if (final / ".amic-base-complete").exists():
            return final
        if shutil.which("debootstrap") is None:
            raise BuildError("debootstrap is not installed (apt-get install debootstrap)")
        work = Path(tempfile.mkdtemp(prefix=f".{suite}-", dir=bases))
        try:
            argv = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                    suite, str(work / "root")]
            mirror = os.environ.get("AMIC_DEBIAN_MIRROR")
            if mirror:
                argv.append(mirror)
            if log:
                log(f"bootstrapping {ref} ({suite}) with debootstrap; this happens once")
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if proc.returncode != 0:
                tail = "\n".join(proc.stdout.splitlines()[-15:])
                raise BuildError(f"debootstrap {suite} failed (exit {proc.returncode}):\n{tail}")
            root = work / "root"
            # Images boot under systemd-nspawn; give them a deterministic,
            # non-host identity. machine-id stays empty so each boot makes one.
            (root / "etc/hostname").write_text("amic\n")
            (root / "etc/machine-id").write_text("")
            (root / ".amic-base-complete").write_text(f"{ref}\n")
            if final.exists():
                shutil.rmtree(final)
            os.rename(root, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def filesystem_type(path: Path) -> str:
    """The type of the filesystem ``path`` (or its nearest existing parent) is on, as
    ``/proc/self/mountinfo`` names it ("ext4", "overlay", "tmpfs"; "" when unknown)."""
    target = Path(os.path.realpath(path))
    while not target.exists() and target != target.parent:
        target = target.parent
    best, kind = "", ""
    try:
        lines = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    for line in lines.splitlines():
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not rest:
            continue
        point = parts[4].replace("\\040", " ")
        inside = str(target) == point or str(target).startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, rest.split()[0]
    return kind


def require_layerable(store: Path) -> None:
    """Refuse a store on overlayfs (a container's own root, say): overlayfs cannot put its
    upper and work directories there, and every build would end in mount's "wrong fs type"."""
    if filesystem_type(store) == "overlay":
        raise UsageError(
            f"the local store {store} is on overlayfs (a container's root filesystem?), where "
            "the local target cannot stack its layers: set AMIC_CACHE_DIR to a directory on "
            "a volume or a disk (ext4, xfs, btrfs or tmpfs)")


def chroot_argv(lowers: Sequence[Path], upper: Path, scratch: Path, argv: Sequence[str]) -> list[str]:
    """The host command that runs ``argv`` as root inside overlay(lowers + upper).

    ``lowers`` go from top-most to bottom-most (overlayfs order). ``scratch``
    is an empty directory on the same filesystem as ``upper`` (mount point and
    overlay workdir are made inside it). The namespace script is ``scripts/enter.sh``.
    """
    merged = scratch / "merged"
    work = scratch / "work"
    merged.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    upper.mkdir(parents=True, exist_ok=True)
    if lowers and not any(upper.iterdir()):
        # overlayfs shows the upper directory's own mode and owner as the root's "/": a new
        # layer's must be its parent's, not what amic's umask made (umask 077: "/" 0700,
        # which locks out every non-root user, apt's _apt sandbox first, and is baked in)
        top = os.stat(lowers[0])
        os.chmod(upper, top.st_mode & 0o7777)
        os.chown(upper, top.st_uid, top.st_gid)
    lowerdir = ":".join(str(p) for p in lowers)
    # a UTS and an IPC namespace of its own too: a command's hostname or shared memory is
    # not the host's (and without CAP_SYS_ADMIN it could not set the host's anyway)
    return ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
            "--uts", "--ipc",
            "sh", "-c", script(__package__, "enter.sh"), "amic-enter",
            str(merged), str(upper), str(work), lowerdir,
            sys.executable, str(Path(__file__).with_name("confine.py")), *argv]


CLEAN_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}
"""The whole environment a command in a root starts with (plus the caller's ``env``)."""


def die_with_parent() -> None:
    """``preexec_fn``: SIGKILL the child when the process that started it dies.

    ``unshare --kill-child`` then takes the whole PID namespace down with it,
    so even a SIGKILLed amic leaves no command running in a root.
    """
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def run_in_root(lowers: Sequence[Path], upper: Path, command: str, *,
                env: Mapping[str, str] | None = None, on_output=None,
                timeout: float | None = None, stdin_path: Path | None = None,
                interactive: bool = False) -> int:
    """Run ``sh -c command`` as root inside overlay(lowers + upper); return its exit status.

    The host environment is not inherited: the command sees ``CLEAN_ENV``
    plus ``env``. ``env`` (ARG values) reaches the command only: the host-side
    helpers (unshare, mount, chroot) run with ``CLEAN_ENV`` alone, so
    ``LD_PRELOAD`` or ``PATH`` among the values cannot change what runs on the
    host. The values travel in a memory file (``memfd``) inherited as a
    descriptor that a shell inside the root reads (:func:`env_wrapper`): never
    on a command line, in the host's environment or in the root's files.
    Output (stdout+stderr merged) goes to ``on_output`` line by line.
    ``stdin_path``: a host file fed to the command's standard input (how files
    are put into a root without touching the upper directory behind overlayfs's
    back). ``interactive``: inherit the caller's terminal instead (``amic shell``).
    The command dies with the calling process, even on SIGKILL.
    """
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(
            tempfile.TemporaryDirectory(prefix=".amic-run-", dir=upper.parent))
        env_fd = env_file(env) if env else None
        if env_fd is not None:
            stack.callback(os.close, env_fd)
        inner = ["/bin/sh", "-c", command] if env_fd is None else \
            ["/bin/sh", "-c", env_wrapper(env_fd), command]
        argv = chroot_argv(lowers, upper, Path(scratch), inner)
        host_env = dict(CLEAN_ENV)
        fds = () if env_fd is None else (env_fd,)
        if interactive:
            host_env["TERM"] = os.environ.get("TERM", "dumb")
            return subprocess.run(argv, env=host_env, pass_fds=fds,
                                  preexec_fn=die_with_parent).returncode
        pkg_dir = stack.enter_context(pkgcache.for_run(cache_dir() / "local" / "packages",
                                                        Path(scratch)))
        if pkg_dir is not None:
            host_env["AMIC_PKG_DIR"] = str(pkg_dir)
        stdin = stack.enter_context(open(stdin_path, "rb")) if stdin_path is not None \
            else subprocess.DEVNULL
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=stdin, env=host_env, pass_fds=fds,
                                preexec_fn=die_with_parent)
        if stdin_path is not None:
            stdin.close()
        return _follow(proc, on_output, timeout)


def _follow(proc: subprocess.Popen, on_output, timeout: float | None) -> int:
    try:
        assert proc.stdout is not None
        for line in io.TextIOWrapper(proc.stdout, errors="replace", newline="\n"):
            if on_output:   # as written: carriage returns are the reader's (base.terminal_line)
                on_output(line.removesuffix("\n"))
        return proc.wait(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_file(env: Mapping[str, str]) -> int:
    """A memfd holding ``export NAME='value'`` lines for ``env``; the caller closes it."""
    lines = []
    for name, value in env.items():
        if not _NAME_RE.fullmatch(name) or "\0" in value:
            raise BuildError(f"environment variable {name!r}: not a valid name or value")
        lines.append(f"export {name}={shlex.quote(value)}\n")
    try:
        # surrogateescape: an ARG value from an environment that is not UTF-8 reaches the
        # commands as the same bytes (secrets are UTF-8: amic refuses others when reading them)
        encoded = "".join(lines).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise BuildError("an environment value is not text amic can pass on (a lone "
                         "surrogate that is no byte)") from None
    fd = os.memfd_create("amic-env", os.MFD_CLOEXEC)
    try:
        data = memoryview(encoded)
        while data:
            data = data[os.write(fd, data):]
    except BaseException:
        os.close(fd)
        raise
    return fd


def env_wrapper(fd: int) -> str:
    """The ``sh -c`` script (inside the root) that reads the values from descriptor ``fd``,
    closes it and runs the command (``$0``) with them."""
    close = f" && exec {fd}<&-" if fd <= 9 else ""  # POSIX sh names descriptors 0-9 only
    return f'. /proc/self/fd/{fd}{close} && exec /bin/sh -c "$0"'

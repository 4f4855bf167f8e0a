"""A real OpenSSH server for tests, whose sessions land in a throwaway root.

:class:`SshdRoot` starts ``/usr/sbin/sshd -D -e -f CONFIG`` on 127.0.0.1 (a free
port, or the one asked for) with its own host key, config and authorized keys in
a private directory. Nothing of the test machine's own ``/`` is reachable over it:

- A *holder* process keeps one overlay of the given lower layers plus one upper
  directory mounted, chrooted, in its own mount and PID namespace (made with
  :func:`amic.targets.local.rootfs.chroot_argv`). It lives as long as the server, so
  every session of one ``SshdRoot`` sees the same filesystem and the same
  processes, like one real host; files written over SSH land in ``upper``.
- ``ForceCommand`` points at a wrapper that runs the client's command
  (``$SSH_ORIGINAL_COMMAND``, or a login shell) with ``nsenter`` into the
  holder's namespaces and root, in a clean environment.
- ``Subsystem sftp`` names ``/usr/lib/openssh/sftp-server``, which the forced
  command therefore runs *inside* the root. The Debian base has no SFTP server,
  so the host's binary (it needs only libc) is put in a tiny extra lower layer
  on top: it is visible in the root but never lands in ``upper``.
- Port forwarding is allowed, so an ``SshdRoot`` also serves as a jump host.

Stopping kills the server and the holder; the namespaces and mounts go with it.
The upper directory is left as it is (a stopped instance keeps its disk).

Use it from pytest with the fixtures below (``pytest_plugins = ["tests.harness.sshd"]``
in ``tests/conftest.py``), or directly::

    with SshdRoot([base], tmp / "upper", [public_key_line], host_key=pkey) as server:
        server.port, server.host_key, server.known_hosts_line
        server.exec("cat /etc/debian_version")   # look inside without SSH
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Self

import paramiko
import pytest
from amic.targets.local import rootfs

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
PATH = rootfs.CLEAN_ENV["PATH"]


def have_sshd() -> bool:
    return os.path.exists(SSHD) and os.path.exists(SFTP_SERVER) and shutil.which("nsenter") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_key(kind: str = "ed25519") -> paramiko.PKey:
    """A fresh private key (ed25519 or rsa) that can be written back out (see ``private_key_text``)."""
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    private = (ed25519.Ed25519PrivateKey.generate() if kind == "ed25519"
               else rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _pkey_from_crypto(private)


def _pkey_from_crypto(private) -> paramiko.PKey:
    import io

    from cryptography.hazmat.primitives import serialization

    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    cls = paramiko.RSAKey if "RSA" in type(private).__name__ else paramiko.Ed25519Key
    return cls.from_private_key(io.StringIO(pem))


def private_key_text(pkey: paramiko.PKey) -> str:
    """The OpenSSH private key file text of a paramiko key (ed25519, rsa, ecdsa)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem = getattr(pkey, "_amic_pem", None)
    if pem:
        return pem
    if isinstance(pkey, paramiko.Ed25519Key):
        seed = pkey._signing_key.encode()
        private = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    elif isinstance(pkey, paramiko.RSAKey):
        private = pkey.key
    elif isinstance(pkey, paramiko.ECDSAKey):
        private = pkey.signing_key
    else:
        raise TypeError(f"cannot write a {type(pkey).__name__}")
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption()).decode()


def write_private_key(pkey: paramiko.PKey, path: Path) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(private_key_text(pkey))
    return path


def public_line(key: paramiko.PKey | str) -> str:
    return key.strip() if isinstance(key, str) else f"{key.get_name()} {key.get_base64()}"


# sshd runs this (via root's login shell) for every session; @HOLDER@ is the PID
# of the holder, PID 1 of the root's namespace.
_ENTER = """#!/bin/sh
# Sessions of this test sshd run inside the throwaway root held by PID @HOLDER@.
if [ -n "${SSH_ORIGINAL_COMMAND+set}" ]; then
    set -- /bin/sh -c 'cd /root 2>/dev/null || cd /; exec /bin/sh -c "$0"' "$SSH_ORIGINAL_COMMAND"
else
    set -- /bin/sh -c 'cd /root 2>/dev/null || cd /; exec /bin/sh -l'
fi
exec env -i PATH='@PATH@' HOME=/root USER=root LOGNAME=root SHELL=/bin/sh LANG=C.UTF-8 \\
    TERM="${TERM:-dumb}" SSH_CONNECTION="$SSH_CONNECTION" SSH_CLIENT="$SSH_CLIENT" \\
    nsenter --target @HOLDER@ --mount --pid --root --wd -- "$@"
"""

# PID 1 of the root's PID namespace: reaps orphans, says when the mounts are ready.
_HOLDER = "trap 'exit 0' TERM INT; echo ready; while :; do sleep 3600 & wait; done"

_CONFIG = """\
# amic test sshd: everything lives in {dir}
ListenAddress {listen}
Port {port}
HostKey {dir}/ssh_host_key
PidFile none
AuthorizedKeysFile {dir}/authorized_keys
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding yes
AllowAgentForwarding no
X11Forwarding no
PermitUserEnvironment no
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 64:30:128
MaxSessions 64
LogLevel VERBOSE
ForceCommand {dir}/enter
Subsystem sftp {sftp}
"""


class SshdRoot:
    """A real sshd on loopback whose sessions and SFTP run inside overlay(lowers + upper).

    ``lowers`` go top-most first (overlayfs order); ``upper`` is created if
    missing and is where everything written over SSH lands (it must not be
    shared with another running root). ``authorized_keys``: public key lines or
    paramiko keys. ``host_key``: a paramiko private key to serve (to keep the
    same identity across a stop/start), or None for a fresh ed25519 key.
    Attributes after ``start()``: ``port``, ``host_key`` (private PKey),
    ``host_public`` (public PKey), ``known_hosts_line``, ``holder_pid``, ``dir``.
    """

    def __init__(self, lowers: Sequence[os.PathLike | str], upper: os.PathLike | str,
                 authorized_keys: Iterable[paramiko.PKey | str] = (), *,
                 host_key: paramiko.PKey | None = None, port: int | None = None,
                 listen: str = "127.0.0.1", workdir: os.PathLike | str | None = None,
                 on_root_ready=None) -> None:
        self.lowers = [Path(p) for p in lowers]
        self.upper = Path(upper)
        self.authorized_keys = [public_line(k) for k in authorized_keys]
        self.host_key = host_key or new_key("ed25519")
        self.port = port
        self.listen = listen
        self.workdir = Path(workdir) if workdir else None
        self.on_root_ready = on_root_ready
        """Called with this server once the root is up, before sshd starts (and before its
        host key is written out: it may replace ``host_key``), like early boot."""
        self.dir: Path | None = None
        self.holder: subprocess.Popen | None = None
        self.holder_pid: int | None = None
        self.sshd: subprocess.Popen | None = None
        self._stack = contextlib.ExitStack()

    # public key views ----------------------------------------------------------------
    @property
    def host_public(self) -> paramiko.PKey:
        return paramiko.PKey.from_type_string(self.host_key.get_name(), self.host_key.asbytes())

    @property
    def host_key_line(self) -> str:
        return public_line(self.host_key)

    @property
    def known_hosts_name(self) -> str:
        return f"[{self.listen}]:{self.port}" if self.port != 22 else self.listen

    @property
    def known_hosts_line(self) -> str:
        return f"{self.known_hosts_name} {self.host_key_line}"

    @property
    def log(self) -> str:
        """What sshd said so far (``-e``: its log goes to stderr, kept in a file)."""
        try:
            return (self.dir / "sshd.log").read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    # lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> SshdRoot:
        try:
            self.upper.mkdir(parents=True, exist_ok=True)
            parent = self.workdir or self.upper.parent
            self.dir = Path(tempfile.mkdtemp(prefix=".sshd-", dir=parent))
            self._stack.callback(shutil.rmtree, self.dir, ignore_errors=True)
            self._start_holder()
            if self.on_root_ready is not None:
                self.on_root_ready(self)
            self._write_config_files()
            self._start_sshd()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop sshd and the root's namespace (every process in it dies); keep ``upper``."""
        self._stack.close()
        self.sshd = self.holder = None

    def stop_sshd(self) -> None:
        """Only the server (the root and its processes stay): the port stops answering."""
        proc, self.sshd = self.sshd, None
        if proc is not None:
            _kill(proc)

    def _start_holder(self) -> None:
        tools = self.dir / "tools"
        (tools / Path(SFTP_SERVER).parent.relative_to("/")).mkdir(parents=True)
        shutil.copy2(SFTP_SERVER, tools / SFTP_SERVER.lstrip("/"))
        scratch = self.dir / "ns"
        if os.stat(self.upper).st_dev != os.stat(self.dir).st_dev:
            scratch = Path(tempfile.mkdtemp(prefix=".sshd-ns-", dir=self.upper.parent))
            self._stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        argv = rootfs.chroot_argv([tools, *self.lowers], self.upper, scratch,
                                  ["/bin/sh", "-c", _HOLDER])
        self.holder = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, env=dict(rootfs.CLEAN_ENV),
                                       text=True, start_new_session=True)
        self._stack.callback(self._stop_holder, self.holder)
        line = self.holder.stdout.readline()
        if line.strip() != "ready":
            rest = self.holder.stdout.read() if self.holder.poll() is not None else ""
            raise RuntimeError(f"the root for the test sshd did not come up: {line}{rest}")
        children = Path(f"/proc/{self.holder.pid}/task/{self.holder.pid}/children").read_text()
        self.holder_pid = int(children.split()[0])

    def _stop_holder(self, proc: subprocess.Popen) -> None:
        # unshare ignores SIGTERM; SIGKILL takes it, and --kill-child takes PID 1 of the
        # namespace with it, which takes every other process there.
        pid = self.holder_pid
        _kill(proc, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _write_config_files(self) -> None:
        d = self.dir
        (d / "authorized_keys").write_text("".join(f"{k}\n" for k in self.authorized_keys))
        write_private_key(self.host_key, d / "ssh_host_key")
        enter = d / "enter"
        enter.write_text(_ENTER.replace("@HOLDER@", str(self.holder_pid)).replace("@PATH@", PATH))
        enter.chmod(0o755)
        # sshd insists on its privilege separation directory (empty, root-owned)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    def _start_sshd(self) -> None:
        fixed = self.port is not None
        for _attempt in range(1 if fixed else 5):
            port = self.port if fixed else free_port()
            config = self.dir / "sshd_config"
            config.write_text(_CONFIG.format(dir=self.dir, listen=self.listen, port=port,
                                             sftp=SFTP_SERVER))
            log = open(self.dir / "sshd.log", "w")  # noqa: SIM115 - handed to the child
            proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                if "Server listening" in self.log:
                    self.port = port
                    self.sshd = proc
                    self._stack.callback(self.stop_sshd)
                    return
                time.sleep(0.02)
            _kill(proc)
            if "Address already in use" not in self.log:
                break
        raise RuntimeError(f"the test sshd did not start:\n{self.log}")

    # looking inside ------------------------------------------------------------------------
    def exec(self, command: str, *, check: bool = True, timeout: float | None = 120,
             env: dict[str, str] | None = None) -> str:
        """Run ``sh -c command`` inside the root (not over SSH); return its merged output."""
        return self.run(command, check=check, timeout=timeout, env=env).stdout

    def run(self, command: str, *, check: bool = False, timeout: float | None = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Like ``exec`` (cwd ``/``, a clean environment plus ``env``), with the exit status."""
        argv = ["nsenter", "--target", str(self.holder_pid), "--mount", "--pid",
                "--root", "--wd", "--", "/bin/sh", "-c", command]
        proc = subprocess.run(argv, check=False, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace",
                              env={**rootfs.CLEAN_ENV, **(env or {})}, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"exit {proc.returncode} from {command!r} in the root:\n"
                                 f"{proc.stdout}")
        return proc

    def path(self, inside: str) -> Path:
        """Where a file written inside the root lands on the host (in ``upper``)."""
        return self.upper / inside.lstrip("/")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.stdout:
        proc.stdout.close()


# -- pytest fixtures (pytest_plugins = ["tests.harness.sshd"]) ------------------------------------------

def require_sshd_root() -> None:
    """Skip (fail under CI, which installs and runs everything) unless this machine can run
    an sshd whose sessions land in a throwaway root: root, sshd, sftp-server, nsenter."""
    missing = ("root" if os.geteuid() != 0 else
               None if have_sshd() else
               f"{SSHD}, {SFTP_SERVER} and nsenter (apt-get install openssh-server)")
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"a test sshd needs {missing}; CI's setup should provide it")
    pytest.skip(f"a test sshd whose sessions land in a throwaway root needs {missing}")


@pytest.fixture(scope="session")
def sshd_base() -> Path:
    """The cached Debian root the test servers' roots are made from (debootstrap, once)."""
    require_sshd_root()
    return rootfs.ensure_base()


@pytest.fixture(scope="session")
def ssh_client_key(tmp_path_factory) -> tuple[paramiko.PKey, Path]:
    """A client key pair for the tests: (private key, its file with mode 0600)."""
    key = new_key("ed25519")
    path = write_private_key(key, tmp_path_factory.mktemp("ssh-client") / "id_ed25519")
    return key, path


@pytest.fixture
def sshd_factory(sshd_base, ssh_client_key, tmp_path) -> Iterator:
    """Start more servers: ``sshd_factory(name="bastion", lowers=None, authorized_keys=None,
    host_key=None, port=None) -> SshdRoot`` (stopped at the end of the test)."""
    require_sshd_root()
    started: list[SshdRoot] = []

    def make(name: str = "host", *, lowers=None, authorized_keys=None, host_key=None,
             port=None, start: bool = True) -> SshdRoot:
        server = SshdRoot(lowers or [sshd_base], tmp_path / name / "upper",
                          authorized_keys if authorized_keys is not None else [ssh_client_key[0]],
                          host_key=host_key, port=port)
        started.append(server)
        return server.start() if start else server

    yield make
    for server in reversed(started):
        server.stop()


@pytest.fixture
def sshd_root(sshd_factory) -> SshdRoot:
    """One running server over a fresh root, accepting ``ssh_client_key``, as root."""
    return sshd_factory("host")


def quote_cmd(argv: Sequence[str]) -> str:
    return shlex.join(argv)

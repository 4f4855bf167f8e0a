"""SSH connections (paramiko) for the ``ssh`` and ``ec2`` targets.

:func:`connect` makes one attempt; :func:`wait_for_ssh` retries with
exponential backoff and jitter while the host is *not up yet* (connection
refused or timed out, no SSH banner, reset during key exchange, a bastion that
cannot reach it yet) and fails at once when retrying cannot help
(authentication failed, host key refused). Both return an
:class:`SshConnection`, which implements the ``Machine`` protocol of
:mod:`amic.targets.base`.

**Host keys** are checked before any credential is sent, by one of:

- :class:`KnownHosts` (the default): ``~/.ssh/known_hosts`` (or the files
  given) and ``/etc/ssh/ssh_known_hosts``. An unknown host is refused with its
  fingerprint and how to accept it; a changed key is refused as a mismatch.
- :class:`TrustOnFirstUse`: accept an unknown host and, when given a file,
  record it there (``StrictHostKeyChecking=accept-new``). A known host with
  another key is still refused. Without a file nothing is written: the ec2
  target pins the key in memory instead (``SshConnection.host_key``).
- :class:`ExpectedHostKeys`: exactly these keys or fingerprints (``SHA256:…``,
  ``MD5:…``), obtained out of band (the EC2 console); known_hosts is ignored.
- :class:`AcceptAnyHostKey`: no check at all (``--insecure-accept-any-host-key``).

**Authentication** follows OpenSSH: the given key (paramiko ``PKey`` or file),
then the SSH agent (``$SSH_AUTH_SOCK``), then the default keys in ``~/.ssh``
when no key was given.

**Environment values** (ARG values, which are secrets) never appear on a
command line and are never written to a file. The remote command is always::

    [sudo -n] /bin/sh -c 'eval "$(cat)" && exec /bin/sh -c "$0"' COMMAND

and the ``export NAME='value'`` lines are sent over the channel's stdin, which
is then closed. The values live only in the shell's memory and the command's
environment; ``ps`` shows ``/bin/sh -c COMMAND``. The command's own stdin is
therefore at end-of-file.

**Non-root users** get ``sudo -n`` in front of every command (``sudo=None``
means: when the user is not ``root``). ``-n`` makes sudo fail instead of
prompting; :func:`connect` checks once that it works and otherwise explains
how to grant passwordless sudo. Uploads as a non-root user go to a private
directory under ``/tmp`` over SFTP and are moved into place with sudo.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import errno
import getpass
import hashlib
import os
import posixpath
import random
import re
import secrets
import shlex
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Self

import attrs
import paramiko

from amic.errors import BuildError, UsageError

OutputCallback = Callable[[str], None]

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
_WRAPPER = 'eval "$(cat)" && exec /bin/sh -c "$0"'
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


# -- errors -------------------------------------------------------------------------

class SshError(BuildError):
    """Connecting to or talking with an SSH server failed."""


class Unreachable(SshError):
    """The host is not (yet) answering SSH: refused, timed out, no banner, reset.

    :func:`wait_for_ssh` retries these."""


class AuthFailed(SshError):
    """The server refused every key offered. Not retried."""


class HostKeyError(SshError):
    """The server's host key was refused. Not retried; nothing was sent to the server."""

    def __init__(self, message: str, *, name: str, key: paramiko.PKey) -> None:
        super().__init__(message)
        self.name = name
        """The host as known_hosts names it (``host`` or ``[host]:port``)."""
        self.key = key
        """The key the server offered."""


class UnknownHostKey(HostKeyError):
    """The host is not known and the policy does not accept new hosts."""


class HostKeyMismatch(HostKeyError):
    """The host offered a key other than the one expected: possibly someone in the middle."""


class SudoError(SshError):
    """The login user cannot run commands as root with ``sudo -n``."""


# -- endpoints ------------------------------------------------------------------------

@attrs.frozen
class Endpoint:
    """Where to connect: ``user@host:port``."""

    host: str
    port: int = 22
    user: str = attrs.field(factory=getpass.getuser)
    """Login user; like OpenSSH, the local user name when none is given."""

    @classmethod
    def parse(cls, text: str, *, default_user: str | None = None, default_port: int = 22,
              what: str = "host") -> Endpoint:
        """``[ssh://][user@]host[:port]``; IPv6 addresses in brackets (``[::1]:2222``)."""
        rest = text.strip()
        rest = rest.removeprefix("ssh://")
        rest = rest.rstrip("/")
        user, at, hostport = rest.rpartition("@")
        if not at:
            user = ""
        port = default_port
        if hostport.startswith("["):
            host, bracket, tail = hostport[1:].partition("]")
            if not bracket or (tail and not tail.startswith(":")):
                raise UsageError(f"{what} {text!r}: expected [user@]host[:port]")
            if tail:
                port = _port(tail[1:], text, what)
        elif hostport.count(":") == 1:
            host, _, p = hostport.partition(":")
            port = _port(p, text, what)
        else:
            host = hostport   # a bare IPv6 address has several colons and no port
        if not host or any(c in host for c in " /\t") or (at and not user):
            raise UsageError(f"{what} {text!r}: expected [user@]host[:port]")
        user = user or default_user or getpass.getuser()
        return cls(host=host, port=port, user=user)

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this host: ``host``, or ``[host]:port`` off port 22."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" + (f":{self.port}" if self.port != 22 else "")


def _port(text: str, whole: str, what: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"{what} {whole!r}: port {text!r} is not a number from 1 to 65535")
    return int(text)


# -- fingerprints -----------------------------------------------------------------------

def fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:…`` as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def fingerprints(key: paramiko.PKey) -> set[str]:
    """The SHA256 and MD5 fingerprints of a key (ssh-keygen spelling)."""
    md5 = ":".join(f"{b:02x}" for b in hashlib.md5(key.asbytes()).digest())
    return {fingerprint(key), f"MD5:{md5}"}


def key_kind(key: paramiko.PKey) -> str:
    """``ED25519``, ``RSA``, ``ECDSA``: how ssh prints a key type."""
    name = key.get_name()
    if "ed25519" in name:
        return "ED25519"
    if "rsa" in name:
        return "RSA"
    if "ecdsa" in name:
        return "ECDSA"
    return name


def describe_key(key: paramiko.PKey) -> str:
    return f"{key_kind(key)} key {fingerprint(key)}"


def public_key_line(key: paramiko.PKey) -> str:
    """``ssh-ed25519 AAAA…`` (what authorized_keys and known_hosts hold)."""
    return f"{key.get_name()} {key.get_base64()}"


def public_key_from_line(line: str) -> paramiko.PKey:
    """A public key from ``type base64 [comment]``."""
    parts = line.split()
    if len(parts) < 2:
        raise ValueError(f"not a public key line: {line!r}")
    return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))


def _norm_fp(text: str) -> str:
    text = text.strip()
    if text.startswith("SHA256:"):
        return text.rstrip("=")
    if text.startswith("MD5:"):
        return "MD5:" + text[4:].lower()
    if re.fullmatch(r"([0-9a-fA-F]{2}:){15}[0-9a-fA-F]{2}", text):
        return "MD5:" + text.lower()
    return text


# -- host key policies -----------------------------------------------------------------

class HostKeyPolicy:
    """Decides whether the key a server offers is acceptable (before anything is sent)."""

    def known_keys(self, name: str) -> list[paramiko.PKey]:
        """Keys already trusted for ``name``; their types are preferred in the key exchange."""
        return []

    def check(self, name: str, key: paramiko.PKey) -> None:
        """Accept ``key`` for ``name`` (return) or refuse it (raise HostKeyError)."""
        raise NotImplementedError

    def ssh_options(self) -> list[str]:
        """``ssh`` arguments a human needs to check the key the same way (for describe())."""
        return []


class KnownHosts(HostKeyPolicy):
    """Keys from known_hosts files; unknown hosts refused (``StrictHostKeyChecking=yes``)."""

    accept_hint = ("If this fingerprint is right (compare with `ssh-keygen -lf "
                   "/etc/ssh/ssh_host_*_key.pub` on the host), accept it with --ssh-accept-new "
                   "(records it in {path}), or add it yourself: {keyscan} >> {path}")

    def __init__(self, path: str | os.PathLike | None = None, *,
                 system: str | os.PathLike | None = SYSTEM_KNOWN_HOSTS) -> None:
        self.path = path
        """The user's file (default ``~/.ssh/known_hosts``); TrustOnFirstUse records new keys here."""
        self.system = system
        """A read-only system-wide file, also consulted."""

    @property
    def user_file(self) -> Path:
        return Path(os.path.expanduser(os.fspath(self.path or DEFAULT_KNOWN_HOSTS)))

    def _searched(self) -> list[Path]:
        return [self.user_file] + ([Path(self.system)] if self.system else [])

    def _entries(self, name: str) -> list[tuple[Path, paramiko.PKey]]:
        found = []
        for path in self._searched():
            if not path.is_file():
                continue
            hk = paramiko.HostKeys()
            try:
                hk.load(str(path))
            except (OSError, UnicodeDecodeError):
                continue
            entry = hk.lookup(name)
            if entry:
                found.extend((path, entry[t]) for t in entry)
        return found

    def known_keys(self, name: str) -> list[paramiko.PKey]:
        return [key for _, key in self._entries(name)]

    def check(self, name: str, key: paramiko.PKey) -> None:
        entries = self._entries(name)
        if any(k == key for _, k in entries):
            return
        if entries:
            raise _mismatch(name, key, entries)
        self.unknown(name, key)

    def unknown(self, name: str, key: paramiko.PKey) -> None:
        host, port = _split_name(name)
        keyscan = f"ssh-keyscan {'-p ' + str(port) + ' ' if port != 22 else ''}{host}"
        hint = self.accept_hint.format(path=self.user_file, keyscan=keyscan)
        searched = ", ".join(map(str, self._searched()))
        raise UnknownHostKey(f"host key of {name} is not known: it offered the {describe_key(key)}, "
                             f"which is in no known_hosts file ({searched}). {hint}",
                             name=name, key=key)

    def ssh_options(self) -> list[str]:
        if self.path and self.user_file != Path(os.path.expanduser(DEFAULT_KNOWN_HOSTS)):
            return ["-o", f"UserKnownHostsFile={self.user_file}"]
        return []


class TrustOnFirstUse(KnownHosts):
    """Accept a host never seen before; record it in ``known_hosts`` when one is given.

    A host already known with another key is still refused. With no file (the
    ec2 target: fresh instances, recycled addresses) nothing is read or written:
    any key is accepted and the caller pins ``SshConnection.host_key``.
    """

    def __init__(self, known_hosts: str | os.PathLike | None = None, *,
                 system: str | os.PathLike | None = SYSTEM_KNOWN_HOSTS) -> None:
        super().__init__(known_hosts, system=system if known_hosts is not None else None)
        self.record = known_hosts is not None

    def _searched(self) -> list[Path]:
        return super()._searched() if self.record else []

    def unknown(self, name: str, key: paramiko.PKey) -> None:
        if not self.record:
            return
        path = self.user_file
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        needs_newline = False
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                needs_newline = fh.read(1) != b"\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write(("\n" if needs_newline else "") + f"{name} {public_key_line(key)}\n")


class ExpectedHostKeys(HostKeyPolicy):
    """Exactly these host keys: ``PKey`` objects, ``type base64`` lines or fingerprints
    (``SHA256:…``, ``MD5:…``); obtained out of band, known_hosts is not consulted."""

    def __init__(self, expected: Iterable, *, source: str = "the expected host keys") -> None:
        self.keys: list[paramiko.PKey] = []
        self.fingerprints: set[str] = set()
        for item in expected:
            if isinstance(item, paramiko.PKey):
                self.keys.append(item)
            elif isinstance(item, str) and len(item.split()) >= 2:
                self.keys.append(public_key_from_line(item))
            else:
                self.fingerprints.add(_norm_fp(str(item)))
        for key in self.keys:
            self.fingerprints |= fingerprints(key)
        self.source = source
        """Where they came from, for the error message (``the console of i-0abc``)."""

    def known_keys(self, name: str) -> list[paramiko.PKey]:
        return list(self.keys)

    def check(self, name: str, key: paramiko.PKey) -> None:
        if fingerprints(key) & self.fingerprints:
            return
        shown = sorted(fp for fp in self.fingerprints if fp.startswith("SHA256:")) or sorted(
            self.fingerprints)
        raise HostKeyMismatch(
            f"HOST KEY MISMATCH for {name}: it offered the {describe_key(key)}, but "
            f"{self.source} are {', '.join(shown) or '(none)'}. Someone may be intercepting the "
            "connection; nothing was sent to it.", name=name, key=key)


class AcceptAnyHostKey(HostKeyPolicy):
    """No host key check at all. Anyone on the path can impersonate the host."""

    def check(self, name: str, key: paramiko.PKey) -> None:
        return

    def ssh_options(self) -> list[str]:
        return ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]


def policy_from_options(*, known_hosts: str | None = None, accept_new: bool = False,
                        insecure: bool = False) -> HostKeyPolicy:
    """The policy for ``--ssh-known-hosts FILE``, ``--ssh-accept-new``,
    ``--insecure-accept-any-host-key``."""
    if insecure and accept_new:
        raise UsageError("--ssh-accept-new and --insecure-accept-any-host-key exclude each other")
    if insecure:
        return AcceptAnyHostKey()
    if accept_new:
        return TrustOnFirstUse(known_hosts or DEFAULT_KNOWN_HOSTS)
    return KnownHosts(known_hosts)


def _mismatch(name: str, key: paramiko.PKey, entries) -> HostKeyMismatch:
    known = "; ".join(f"{describe_key(k)} in {p}" for p, k in entries)
    files = sorted({str(p) for p, _ in entries})
    return HostKeyMismatch(
        f"HOST KEY MISMATCH for {name}: it offered the {describe_key(key)}, but known_hosts "
        f"has {known}. Someone may be intercepting the connection, or the host was "
        f"reinstalled; nothing was sent to it. If you know it was reinstalled, remove the old "
        f"key: ssh-keygen -R '{name}'" + (f" -f {files[0]}" if files else ""),
        name=name, key=key)


def _split_name(name: str) -> tuple[str, int]:
    if name.startswith("["):
        host, _, port = name[1:].partition("]:")
        return host, int(port or 22)
    return name, 22


class _PolicyAdapter(paramiko.MissingHostKeyPolicy):
    """paramiko calls this for keys it does not know; we decide with our policy."""

    def __init__(self, policy: HostKeyPolicy) -> None:
        self.policy = policy

    def missing_host_key(self, client, hostname, key):
        self.policy.check(hostname, key)


# -- jump hosts ---------------------------------------------------------------------------

@attrs.frozen
class Jump:
    """A bastion reached first (like ``ssh -J``); the target is reached through a
    ``direct-tcpip`` channel it opens."""

    endpoint: Endpoint
    key_filename: str | None = None
    pkey: paramiko.PKey | None = None
    host_key_policy: HostKeyPolicy = attrs.field(factory=KnownHosts)
    """The bastion's own host key check (known_hosts by default, as OpenSSH does)."""

    def __str__(self) -> str:
        return str(self.endpoint)


def parse_jump(spec: str, *, key_filename: str | None = None, pkey=None,
               host_key_policy: HostKeyPolicy | None = None) -> Jump:
    """``[user@]host[:port]`` of a bastion."""
    return Jump(Endpoint.parse(spec, what="jump host"), key_filename=key_filename, pkey=pkey,
                host_key_policy=host_key_policy or KnownHosts())


# -- connecting -------------------------------------------------------------------------

def _classify(exc: BaseException, where: str) -> SshError:
    """Turn what paramiko and sockets raise into Unreachable (retry) or a final SshError."""
    if isinstance(exc, SshError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):  # not raised with our adapter; be safe
        return HostKeyMismatch(f"HOST KEY MISMATCH for {where}: {exc}", name=where, key=exc.key)
    if isinstance(exc, paramiko.AuthenticationException):
        return AuthFailed(f"{where}: authentication failed ({exc}); check the user name and the "
                          "key (--ssh-key FILE, the SSH agent, ~/.ssh/id_*) and that its public "
                          "key is in the user's ~/.ssh/authorized_keys")
    if isinstance(exc, paramiko.ChannelException):
        # the bastion could not open a connection onwards: the target is not listening yet
        return Unreachable(f"{where}: the jump host could not connect to it ({exc.text or exc})")
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return Unreachable(f"{where}: {_oserror_text(exc)}")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return Unreachable(f"{where}: connection timed out")
    if isinstance(exc, socket.gaierror):
        if exc.errno in (socket.EAI_AGAIN,):
            return Unreachable(f"{where}: name lookup failed for now ({exc.strerror})")
        return SshError(f"{where}: cannot resolve the host name ({exc.strerror})")
    if isinstance(exc, (ConnectionError, EOFError)):
        return Unreachable(f"{where}: connection closed during the handshake ({exc or type(exc).__name__})")
    if isinstance(exc, OSError):
        if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                         errno.ETIMEDOUT, errno.ECONNRESET, errno.EHOSTDOWN, errno.ENETDOWN,
                         errno.ECONNABORTED, errno.EPIPE):
            return Unreachable(f"{where}: {exc.strerror or exc}")
        return SshError(f"{where}: {exc}")
    if isinstance(exc, paramiko.SSHException):
        text = str(exc)
        # "No existing session": the key exchange did not finish within the timeout
        if any(s in text.lower() for s in ("banner", "connection reset", "eof", "unable to connect",
                                           "closed", "timeout", "timed out",
                                           "no existing session")):
            return Unreachable(f"{where}: {text}")
        return SshError(f"{where}: {text}")
    return SshError(f"{where}: {type(exc).__name__}: {exc}")


def _oserror_text(exc) -> str:
    errs = getattr(exc, "errors", {}) or {}
    for err in errs.values():
        return err.strerror or str(err)
    return str(exc)


def _open_client(endpoint: Endpoint, *, pkey, key_filename, policy: HostKeyPolicy, sock,
                 allow_agent: bool, look_for_keys: bool | None,
                 connect_timeout: float) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    name = endpoint.known_hosts_name
    host_keys = client.get_host_keys()
    for key in policy.known_keys(name):
        host_keys.add(name, key.get_name(), key)   # so paramiko prefers these key types
    client.set_missing_host_key_policy(_PolicyAdapter(policy))
    if look_for_keys is None:
        look_for_keys = pkey is None and key_filename is None
    try:
        client.connect(endpoint.host, port=endpoint.port, username=endpoint.user, pkey=pkey,
                       key_filename=os.path.expanduser(key_filename) if key_filename else None,
                       allow_agent=allow_agent, look_for_keys=look_for_keys, sock=sock,
                       timeout=connect_timeout, banner_timeout=connect_timeout,
                       auth_timeout=connect_timeout, channel_timeout=connect_timeout)
    except paramiko.BadHostKeyException as exc:
        client.close()
        # a key of the negotiated type was trusted and this is another one: the policy words it
        policy.check(name, exc.key)
        raise _classify(exc, name) from None
    except BaseException as exc:
        client.close()
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise _classify(exc, str(endpoint)) from None
    return client


def connect(host: str | Endpoint, port: int = 22, user: str | None = None, *,
            pkey: paramiko.PKey | None = None, key_filename: str | None = None,
            host_key_policy: HostKeyPolicy | None = None, jump: Jump | None = None,
            sudo: bool | None = None, allow_agent: bool = True, look_for_keys: bool | None = None,
            connect_timeout: float = 15.0, log=None) -> SshConnection:
    """One attempt to connect; raises Unreachable, AuthFailed, HostKeyError, SudoError."""
    endpoint = host if isinstance(host, Endpoint) else Endpoint(host, port, user or getpass.getuser())
    policy = host_key_policy or KnownHosts()
    jump_client = None
    sock = None
    if jump is not None:
        jump_client = _open_client(jump.endpoint, pkey=jump.pkey, key_filename=jump.key_filename,
                                   policy=jump.host_key_policy, sock=None, allow_agent=allow_agent,
                                   look_for_keys=None, connect_timeout=connect_timeout)
        try:
            sock = jump_client.get_transport().open_channel(
                "direct-tcpip", (endpoint.host, endpoint.port), ("127.0.0.1", 0),
                timeout=connect_timeout)
        except BaseException as exc:
            jump_client.close()
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise _classify(exc, f"{endpoint} (through {jump})") from None
    try:
        client = _open_client(endpoint, pkey=pkey, key_filename=key_filename, policy=policy,
                              sock=sock, allow_agent=allow_agent, look_for_keys=look_for_keys,
                              connect_timeout=connect_timeout)
    except BaseException:
        if jump_client is not None:
            jump_client.close()
        raise
    conn = SshConnection(endpoint=endpoint, client=client, jump_client=jump_client, jump=jump,
                         sudo=endpoint.user != "root" if sudo is None else sudo,
                         key_filename=key_filename, policy=policy)
    try:
        conn.check_sudo()
    except BaseException:
        conn.close()
        raise
    return conn


def wait_for_ssh(host: str | Endpoint, port: int = 22, user: str | None = None, *,
                 timeout: float = 300.0, log=None, initial_delay: float = 1.0,
                 max_delay: float = 20.0, retry_auth: bool = False, **kwargs) -> SshConnection:
    """:func:`connect`, retried while the host is not up yet, for at most ``timeout`` seconds.

    Backoff doubles from ``initial_delay`` up to ``max_delay``, each sleep jittered
    (50–100 %) so many builders do not knock in step. Authentication failures,
    refused host keys and sudo problems are raised at once; with ``retry_auth``,
    authentication failures are retried too (a fresh cloud instance may answer
    SSH before its authorized key is installed).
    """
    endpoint = host if isinstance(host, Endpoint) else Endpoint(host, port, user or getpass.getuser())
    connect_timeout = kwargs.pop("connect_timeout", 15.0)
    deadline = time.monotonic() + timeout
    delay = initial_delay
    attempt = 0
    while True:
        attempt += 1
        left = deadline - time.monotonic()
        try:
            return connect(endpoint, connect_timeout=max(1.0, min(connect_timeout, left)),
                           log=log, **kwargs)
        except (Unreachable, AuthFailed) as exc:
            if isinstance(exc, AuthFailed) and not retry_auth:
                raise
            pause = delay * (0.5 + random.random() / 2)
            if time.monotonic() + pause >= deadline:
                raise Unreachable(f"{endpoint} did not answer SSH within {timeout:.0f}s "
                                  f"({attempt} attempts); last error: {exc}") from None
            if log and (attempt == 1 or attempt % 5 == 0):
                log(f"waiting for SSH on {endpoint}: {exc}")
            time.sleep(pause)
            delay = min(delay * 2, max_delay)


# -- the connection -----------------------------------------------------------------------

class SshConnection:
    """A connected host: the ``Machine`` protocol over one SSH transport."""

    def __init__(self, *, endpoint: Endpoint, client: paramiko.SSHClient,
                 jump_client: paramiko.SSHClient | None = None, jump: Jump | None = None,
                 sudo: bool = False, key_filename: str | None = None,
                 policy: HostKeyPolicy | None = None) -> None:
        self.endpoint = endpoint
        self.client = client
        self.jump_client = jump_client
        self.jump = jump
        self.sudo = sudo
        self.key_filename = key_filename
        self.policy = policy or KnownHosts()
        transport = client.get_transport()
        self.host_key: paramiko.PKey = transport.get_remote_server_key()
        """The key the host proved it holds (the ec2 target pins it after first use)."""
        transport.set_keepalive(30)
        self._sftp: paramiko.SFTPClient | None = None

    # Machine protocol ---------------------------------------------------------------
    def run(self, command: str, *, env: Mapping[str, str] | None = None,
            on_output: OutputCallback | None = None, timeout: float | None = None) -> int:
        """Run ``sh -c command`` as root; return its exit status (255: killed by a signal).

        Raises SshError when the connection is lost, TimeoutError after ``timeout``
        seconds (the channel is closed; the remote command gets SIGPIPE on its next
        output)."""
        return self._exec(self.remote_command(command), _env_script(env), on_output, timeout)

    def put(self, local: Path | str, remote: str, *, mode: int = 0o600) -> None:
        """Upload ``local`` to ``remote`` atomically (temporary name, then rename), with ``mode``.

        The file has its final mode before any byte is written. As a non-root user
        the file goes to a private directory first and sudo moves it in place, owned
        by root."""
        sftp = self._sftp_client()
        token = secrets.token_hex(6)
        if not self.sudo:
            directory, base = posixpath.split(remote)
            tmp = posixpath.join(directory, f".{base}.amic-{token}")
            try:
                self._upload(sftp, Path(local), tmp, mode)
                try:
                    sftp.posix_rename(tmp, remote)
                except OSError:  # no posix-rename extension: remove, then rename
                    with contextlib.suppress(OSError):
                        sftp.remove(remote)
                    sftp.rename(tmp, remote)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    sftp.remove(tmp)
                if isinstance(exc, OSError):
                    raise SshError(f"uploading {local} to {self.endpoint}:{remote}: {exc}") from None
                raise
            return
        tmpdir = f"/tmp/.amic-upload-{token}"
        try:
            sftp.mkdir(tmpdir, 0o700)
            tmp = posixpath.join(tmpdir, "file")
            self._upload(sftp, Path(local), tmp, mode)
        except OSError as exc:
            self._exec(f"rm -rf {tmpdir}", "", None, 60, sudo=False)
            raise SshError(f"uploading {local} to {self.endpoint}:{tmpdir}: {exc}") from None
        q = shlex.quote
        part = f"{remote}.amic-{token}"
        script = (f"cp {q(tmp)} {q(part)} && chown 0:0 {q(part)} && chmod {mode:o} {q(part)} && "
                  f"mv -f {q(part)} {q(remote)}; rc=$?; rm -rf {q(tmpdir)} {q(part)}; exit $rc")
        lines: list[str] = []
        rc = self.run(script, on_output=lines.append, timeout=600)
        if rc != 0:
            raise SshError(f"moving the upload into place at {self.endpoint}:{remote} failed "
                           f"(exit {rc}): {' / '.join(lines[-3:])}")

    def describe(self) -> str:
        """The ``ssh`` command a human would use to reach this host."""
        return ssh_command(self.endpoint, key_filename=self.key_filename, jump=self.jump,
                           policy=self.policy)

    # ------------------------------------------------------------------------------
    def remote_command(self, command: str) -> str:
        """The command line sent to the server (see the module docstring)."""
        line = f"/bin/sh -c {shlex.quote(_WRAPPER)} {shlex.quote(command)}"
        return f"sudo -n {line}" if self.sudo else line

    def check_sudo(self) -> None:
        """With sudo, make sure ``sudo -n`` works; explain how to fix it if not."""
        if not self.sudo:
            return
        out: list[str] = []
        rc = self._exec("sudo -n true", "", out.append, 60)
        if rc != 0:
            said = " ".join(out).strip() or f"exit {rc}"
            raise SudoError(
                f"{self.endpoint}: {self.endpoint.user} cannot run commands as root without a "
                f"password (sudo -n true: {said}). Connect as root, or allow it on the host: "
                f"echo '{self.endpoint.user} ALL=(ALL) NOPASSWD:ALL' > "
                f"/etc/sudoers.d/amic-{self.endpoint.user}")

    @property
    def active(self) -> bool:
        transport = self.client.get_transport()
        return transport is not None and transport.is_active()

    def close(self) -> None:
        if self._sftp is not None:
            with contextlib.suppress(Exception):
                self._sftp.close()
            self._sftp = None
        self.client.close()
        if self.jump_client is not None:
            self.jump_client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SshConnection {self.endpoint}{' via ' + str(self.jump) if self.jump else ''}>"

    # ------------------------------------------------------------------------------
    def _transport(self) -> paramiko.Transport:
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise SshError(f"the SSH connection to {self.endpoint} was lost")
        return transport

    def _exec(self, remote: str, stdin: str, on_output: OutputCallback | None,
              timeout: float | None, sudo: bool | None = None) -> int:
        try:
            chan = self._transport().open_session(timeout=30)
        except paramiko.SSHException as exc:
            raise SshError(f"{self.endpoint}: could not open a session: {exc}") from None
        deadline = None if timeout is None else time.monotonic() + timeout
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        pending = ""

        def emit(text: str, final: bool = False) -> str:
            *lines, rest = text.split("\n")
            if on_output:
                for line in lines:
                    on_output(line.removesuffix("\r"))
                if final and rest:
                    on_output(rest.removesuffix("\r"))
            return "" if final else rest

        try:
            chan.set_combine_stderr(True)
            chan.exec_command(remote)
            if stdin:
                chan.sendall(stdin.encode())
            chan.shutdown_write()
            chan.settimeout(1.0)
            while True:
                try:
                    data = chan.recv(65536)
                except TimeoutError:
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"{self.endpoint}: command did not finish within "
                                           f"{timeout:.0f}s") from None
                    if not self.active:
                        break
                    continue
                if not data:
                    break
                pending = emit(pending + decoder.decode(data))
            emit(pending + decoder.decode(b"", final=True), final=True)
            while not chan.exit_status_ready():
                if not self.active:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"{self.endpoint}: command did not finish within "
                                       f"{timeout:.0f}s")
                time.sleep(0.05)
            status = chan.recv_exit_status() if chan.exit_status_ready() else -1
        except paramiko.SSHException as exc:
            raise SshError(f"{self.endpoint}: {exc}") from None
        finally:
            chan.close()
        if status == -1:
            if not self.active:
                raise SshError(f"the SSH connection to {self.endpoint} was lost while running a "
                               "command")
            return 255   # no exit-status: the command was killed by a signal (like ssh)
        return status

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = self.client.open_sftp()
            except (paramiko.SSHException, OSError) as exc:
                raise SshError(f"{self.endpoint}: SFTP is not available ({exc}); amic uploads "
                               "with SFTP (Subsystem sftp in sshd_config)") from None
        return self._sftp

    @staticmethod
    def _upload(sftp: paramiko.SFTPClient, local: Path, remote: str, mode: int) -> None:
        with open(local, "rb") as src, sftp.open(remote, "wbx") as dst:
            dst.chmod(mode)
            dst.set_pipelined(True)
            while chunk := src.read(32768):
                dst.write(chunk)


def _env_script(env: Mapping[str, str] | None) -> str:
    lines = []
    for name, value in (env or {}).items():
        if not _ENV_NAME.match(name):
            raise BuildError(f"environment variable name {name!r} is not a valid shell name")
        lines.append(f"export {name}={shlex.quote(str(value))}\n")
    return "".join(lines)


def ssh_command(endpoint: Endpoint, *, key_filename: str | os.PathLike | None = None,
                jump: Jump | None = None, policy: HostKeyPolicy | None = None) -> str:
    """``ssh [-i KEY] [-p PORT] [-J BASTION] [-o …] user@host`` for a human."""
    argv = ["ssh"]
    if key_filename:
        argv += ["-i", os.fspath(key_filename)]
    if endpoint.port != 22:
        argv += ["-p", str(endpoint.port)]
    if jump is not None:
        argv += ["-J", str(jump.endpoint)]
    if policy is not None:
        argv += policy.ssh_options()
    host = endpoint.host
    argv.append(f"{endpoint.user}@{host}")
    return shlex.join(argv)


def iter_known_hosts_lines(name: str, keys: Iterable[paramiko.PKey]) -> list[str]:
    """known_hosts lines for ``name`` (``[host]:port`` off port 22)."""
    return [f"{name} {public_key_line(k)}" for k in keys]

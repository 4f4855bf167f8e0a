"""Connecting: :func:`connect` makes one attempt, :func:`wait_for_ssh` retries.

:func:`wait_for_ssh` retries with exponential backoff and jitter while the
host is *not up yet* (connection refused or timed out, no SSH banner, reset
during key exchange, a bastion that cannot reach it yet) and fails at once
when retrying cannot help (authentication failed, host key refused). Both
return an :class:`~amic.targets.ssh.session.SshConnection`.

The host key is checked (:mod:`amic.targets.ssh.hostkeys`) before any
credential is sent. **Authentication** follows OpenSSH: the given key
(paramiko ``PKey`` or file), then the SSH agent (``$SSH_AUTH_SOCK``), then the
default keys in ``~/.ssh`` when no key was given. A non-root user gets
``sudo -n`` (``sudo=None`` means: when the user is not ``root``), checked once
here.
"""

from __future__ import annotations

import errno
import getpass
import os
import random
import socket
import time

import paramiko

from amic.targets.ssh.endpoint import Endpoint, Jump
from amic.targets.ssh.errors import AuthFailed, HostKeyMismatch, SshError, Unreachable
from amic.targets.ssh.hostkeys import HostKeyPolicy, KnownHosts, PolicyAdapter
from amic.targets.ssh.session import SshConnection


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
        return Unreachable(f"{where}: connection closed during the handshake "
                           f"({exc or type(exc).__name__})")
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


def _endpoint(host: str | Endpoint, port: int, user: str | None) -> Endpoint:
    return host if isinstance(host, Endpoint) else Endpoint(host, port, user or getpass.getuser())


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
    client.set_missing_host_key_policy(PolicyAdapter(policy))
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
    endpoint = _endpoint(host, port, user)
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
    endpoint = _endpoint(host, port, user)
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

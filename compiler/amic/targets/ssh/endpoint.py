"""Where to connect: :class:`Endpoint` (``user@host:port``), :class:`Jump` (a bastion,
like ``ssh -J``), and :func:`ssh_command`, the same place as a human types it."""

from __future__ import annotations

import getpass
import os
import shlex

import attrs
import paramiko

from amic.errors import UsageError
from amic.targets.ssh.hostkeys import HostKeyPolicy, KnownHosts


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

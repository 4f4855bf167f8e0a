"""Host keys: fingerprints, key lines, and the policies that accept or refuse a key.

A policy is asked before any credential is sent:

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
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

import paramiko

from amic.errors import UsageError
from amic.targets.ssh.errors import HostKeyMismatch, UnknownHostKey

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
_MD5_HEX = re.compile(r"(?:[0-9a-fA-F]{2}:){15}[0-9a-fA-F]{2}")


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


def normalize_fingerprint(text: str) -> str:
    """A fingerprint as :func:`fingerprints` spells it, from how people and consoles write it.

    ``SHA256:<base64>`` keeps its (case-sensitive) base64 without ``=`` padding;
    ``MD5:`` hex is lowercased; bare ``aa:bb:…`` (16 bytes) is MD5 and any other
    bare text is taken as SHA256 base64, as ``ssh-keygen -E`` would print it.
    The prefixes are matched in any case (``sha256:``)."""
    text = text.strip()
    kind, colon, body = text.partition(":")
    if colon and kind.upper() == "SHA256":
        return "SHA256:" + body.rstrip("=")
    if colon and kind.upper() == "MD5":
        return "MD5:" + body.lower()
    if _MD5_HEX.fullmatch(text):
        return "MD5:" + text.lower()
    return "SHA256:" + text.rstrip("=")


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
                self.fingerprints.add(normalize_fingerprint(str(item)))
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


class PolicyAdapter(paramiko.MissingHostKeyPolicy):
    """paramiko calls this for keys it does not know; we decide with our policy."""

    def __init__(self, policy: HostKeyPolicy) -> None:
        self.policy = policy

    def missing_host_key(self, client, hostname, key):
        self.policy.check(hostname, key)

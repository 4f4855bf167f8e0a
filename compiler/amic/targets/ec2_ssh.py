"""The ec2 target's SSH connection: paramiko, host keys checked against the console, backoff.

Kept small and private to the ec2 target; when the shared ``amic.sshconn``
Machine offers an expected-host-key policy, jump hosts and ``wait_for_ssh``,
this module can shrink to a call into it.
"""

from __future__ import annotations

import shlex
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import paramiko


class HostKeyMismatch(Exception):
    """The server's host key is not one of the expected fingerprints."""


def fingerprints(key: paramiko.PKey) -> set[str]:
    from amic.targets.ec2 import key_fingerprints

    return key_fingerprints(key)


class ExpectedHostKeys(paramiko.MissingHostKeyPolicy):
    """Accept only a key whose SHA256 or MD5 fingerprint is in ``expected``."""

    def __init__(self, expected: set[str]) -> None:
        self.expected = set(expected)

    def missing_host_key(self, client, hostname, key):
        got = fingerprints(key)
        if not got & self.expected:
            sha = sorted(f for f in got if f.startswith("SHA256:"))
            raise HostKeyMismatch(f"host key {key.get_name()} {sha[0] if sha else '?'} of "
                                  f"{hostname} is not one of {', '.join(sorted(self.expected))}")


class TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client, hostname, key):
        return None


def parse_jump(spec: str, *, key_filename: str | None = None) -> dict:
    user, _, hostport = spec.rpartition("@")
    host, _, port = hostport.partition(":")
    return {"host": host, "port": int(port or 22), "user": user or None,
            "key_filename": key_filename}


class Connection:
    """One SSH connection; commands run as root (through ``sudo -n`` unless the user is root)."""

    def __init__(self, client: paramiko.SSHClient, jump: paramiko.SSHClient | None,
                 sudo: bool, host_key: paramiko.PKey | None) -> None:
        self.client = client
        self.jump = jump
        self.sudo = sudo
        self.host_key = host_key

    def run(self, command: str, *, env: Mapping[str, str] | None = None,
            on_output: Callable[[str], None] | None = None, timeout: float | None = None) -> int:
        # Values travel on the session's stdin, read by the remote shell into its
        # environment: never on a command line (ps) nor on the machine's disk.
        exports = " ".join(f"export {k}={shlex.quote(v)};" for k, v in (env or {}).items())
        wrapper = 'IFS= read -r amic_env; eval "$amic_env"; unset amic_env; exec /bin/sh -c "$1"'
        remote = f"/bin/sh -c {shlex.quote(wrapper)} amic-run {shlex.quote(command)}"
        if self.sudo:
            remote = f"sudo -n -H -- {remote}"
        chan = self.client.get_transport().open_session()
        chan.set_combine_stderr(True)
        if timeout:
            chan.settimeout(timeout)
        chan.exec_command(remote)
        chan.sendall((exports + "\n").encode())
        chan.shutdown_write()
        buf = b""
        while True:
            data = chan.recv(32768)
            if not data:
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if on_output:
                    on_output(line.decode("utf-8", "replace").rstrip("\r"))
        if buf and on_output:
            on_output(buf.decode("utf-8", "replace"))
        return chan.recv_exit_status()

    def put(self, local: Path, remote: str, *, mode: int = 0o600) -> None:
        sftp = self.client.open_sftp()
        try:
            if not self.sudo:
                sftp.put(str(local), remote)
                sftp.chmod(remote, mode)
                return
            tmp = f"/tmp/.amic-upload-{int(time.time() * 1000)}"
            sftp.put(str(local), tmp)
            sftp.chmod(tmp, 0o600)
        finally:
            sftp.close()
        rc = self.run(f"install -m {mode:o} {shlex.quote(tmp)} {shlex.quote(remote)}; "
                      f"s=$?; rm -f {shlex.quote(tmp)}; exit $s")
        if rc != 0:
            raise OSError(f"moving the upload into {remote} failed (exit {rc})")

    def close(self) -> None:
        self.client.close()
        if self.jump is not None:
            self.jump.close()


def _connect_once(host, port, user, pkey, policy, jump, connect_timeout):
    jump_client = None
    sock = None
    if jump:
        jump_client = paramiko.SSHClient()
        jump_client.load_system_host_keys()
        jump_client.set_missing_host_key_policy(paramiko.RejectPolicy())
        jump_client.connect(jump["host"], port=jump["port"], username=jump["user"],
                            key_filename=jump["key_filename"], timeout=connect_timeout)
        sock = jump_client.get_transport().open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0))
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(policy)
    try:
        client.connect(host, port=port, username=user, pkey=pkey, sock=sock,
                       timeout=connect_timeout, banner_timeout=connect_timeout,
                       auth_timeout=connect_timeout, allow_agent=False, look_for_keys=False)
    except BaseException:
        client.close()
        if jump_client:
            jump_client.close()
        raise
    return client, jump_client


def wait_for_ssh(*, host: str, port: int, user: str, pkey, host_key_policy, jump=None,
                 timeout: float = 600, sudo: bool = True, log=None,
                 connect_timeout: float = 15) -> Connection:
    """Connect, retrying with exponential backoff (1 s doubling to 15 s) until ``timeout``.

    A host key mismatch is final (raised at once); refused connections,
    timeouts and early authentication failures (the key not installed yet)
    are retried.
    """
    deadline = time.monotonic() + timeout
    delay = 1.0
    attempt = 0
    while True:
        attempt += 1
        try:
            client, jump_client = _connect_once(host, port, user, pkey, host_key_policy, jump,
                                                connect_timeout)
            key = client.get_transport().get_remote_server_key()
            return Connection(client, jump_client, sudo, key)
        except HostKeyMismatch:
            raise
        except (OSError, socket.timeout, paramiko.SSHException, EOFError) as exc:
            if time.monotonic() + delay > deadline:
                raise TimeoutError(f"no SSH on {user}@{host}:{port} after {timeout:.0f}s "
                                   f"({attempt} attempts; last: {exc or type(exc).__name__})") from None
            if log and attempt in (1, 5, 20):
                log(f"SSH not up yet on {host}:{port} ({exc or type(exc).__name__}); retrying")
            time.sleep(delay)
            delay = min(delay * 2, 15.0)

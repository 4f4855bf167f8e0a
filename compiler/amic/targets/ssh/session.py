"""An open SSH connection to a host: :class:`SshConnection`, a ``Machine``.

**Environment values** (ARG values, which are secrets) never appear on a
command line and are never written to a file. The remote command is always::

    [sudo -n] /bin/sh -c 'eval "$(cat)" && exec /bin/sh -c "$0"' COMMAND

and the ``export NAME='value'`` lines (:func:`env_script`) are sent over the
channel's stdin, which is then closed. The values live only in the shell's
memory and the command's environment; ``ps`` shows ``/bin/sh -c COMMAND``. The
command's own stdin is therefore at end-of-file.

**Non-root users** get ``sudo -n`` in front of every command. ``-n`` makes
sudo fail instead of prompting; :meth:`SshConnection.check_sudo` checks once
that it works and otherwise explains how to grant passwordless sudo. Uploads
as a non-root user go to a private directory under ``/tmp`` over SFTP and are
moved into place with sudo.
"""

from __future__ import annotations

import codecs
import contextlib
import posixpath
import re
import secrets
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Self

import paramiko

from amic.errors import BuildError
from amic.targets.base import Machine, OutputCallback
from amic.targets.scripts import script
from amic.targets.ssh.endpoint import Endpoint, Jump, ssh_command
from amic.targets.ssh.errors import SshError, SudoError
from amic.targets.ssh.hostkeys import HostKeyPolicy, KnownHosts

_WRAPPER = 'eval "$(cat)" && exec /bin/sh -c "$0"'
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

SESSION_VAR = "AMIC_SESSION"
"""Every command amic runs carries ``AMIC_SESSION=<token>`` in its environment, so that an
interrupted build can find and stop it: closing an SSH channel sends no signal to a
command without a terminal, and an orphaned INIT would keep the host's runner lock."""



class SshConnection(Machine):
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
        self.base_env: dict[str, str] = {}
        """Environment every command gets, under ``run(env=)`` (the ssh target's install
        policy)."""

    # Machine protocol ---------------------------------------------------------------
    def run(self, command: str, *, env: Mapping[str, str] | None = None,
            on_output: OutputCallback | None = None, timeout: float | None = None) -> int:
        """Run ``sh -c command`` as root; return its exit status (255: killed by a signal).

        Raises SshError when the connection is lost, TimeoutError after ``timeout``
        seconds (the channel is closed; the remote command gets SIGPIPE on its next
        output)."""
        token = secrets.token_hex(8)
        stdin = env_script({**self.base_env, **(env or {}), SESSION_VAR: token})
        try:
            return self._exec(self.remote_command(command), stdin, on_output, timeout)
        except (KeyboardInterrupt, TimeoutError):
            self.stop_remote(token)
            raise

    def stop_remote(self, token: str) -> None:
        """Stop what a command started with ``token`` left running (best effort, bounded)."""
        if not self.active:
            return
        with contextlib.suppress(Exception):
            self._exec(self.remote_command(script(__package__, "stop-session.sh")),
                       env_script({"AMIC_STOP_TOKEN": token}), None, 15)

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
        lines: list[str] = []
        rc = self.run(script(__package__, "install-upload.sh"),
                      env={"AMIC_UPLOAD_FILE": tmp, "AMIC_UPLOAD_DIR": tmpdir,
                           "AMIC_UPLOAD_PART": f"{remote}.amic-{token}",
                           "AMIC_UPLOAD_DEST": remote, "AMIC_UPLOAD_MODE": f"{mode:o}"},
                      on_output=lines.append, timeout=600)
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


def env_script(env: Mapping[str, str] | None) -> str:
    """``export NAME='value'`` lines for the wrapper's stdin; BuildError for a name the
    shell could not take (it would break out of the script)."""
    lines = []
    for name, value in (env or {}).items():
        if not _ENV_NAME.match(name):
            raise BuildError(f"environment variable name {name!r} is not a valid shell name")
        lines.append(f"export {name}={shlex.quote(str(value))}\n")
    return "".join(lines)

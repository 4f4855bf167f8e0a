"""What goes wrong talking SSH, as one tree under :class:`SshError` (a BuildError).

:class:`Unreachable` means "not up yet" and is what ``wait_for_ssh`` retries;
the others are final.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from amic.errors import BuildError

if TYPE_CHECKING:
    import paramiko


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

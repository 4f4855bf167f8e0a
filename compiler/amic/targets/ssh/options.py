"""What ``--target ssh://user@host[:port]`` can be told: :class:`SshOptions` and its table.

:data:`SSH_OPTIONS` is the only list of the ssh flags (``amic.cli.ssh`` adds it
to ``amic build``); :func:`options_from_values` turns what was given back into
options. The ec2 target's ``--ssh-jump-host``/``--ssh-jump-key`` are honoured too:
``amic build`` has both tables, and a bastion is a bastion.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from amic.targets import Option, given

TITLE = "ssh target (--target ssh://user@host[:port]; docs/ssh.md)"

SSH_OPTIONS: tuple[Option, ...] = (
    Option(["--ssh-key"], "ssh_key", TITLE,
           "private key to log in with (default: the SSH agent, then ~/.ssh/id_*)",
           metavar="FILE", field="key_file"),
    Option(["--ssh-known-hosts"], "ssh_known_hosts", TITLE,
           "known_hosts file to check the host key against (and where --ssh-accept-new "
           "records it; default: ~/.ssh/known_hosts)", metavar="FILE", field="known_hosts"),
    Option(["--ssh-accept-new"], "ssh_accept_new", TITLE,
           "accept and record the key of a host never seen before; a changed key is still "
           "refused (like StrictHostKeyChecking=accept-new)",
           action="store_true", field="accept_new"),
    Option(["--insecure-accept-any-host-key"], "insecure_accept_any_host_key", TITLE,
           "do not check the host key at all (anyone on the path can impersonate the host)",
           action="store_true", field="insecure"),
    Option(["--ssh-jump"], "ssh_jump", TITLE, "reach the host through this bastion (like ssh -J)",
           metavar="[USER@]HOST[:PORT]", field="jump"),
)
"""The ssh target's own flags (``amic build --target ssh://…``)."""

EXCLUSIVE = ("ssh_accept_new", "insecure_accept_any_host_key")
"""Dests of the host key policies, which exclude each other (one is a usage error)."""

VALUE_NAMES = ("jump_host", "jump_key")
"""Values the target reads that the ec2 table defines (``--ssh-jump-host``/``--ssh-jump-key``)."""


@attrs.frozen
class SshOptions:
    """Everything ``--target ssh://`` can be told (flags: :data:`SSH_OPTIONS`)."""

    key_file: str | None = None
    known_hosts: str | None = None
    accept_new: bool = False
    insecure: bool = False
    """Accept any host key (``--insecure-accept-any-host-key``)."""
    jump: str | None = None
    """``[user@]host[:port]`` of a bastion (``--ssh-jump``, else ``--ssh-jump-host``)."""
    jump_key: str | None = None
    """Private key for the bastion (default: the login key)."""


def options_from_values(values: Mapping[str, object]) -> SshOptions:
    """``SshOptions`` from ``{dest: value}`` (absent or None: the default)."""
    fields = given(values, SSH_OPTIONS)
    if not fields.get("jump") and values.get("jump_host") is not None:
        fields["jump"] = values["jump_host"]
    if values.get("jump_key") is not None:
        fields["jump_key"] = values["jump_key"]
    return SshOptions(**fields)

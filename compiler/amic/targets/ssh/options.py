"""What ``--target ssh://user@host[:port]`` can be told: :class:`SshOptions`.

The flags are :data:`amic.targets.ssh.flags.SSH_OPTIONS`; :func:`options_from_values`
turns what was given back into options. The ec2 target's
``--ssh-jump-host``/``--ssh-jump-key`` are honoured too: ``amic build`` has both
tables, and a bastion is a bastion.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from amic.targets import given
from amic.targets.ssh.flags import SSH_OPTIONS


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
    replace_stage2: bool = False
    """``--ssh-replace-stage2``: replace the host's stage2 even if that stops the UPDATE of
    services it initialised (the runner refuses otherwise: ``contract.INSTALL_POLICY_VAR``)."""


def options_from_values(values: Mapping[str, object]) -> SshOptions:
    """``SshOptions`` from ``{dest: value}`` (absent or None: the default)."""
    fields = given(values, SSH_OPTIONS)
    if not fields.get("jump") and values.get("jump_host") is not None:
        fields["jump"] = values["jump_host"]
    if values.get("jump_key") is not None:
        fields["jump_key"] = values["jump_key"]
    return SshOptions(**fields)

"""The ssh target's option table: every flag of ``--target ssh://user@host[:port]``, as data.

These rows are the only list of the ssh flags: ``amic.cli.ssh`` adds them to
``amic build``, and :func:`amic.targets.ssh.options.options_from_values` turns
what was given back into options. Every ``amic`` start reads this module, so it
imports nothing heavy (the options class is an attrs class, whose creation costs
about a millisecond).
"""

from __future__ import annotations

from amic.targets import Option

TITLE = "ssh target (--target ssh://user@host[:port]; docs/ssh.md)"

SSH_OPTIONS: tuple[Option, ...] = (
    Option(["--ssh-key"], "ssh_key", TITLE,
           "private key to log in with",
           metavar="FILE", field="key_file", unset="the SSH agent, then ~/.ssh/id_*"),
    Option(["--ssh-known-hosts"], "ssh_known_hosts", TITLE,
           "known_hosts file to check the host key against (and where --ssh-accept-new "
           "records it)", metavar="FILE", field="known_hosts", unset="~/.ssh/known_hosts"),
    Option(["--ssh-accept-new"], "ssh_accept_new", TITLE,
           "accept and record the key of a host never seen before; a changed key is still "
           "refused (like StrictHostKeyChecking=accept-new)",
           action="store_true", field="accept_new"),
    Option(["--insecure-accept-any-host-key"], "insecure_accept_any_host_key", TITLE,
           "do not check the host key at all (anyone on the path can impersonate the host)",
           action="store_true", field="insecure"),
    Option(["--ssh-jump"], "ssh_jump", TITLE, "reach the host through this bastion (like ssh -J)",
           metavar="[USER@]HOST[:PORT]", field="jump"),
    Option(["--ssh-replace-stage2"], "ssh_replace_stage2", TITLE,
           "replace the stage2 installed on the host even if it has initialised services this "
           "Amifile lacks (their UPDATE then no longer runs at boot); without it the build "
           "refuses", action="store_true", field="replace_stage2"),
)
"""The ssh target's own flags (``amic build --target ssh://…``)."""

EXCLUSIVE = ("ssh_accept_new", "insecure_accept_any_host_key")
"""Dests of the host key policies, which exclude each other (one is a usage error)."""

VALUE_NAMES = ("jump_host", "jump_key")
"""Values the target reads that the ec2 table defines (``--ssh-jump-host``/``--ssh-jump-key``)."""

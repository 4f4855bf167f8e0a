"""``amic build --target ssh://user@host[:port]`` options (import-light: no paramiko here).

``amic.cli.build`` adds them with :func:`add_ssh_build_options`; the rows are
the target's (:data:`amic.targets.ssh.flags.SSH_OPTIONS`), and the target is
made with ``SshTarget.from_spec(spec, args)`` (amic.targets.get_target). The jump
host options ``--ssh-jump-host``/``--ssh-jump-key`` of the ec2 target are honoured too.
"""

from __future__ import annotations

import argparse

from amic.cli.options import help_string
from amic.targets.ssh.flags import EXCLUSIVE, SSH_OPTIONS, TITLE


def add_ssh_build_options(parser: argparse.ArgumentParser) -> None:
    # Not amic.cli.options.add_option_table: the host key policies must be one
    # mutually exclusive group inside the section, which it cannot express yet.
    section = parser.add_argument_group(TITLE)
    exclusive = section.add_mutually_exclusive_group()
    for row in SSH_OPTIONS:
        kwargs: dict = {"dest": row.dest, "action": row.action, "default": None,
                        "help": help_string(row)}
        if row.metavar is not None:
            kwargs["metavar"] = row.metavar
        (exclusive if row.dest in EXCLUSIVE else section).add_argument(*row.flags, **kwargs)

"""``amic build --target ssh://user@host[:port]`` options (import-light: no paramiko here).

``amic.cli.build`` adds them with :func:`add_ssh_build_options`; the target is made
with ``SshTarget.from_spec(spec, args)`` (amic.targets.get_target). The jump host
options ``--ssh-jump-host``/``--ssh-jump-key`` of the ec2 target are honoured too.
"""

from __future__ import annotations

import argparse


def add_ssh_build_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("ssh target (--target ssh://user@host[:port]; docs/ssh.md)")
    g.add_argument("--ssh-key", metavar="FILE",
                   help="private key to log in with (default: the SSH agent, then ~/.ssh/id_*)")
    g.add_argument("--ssh-known-hosts", metavar="FILE",
                   help="known_hosts file to check the host key against (and where "
                   "--ssh-accept-new records it; default: ~/.ssh/known_hosts)")
    policy = g.add_mutually_exclusive_group()
    policy.add_argument("--ssh-accept-new", action="store_true",
                        help="accept and record the key of a host never seen before; a changed "
                        "key is still refused (like StrictHostKeyChecking=accept-new)")
    policy.add_argument("--insecure-accept-any-host-key", action="store_true",
                        help="do not check the host key at all (anyone on the path can "
                        "impersonate the host)")
    g.add_argument("--ssh-jump", metavar="[USER@]HOST[:PORT]",
                   help="reach the host through this bastion (like ssh -J)")

"""The ``ssh`` target: provision an existing host in place (``--target ssh://user@host[:port]``).

No image is made and nothing is cached on this side (``keeps_images = False``):
the engine uploads the stage2, runs ``amic install``, ``amic init <svc>`` for
each service of the plan and ``amic install-boot-hook`` on the host itself.
Re-running is cheap because the runtime on the host skips an init whose
content hash it already recorded. When the build succeeds, leaving
:meth:`SshTarget.launch` runs ``amic update`` (every service's UPDATE, as a
boot would), so the host ends up as a machine booted from the image would.

Connecting, agent/keys and sudo: :mod:`amic.targets.ssh.conn`; host keys:
:mod:`amic.targets.ssh.hostkeys`; jump hosts: :mod:`amic.targets.ssh.endpoint`;
running commands and uploads: :mod:`amic.targets.ssh.session`; docs/ssh.md.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping

import attrs

from amic.contract import INSTALL_POLICY_VAR, MARK_VAR, RUNNER, TAG_BASE, new_mark, own_prefix
from amic.errors import BuildError, UsageError
from amic.targets import option_values
from amic.targets.base import Image, Machine, Target
from amic.targets.ssh.conn import wait_for_ssh
from amic.targets.ssh.endpoint import Endpoint, parse_jump, ssh_command
from amic.targets.ssh.hostkeys import policy_from_options
from amic.targets.ssh.flags import SSH_OPTIONS, VALUE_NAMES
from amic.targets.ssh.options import options_from_values
from amic.targets.ssh.session import SshConnection


class SshTarget(Target):
    """An existing host reached over SSH, provisioned in place."""

    name = "ssh"
    keeps_images = False
    default_checkpoint = "none"
    snapshot_seconds = math.inf

    def __init__(self, spec: str = "", *, key_file: str | None = None,
                 known_hosts: str | None = None, accept_new: bool = False,
                 insecure: bool = False, jump: str | None = None, jump_key: str | None = None,
                 wait_timeout: float = 60.0, run_update: bool = True,
                 replace_stage2: bool = False, connect_options: Mapping | None = None) -> None:
        if not spec:
            raise UsageError("--target ssh:// needs a host: --target ssh://user@host[:port]")
        self.endpoint = Endpoint.parse(spec, what="--target ssh://")
        for flag, path in (("--ssh-key", key_file), ("--ssh-jump-key", jump_key)):
            if path and not os.path.isfile(os.path.expanduser(path)):
                raise UsageError(f"{flag} {path}: no such file")
        self.key_file = os.path.expanduser(key_file) if key_file else None
        self.policy = policy_from_options(known_hosts=known_hosts, accept_new=accept_new,
                                          insecure=insecure)
        self.jump = (parse_jump(jump, key_filename=jump_key or self.key_file)
                     if jump else None)
        self.wait_timeout = wait_timeout
        """How long to retry while the host does not answer (a VM still booting)."""
        self.run_update = run_update
        self.replace_stage2 = replace_stage2
        """Replace the host's stage2 even if it has initialised services this one lacks."""
        self.connect_options = dict(connect_options or {})
        """Extra keyword arguments for :func:`amic.targets.ssh.conn.connect` (tests: no agent)."""

    @classmethod
    def from_spec(cls, spec: str, args) -> SshTarget:
        """From ``--target ssh://…`` and the parsed ``amic build`` options (amic.cli.ssh)."""
        values = option_values(args, SSH_OPTIONS, *VALUE_NAMES)
        return cls(spec, **attrs.asdict(options_from_values(values)))

    def describe_host(self) -> str:
        return ssh_command(self.endpoint, key_filename=self.key_file, jump=self.jump,
                           policy=self.policy)

    # Target ------------------------------------------------------------------------
    def resolve_base(self, base_ref: str | None) -> Image:
        # The host is what it is: FROM cannot be checked or applied here.
        return Image(id=f"ssh://{self.endpoint}", tags={TAG_BASE: base_ref or ""})

    def find_image(self, key: str) -> Image | None:
        return None

    @contextlib.contextmanager
    def launch(self, image: Image, *, build_id: str) -> Iterator[Machine]:
        conn = self.connect()
        # In place, a stage2 that lacks a service the host initialised would stop its UPDATE
        # at boot: `amic install` refuses that unless --ssh-replace-stage2 (docs/ssh.md).
        conn.base_env = {INSTALL_POLICY_VAR: "replace" if self.replace_stage2 else "keep"}
        try:
            yield conn
            if self.run_update:
                self.update(conn)
        finally:
            conn.close()

    def snapshot(self, machine: Machine, *, key: str, final: bool,
                 tags: Mapping[str, str]) -> Image:
        raise BuildError("the ssh target provisions a host in place and cannot make images")

    # -------------------------------------------------------------------------------
    def connect(self) -> SshConnection:
        self.log(f"connecting to {self.endpoint}"
                 + (f" through {self.jump}" if self.jump else ""))
        return wait_for_ssh(self.endpoint, key_filename=self.key_file,
                            host_key_policy=self.policy, jump=self.jump,
                            timeout=self.wait_timeout, log=self.log, **self.connect_options)

    def update(self, conn: SshConnection) -> None:
        """``amic update``: every service's UPDATE, as at boot. A failure is a BuildError
        naming ``amic status`` (the runtime keeps going for unrelated services)."""
        self.log("running UPDATE for every service (as at boot)")
        tail: list[str] = []
        mark = new_mark()       # the runner's own lines carry it; a script's output cannot
        own = own_prefix(mark)

        def show(line: str) -> None:
            at = line.find(own)
            for text in ([line] if at < 0 else [line[:at]] if at else []):
                tail.append(text)
                self.log(f"  {text}")
            if at >= 0:     # the runner's own: "<svc>: update: ..."
                tail.append("amic: " + line[at + len(own):])
                self.log(line[at + len(own):])
            del tail[:-20]

        rc = conn.run(f"{RUNNER} update", env={MARK_VAR: mark}, on_output=show)
        if rc != 0:
            raise BuildError(
                f"amic update on {self.endpoint} failed (exit {rc}); see which service with: "
                f"{self.describe_host()} {RUNNER} status\n"
                + "\n".join(f"    {line}" for line in tail[-10:]))

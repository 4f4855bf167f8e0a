"""The build instance as the engine sees it: a machine reached over SSH.

Host keys: the fingerprints the instance's console printed (``hostkeys``), the
user's ``--ssh-host-key-fingerprint`` list, or (asked for) the first key seen,
pinned so that after a stop/start the same key must answer. A layer
checkpoint snapshots the running instance (build keys removed meanwhile, the
SSH session staying open); the final image stops it, and a command after that
starts it again and reconnects.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from amic.contract import RUNNER, STATE_DIR
from amic.errors import BuildError
from amic.targets.base import Machine
from amic.targets.ec2 import hostkeys, resources, waiters
from amic.targets.ec2 import session as aws
from amic.targets.ec2.options import Ec2Options

T = TypeVar("T")
FREEZE_GUARD = f"{STATE_DIR}/stage2/freeze"
FREEZE_TIMEOUT = 60
"""Seconds the guard keeps ``/`` frozen at most when the builder neither lets go nor dies
(CreateSnapshot answers in well under a second; retries take longer)."""
FROZEN = "amic-freeze: frozen"
NOT_FROZEN = "amic-freeze: not frozen: "


class _Thaw(Exception):
    """Leaves the guard's output callback: closing its channel is the thaw request."""


class Ec2Machine(Machine):
    """An instance reached over SSH; reconnects (and starts it again) after a snapshot."""

    def __init__(self, ec2, opts: Ec2Options, log: Callable[[str], None], instance_id: str,
                 user: str, pkey, key_name: str, build_id: str) -> None:
        self.ec2 = ec2
        self.opts = opts
        self.log = log
        self.instance_id = instance_id
        self.user = user
        self.pkey = pkey
        self.key_name = key_name
        self.build_id = build_id
        self.host: str | None = None
        self.described: dict | None = None
        """Its DescribeInstances entry when it last started running (root volume, VPC)."""
        self.port: int = opts.ssh_port
        self.expected_keys: set[str] = set()
        self.keys_source = "expected"
        """Where ``expected_keys`` came from, for a mismatch message."""
        self.conn = None
        self.stopped = False
        self.keep = False
        """Set before leaving ``Ec2Target.launch`` to keep the instance (``amic launch --keep``)."""
        self.key_file: Path | None = None
        self.build_public_key: str | None = None
        """The key pair's public line (cloud-init installs it; the engine has it removed)."""
        self.heartbeat: resources.Heartbeat | None = None
        """Keeps the build's resources marked alive for ``amic gc``; a kept machine's is let go."""
        self.source_image: str | None = None
        """The AMI this instance was launched from."""
        self.root_volume: tuple[str, str] | None = None
        """(volume id, device name) of the root volume, once a layer checkpoint looked it up."""
        self.source_facts: dict[str, str] = {}
        """What a layer snapshot must record to be registered as an AMI later
        (``snapshots.image_facts`` of the AMI this instance was launched from)."""

    # Machine protocol ------------------------------------------------------------
    def run(self, command, *, env=None, on_output=None, timeout=None) -> int:
        doing = f"running a command on {self.instance_id}"
        with self._ssh_errors(doing):
            rc = self.connection().run(command, env=env, on_output=on_output, timeout=timeout)
        if rc == 255:       # killed, or the machine went away under it: say which
            down = self._went_down()
            if down:
                self.disconnect()
                raise BuildError(f"{doing}: the command was cut off{down}")
        return rc

    def put(self, local, remote, *, mode=0o600) -> None:
        with self._ssh_errors(f"uploading {remote} to {self.instance_id}"):
            self.connection().put(local, remote, mode=mode)

    @contextlib.contextmanager
    def _ssh_errors(self, doing: str):
        import paramiko

        from amic.targets.ssh.errors import SshError

        try:
            yield
        except SshError as exc:
            self.disconnect()
            raise BuildError(f"{doing}: {exc}{self._went_down()}") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.disconnect()
            raise BuildError(f"{doing}: SSH failed: {exc or type(exc).__name__}"
                             + self._went_down()) from None

    def _went_down(self) -> str:
        """Why SSH went away when the instance itself did (a command powered it off); ""
        when it still runs or nobody can tell."""
        if self.stopped:
            return ""
        try:
            reply = self.ec2.describe_instances(InstanceIds=[self.instance_id])
            state = reply["Reservations"][0]["Instances"][0]["State"]["Name"]
        except Exception:  # noqa: BLE001 - the SSH error is the one to report
            return ""
        if state in ("running", "pending"):
            return ""
        return (f"\n  the instance is {state}: something on it powered it off (an INIT or "
                f"UPDATE running poweroff, halt or shutdown), and --shutdown-behavior "
                f"{self.opts.shutdown_behavior} " + ("stopped it; a build cannot go on on a "
                                                     "stopped instance" if
                                                     self.opts.shutdown_behavior == "stop"
                                                     else "terminated it"))

    def describe(self) -> str:
        where = f"{self.user}@{self.host or '?'}"
        key = f"-i {self.key_file} " if self.key_file else ""
        port = f"-p {self.port} " if self.port != 22 else ""
        jump = f"-J {self.opts.jump_host} " if self.opts.jump_host else ""
        return (f"instance {self.instance_id} ({self.ec2.meta.region_name}); reach it with: "
                f"ssh {key}{port}{jump}{where}\n"
                f"remove it when done: amic gc --build-id {self.build_id} --force")

    # lifecycle -------------------------------------------------------------------
    def wait_running(self) -> None:
        self.host, self.described = resources.wait_running(self.ec2, self.instance_id,
                                                           self.opts)

    def stop(self) -> None:
        """Stop the instance (for a consistent image); the next command starts it again."""
        self.disconnect()
        if self.stopped:
            return
        iid = self.instance_id
        self.log(f"stopping {iid} for a consistent image")
        aws.call(f"stopping {iid}", self.ec2.stop_instances, InstanceIds=[iid])
        self.stopped = True
        waiters.instance_state(self.ec2, [iid], "stopped", timeout=self.opts.instance_timeout,
                               poll_interval=self.opts.poll_interval,
                               doing=f"waiting for {iid} to stop")

    def without_build_keys(self, doing: str) -> None:
        """``sync`` with every build key removed from the disk (before a live snapshot)."""
        rc = self.run(f"{RUNNER} build-key remove && sync")
        if rc != 0:
            raise BuildError(f"{doing}: `amic build-key remove` failed on {self.instance_id} "
                             f"(exit {rc})")

    def while_frozen(self, fn: Callable[[], T], *,
                     timeout: int = FREEZE_TIMEOUT) -> tuple[T, str | None]:
        """``fn()`` with the root filesystem frozen; (its result, None), or (its result, why
        it ran unfrozen) where the machine's guard refused or failed (after ``sync`` only).

        The guard (``runtime/freeze``, shipped in the stage2) freezes ``/``, says so and
        holds; ``fn`` runs inside the output callback, and leaving it (returning or raising)
        closes the guard's SSH channel: the guard's next write fails and it thaws at once.
        If this process dies, the channel closes the same way; if the connection hangs,
        the guard's watchdog thaws after ``timeout`` seconds. While ``/`` is frozen no new
        SSH session or sudo is needed (both would log to the frozen disk).
        """
        said: list[str] = []
        done: list[T] = []

        def watch(line: str) -> None:
            said.append(line)
            if line == FROZEN and not done:
                t0 = time.monotonic()
                done.append(fn())
                held = time.monotonic() - t0
                if held > timeout:
                    self.log(f"warning: / was frozen for {held:.0f}s, longer than the guard's "
                             f"{timeout}s: the snapshot may be of the thawed disk")
                raise _Thaw

        try:
            rc = self.run(f"sh {FREEZE_GUARD} hold {int(timeout)}", on_output=watch,
                          timeout=timeout + 120)
        except _Thaw:
            return done[0], None
        refused = [line[len(NOT_FROZEN):] for line in said if line.startswith(NOT_FROZEN)]
        why = refused[0] if refused else f"the freeze guard exited {rc}: {' / '.join(said[-2:])}"
        return fn(), why

    def restore_build_key(self, doing: str) -> None:
        """Authorise the builder's key again (the SSH session stayed open meanwhile)."""
        if not self.build_public_key:
            return
        key = " ".join(self.build_public_key.split()[:2])
        rc = self.run(f"{RUNNER} build-key add {shlex.quote(self.user)} {shlex.quote(key)}")
        if rc != 0:
            raise BuildError(f"{doing}: `amic build-key add` failed on {self.instance_id} "
                             f"(exit {rc})")

    def _start(self) -> None:
        aws.call(f"starting {self.instance_id}", self.ec2.start_instances,
                 InstanceIds=[self.instance_id])
        self.stopped = False
        self.wait_running()

    def connection(self):
        """The SSH connection, made (and the instance started) when there is none."""
        if self.stopped:
            self._start()
        if self.conn is None:
            self.conn = self._connect()
        return self.conn

    def disconnect(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # host keys and SSH -------------------------------------------------------------
    def prepare_host_keys(self) -> None:
        """Decide which host keys the SSH connection accepts."""
        from amic.targets.ssh.hostkeys import normalize_fingerprint

        opts = self.opts
        if opts.host_key_fingerprints:
            self.expected_keys = {normalize_fingerprint(f) for f in opts.host_key_fingerprints}
            self.keys_source = "given with --ssh-host-key-fingerprint"
            return
        if opts.trust_on_first_use:
            return
        fps = hostkeys.console_fingerprints(self.ec2, self.instance_id,
                                            timeout=opts.console_timeout,
                                            poll_interval=opts.poll_interval)
        self.expected_keys = {f.fingerprint for f in fps}
        self.keys_source = f"printed on the console of {self.instance_id}"
        self.log(f"host keys from the console of {self.instance_id}: "
                 + ", ".join(f"{f.kind} {f.fingerprint}" for f in fps))

    def _connect(self):
        """An ``amic.targets.ssh`` connection; host keys from the console, the user's list, or TOFU."""
        from amic.targets.ssh.conn import wait_for_ssh
        from amic.targets.ssh.endpoint import Endpoint, parse_jump
        from amic.targets.ssh.errors import AuthFailed, HostKeyMismatch, Unreachable
        from amic.targets.ssh.hostkeys import (ExpectedHostKeys, HostKeyPolicy, TrustOnFirstUse,
                                               describe_key, fingerprints)

        opts = self.opts
        if self.host is None:
            self.host = resources.instance_address(self.ec2, self.instance_id, opts)
        if self.expected_keys:
            policy: HostKeyPolicy = ExpectedHostKeys(
                self.expected_keys, source=f"the host keys {self.keys_source}")
        else:
            policy = TrustOnFirstUse()   # no file: nothing read or written; pinned below
        jump = (parse_jump(opts.jump_host, key_filename=opts.jump_key)
                if opts.jump_host else None)
        endpoint = Endpoint(self.host, self.port, self.user)
        self.log(f"waiting for SSH on {endpoint}")
        try:
            conn = wait_for_ssh(
                endpoint, pkey=self.pkey, host_key_policy=policy, jump=jump,
                timeout=opts.ssh_timeout, sudo=self.user != "root", retry_auth=True,
                # only the build's own key for the instance; the agent only for a bastion
                allow_agent=bool(jump) and not opts.jump_key, look_for_keys=False,
                log=self.log)
        except HostKeyMismatch as exc:
            raise BuildError(f"refusing {self.instance_id}: {exc} (the console of the instance "
                             "printed other host keys; someone may be in the middle)") from None
        except (Unreachable, AuthFailed) as exc:
            raise BuildError(f"instance {self.instance_id}: no SSH on {endpoint} after "
                             f"{opts.ssh_timeout:.0f}s: {exc}") from None
        if not self.expected_keys:
            # pin it: after a stop/start the same key must answer
            self.expected_keys = fingerprints(conn.host_key)
            self.keys_source = "pinned on first use"
            self.log(f"trusting host key {describe_key(conn.host_key)} on first use")
        return conn

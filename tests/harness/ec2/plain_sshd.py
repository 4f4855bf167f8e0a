"""One real sshd for every instance of the fake EC2, whose sessions run a fixed harmless
command (``StandIn.plain``: host key and lifecycle tests, no roots).

Part of the fake EC2 ``tests/harness/ec2/`` (the package doc is the whole picture)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.harness.ec2.api import free_port, wait_port


class PlainSshd:
    """A real sshd on loopback whose every session runs a fixed harmless command.

    Enough for what happens before a build runs anything: host key checks,
    authentication with the build's key, backoff. Sessions never touch the
    test machine's files (``ForceCommand`` prints a word and exits).
    """

    def __init__(self, workdir: Path) -> None:
        import paramiko

        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        key = self.dir / "host_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        self.host_key = paramiko.Ed25519Key.from_private_key_file(str(key))
        self.auth = self.dir / "authorized_keys"
        self.auth.write_text("")
        self.port = free_port()
        cfg = self.dir / "sshd_config"
        cfg.write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {key}
PidFile {self.dir}/sshd.pid
AuthorizedKeysFile {self.auth}
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
ForceCommand echo stand-in
""")
        os.chmod(key, 0o600)
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def authorize(self, pubkey: str) -> None:
        with open(self.auth, "a") as fh:
            fh.write(pubkey + "\n")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

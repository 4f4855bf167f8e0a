"""``Ec2Machine.while_frozen`` over real SSH to a machine whose root is a loop-mounted ext4.

The machine of ``tests/harness/freeze_machine.py`` (an ext4 image made here, the root
of PID 1 of private mount and PID namespaces) runs a real sshd on loopback and a writer.
The builder's side is amic's own code: an ``SshConnection`` (paramiko) and
``Ec2Machine.while_frozen``, whose callback stands in for CreateSnapshot by copying the
image file while ``/`` is frozen. The copy is fsck-clean, the writer is held while the
call runs and resumes when it returns; and when the builder process is killed (-9)
while ``/`` is frozen, its TCP connection closes, sshd closes the channel and the guard
thaws at once.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from tests.harness.ec2.api import free_port
from tests.harness.freeze_machine import COMMON, Machine

pytestmark = pytest.mark.root

SSHD = "/usr/sbin/sshd"
SERVE = COMMON + r"""
mkdir -p /etc/ssh /root/.ssh /run/sshd
echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd
echo 'sshd:x:100:65534::/run/sshd:/usr/sbin/nologin' >> /etc/passwd
echo 'root:x:0:' > /etc/group
cp /outside/host_key /etc/ssh/host_key && chmod 600 /etc/ssh/host_key
cp /outside/authorized_keys /root/.ssh/authorized_keys
cp /outside/sshd_config /etc/ssh/sshd_config
/usr/sbin/sshd -D -e -f /etc/ssh/sshd_config 2>/outside/sshd.log &
S=$!
while [ ! -e /outside/stop ]; do sleep 0.2; done
kill "$S" "$W"
"""

CONFIG = """\
ListenAddress 127.0.0.1
Port {port}
HostKey /etc/ssh/host_key
PidFile none
AuthorizedKeysFile /root/.ssh/authorized_keys
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
PrintMotd no
PrintLastLog no
LogLevel ERROR
"""

# The builder as its own process (killed -9 in a test): connects, holds / frozen.
BUILDER = """
import sys, time
import paramiko
from amic.targets.ec2.machine import Ec2Machine
from amic.targets.ec2.options import Ec2Options
from amic.targets.ssh.conn import connect
from amic.targets.ssh.hostkeys import TrustOnFirstUse

pkey = paramiko.Ed25519Key.from_private_key_file(sys.argv[2])
m = Ec2Machine(None, Ec2Options(), print, "i-loop", "root", pkey, "k", "b-freeze")
m.conn = connect("127.0.0.1", int(sys.argv[1]), "root", pkey=pkey,
                 host_key_policy=TrustOnFirstUse(), allow_agent=False, look_for_keys=False)
m.while_frozen(lambda: (print("frozen", flush=True), time.sleep(600)))
"""


class Served:
    def __init__(self, machine: Machine, proc: subprocess.Popen, port: int, key: Path) -> None:
        self.machine, self.proc, self.port, self.key = machine, proc, port, key
        self.pkey = paramiko.Ed25519Key.from_private_key_file(str(key))

    def ec2_machine(self, log):
        from amic.targets.ec2.machine import Ec2Machine
        from amic.targets.ec2.options import Ec2Options
        from amic.targets.ssh.conn import connect
        from amic.targets.ssh.hostkeys import TrustOnFirstUse

        m = Ec2Machine(None, Ec2Options(), log, "i-loop", "root", self.pkey, "k", "b-freeze")
        m.conn = connect("127.0.0.1", self.port, "root", pkey=self.pkey,
                         host_key_policy=TrustOnFirstUse(), allow_agent=False,
                         look_for_keys=False)
        return m

    def moves_after(self, count: int, limit: float = 30) -> float:
        t0 = time.monotonic()
        while self.machine.progress() == count and time.monotonic() - t0 < limit:
            time.sleep(0.02)
        return time.monotonic() - t0


@pytest.fixture
def served(tmp_path):
    if not shutil.which("ssh-keygen") or not Path(SSHD).exists():
        pytest.fail("openssh-server and ssh-keygen are needed (apt-get install openssh-server)")
    machine = Machine(tmp_path)
    out = tmp_path / "out"
    port = free_port()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(out / "host_key")],
                   check=True)
    key = tmp_path / "client_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    shutil.copy(f"{key}.pub", out / "authorized_keys")
    (out / "sshd_config").write_text(CONFIG.format(port=port))
    proc = subprocess.Popen(machine.argv(SERVE), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (
                    (out / "sshd.log").read_text() if (out / "sshd.log").exists() else "no sshd")
                time.sleep(0.1)
        yield Served(machine, proc, port, key)
    finally:
        (out / "stop").touch()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_while_frozen_over_ssh_copy_is_clean_and_thaws_on_return(served):
    log: list[str] = []
    m = served.ec2_machine(log.append)
    image = served.machine.image
    copy = image.with_name("frozen.img")

    def snapshot():     # what CreateSnapshot is to EBS: the point in time, taken now
        time.sleep(0.3)
        a = served.machine.progress()
        time.sleep(1.0)
        b = served.machine.progress()
        shutil.copy(image, copy)
        return a, b

    t0 = time.monotonic()
    (a, b), unfrozen = m.while_frozen(snapshot)
    returned = time.monotonic()
    assert unfrozen is None, unfrozen
    assert a == b and a > 0, (a, b)             # the writer was held
    resumed = served.moves_after(b)
    assert resumed < 2, resumed                 # thawed when the channel closed
    clean, said = served.machine.fsck("frozen.img")
    assert clean, said
    # the connection still works for the next command (the build key goes back on)
    lines: list[str] = []
    assert m.run("cat /data/last", on_output=lines.append) == 0 and int(lines[0]) > b
    print(f"\nfrozen for {returned - t0:.2f}s; writer resumed {resumed:.2f}s after the return")


def test_builder_killed_while_frozen_thaws_at_once(served):
    builder = subprocess.Popen([sys.executable, "-c", BUILDER, str(served.port), str(served.key)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert builder.stdout.readline().strip() == "frozen", builder.stderr.read()
        time.sleep(0.3)
        a = served.machine.progress()
        time.sleep(1.0)
        assert served.machine.progress() == a, "the writer went on while / was frozen"
        builder.kill()
        killed = time.monotonic()
        builder.wait()
        resumed = served.moves_after(a)
        assert served.machine.progress() != a, "still frozen after the builder died"
        assert resumed < 3, resumed
        print(f"\nbuilder killed -9: writer resumed {time.monotonic() - killed:.2f}s later")
    finally:
        if builder.poll() is None:
            builder.kill()
            builder.wait()

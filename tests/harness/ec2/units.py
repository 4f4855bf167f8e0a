"""amic's boot units run as systemd would run them inside an instance's root, and the
first-boot process that holds dpkg's locks (what unattended-upgrades does on EC2).

Part of the fake EC2 ``tests/harness/ec2/`` (the package doc is the whole picture).
``server`` is the instance's ``SshdRoot``; what cannot be done is appended to ``problems``
(the stand-in's list, which tests expect empty)."""

from __future__ import annotations

import io
import shlex
import threading
import time

from tests.harness.ec2.boot import CONDITIONS, STAGE2_BOOT, WANTS, Instance, Unit


def early_boot(inst: Instance, server, problems: list[str]) -> None:
    """The root is up, sshd not yet: find amic's enabled units, run those ordered before
    sshd, and serve the root's own host key if it has one now."""
    inst.units = enabled_units(server)
    run_units(inst, server, [u for u in inst.units if u.early], problems, last=False)
    found = server.run("cat /etc/ssh/ssh_host_ed25519_key 2>/dev/null")
    if found.returncode == 0 and "PRIVATE KEY" in found.stdout:
        import paramiko

        inst.host_key = server.host_key = paramiko.Ed25519Key.from_private_key(
            io.StringIO(found.stdout))


def late_boot(inst: Instance, server, problems: list[str]) -> None:
    """The units ordered after network-online, i.e. once sshd (the network, as far as we
    go) is up, in a thread; ``inst.booted`` is set when they are done."""
    late = [u for u in inst.units if not u.early]
    if late:
        threading.Thread(target=run_units, args=(inst, server, late, problems),
                         daemon=True).start()
    else:
        inst.booted.set()


def enabled_units(server) -> list[Unit]:
    """The units the stage2 ships that are enabled (linked into multi-user.target.wants),
    read from the root's own unit files."""
    listing = server.run(f"for u in {STAGE2_BOOT}/*.service; do n=${{u##*/}}; "
                         f"[ -e {WANTS}/\"$n\" ] && echo \"$n\"; done; :").stdout.split()
    units = []
    for name in listing:
        text = server.run(f"cat {WANTS}/{shlex.quote(name)}")
        if text.returncode == 0:
            units.append(Unit(name, text.stdout))
    return units


def run_units(inst: Instance, server, units: list[Unit], problems: list[str],
              last: bool = True) -> None:
    try:
        for unit in units:
            run_unit(inst, server, unit)
    except Exception as exc:  # noqa: BLE001 - e.g. the instance was stopped under the unit
        inst.console.append(f"stand-in: {exc}")
        problems.append(f"{inst.id}: {exc}")
    finally:
        if last:
            inst.booted.set()


def run_unit(inst: Instance, server, unit: Unit) -> None:
    unknown = [k for k in unit.conf if k.startswith(("Unit.Condition", "Unit.Assert"))
               and k.split(".", 1)[1] not in CONDITIONS]
    if unknown:
        raise RuntimeError(f"{unit.name}: the stand-in cannot evaluate {', '.join(unknown)}")
    for kind, shell in CONDITIONS.items():
        for cond in unit.conf.get(f"Unit.{kind}", []):
            negate, path = cond.startswith("!"), cond.lstrip("!")
            ok = server.run(shell.format(p=shlex.quote(path))).returncode == 0
            if ok == negate:
                inst.console.append(f"stand-in: {unit.name}: skipped ({kind}={cond})")
                return
    env = {"AMIC_EC2": "1", "AMIC_IMDS_URL": inst.imds.url if inst.imds else ""}
    for line in unit.conf.get("Service.Environment", []):
        for word in shlex.split(line):
            key, _, value = word.partition("=")
            env[key] = value
    for command in unit.conf.get("Service.ExecStart", []):
        ignore = command.startswith("-")
        argv = shlex.split(command.lstrip("-@:+!"))
        proc = server.run("cd / && exec " + shlex.join(argv), env=env, timeout=None)
        inst.console.extend(proc.stdout.splitlines())
        unit.result = proc.returncode
        if proc.returncode != 0 and not ignore:
            return


def hold_dpkg_lock(inst: Instance, server, seconds: float, problems: list[str],
                   holders: list[str]) -> None:
    """A first-boot process holding dpkg's fcntl locks (``lock-frontend``, then ``lock``,
    as apt takes them) for ``seconds``, in the background inside the root; ``inst.id``
    joins ``holders`` once the lock is held."""
    script = (DPKG_LOCK_HOLDER % {"seconds": seconds}).replace("'", "")
    proc = server.run(f"perl -e '{script}' </dev/null >/dev/null 2>&1 & echo started")
    if "started" not in proc.stdout:
        problems.append(f"{inst.id}: the dpkg lock holder did not start: {proc.stdout}")
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:     # held before anyone can log in
        if server.run(f"perl -e '{DPKG_LOCK_PROBE}'").returncode == 0:
            holders.append(inst.id)
            return
        time.sleep(0.05)
    problems.append(f"{inst.id}: the dpkg lock holder took no lock")


DPKG_LOCK_HOLDER = """
use Fcntl;
$0 = "unattended-upgr";
my @held;
for my $path ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock") {
    sysopen(my $fh, $path, O_RDWR | O_CREAT, 0640) or die "$path: $!";
    my $lock = pack("s s x4 q q l x4", F_WRLCK, 0, 0, 0, 0);
    fcntl($fh, F_SETLKW, $lock) or die "$path: $!";
    push @held, $fh;
}
sleep %(seconds)s;
"""
"""perl (Essential in Debian, so in every base) taking apt's locks as apt does: fcntl write
locks on the whole file (struct flock of x86_64 and aarch64 Linux)."""
DPKG_LOCK_PROBE = ("use Fcntl; sysopen(my $fh, q(/var/lib/dpkg/lock-frontend), O_RDWR) or exit 1;"
                   " my $l = pack(q(s s x4 q q l x4), F_WRLCK, 0, 0, 0, 0);"
                   " fcntl($fh, F_GETLK, $l) or exit 1; exit((unpack(q(s), $l))[0] == F_UNLCK)")
"""Exit 0 when another process holds dpkg's frontend lock."""

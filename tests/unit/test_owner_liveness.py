"""The owner of a build's resources: the liveness decision (pure) and the /proc reader (real
processes of this machine: running, killed and reaped, a zombie, a reused pid)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from amic.targets.ec2 import owner

HERE = owner.Owner("m1", "boot-1", "4026531836", 100, 5000, "builder")


def seen(state: str, start: int | None = None) -> owner.Seen:
    return owner.Seen(state, start)


@pytest.mark.parametrize("theirs, observed, expected", [
    (HERE, seen("running", 5000), True),
    (HERE, seen("gone"), False),
    (HERE, seen("running", 5001), False),          # same pid, another process: pid reused
    (HERE, seen("unknown"), None),                 # /proc would not say: not taken for dead
    (owner.Owner("m1", "boot-2", "4026531836", 100, 5000), seen("gone"), None),   # rebooted
    (owner.Owner("m2", "boot-1", "4026531836", 100, 5000), seen("gone"), None),   # other host
    (owner.Owner("m1", "boot-1", "4026532000", 100, 5000), seen("gone"), None),   # container
])
def test_liveness(theirs, observed, expected):
    alive, why = owner.liveness(theirs, HERE, observed)
    assert alive is expected
    assert bool(why) == (expected is not None)


def test_liveness_says_why():
    assert owner.liveness(HERE, HERE, seen("gone"))[1] == "owner pid 100 on this host is gone"
    assert "another process now" in owner.liveness(HERE, HERE, seen("running", 7))[1]


def test_tag_round_trip_and_hostile_tags():
    assert owner.parse(HERE.tag()) == HERE
    for bad in (None, "", "pid=1", "machine=m boot=b pidns=1 pid=x start=1",
                "machine=m boot=b pidns=1 pid=0 start=1",      # kill(0, 0) is a process group
                "machine=m boot=b pidns=1 pid=-5 start=1", "machine=m boot=- pidns=1 pid=5 start=1",
                "garbage " * 40):
        assert owner.parse(bad) is None, bad
    assert len(owner.Owner("m" * 200, "b" * 200, "1", 1, 1).tag()) <= 256


def test_stat_fields_survive_odd_command_names():
    text = "4242 (a) b) (c) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 0 0"
    assert owner.stat_fields(text) == ("S", 98765)
    assert owner.stat_fields("4242 (x) S 1 2") is None
    assert owner.stat_fields("") is None


def test_current_is_this_process():
    me = owner.current()
    assert me is not None and me.pid == os.getpid()
    assert owner.look(os.getpid()) == owner.Seen("running", me.start)
    assert owner.on_this_host({owner.TAG_OWNER: me.tag()})[0] is True
    assert owner.parse(owner.tags()[owner.TAG_OWNER]) == me


def test_look_at_real_processes():
    me = owner.current()
    proc = subprocess.Popen(["sleep", "60"])
    try:
        live = owner.look(proc.pid)
        assert live.state == "running" and live.start is not None
        tag = {owner.TAG_OWNER: owner.Owner(me.machine, me.boot, me.pidns, proc.pid,
                                            live.start).tag()}
        assert owner.on_this_host(tag)[0] is True
        # the same pid with another start time: the owner died and the pid went to this one
        reused = {owner.TAG_OWNER: owner.Owner(me.machine, me.boot, me.pidns, proc.pid,
                                               live.start - 1).tag()}
        alive, why = owner.on_this_host(reused)
        assert alive is False and "another process now" in why
        # killed and not reaped yet: a zombie is dead
        proc.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while owner.look(proc.pid).state != "gone" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert owner.look(proc.pid) == owner.Seen("gone")
        assert os.path.exists(f"/proc/{proc.pid}")      # it is a zombie, still listed
    finally:
        proc.kill()
        proc.wait()
    assert owner.look(proc.pid) == owner.Seen("gone")
    alive, why = owner.on_this_host(tag)
    assert alive is False and why == f"owner pid {proc.pid} on this host is gone"
    # another boot (or host): nothing can be known from here
    other = owner.Owner(me.machine, "another-boot", me.pidns, proc.pid, live.start)
    assert owner.on_this_host({owner.TAG_OWNER: other.tag()}) == (None, "")

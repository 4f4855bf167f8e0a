"""amic through the strict stand-in: the real CLI against EC2 as strict as EC2 documents it.

The stand-in (``tests/harness/ec2_strict.py``) throttles per action, hides new resources
from tag-filtered Describe* calls for a while, refuses DeleteSnapshot just after
DeregisterImage and quick CreateSnapshots of one volume, refuses the security-group swap
of a multi-ENI instance, and a first-boot process holds dpkg's lock. Each test here runs
``amic`` as a subprocess through all of it, and checks that the build succeeds, cleans up,
and that the strictness actually bit (the stand-in counts what it refused).

The Describe* calls a build makes are counted by the proxy and reported in docs/ec2.md.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.harness.e2e_builds import E2E, Build
from tests.harness.ec2 import amic_exe, assert_clean, standin_ec2
from tests.harness.ec2.strict import Strictness

pytestmark = [pytest.mark.slow, pytest.mark.root]

FIVE = """\
FROM debian:12
SERVICE one
    # apt without waiting: fails at once while the first boot holds dpkg's lock
    INIT apt-get -q -y -o DPkg::Lock::Timeout=0 install > /dev/null && echo one > /etc/amic-one
SERVICE two
    REQUIRES one
    PACKAGES hello
    INIT hello > /etc/amic-two
SERVICE three
    REQUIRES two
    INIT echo three > /etc/amic-three
SERVICE four
    REQUIRES three
    INIT echo four > /etc/amic-four
SERVICE five
    REQUIRES four
    INIT echo five > /etc/amic-five
"""

HARSH = Strictness(delay=2.0, bucket_scale=0.03, refill_scale=0.25, in_use_seconds=2.0,
                   snapshot_interval=3.0, multi_eni=True, dpkg_lock_seconds=20.0)
"""Tighter than the suite's default: Describe* buckets of 3 tokens refilled at 5/s, mutating
ones of 2 at 1.25/s; every instance multi-ENI; dpkg locked for the first 20 s of a boot."""

DESCRIBE = ("DescribeImages", "DescribeSnapshots", "DescribeInstances", "DescribeKeyPairs",
            "DescribeSecurityGroups", "DescribeVpcs", "DescribeSubnets", "DescribeVolumes")


def describes(calls: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in sorted(calls.items()) if k.startswith("Describe")}


class Strict(E2E):
    def __init__(self, fake, project: Path, home: Path) -> None:
        super().__init__(fake, project)
        self.home = home
        self.write(FIVE)

    def env(self) -> dict[str, str]:
        return {**super().env(), "XDG_CACHE_HOME": str(self.home / "xdg"),
                "AMIC_CACHE_DIR": str(self.home / "cache")}

    def argv(self, *extra: str) -> list[str]:
        return [amic_exe(), "build", "--target", "ec2", *self.fake.ssh_args(), "--ssh-user",
                "root", "--poll-interval", "0.05", "--ssh-timeout", "60",
                "--console-timeout", "30", *extra, "Amifile"]


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    with standin_ec2(tmp_path_factory, strict=True) as fake:
        yield Strict(fake, tmp_path_factory.mktemp("project"), tmp_path_factory.mktemp("home"))


def test_five_service_build_survives_and_counts_its_describes(strict):
    fake = strict.fake
    fake.strict = None          # HARSH instead of the suite's strictness, not on top of it
    fake.reset()
    fake.make_strict(HARSH)
    strict.base_ami = fake.register_debian12()
    b = strict.build("--checkpoint", "all")
    assert b.rc == 0, b
    assert b.layers() == dict.fromkeys(["one", "two", "three", "four", "five"], "RUN"), b
    seen = fake.strict.summary()
    print("five-service full build, --checkpoint all:", describes(b.calls), seen)
    # the strictness bit: throttled, tag filters hid new things, the quick layer snapshots
    # were refused, the group swap was refused, apt waited for the first-boot dpkg lock
    assert seen["throttled"] > 0 and seen["per_volume_rate"] > 0 and seen["multi_eni"] > 0, seen
    assert fake.standin.dpkg_holders, fake.standin.problems
    assert "to let go of dpkg's lock" in b.stderr, b       # the runtime waited for it
    # answered Describe* calls (a throttled attempt is not an answer): 51 before the build
    # asked for all its keys at once, 24 here (18 with one interface) before the leases were
    # read back together and the waits' answers reused, 10 now (docs/ec2.md, "API calls")
    answered = {k: v - fake.strict.throttle.throttled[k] for k, v in describes(b.calls).items()}
    print("answered Describe* per kind:", answered, "total", sum(answered.values()))
    assert sum(answered.values()) <= 10, answered
    assert answered.get("DescribeKeyPairs") == 1, answered      # six leases, one read-back
    assert answered.get("DescribeSnapshots") == 1, answered


PROJECT = """\
FROM debian:12
LABEL project={n}
SERVICE base{n}
    INIT echo base {n} > /etc/amic-base
SERVICE app{n}
    REQUIRES base{n}
    INIT echo app {n} > /etc/amic-app
"""
CONCURRENT = int(os.environ.get("AMIC_TEST_CONCURRENT_BUILDS") or 20)


def test_twenty_projects_build_at_once_through_the_throttle(strict, tmp_path):
    """20 builds of different projects at once, one moto, the suite's default strictness:
    every one succeeds, each on its own instance (reached at its own loopback address)."""
    fake = strict.fake
    fake.strict = None
    fake.reset()
    fake.make_strict(Strictness(dpkg_lock_seconds=0))   # no PACKAGES here: apt is not the point
    fake.standin.own_addresses = True
    fake.register_debian12()
    procs = []
    for n in range(CONCURRENT):
        project = tmp_path / f"p{n}"
        project.mkdir()
        (project / "Amifile").write_text(PROJECT.format(n=n))
        env = {**strict.env(), "XDG_CACHE_HOME": str(project / "xdg"),
               "AMIC_CACHE_DIR": str(project / "cache")}
        argv = [amic_exe(), "build", "--target", "ec2", "--ssh-port",
                str(fake.standin.relay_port), "--ssh-cidr", "127.0.0.1/32", "--ssh-user", "root",
                "--poll-interval", "0.2", "--ssh-timeout", "300", "--console-timeout", "120",
                "Amifile"]
        procs.append(subprocess.Popen(argv, cwd=project, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    t0 = time.monotonic()
    results = [(p.communicate(timeout=900), p.returncode) for p in procs]
    seconds = time.monotonic() - t0
    failed = [(n, rc, err[-2000:]) for n, ((out, err), rc) in enumerate(results) if rc != 0]
    seen = fake.strict.summary()
    calls = describes(dict(fake.proxy.calls))
    print(f"\n{CONCURRENT} concurrent builds: {seconds:.0f}s, {seen}, Describe* {calls} "
          f"total {sum(calls.values())} ({sum(calls.values()) / CONCURRENT:.1f} a build)")
    assert failed == [], failed
    amis = {out.strip().splitlines()[-1] for (out, _), _ in results}
    assert len(amis) == CONCURRENT
    assert len(set(fake.standin.addresses.values())) == CONCURRENT    # each its own instance
    assert seen["throttled"] > 0, seen          # the throttle bit, and every build rode it out
    deadline = time.monotonic() + 30
    while fake.leftovers()["instances"] and time.monotonic() < deadline:
        time.sleep(0.5)                         # shutting-down for a second
    assert_clean(fake)


SILENT = """\
FROM debian:12
SERVICE quiet
    INIT <<~EOF
        sleep {seconds}
        echo woke > /etc/amic-quiet
    EOF
"""
SILENT_SECONDS = 100
"""Over twice the strict relay's idle cut (``Strictness.relay_idle_timeout``, 40 s): only
amic's SSH keepalives keep the session."""


def test_an_init_silent_past_the_idle_cut_passes(strict, tmp_path):
    """The SSH session of an INIT that prints nothing for 100 s stays open through a relay
    that cuts flows idle for 40 s (the relay once dropped it after 5 s of silence)."""
    fake = strict.fake
    fake.strict = None
    fake.reset()
    fake.make_strict()
    fake.register_debian12()
    project = tmp_path / "quiet"
    project.mkdir()
    (project / "Amifile").write_text(SILENT.format(seconds=SILENT_SECONDS))
    t0 = time.monotonic()
    proc = subprocess.run(strict.argv(), cwd=project, env=strict.env(), capture_output=True,
                          text=True, timeout=SILENT_SECONDS + 300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.monotonic() - t0 >= SILENT_SECONDS
    assert "connection lost" not in proc.stderr
    assert 0 < fake.standin.relay_idle_timeout < SILENT_SECONDS / 2
    relays = [fake.standin.relay, *fake.standin._relays.values()]
    assert all(r.idle_timeout == fake.standin.relay_idle_timeout for r in relays)
    assert sum(r.idle_cuts for r in relays) == 0
    assert_clean(fake)

"""The real ``amic build --target ec2`` as a subprocess against the stand-in, for e2e tests.

``E2E`` keeps one project directory and the builds it made (tests/e2e/test_ec2_e2e.py,
test_ec2_team.py); ``Builds`` runs builds in folders of the caller's choice with a
private cache home (test_ec2_identity.py, test_ec2_checkpoint_policy.py).
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import time
from pathlib import Path

from tests.harness.cli import AMIC, run_amic
from tests.harness.ec2 import assert_clean

TOKEN = "tok-5f1b0c2e9d-secret"   # the ARG value; must never land on an instance's disk

AMIFILE = """\
FROM debian:12
ARG DEPLOY_TOKEN
ENV GREETING=hello

SERVICE base
    PACKAGES jq
    INIT <<~EOF
        echo '{"layer": "base"}' | jq -r .layer > /etc/amic-base
    EOF

SERVICE web
    REQUIRES base
    PACKAGES hello
    INIT <<~EOF
        # jq comes from the base layer: cached in an AMI when this one re-runs
        jq -n '"web-v1"' > /etc/amic-web
        hello > /etc/amic-hello
        printf %s "$DEPLOY_TOKEN" | sha256sum | cut -c1-16 > /etc/amic-token
    EOF
    UPDATE echo web-update-v1

SERVICE app
    REQUIRES web
    INIT <<~EOF
        echo "$GREETING app" > /etc/amic-app
    EOF
"""


class E2E:
    """The fake EC2, the project directory, and what the builds so far produced."""

    def __init__(self, fake, project: Path) -> None:
        self.fake = fake
        self.project = project
        self.base_ami = fake.register_debian12()
        self.full: dict | None = None
        self.write(AMIFILE)

    def write(self, text: str) -> None:
        (self.project / "Amifile").write_text(text)

    def argv(self, *extra: str) -> list[str]:
        return [AMIC, "build", "--target", "ec2", *self.fake.ssh_args(), "--ssh-user", "root",
                "--poll-interval", "0.05", "--checkpoint", "all", "--ssh-timeout", "60",
                "--console-timeout", "30", *extra, "Amifile"]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AMIC_"))}
        return {**env, **self.fake.env, "DEPLOY_TOKEN": TOKEN, "NO_COLOR": "1"}

    def build(self, *extra: str, faults: tuple = (), settle: bool = True) -> Build:
        if settle and self.fake.strict is not None:
            # a user's next build comes after the strict stand-in's tag-filter lag: a build
            # started at once would not be answered by the memo (amic stays right: it asks
            # boto3), which the scenarios here count on
            time.sleep(max(0.0, self.fake.strict.settings.delay
                           - (time.monotonic() - getattr(self, "ended", 0.0))))
        self.fake.proxy.reset()
        for fault in faults:     # (action, times[, code, status]): RequestLimitExceeded by default
            self.fake.proxy.fail(*fault)
        t0 = time.monotonic()
        proc = subprocess.run(self.argv(*extra), cwd=self.project, env=self.env(),
                              capture_output=True, text=True, timeout=600, check=False)
        result = Build(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0, self.fake)
        self.ended = time.monotonic()
        assert_clean(self.fake)
        return result

    def ensure_full(self) -> dict:
        """The first full build (done by test_full_build, or here when run alone)."""
        if self.full is None:
            self.write(AMIFILE)
            b = self.build()
            assert b.rc == 0, b.stderr
            self.full = {"ami": b.ami, "layers": layer_amis(self.fake)}
        return self.full


class Build:
    def __init__(self, rc: int, stdout: str, stderr: str, seconds: float, fake) -> None:
        self.rc, self.stdout, self.stderr, self.seconds = rc, stdout, stderr, seconds
        self.calls = dict(fake.proxy.calls)
        self.made = collections.Counter(a for a, _ in fake.proxy.answered)
        """Calls answered with success (a refused CreateSnapshot, e.g. the per-volume rate of
        the strict stand-in, is retried and made nothing)."""
        self.run_images = [p["ImageId"] for p in fake.proxy.calls_of("RunInstances")]
        self.boto3 = fake.proxy.boto3_calls()
        """Calls made through boto3 (none when the build memo answered, confirmed by EC2)."""

    @property
    def ami(self) -> str:
        return self.stdout.strip().splitlines()[-1]

    def count(self, action: str) -> int:
        return self.calls.get(action, 0)

    def layers(self) -> dict[str, str]:
        """service -> CACHED / RUN / FAILED from the ``[i/n] service STATUS`` lines."""
        return {m[1]: m[2] for m in re.finditer(r"^\[\d+/\d+\] (\S+)\s+(CACHED|RUN|FAILED)\b",
                                                self.stderr, re.MULTILINE)}

    def __repr__(self) -> str:
        return f"<build rc={self.rc} {self.seconds:.1f}s {self.calls}>\n{self.stderr[-3000:]}"


def layer_snapshots(fake) -> dict[str, dict]:
    """service -> the newest layer snapshot (DescribeSnapshots entry, ``Tags`` as a dict)."""
    snaps = fake.client().describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:amic:checkpoint", "Values": ["snapshot"]}])
    out = {}
    for snap in sorted(snaps["Snapshots"], key=lambda s: s["StartTime"]):
        snap["Tags"] = {t["Key"]: t["Value"] for t in snap.get("Tags", [])}
        out[snap["Tags"]["amic:service"]] = snap
    return out


def layer_amis(fake) -> dict[str, str]:
    """service -> newest layer snapshot id."""
    return {svc: snap["SnapshotId"] for svc, snap in layer_snapshots(fake).items()}


def after_tag_lag(fake, since: float) -> None:
    """Wait out the strict stand-in's tag-filter lag since ``since`` (monotonic): as a user's
    next command comes a moment after a build, and finds what it made by its tags."""
    if fake.strict is not None:
        time.sleep(max(0.0, fake.strict.settings.delay - (time.monotonic() - since)))


class Builds:
    def __init__(self, fake, home: Path) -> None:
        self.fake = fake
        self.home = home
        fake.register_debian12()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AMIC_", "GIT_"))}
        return {**env, **self.fake.env, "NO_COLOR": "1", "XDG_CACHE_HOME": str(self.home / "xdg"),
                "AMIC_CACHE_DIR": str(self.home / "cache")}

    def amic(self, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
        after_tag_lag(self.fake, getattr(self, "ended", 0.0))
        proc = run_amic(*args, cwd=cwd, env=self.env(), timeout=600)
        self.ended = time.monotonic()
        if check:
            assert proc.returncode == 0, f"amic {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def build(self, folder: Path, *extra: str) -> str:
        proc = self.amic("build", "--target", "ec2", *self.fake.ssh_args(), "--ssh-user", "root",
                         "--poll-interval", "0.05", "--ssh-timeout", "60", "--checkpoint", "all",
                         "--console-timeout", "30", *extra, "Amifile", cwd=folder)
        return proc.stdout.strip().splitlines()[-1]

    def amis(self) -> dict[str, dict[str, str]]:
        """Every amic AMI and layer snapshot: id -> tags."""
        ec2 = self.fake.client()
        found = {i["ImageId"]: {t["Key"]: t["Value"] for t in i.get("Tags", [])}
                 for i in ec2.describe_images(Owners=["self"], Filters=[
                     {"Name": "tag-key", "Values": ["amic:key"]}])["Images"]}
        found.update({s["SnapshotId"]: {t["Key"]: t["Value"] for t in s.get("Tags", [])}
                      for s in ec2.describe_snapshots(OwnerIds=["self"], Filters=[
                          {"Name": "tag:amic:checkpoint", "Values": ["snapshot"]}])["Snapshots"]})
        return found

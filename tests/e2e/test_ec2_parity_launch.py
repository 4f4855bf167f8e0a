"""Packer amazon-ebs launch options through the real CLI against the stand-in: spot with its
fallbacks and interruptions, instance type lists, ``--subnet-filter``, ``--availability-zone``.

Each option is checked where EC2 sees it: the RunInstances calls the proxy recorded
(``tests/harness/ec2/api.py``). Capacity refusals and spot interruptions are the
stand-in's (``tests/harness/ec2/capacity.py``): moto launches anything anywhere.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from tests.harness.cli import run_amic
from tests.harness.e2e_builds import E2E
from tests.harness.ec2 import amic_exe, assert_clean, iam_policy, image_file, standin_ec2
from tests.harness.pty_drive import Answer, drive, say

pytestmark = [pytest.mark.slow, pytest.mark.root]

QUICK = """\
FROM debian:12

SERVICE base
    INIT echo {base} > /etc/amic-base

SERVICE app
    REQUIRES base
    INIT echo app > /etc/amic-app
"""

SLOW = """\
FROM debian:12

SERVICE base
    INIT echo {base} > /etc/amic-base

SERVICE app
    REQUIRES base
    INIT <<~EOF
        echo started > /etc/amic-app-started
        sleep 120
    EOF
"""


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    with standin_ec2(tmp_path_factory, strict=True) as fake:
        yield E2E(fake, tmp_path_factory.mktemp("parity-launch"))


def runs(fake) -> list[dict[str, str]]:
    """Every RunInstances the build made (refused ones too), as the proxy recorded them."""
    return fake.proxy.calls_of("RunInstances")


def market(params: dict[str, str]) -> tuple[str, str]:
    return (params.get("InstanceMarketOptions.MarketType", "on-demand"), params["InstanceType"])


def wait_for_inits(fake, proc, *, since: int, count: int, marker: str,
                   timeout: float = 300) -> None:
    """Until the ``count`` instances launched after ``since`` all have ``marker`` (a file
    their INIT writes) in their root; fails if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [fake.standin.instances.get(iid) for iid, _ in fake.standin.launches[since:]]
        if len(running) == count and all(
                i is not None and (i.upper / "root" / marker).exists() for i in running):
            return
        assert proc.poll() is None, proc.communicate() if proc.stdout else proc.returncode
        time.sleep(0.2)
    raise AssertionError(f"the {count} builds never all ran their INIT")


def test_spot_refused_falls_back_through_types_to_on_demand(e2e):
    fake = e2e.fake
    ec2 = fake.client()
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    made = {}
    for cidr, zone, tagged in (("172.31.96.0/24", "us-east-1b", True),    # 251 free: chosen
                               ("172.31.97.0/26", "us-east-1b", True),    # fewer free
                               ("172.31.100.0/22", "us-east-1c", True),   # most, wrong zone
                               ("172.31.104.0/22", "us-east-1b", False)):  # untagged
        tags = [{"Key": "amic-test", "Value": "build" if tagged else "other"}]
        made[cidr] = ec2.create_subnet(
            VpcId=vpc, CidrBlock=cidr, AvailabilityZone=zone,
            TagSpecifications=[{"ResourceType": "subnet", "Tags": tags}])["Subnet"]["SubnetId"]
    e2e.write(QUICK.format(base="base-v1"))
    fake.capacity.reset()
    fake.capacity.refuse(market="spot")                                  # no spot at all
    fake.capacity.refuse(market="on-demand", instance_type="t3.micro")   # nor the first type
    b = e2e.build("--spot-price", "0.05", "--spot-instance-type", "t3.small,t3a.small",
                  "--instance-type", "t3.micro,t3a.micro", "--subnet-filter", "amic-test=build",
                  "--availability-zone", "us-east-1b")
    assert b.rc == 0, b
    calls = runs(fake)
    assert [market(p) for p in calls] == [("spot", "t3.small"), ("spot", "t3a.small"),
                                          ("on-demand", "t3.micro"),
                                          ("on-demand", "t3a.micro")], calls
    for p in calls[:2]:
        assert p["InstanceMarketOptions.SpotOptions.MaxPrice"] == "0.05", p
        assert p["InstanceMarketOptions.SpotOptions.SpotInstanceType"] == "one-time", p
        assert p["InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior"] == "terminate"
    # every try its own idempotency token (EC2 refuses one token with other arguments)
    assert len({p["ClientToken"] for p in calls}) == 4, calls
    for p in calls:
        assert p["Placement.AvailabilityZone"] == "us-east-1b", p
        assert p["NetworkInterface.1.SubnetId"] == made["172.31.96.0/24"], p
    assert fake.capacity.refused == [("spot", "t3.small", "InsufficientInstanceCapacity"),
                                     ("spot", "t3a.small", "InsufficientInstanceCapacity"),
                                     ("on-demand", "t3.micro", "InsufficientInstanceCapacity")]
    assert "no spot t3.small instance (InsufficientInstanceCapacity); trying spot t3a.small" \
        in b.stderr, b
    assert "(on-demand t3a.micro)" in b.stderr, b
    launched = fake.client().describe_instances(
        InstanceIds=[fake.standin.launches[-1][0]])["Reservations"][0]["Instances"][0]
    assert launched["InstanceType"] == "t3a.micro" and launched["SubnetId"] == made["172.31.96.0/24"]
    assert "InstanceLifecycle" not in launched, launched     # on-demand
    assert image_file(fake, b.ami, "/etc/amic-app").read_text() == "app\n"
    # the spot tries tagged their spot requests, and docs/ec2.md's policy allows them
    policy = iam_policy.documented().policy()
    for p in calls:
        spec = iam_policy.tag_specs(p)
        assert spec["instance"]["amic:tool"].startswith("amic/"), spec
        assert ("spot-instances-request" in spec) == (market(p)[0] == "spot"), spec
        asks = iam_policy.asks("RunInstances", p, region="us-east-1", account=fake.moto.account,
                               tags_of=lambda rid, region: {})
        refused = [f"{a.action} {a.resource}" for a in asks if iam_policy.denied(policy, a)]
        assert refused == [], refused


def test_every_try_refused_fails_clearly(e2e):
    fake = e2e.fake
    e2e.write(QUICK.format(base="base-v2"))
    fake.capacity.reset()
    fake.capacity.refuse()
    b = e2e.build("--spot-price", "auto", "--instance-type", "t3.micro,t3a.micro")
    assert b.rc == 1, b
    assert [market(p) for p in runs(fake)] == [("spot", "t3.micro"), ("spot", "t3a.micro"),
                                               ("on-demand", "t3.micro"),
                                               ("on-demand", "t3a.micro")]
    assert "InstanceMarketOptions.SpotOptions.MaxPrice" not in runs(fake)[0]   # auto: EC2's cap
    assert "no instance could be launched, every try was refused" in b.stderr, b
    assert "Traceback" not in b.stderr
    fake.capacity.reset()


def test_spot_interruption_fails_cleanly_and_keeps_checkpoints(e2e):
    """EC2 reclaims the spot instance during a later layer's INIT: the build fails saying so,
    everything is cleaned up, and the layer checkpointed before is what the next build
    starts from."""
    fake = e2e.fake
    e2e.write(SLOW.format(base="base-v3"))
    fake.capacity.reset()
    done = threading.Event()
    taken: list[str] = []

    def reclaim() -> None:     # once base's checkpoint is taken and app's INIT runs
        while not done.is_set():
            if fake.proxy.calls_of("CreateSnapshot", answered=True) and fake.standin.launches:
                iid = fake.standin.launches[-1][0]
                inst = fake.standin.instances.get(iid)
                if inst is not None and (inst.upper / "root/etc/amic-app-started").exists():
                    fake.capacity.interrupt(iid)
                    taken.append(iid)
                    return
            time.sleep(0.2)

    watcher = threading.Thread(target=reclaim, daemon=True)
    watcher.start()
    try:
        b = e2e.build("--spot-price", "auto")
    finally:
        done.set()
        watcher.join(10)
    assert taken, b
    assert b.rc == 1, b
    assert [market(p) for p in runs(fake)] == [("spot", "t3.micro")]
    assert f"spot instance {taken[0]} was interrupted (Server.SpotInstanceTermination" in b.stderr, b
    assert "the layers checkpointed before it stay cached" in b.stderr, b
    assert "Traceback" not in b.stderr
    assert b.layers().get("base") == "RUN", b
    # the next build (on-demand: a spot price below the market's is refused) starts from base
    e2e.write(QUICK.format(base="base-v3"))
    again = e2e.build("--spot-price", "0.001")
    assert again.rc == 0, again
    assert again.layers() == {"base": "CACHED", "app": "RUN"}, again
    assert fake.capacity.refused == [("spot", "t3.micro", "SpotMaxPriceTooLow")]
    assert [market(p) for p in runs(fake)] == [("spot", "t3.micro"), ("on-demand", "t3.micro")]
    assert "no spot t3.micro instance (SpotMaxPriceTooLow); trying on-demand t3.micro" \
        in again.stderr
    assert_clean(fake)


@pytest.mark.parametrize("args, message", [
    (["--spot-price", "cheap"], "--spot-price 'cheap': expected auto or a price"),
    (["--spot-instance-type", "t3.small"], "--spot-instance-type needs --spot-price"),
    (["--instance-type", "t3.micro,t4g.micro"], "t4g.micro are not x86_64 (the architecture of t3.micro)"),
    (["--instance-type", "t3.micro,"], "--instance-type 't3.micro,': expected TYPE[,TYPE...]"),
    (["--subnet", "subnet-1", "--subnet-filter", "a=b"], "--subnet and --subnet-filter exclude"),
    (["--subnet-filter", "novalue"], "--subnet-filter 'novalue': expected KEY=VALUE"),
    (["--arch", "x86_64,sparc"], "'x86_64,sparc': expected x86_64, arm64 or x86_64,arm64"),
    (["--arch", "x86_64,arm64", "--dry-run"], "--dry-run takes one --arch at a time"),
    (["--arch", "x86_64,arm64", "--instance-type", "t3.micro"],
     "--instance-type t3.micro: no arm64 type in the list"),
    (["--temporary-iam-instance-profile", "missing.json"],
     "--temporary-iam-instance-profile missing.json: No such file"),
    (["--temporary-iam-instance-profile", "Amifile"],
     "--temporary-iam-instance-profile Amifile: not JSON"),
    (["--temporary-iam-instance-profile", "empty.json"], "expected a policy document or a list"),
    (["--temporary-iam-instance-profile", "policy.json", "--iam-instance-profile", "p"],
     "--iam-instance-profile and --temporary-iam-instance-profile exclude each other"),
])
def test_launch_options_refused_before_any_call(tmp_path, args, message):
    (tmp_path / "Amifile").write_text(QUICK.format(base="x"))
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "policy.json").write_text('[{"Effect": "Allow", "Action": "s3:ListBucket", '
                                          '"Resource": "*"}]')
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "AWS_REGION": "us-east-1", "NO_COLOR": "1"}
    proc = run_amic("build", "--target", "ec2", *args, "Amifile", cwd=tmp_path, env=env,
                    timeout=60)
    assert proc.returncode == 2, proc
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_temporary_instance_profile_made_used_removed_and_gc_finds_a_killed_builds(e2e, tmp_path):
    """``--temporary-iam-instance-profile``: a role and profile under /amic/, given to the
    instance, deleted after the build; a build killed with -9 leaves them, tagged, and
    ``amic gc`` removes them with the rest."""
    import boto3

    fake = e2e.fake
    policy = tmp_path / "instance-policy.json"
    policy.write_text('[{"Effect": "Allow", "Action": "s3:GetObject", '
                      '"Resource": "arn:aws:s3:::some-bucket/*"}]')
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=fake.moto.url,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    e2e.write(QUICK.format(base="base-v4"))
    b = e2e.build("--temporary-iam-instance-profile", str(policy))
    assert b.rc == 0, b
    name = runs(fake)[-1]["IamInstanceProfile.Name"]
    assert name.startswith("amic-") and f"instance profile {name} (temporary role" in b.stderr, b
    assert f"deleted instance profile and role {name}" in b.stderr, b
    assert iam.list_roles(PathPrefix="/amic/")["Roles"] == []
    assert iam.list_instance_profiles(PathPrefix="/amic/")["InstanceProfiles"] == []

    e2e.write(SLOW.format(base="base-v5"))
    fake.proxy.reset()
    launched = len(fake.standin.launches)
    with open(tmp_path / "killed.err", "w") as err:
        proc = subprocess.Popen(e2e.argv("--temporary-iam-instance-profile", str(policy)),
                                cwd=e2e.project, env=e2e.env(), stdout=subprocess.DEVNULL,
                                stderr=err)
        try:
            wait_for_inits(fake, proc, since=launched, count=1, marker="etc/amic-app-started",
                           timeout=240)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    roles = iam.list_roles(PathPrefix="/amic/")["Roles"]
    assert len(roles) == 1, roles
    tags = {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=roles[0]["RoleName"])["Tags"]}
    assert tags["amic:tool"].startswith("amic/") and tags["amic:build-id"] and tags["amic:expires"]
    assert not any(k.startswith("amic:heartbeat") for k in tags), tags   # nothing refreshes them
    gc = run_amic("gc", cwd=e2e.project, env=e2e.env(), timeout=300)
    assert gc.returncode == 0, gc
    assert roles[0]["RoleName"] in gc.stdout + gc.stderr, gc
    assert iam.list_roles(PathPrefix="/amic/")["Roles"] == []
    assert iam.list_instance_profiles(PathPrefix="/amic/")["InstanceProfiles"] == []
    assert_clean(fake)


FLAKY = """\
FROM debian:12

SERVICE base
    INIT echo base-v6 > /etc/amic-base

SERVICE flaky
    REQUIRES base
    INIT <<~EOF
        echo run >> /etc/amic-flaky-runs
        [ -e /etc/amic-flaky-fixed ] || { touch /etc/amic-flaky-fixed; echo "not yet" >&2; exit 3; }
    EOF
"""


def test_on_error_ask_retries_the_step_and_debug_pauses_through_a_terminal(e2e):
    """The real CLI on a pseudo-terminal: ``--debug`` waits for Enter after each layer, and
    ``--on-error ask`` answered ``r`` runs the failed INIT again on the same instance."""
    fake = e2e.fake
    e2e.write(FLAKY)
    fake.proxy.reset()
    run = drive(e2e.argv("--on-error", "ask", "--debug", "--progress", "plain"),
                cwd=e2e.project, env=e2e.env(), answers=[
                    Answer("--debug: stage2 artifact done; press Enter", say("\n")),
                    Answer("--debug: [1/2] base done; press Enter", say("\n")),
                    Answer("[r]etry the step? [c]", say("r\n")),
                    Answer("--debug: [2/2] flaky done; press Enter", say("\n")),
                    Answer("--debug: install-boot-hook, prepare-image done; press Enter",
                           say("\n"))])
    seen, out = run.terminal, run.stdout
    assert run.returncode == 0, seen
    assert run.unanswered == (), seen
    assert "[2/2] flaky init failed" in seen and "--on-error ask: retrying [2/2] flaky init" in seen
    assert len(fake.proxy.calls_of("RunInstances")) == 1      # the same instance, step re-run
    ami = out.strip().splitlines()[-1]
    assert image_file(fake, ami, "/etc/amic-flaky-runs").read_text() == "run\nrun\n"
    assert_clean(fake)


def test_on_error_ask_and_debug_refused_without_a_terminal(tmp_path):
    (tmp_path / "Amifile").write_text(QUICK.format(base="x"))
    for args, message in ((["--on-error", "ask"], "--on-error ask asks on the terminal"),
                          (["--debug"], "--debug asks on the terminal")):
        proc = subprocess.run([amic_exe(), "build", "--target", "ec2", *args, "Amifile"],
                              cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})
        assert proc.returncode == 2 and message in proc.stderr, proc
        assert "stdin is not one" in proc.stderr and "Traceback" not in proc.stderr


MULTI = """\
FROM debian:12

SERVICE base
    INIT <<~EOF
        echo {variant} > /etc/amic-multi
        sleep {seconds}
    EOF
"""


def multi_argv(fake, *extra: str) -> list[str]:
    """Concurrent builds: each reaches its own instance at its own address (``own_addresses``)."""
    return [amic_exe(), "build", "--target", "ec2", "--ssh-port", str(fake.standin.relay_port),
            "--ssh-cidr", "127.0.0.1/32", "--ssh-user", "root", "--poll-interval", "0.05",
            "--checkpoint", "all", "--ssh-timeout", "120", "--console-timeout", "60",
            "--arch", "x86_64,arm64", *extra, "Amifile"]


@pytest.fixture
def two_arches(e2e):
    fake = e2e.fake
    if not fake.client().describe_images(Filters=[{"Name": "name",
                                                   "Values": ["debian-12-arm64-*"]}])["Images"]:
        fake.standin.register_base(fake.client(), "debian-12-arm64-20240717-1811", arch="arm64")
    fake.standin.own_addresses = True
    try:
        yield e2e
    finally:
        fake.standin.own_addresses = False


def test_two_arches_build_in_parallel_each_its_own_ami(two_arches, tmp_path):
    e2e = two_arches
    fake = e2e.fake
    e2e.write(MULTI.format(variant="multi-1", seconds=3))
    fake.proxy.reset()
    manifest = tmp_path / "manifest.json"
    proc = subprocess.run(multi_argv(fake, "--manifest", str(manifest)), cwd=e2e.project,
                          env=e2e.env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    launched = fake.proxy.calls_of("RunInstances", answered=True)
    bases = {i["Name"].split("-")[2]: i["ImageId"] for i in fake.client().describe_images(
        Filters=[{"Name": "name", "Values": ["debian-12-*"]}])["Images"]}
    assert sorted((p["ImageId"], p["InstanceType"]) for p in launched) == sorted(
        [(bases["amd64"], "t3.micro"), (bases["arm64"], "t4g.micro")]), launched
    # in parallel: both instances ran before either build made its final image
    order = [a for a, _ in fake.proxy.answered if a in ("RunInstances", "CreateImage")]
    assert order[:2] == ["RunInstances", "RunInstances"], order
    lines = proc.stderr.splitlines()
    assert any(line.startswith("[x86_64] ") for line in lines), proc.stderr
    assert any(line.startswith("[arm64] ") for line in lines), proc.stderr
    builds = json.loads(manifest.read_text())["builds"]
    assert sorted(b["arch"] for b in builds) == ["arm64", "x86_64"]
    amis = {b["arch"]: b["image_id"] for b in builds}
    assert amis["x86_64"] != amis["arm64"]
    for arch, ami in amis.items():   # each made from an instance of its own arch's base
        source = dict(fake.standin.launches)[fake.standin.image_of[ami]]
        assert source == bases["amd64" if arch == "x86_64" else "arm64"], (arch, source)
        assert image_file(fake, ami, "/etc/amic-multi").read_text() == "multi-1\n"
    assert proc.stdout.strip() == f"{amis['x86_64']},{amis['arm64']}"
    assert_clean(fake)


def test_sigint_cleans_up_both_arches(two_arches):
    e2e = two_arches
    fake = e2e.fake
    e2e.write(MULTI.format(variant="multi-2", seconds=120))
    fake.proxy.reset()
    before = len(fake.standin.launches)
    proc = subprocess.Popen(multi_argv(fake), cwd=e2e.project, env=e2e.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_inits(fake, proc, since=before, count=2, marker="etc/amic-multi")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "stopping the x86_64 build" in err and "stopping the arm64 build" in err, err
    assert "Traceback" not in err
    assert len(fake.proxy.calls_of("TerminateInstances", answered=True)) == 2, err
    assert_clean(fake)


def test_kill_9_of_the_parent_interrupts_both_arch_builds(two_arches):
    """The arch builds run in their own session: when the parent dies by SIGKILL they get
    SIGINT (PR_SET_PDEATHSIG) and clean up as on Ctrl-C, instead of building on as orphans."""
    e2e = two_arches
    fake = e2e.fake
    e2e.write(MULTI.format(variant="multi-9", seconds=120))
    fake.proxy.reset()
    before = len(fake.standin.launches)
    proc = subprocess.Popen(multi_argv(fake), cwd=e2e.project, env=e2e.env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_inits(fake, proc, since=before, count=2, marker="etc/amic-multi")
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and \
            len(fake.proxy.calls_of("TerminateInstances", answered=True)) < 2:
        time.sleep(0.5)
    assert len(fake.proxy.calls_of("TerminateInstances", answered=True)) == 2
    time.sleep(2)                       # each build's last clean-up calls after terminate
    assert_clean(fake)


def test_one_arch_failing_stops_the_other_unless_keep_going(two_arches):
    e2e = two_arches
    fake = e2e.fake
    e2e.write(MULTI.format(variant="multi-3", seconds=2))
    fake.capacity.reset()
    fake.capacity.refuse(instance_type="t4g.micro")        # no arm64 capacity at all
    try:
        fake.proxy.reset()
        proc = subprocess.run(multi_argv(fake), cwd=e2e.project, env=e2e.env(),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 1, proc.stderr
        assert "--arch x86_64,arm64: failed: " in proc.stderr and "arm64 (exit 1)" in proc.stderr
        assert "[arm64] amic: build failed: no instance could be launched" in proc.stderr, proc.stderr
        assert "stopping the x86_64 build (the arm64 build failed)" in proc.stderr, proc.stderr
        assert proc.stdout.strip() == ""
        assert_clean(fake)
        fake.proxy.reset()
        kept = subprocess.run(multi_argv(fake, "--keep-going"), cwd=e2e.project, env=e2e.env(),
                              capture_output=True, text=True, timeout=600)
        assert kept.returncode == 1, kept.stderr
        assert "amic: stopping the" not in kept.stderr, kept.stderr
        ami = kept.stdout.strip()
        assert ami.startswith("ami-") and "," not in ami, kept
        assert image_file(fake, ami, "/etc/amic-multi").read_text() == "multi-3\n"
        assert_clean(fake)
    finally:
        fake.capacity.reset()

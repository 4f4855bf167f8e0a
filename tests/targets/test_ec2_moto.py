"""The ec2 target's resource lifecycle against moto (a real HTTP endpoint), no SSH needed.

Every test ends by asking the EC2 API whether anything of the build is left:
no instance running, no key pair, no security group; and whether every
resource amic created carried its tags.
"""

from __future__ import annotations

import _thread
import datetime as dt
import os
import signal
import subprocess
import sys
import time

import pytest
from amic.targets.ec2 import session as aws
from amic.targets.ec2 import gc as ec2_gc
from amic.errors import BuildError
from amic.targets.ec2 import bases, images, naming, resources
from amic.targets.ec2 import target as ec2
from amic.targets.ec2.options import Ec2Options

from tests.harness.ec2 import fake_ec2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory):
    with fake_ec2(tmp_path_factory.mktemp("ec2")) as fake:
        yield fake


@pytest.fixture
def fake(fake_server, monkeypatch):
    fake_server.reset()
    for k, v in fake_server.env.items():
        monkeypatch.setenv(k, v)
    fake_server.register_debian12()
    return fake_server


def target(**kw) -> ec2.Ec2Target:
    opts = {"ssh_cidrs": ("127.0.0.1/32",), "console_timeout": 0.5, "poll_interval": 0.05,
            "ssh_timeout": 1}
    opts.update(kw)
    return ec2.Ec2Target(options=Ec2Options(**opts), log_fn=lambda m: None)


def assert_clean(fake) -> None:
    assert fake.leftovers() == {"instances": [], "key_pairs": [], "security_groups": []}
    assert fake.all_leftovers() == {"instances": [], "key_pairs": [], "security_groups": []}
    assert fake.created_untagged() == []


def test_resolve_base_newest_wins_and_find_image(fake):
    older = fake.standin.register_base(fake.client(), "debian-12-amd64-20230101-0000")
    t = target()
    base = t.resolve_base("debian:12")
    assert base.id in (older, fake.standin.images and base.id)
    assert base.tags[naming.TAG_SSH_USER] == "admin"
    assert t.resolve_base(older).id == older
    with pytest.raises(BuildError, match="no image matches"):
        t.resolve_base("ubuntu:24.04")
    assert t.find_image("0" * 64) is None


def test_ssh_never_up_cleans_everything(fake):
    t = target()
    with pytest.raises(BuildError, match="fingerprints"), t.launch(t.resolve_base(None),
                                                                   build_id="b-nossh"):
        pass
    assert fake.proxy.count("RunInstances") == 1
    assert fake.proxy.count("TerminateInstances") == 1
    run = dict(next(p for a, p in fake.proxy.log if a == "RunInstances"))
    assert run["MetadataOptions.HttpTokens"] == "required"
    assert run["KeyName"] == "amic-b-nossh"
    perms = next(p for a, p in fake.proxy.log if a == "AuthorizeSecurityGroupIngress")
    assert perms["IpPermissions.1.IpRanges.1.CidrIp"] == "127.0.0.1/32"
    assert perms["IpPermissions.1.FromPort"] == "22"
    assert_clean(fake)


def test_user_security_group_and_volume_options(fake):
    vpc = fake.client().describe_vpcs()["Vpcs"][0]["VpcId"]
    sg = fake.client().create_security_group(GroupName="mine", Description="x", VpcId=vpc)["GroupId"]
    t = target(security_group_ids=(sg,), volume_size=20, encrypt=True)
    with pytest.raises(BuildError), t.launch(t.resolve_base(None), build_id="b-sg"):
        pass
    assert fake.proxy.count("CreateSecurityGroup", "DeleteSecurityGroup") == 0
    run = dict(next(p for a, p in fake.proxy.log if a == "RunInstances"))
    assert run["SecurityGroupId.1"] == sg
    assert run["BlockDeviceMapping.1.Ebs.VolumeSize"] == "20"
    assert run["BlockDeviceMapping.1.Ebs.Encrypted"] == "true"
    assert fake.client().describe_security_groups(GroupIds=[sg])["SecurityGroups"]
    assert_clean_except_group = fake.leftovers()
    assert assert_clean_except_group["instances"] == [] and assert_clean_except_group["key_pairs"] == []


def test_throttling_is_retried(fake):
    t = target()
    for action in ("DescribeImages", "ImportKeyPair", "RunInstances", "TerminateInstances",
                   "DeleteKeyPair"):
        fake.proxy.fail(action, times=2)
    with pytest.raises(BuildError, match="fingerprints"), t.launch(t.resolve_base(None),
                                                                   build_id="b-thr"):
        pass
    assert fake.proxy.injected == 10
    # ClientToken makes the retried RunInstances start one instance, not three.
    ids = {i["InstanceId"] for r in fake.client().describe_instances()["Reservations"]
           for i in r["Instances"]}
    assert len(ids) == 1
    assert_clean(fake)


def test_throttling_beyond_retries_is_reported(fake):
    t = target()
    t.opts.aws = aws.AwsOptions(max_attempts=2)
    fake.proxy.fail("CreateSecurityGroup", times=5)
    with pytest.raises(BuildError, match="RequestLimitExceeded.*throttled"), \
            t.launch(t.resolve_base(None), build_id="b-thr2"):
        pass
    assert_clean(fake)


@pytest.mark.parametrize("action", ["ImportKeyPair", "CreateSecurityGroup",
                                    "AuthorizeSecurityGroupIngress", "RunInstances",
                                    "DescribeInstances", "GetConsoleOutput"])
def test_interrupt_at_each_step(fake, action):
    """Ctrl-C as the call's answer arrives: the id is never seen, cleanup finds it anyway."""
    t = target(console_timeout=30)
    fired = []

    def interrupt(params, text):
        if not fired:
            fired.append(action)
            _thread.interrupt_main()
        return text

    fake.proxy.after[action].append(interrupt)
    with pytest.raises(KeyboardInterrupt), t.launch(t.resolve_base(None), build_id="b-int"):
        time.sleep(5)
    assert fired
    assert_clean(fake)


def test_keep_on_error_keeps_and_gc_removes(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    t = target(ttl=dt.timedelta(seconds=0))
    t.keep_on_error = True
    with pytest.raises(BuildError), t.launch(t.resolve_base(None), build_id="b-keep"):
        pass
    left = fake.leftovers("b-keep")
    assert len(left["instances"]) == 1 and left["key_pairs"] == ["amic-b-keep"]
    assert (tmp_path / "amic" / "keys" / "amic-b-keep.pem").stat().st_mode & 0o777 == 0o600
    leaks = ec2_gc.find_leaks(t, build_id="b-keep")
    assert {leak.kind for leak in leaks} == {"instance", "key-pair", "security-group"}
    assert ec2_gc.remove(t, leaks) == []
    assert_clean(fake)


KILLED_BUILD = """
import datetime as dt, sys
from amic.targets.ec2 import target as ec2
from amic.targets.ec2.options import Ec2Options
t = ec2.Ec2Target(options=Ec2Options(ssh_cidrs=("127.0.0.1/32",), console_timeout=600,
                  poll_interval=0.05, ttl=dt.timedelta(hours=4)))
with t.launch(t.resolve_base(None), build_id=sys.argv[1]):
    pass
"""


def test_gc_after_killed_process(fake, amic_cli):
    # The build beats every 0.3 s; killed, its heartbeat is stale after three missed beats,
    # and gc finds its resources at once (their amic:expires is hours away).
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, "b-killed"],
                            env={**os.environ, "AMIC_EC2_HEARTBEAT": "0.3"},
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while fake.proxy.count("GetConsoleOutput") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.2)
    left = fake.leftovers("b-killed")
    assert len(left["instances"]) == 1 and left["key_pairs"] and left["security_groups"]

    # An unexpired resource of another build is left alone.
    fake.client().import_key_pair(
        KeyName="amic-b-live", PublicKeyMaterial=resources.generate_key()[1].encode(),
        TagSpecifications=aws.tag_specs(aws.resource_tags("b-live", ttl=dt.timedelta(hours=1)),
                                        "key-pair"))
    dry = amic_cli("gc", "--dry-run", env=fake.env, check=True)
    assert "would remove instance" in dry.stderr and "amic-b-killed" in dry.stderr
    assert "would remove key-pair amic-b-live" not in dry.stderr
    assert "live build b-live" in dry.stderr    # its owner (this process) runs
    assert len(fake.leftovers("b-killed")["instances"]) == 1

    amic_cli("gc", env=fake.env, check=True)
    assert fake.leftovers("b-killed") == {"instances": [], "key_pairs": [], "security_groups": []}
    assert fake.leftovers("b-live")["key_pairs"] == ["amic-b-live"]
    assert "nothing to collect" in amic_cli("gc", env=fake.env, check=True).stderr


# -- the build memo's confirmation (Ec2Target.confirm_memo, amic.targets.ec2.query) -------------------

KEY = "f" * 64


def _final(fake, key: str = KEY) -> str:
    """A final AMI tagged with ``key``, as a build leaves it."""
    ec2c = fake.client()
    ami = ec2c.register_image(Name=f"final-{key[:8]}", RootDeviceName="/dev/xvda",
                              VirtualizationType="hvm", Architecture="x86_64")["ImageId"]
    ec2c.create_tags(Resources=[ami], Tags=[{"Key": "amic:key", "Value": key},
                                            {"Key": "amic:kind", "Value": "final"}])
    return ami


def _memo(fake, ami: str) -> dict:
    base = target().resolve_base("debian:12").id
    fake.proxy.reset()
    return {"image_id": ami, "base_image_id": base, "final_key": KEY, "target": "ec2"}


def test_memo_confirmed_by_two_calls_without_boto3(fake):
    result = _memo(fake, _final(fake))
    assert target().confirm_memo(result, {"base_ref": "debian:12"})
    assert fake.proxy.calls == {"DescribeImages": 2}
    assert fake.proxy.boto3_calls() == []
    agents = {agent for _, agent in fake.proxy.agents}
    assert len(agents) == 1 and "confirm-memo" in agents.pop()
    # the base query is the full path's, with today's architecture: arm64 finds no image
    assert not target(arch="arm64").confirm_memo(result, {"base_ref": "debian:12"})
    assert not target().confirm_memo(result, {})     # a memo without facts: never confirmed


def test_memo_declined_when_the_base_or_the_image_changed(fake):
    ami = _final(fake)
    result = _memo(fake, ami)
    facts = {"base_ref": "debian:12"}
    time.sleep(1.1)    # moto's CreationDate has whole seconds; the newest one wins
    fake.standin.register_base(fake.client(), "debian-12-amd64-20991231-2359")  # Debian publishes
    assert not target().confirm_memo(result, facts)
    assert target().resolve_base("debian:12").id != result["base_image_id"]
    result = _memo(fake, ami)
    assert target().confirm_memo(result, facts)
    fake.client().deregister_image(ImageId=ami)
    assert not target().confirm_memo(result, facts)
    time.sleep(1.1)
    newer = _final(fake)                            # rebuilt elsewhere with --no-cache
    assert not target().confirm_memo(result, facts)
    assert target().confirm_memo({**result, "image_id": newer}, facts)


@pytest.mark.parametrize("code,status", [("AuthFailure", 401), ("InternalError", 500)])
def test_memo_declined_on_any_error(fake, code, status, caplog, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-never-logged")
    caplog.set_level("DEBUG")
    result = _memo(fake, _final(fake))
    fake.proxy.fail("DescribeImages", 1, code=code, status=status)
    assert not target().confirm_memo(result, {"base_ref": "debian:12"})
    assert fake.proxy.injected == 1 and fake.proxy.boto3_calls() == []
    assert "secret-never-logged" not in caplog.text


def test_memo_declined_without_credentials_or_endpoint(fake, monkeypatch, caplog):
    caplog.set_level("DEBUG")
    result = _memo(fake, _final(fake))
    facts = {"base_ref": "debian:12"}
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-never-logged")
    assert not target().confirm_memo(result, facts)
    assert fake.proxy.calls == {}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    from tests.harness.ec2 import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", f"http://127.0.0.1:{free_port()}")  # refused
    assert not target().confirm_memo(result, facts)
    assert "secret-never-logged" not in caplog.text


def test_query_describe_images_agrees_with_boto3(fake):
    ami = _final(fake)
    fake.standin.register_base(fake.client(), "debian-12-amd64-20230101-0000")
    from amic.targets.ec2 import query as ec2query

    access = ec2query.resolve()
    for args in (bases.parse_base("debian:12", arch="x86_64").call_args(),
                 images.final_image_query(KEY), {"ImageIds": [ami]}):
        ours = ec2query.describe_images(access, **args)
        theirs = fake.client(direct=False).describe_images(**args)["Images"]
        assert ours == [{"ImageId": i["ImageId"], "State": i["State"],
                         "CreationDate": i["CreationDate"],
                         "Tags": {t["Key"]: t["Value"] for t in i.get("Tags", [])}}
                        for i in theirs]
        assert ours
    # the final image's tags (what the memo's confirmation by id reads) came through
    mine = ec2query.describe_images(access, ImageIds=[ami])
    assert mine[0]["Tags"].get("amic:key") == KEY, mine


# -- termination: the build's group freed at once, TerminateInstances not waited for ---------

def _after(log, action: str) -> list[tuple[str, dict]]:
    """The calls after the first ``action`` in the proxy's log."""
    first = next(n for n, (a, _) in enumerate(log) if a == action)
    return log[first + 1:]


def test_stand_in_keeps_a_group_held_while_shutting_down(fake):
    """The stand-in itself: DependencyViolation while an instance, live or shutting down,
    holds the group; free once it is terminated (moto alone deletes it at once)."""
    import botocore.exceptions

    ec2 = fake.client(direct=False)
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    gid = ec2.create_security_group(GroupName="held", Description="x", VpcId=vpc)["GroupId"]
    iid = ec2.run_instances(ImageId=target().resolve_base(None).id, MinCount=1, MaxCount=1,
                            SecurityGroupIds=[gid])["Instances"][0]["InstanceId"]
    with pytest.raises(botocore.exceptions.ClientError, match="DependencyViolation"):
        ec2.delete_security_group(GroupId=gid)
    ec2.terminate_instances(InstanceIds=[iid])
    state = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]
    assert state == {"Code": 32, "Name": "shutting-down"}
    with pytest.raises(botocore.exceptions.ClientError, match="DependencyViolation"):
        ec2.delete_security_group(GroupId=gid)
    time.sleep(fake.standin.termination.seconds)
    state = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]
    assert state["Name"] == "terminated"
    ec2.delete_security_group(GroupId=gid)


def test_cleanup_frees_the_group_and_does_not_wait_for_terminated(fake):
    t = target()
    with pytest.raises(BuildError, match="fingerprints"), t.launch(t.resolve_base(None),
                                                                   build_id="b-fast"):
        pass
    log = list(fake.proxy.log)
    swap = fake.proxy.calls_of("ModifyInstanceAttribute")
    assert len(swap) == 1 and swap[0]["GroupId.1"] != ""
    default = fake.client().describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["default"]}])["SecurityGroups"][0]["GroupId"]
    assert swap[0]["GroupId.1"] == default
    after = _after(log, "TerminateInstances")
    assert "DescribeInstances" not in [a for a, _ in after], after    # not waited for
    assert fake.standin.termination.refused == 0                    # the group was free at once
    assert fake.proxy.count("DeleteSecurityGroup") == 1
    assert_clean(fake)


def test_cleanup_retries_the_groups_deletion_when_the_group_cannot_be_swapped(fake):
    """No swap: the instance is not polled for ``terminated``; the group's deletion is
    refused while it shuts down (the stand-in's DependencyViolation) and retried until free."""
    fake.proxy.fail("ModifyInstanceAttribute", code="UnauthorizedOperation", status=403)
    t = target()
    with pytest.raises(BuildError, match="fingerprints"), t.launch(t.resolve_base(None),
                                                                   build_id="b-slow"):
        pass
    assert fake.proxy.injected == 1
    after = [a for a, _ in _after(list(fake.proxy.log), "TerminateInstances")]
    assert "DescribeInstances" not in after, after      # no polls for `terminated`
    assert fake.standin.termination.refused >= 1        # refused while shutting down...
    assert fake.proxy.count("DeleteSecurityGroup") == fake.standin.termination.refused + 1
    assert fake.proxy.count("DeleteSecurityGroup") <= 5  # ...retried with growing pauses
    assert_clean(fake)


def test_user_groups_are_left_alone_and_nothing_waits(fake):
    vpc = fake.client().describe_vpcs()["Vpcs"][0]["VpcId"]
    sg = fake.client().create_security_group(GroupName="own", Description="x", VpcId=vpc)["GroupId"]
    t = target(security_group_ids=(sg,))
    with pytest.raises(BuildError), t.launch(t.resolve_base(None), build_id="b-own"):
        pass
    assert fake.proxy.count("ModifyInstanceAttribute") == 0
    assert "DescribeInstances" not in [a for a, _ in _after(list(fake.proxy.log),
                                                            "TerminateInstances")]


def test_interrupt_while_taking_a_lease_leaves_no_lease(fake):
    """Ctrl-C as CreateKeyPair's answer arrives: the lease exists, its id was never seen;
    the build deletes it by its build tag (else others would wait until it went stale)."""
    t = target()
    fired = []

    def interrupt(params, text):
        if params.get("KeyName", "").startswith("amic-lease-") and not fired:
            fired.append(params["KeyName"])
            _thread.interrupt_main()
        return text

    fake.proxy.after["CreateKeyPair"].append(interrupt)
    with pytest.raises(KeyboardInterrupt), t.lease("a" * 64, build_id="b-lease"):
        time.sleep(5)
    assert fired
    pairs = fake.client().describe_key_pairs()["KeyPairs"]
    assert not [p for p in pairs if p["KeyName"].startswith("amic-lease-")], pairs


def test_a_waiting_build_reads_the_lease_with_growing_pauses(fake):
    """While another live build holds the lease, the waiter only reads it (no CreateKeyPair
    after the first), and less and less often; it gives up at its limit."""
    from amic.targets.ec2 import lease as ec2_lease

    ec2c = fake.client(direct=False)
    with ec2_lease.lease(ec2c, "b" * 64, "b-holder", log=lambda m: None):
        fake.proxy.reset()
        waited: list[str] = []
        t0 = time.monotonic()
        with pytest.raises(BuildError, match="gave up after 3s waiting for build b-holder"):
            with ec2_lease.lease(ec2c, "b" * 64, "b-waiter", log=waited.append, poll=0.1,
                                 wait_limit=3):
                pass
        took = time.monotonic() - t0
    assert 3 <= took < 8, took
    assert fake.proxy.count("CreateKeyPair") == 1, fake.proxy.calls
    # pauses 0.1, 0.15, 0.225, ... : about 8 reads in 3 s, not 30
    assert 4 <= fake.proxy.count("DescribeKeyPairs") <= 12, fake.proxy.calls
    assert waited == [f"waiting for build b-holder (lease {ec2_lease.lease_name('b' * 64)}, "
                      f"layer key {'b' * 12}; pid {os.getpid()} on this host)"]


def test_leases_taken_at_the_first_try_are_read_back_together(fake):
    """A build's uncontended leases cost one DescribeKeyPairs in all (``confirm_leases``),
    and a lease whose name turns out to hold another build's key pair is reported lost."""
    import contextlib

    from amic.targets.ec2 import lease as ec2_lease

    t = target()
    keys = [c * 64 for c in "cde"]
    names = [ec2_lease.lease_name(k) for k in keys]
    notes: list[str] = []
    t.log = notes.append
    with contextlib.ExitStack() as stack:
        fake.proxy.reset()
        for key in keys:
            stack.enter_context(t.lease(key, build_id="b-batch"))
        assert fake.proxy.count("CreateKeyPair") == 3, fake.proxy.calls
        assert fake.proxy.count("DescribeKeyPairs") == 0, fake.proxy.calls   # not yet
        assert t.confirm_leases() == []
        assert fake.proxy.count("DescribeKeyPairs") == 1, fake.proxy.calls   # all three
        assert t.confirm_leases() == []                                     # nothing new
        assert fake.proxy.count("DescribeKeyPairs") == 1, fake.proxy.calls
        # the next lease: its key pair replaced by another build's before the read-back
        stack.enter_context(t.lease("f" * 64, build_id="b-batch"))
        ec2c = fake.client()
        other = ec2_lease.lease_name("f" * 64)
        ec2c.delete_key_pair(KeyName=other)
        ec2c.create_key_pair(KeyName=other, KeyType="ed25519")
        assert t.confirm_leases() == ["f" * 64]
        assert fake.proxy.count("DescribeKeyPairs") == 2, fake.proxy.calls
        assert any("another build holds it" in n for n in notes), notes
        assert t._lookups.rechecks == {"f" * 64}        # asked afresh at its next look-up
    left = [p["KeyName"] for p in fake.client().describe_key_pairs()["KeyPairs"]]
    assert left == [other], left        # ours deleted on leaving; the other build's kept
    fake.client().delete_key_pair(KeyName=other)


def test_a_lease_read_back_waits_for_a_name_not_visible_yet(fake):
    """A name missing from the filtered answer (not visible yet) is asked again, then taken
    as ours, as a single lease's read-back does; a filter, so no NotFound error."""
    from amic.targets.ec2 import lease as ec2_lease

    ec2c = fake.client(direct=False)
    fake.proxy.reset()
    assert ec2_lease.confirm(ec2c, {"amic-lease-nothere": "key-0"}, tries=3, pause=0.01) == set()
    assert fake.proxy.count("DescribeKeyPairs") == 3, fake.proxy.calls

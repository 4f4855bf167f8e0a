"""``amic launch AMI --service test`` end to end: the real CLI against moto and the stand-in.

One small Amifile is built once with ``amic build --target ec2`` (two enabled
services and two on request: ``test``, whose INIT and UPDATE leave marker
files, and ``broken``, whose UPDATE fails). Then ``amic launch`` starts
instances from the final AMI. The stand-in boots them as far as amic is
concerned (``tests/harness/ec2/__init__.py``): it runs the root's own enabled boot units
from their unit files after its sshd is up, with ``AMIC_EC2=1`` and
``AMIC_IMDS_URL`` pointing at a loopback IMDSv2 that serves the instance's
tags from moto, only when ``InstanceMetadataTags`` was enabled at launch. So
the runner reads ``amic:services`` the way it does on EC2, and ``amic launch``
waits for the result over SSH as it would there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import paramiko
import pytest

from tests.harness.ec2 import standin_ec2
from tests.harness.cli import run_amic
from tests.harness.ec2 import assert_clean, image_file

pytestmark = [pytest.mark.slow, pytest.mark.root]

AMIFILE = """\
FROM debian:12
ENABLE web

SERVICE base
    # What Debian's cloud images have and the debootstrap root standing in for them
    # lacks: curl (the runner reads instance metadata with it) and sshd (whose host
    # keys prepare-image removes and amic-ssh-keygen.service makes again at boot).
    PACKAGES curl openssh-server
    INIT <<~EOF
        mkdir -p /var/lib/marks
        echo "$AMIC_INSTANCE_ID" >> /var/lib/marks/init-base
    EOF
    UPDATE echo "$AMIC_INSTANCE_ID" >> /var/lib/marks/update-base

SERVICE web
    REQUIRES base
    INIT echo "$AMIC_INSTANCE_ID" >> /var/lib/marks/init-web
    UPDATE echo "$AMIC_INSTANCE_ID" >> /var/lib/marks/update-web

# on request only
SERVICE test
    REQUIRES web
    INIT echo "$AMIC_INSTANCE_ID" >> /var/lib/marks/init-test
    UPDATE echo "$AMIC_INSTANCE_ID" >> /var/lib/marks/update-test

SERVICE broken
    INIT echo "$AMIC_INSTANCE_ID" >> /var/lib/marks/init-broken
    UPDATE <<~EOF
        echo "broken update on $AMIC_INSTANCE_ID" >&2
        exit 3
    EOF
"""


class Launch:
    def __init__(self, proc: subprocess.CompletedProcess, seconds: float) -> None:
        self.rc, self.stdout, self.stderr, self.seconds = (proc.returncode, proc.stdout,
                                                           proc.stderr, seconds)

    def status_row(self, service: str) -> str:
        """The service's line of the printed ``amic status`` table."""
        for line in self.stdout.splitlines():
            if line.split()[:1] == [service]:
                return line
        raise AssertionError(f"no status line for {service}:\n{self.stdout}")

    def __repr__(self) -> str:
        return f"<launch rc={self.rc} {self.seconds:.1f}s>\n{self.stdout}\n{self.stderr[-3000:]}"


class Project:
    def __init__(self, fake, root: Path) -> None:
        self.fake = fake
        self.root = root
        self.base_ami = fake.register_debian12()
        (root / "Amifile").write_text(AMIFILE)
        self.cache = root / "xdg-cache"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AMIC_"))}
        return {**env, **self.fake.env, "NO_COLOR": "1", "XDG_CACHE_HOME": str(self.cache)}

    def common(self) -> list[str]:
        return [*self.fake.ssh_args(), "--ssh-user", "root", "--poll-interval", "0.05",
                "--ssh-timeout", "60", "--console-timeout", "30"]

    def run(self, *args: str) -> Launch:
        t0 = time.monotonic()
        proc = run_amic(*args, cwd=self.root, env=self.env(), timeout=300)
        return Launch(proc, time.monotonic() - t0)

    def build(self) -> str:
        b = self.run("build", "--target", "ec2", *self.common(), "--checkpoint", "none",
                     "Amifile")
        assert b.rc == 0, b
        assert_clean(self.fake)
        return b.stdout.strip().splitlines()[-1]

    def launch(self, ami: str, *extra: str) -> Launch:
        self.fake.proxy.reset()
        return self.run("launch", ami, *self.common(), "--boot-timeout", "60", *extra)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    with standin_ec2(tmp_path_factory, strict=True) as fake:   # the launched instances' disks are inspected
        p = Project(fake, tmp_path_factory.mktemp("launch-project"))
        p.ami = p.build()
        yield p


def marks(inst) -> dict[str, list[str]]:
    """/var/lib/marks/* as written on the instance's own disk (its overlay upper)."""
    d = inst.upper / "root" / "var" / "lib" / "marks"
    return {f.name: f.read_text().split() for f in sorted(d.iterdir())} if d.is_dir() else {}


def launched(fake):
    """The one instance the last launch started (the stand-in's record of it)."""
    iid, _image = fake.standin.launches[-1]
    return iid, next(i for i in [*fake.standin.terminated, *fake.standin.instances.values()]
                     if i.id == iid)


def check_launch_call(fake, services: str) -> None:
    """RunInstances asked for the tag and for tags in IMDS, and everything made was tagged."""
    (params,) = fake.proxy.calls_of("RunInstances")
    assert params["MetadataOptions.InstanceMetadataTags"] == "enabled"
    assert params["MetadataOptions.HttpTokens"] == "required"
    tags = {params[k]: params[k[:-3] + "Value"] for k in params
            if k.startswith("TagSpecification.") and k.endswith(".Key")}
    assert tags["amic:services"] == services
    assert tags["amic:role"] == "launch"
    assert fake.created_untagged() == []
    assert fake.standin.problems == []


def test_launch_with_test_service(project):
    fake = project.fake
    run = project.launch(project.ami, "--service", "test")
    assert run.rc == 0, run
    iid, inst = launched(fake)
    assert fake.standin.launches[-1][1] == project.ami
    check_launch_call(fake, "test")
    assert_clean(fake)     # terminated, key pair and group gone, everything tagged

    # the printed status: test enabled, initialised, its update ok; so are the baked ones
    assert re.search(rf"instance {iid}\b", run.stdout), run
    for svc in ("base", "web", "test"):
        row = run.status_row(svc)
        assert re.match(rf"{svc}\s+yes\s+ok \S+ [0-9a-f]{{12}}\s+ok ", row), row
    assert re.match(r"broken\s+no\s+-\s+-", run.status_row("broken"))

    # the boot hook ran on the instance, as amic.service, and read the tag through IMDSv2
    assert sorted(u.name for u in inst.units) == ["amic-ssh-keygen.service", "amic.service"]
    unit = {u.name: u for u in inst.units}
    assert unit["amic.service"].result == 0, inst.console
    # host keys: none in the image, made at boot by the unit; the key amic checked against
    # the console and connected to is the instance's own
    assert unit["amic-ssh-keygen.service"].result == 0, inst.console
    assert image_file(fake, project.ami, "/etc/ssh/sshd_config") is not None
    assert not any(image_file(fake, project.ami, f"/etc/ssh/ssh_host_{kind}_key")
                   for kind in ("ed25519", "rsa", "ecdsa"))
    own = (inst.upper / "root/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[1]
    assert inst.host_key.get_base64() == own
    assert ("GET", "/latest/meta-data/tags/instance/amic:services", 200) in inst.imds_requests

    # INIT ran for test only (the baked services' records came with the image), every
    # enabled UPDATE ran once, all on this instance
    assert marks(inst) == {"init-test": [iid], "update-base": [iid], "update-test": [iid],
                           "update-web": [iid]}
    console = "\n".join(inst.console)
    assert "amic: test: init: begin" in console
    assert "amic: base: init: skipped" in console and "amic: web: init: skipped" in console
    assert "amic: base: init: begin" not in console and "amic: web: init: begin" not in console
    assert "requested services not enabled" not in run.stderr


def test_launch_failing_update_names_it_and_cleans_up(project):
    fake = project.fake
    run = project.launch(project.ami, "--service", "broken")
    assert run.rc != 0, run
    iid, inst = launched(fake)
    check_launch_call(fake, "broken")
    assert_clean(fake)
    assert re.search(r"service failed at boot: broken: update failed, exit 3 "
                     r"\(UPDATE script \S+ at Amifile:\d+\)", run.stderr), run
    assert re.match(r"broken\s+yes\s+ok .*FAILED exit 3", run.status_row("broken")), run
    # its INIT did run (the UPDATE is what failed); test was not requested
    assert marks(inst) == {"init-broken": [iid], "update-base": [iid], "update-web": [iid]}
    assert "broken update on " + iid in "\n".join(inst.console)


def test_launch_keep_leaves_it_running_and_reachable(project):
    fake = project.fake
    run = project.launch(project.ami, "--service", "test", "--keep")
    assert run.rc == 0, run
    iid, inst = launched(fake)
    check_launch_call(fake, "test")
    m = re.search(r"instance (i-\w+) \(\S+\); reach it with: ssh -i (\S+) -p (\d+) (\w+)@(\S+)\n"
                  r"\s*remove it when done: amic gc --build-id (\S+) --force", run.stderr)
    assert m, run
    assert m[1] == iid
    key_file, port, user, host, build_id = Path(m[2]), int(m[3]), m[4], m[5], m[6]
    assert key_file.parent == project.cache / "amic" / "keys"
    assert key_file.stat().st_mode & 0o077 == 0
    left = fake.leftovers(build_id)
    assert left["instances"] == [iid] and len(left["key_pairs"]) == 1 \
        and len(left["security_groups"]) == 1, left
    assert inst.sshd is not None

    # what it says works: the saved key reaches the instance, whose status is healthy
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())   # the relay; checked above
    client.connect(host, port=port, username=user, key_filename=str(key_file),
                   look_for_keys=False, allow_agent=False, timeout=10)
    try:
        _, out, _ = client.exec_command("/var/lib/amic/stage2/amic status --json")
        status = json.loads(out.read().decode())
        assert out.channel.recv_exit_status() == 0
    finally:
        client.close()
    assert status["instance_id"] == iid and status["last_boot_result"] == "ok"

    # clean up through the API, as a user would (or amic gc)
    ec2 = fake.client(direct=False)
    ec2.terminate_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[iid],
                                               WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    for name in left["key_pairs"]:
        ec2.delete_key_pair(KeyName=name)
    for gid in left["security_groups"]:
        ec2.delete_security_group(GroupId=gid)
    assert_clean(fake)



def test_tag_ignored_without_instance_metadata_tags(project):
    """The stand-in's IMDS honours MetadataOptions like EC2: an instance launched with the
    amic:services tag but without InstanceMetadataTags=enabled boots with the baked
    services only (which is why ``amic launch`` enables it)."""
    from tests.harness.sshd import new_key, public_line

    fake = project.fake
    ec2 = fake.client(direct=False)
    ec2.import_key_pair(KeyName="no-imds-tags", PublicKeyMaterial=public_line(new_key()).encode())
    iid = ec2.run_instances(ImageId=project.ami, MinCount=1, MaxCount=1, KeyName="no-imds-tags",
                            MetadataOptions={"HttpTokens": "required"},
                            TagSpecifications=[{"ResourceType": "instance", "Tags": [
                                {"Key": "amic:services", "Value": "test"}]}],
                            )["Instances"][0]["InstanceId"]
    try:
        _, inst = launched(fake)
        assert inst.id == iid and inst.booted.wait(60)
        assert ("GET", "/latest/meta-data/tags/instance/amic:services", 404) in inst.imds_requests
        assert {u.name: u.result for u in inst.units}["amic.service"] == 0, inst.console
        assert marks(inst) == {"update-base": [iid], "update-web": [iid]}
        assert "services: base web\n" in "\n".join(inst.console) + "\n"
    finally:
        ec2.terminate_instances(InstanceIds=[iid])
        ec2.delete_key_pair(KeyName="no-imds-tags")
    assert fake.all_leftovers() == {"instances": [], "key_pairs": [], "security_groups": []}

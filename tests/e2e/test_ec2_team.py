"""A layer cache a team shares: build keys, leases, crash leftovers, digests (issue 10: 5, 6, 7, 9).

The real ``amic`` CLI as a subprocess against moto in server mode, the counting
proxy and the instance stand-in (``tests/harness/ec2/__init__.py``), as in
``test_ec2_e2e.py``. Each build runs with its own ``XDG_CACHE_HOME`` (kept
private keys, the memo secret) and ``AMIC_CACHE_DIR`` (the memo), and a short
heartbeat (``AMIC_EC2_HEARTBEAT``) so a killed build's leftovers show within
seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest

from tests.harness.e2e_builds import AMIFILE, E2E, TOKEN
from tests.harness.cli import run_amic
from tests.harness.ec2 import assert_clean, image_file, standin_ec2

pytestmark = [pytest.mark.slow, pytest.mark.root]

HEARTBEAT = 1.0
MARK = "amic-build-key"


class Team(E2E):
    def __init__(self, fake, project: Path, home: Path) -> None:
        super().__init__(fake, project)
        self.home = home

    def env(self) -> dict[str, str]:
        return {**super().env(), "XDG_CACHE_HOME": str(self.home / "xdg"),
                "AMIC_CACHE_DIR": str(self.home / "cache"), "AMIC_EC2_HEARTBEAT": str(HEARTBEAT)}

    def start(self, *extra: str) -> tuple[subprocess.Popen, list[str]]:
        """A build in the background; its stderr lines collect in the returned list."""
        proc = subprocess.Popen(self.argv(*extra), cwd=self.project, env=self.env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seen: list[str] = []
        threading.Thread(target=lambda: seen.extend(proc.stderr), daemon=True).start()
        return proc, seen

    def gc(self, *extra: str) -> subprocess.CompletedProcess:
        return run_amic("gc", *extra, cwd=self.project, env=self.env(), timeout=300)


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    with standin_ec2(tmp_path_factory, strict=True) as fake:
        yield Team(fake, tmp_path_factory.mktemp("project"), tmp_path_factory.mktemp("home"))


def wait_for(seen: list[str], pattern: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(re.search(pattern, line) for line in list(seen)):
            return
        assert proc.poll() is None, f"exited {proc.returncode} before {pattern!r}:\n{''.join(seen)}"
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} after {timeout}s:\n{''.join(seen)}")


def login(port: int, pkey: paramiko.PKey) -> bool:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect("127.0.0.1", port=port, username="root", pkey=pkey, timeout=20,
                       allow_agent=False, look_for_keys=False, auth_timeout=20)
        return client.exec_command("true")[1].channel.recv_exit_status() == 0
    except paramiko.AuthenticationException:
        return False
    finally:
        client.close()


def authorized(fake, ami: str) -> list[str]:
    found = image_file(fake, ami, "/root/.ssh/authorized_keys")
    return found.read_text().splitlines() if found else []


# -- 5. no build key in any image ----------------------------------------------------------

def test_old_build_key_refused_on_final_ami_built_on_its_layers(team, tmp_path):
    from tests.harness.sshd import SshdRoot

    fake = team.fake
    # Build 1 bakes base and web as checkpoints, fails in app and is kept (--on-error=abort):
    # that is how a build's private key reaches ~/.cache/amic/keys.
    team.write(AMIFILE.replace('echo "$GREETING app" > /etc/amic-app', "exit 7"))
    fake.proxy.reset()
    first = subprocess.run(team.argv("--on-error", "abort"), cwd=team.project, env=team.env(),
                           capture_output=True, text=True, timeout=600, check=False)
    assert first.returncode == 1, first.stderr
    keys = list((team.home / "xdg" / "amic" / "keys").glob("amic-*.pem"))
    assert len(keys) == 1, first.stderr
    old_pem = tmp_path / "old.pem"
    shutil.copy(keys[0], old_pem)
    old_key = paramiko.Ed25519Key.from_private_key_file(str(old_pem))
    old_blob = old_key.get_base64()
    build_id = keys[0].name[len("amic-"):-len(".pem")]
    # the key cloud-init installed carries the mark on the kept instance's disk
    kept = [i for i in fake.standin.instances.values()
            if (i.upper / "root/root/.ssh/authorized_keys").exists()]
    lines = [line for i in kept
             for line in (i.upper / "root/root/.ssh/authorized_keys").read_text().splitlines()]
    assert any(old_blob in line and MARK in line for line in lines), lines
    # gc of the kept build removes its key pair and, with it, the private key file
    gone = team.gc("--build-id", build_id, "--force")
    assert gone.returncode == 0, gone.stderr
    assert not keys[0].exists()
    assert_clean(fake)

    # Build 2: app fixed; starts from build 1's cached web layer.
    team.write(AMIFILE)
    second = team.build()
    assert second.rc == 0, second
    assert second.layers() == {"base": "CACHED", "web": "CACHED", "app": "RUN"}, second
    final = second.ami
    lines = authorized(fake, final)
    assert not any(MARK in line for line in lines), lines
    assert not any(old_blob in line for line in lines), lines

    # Log in with build 1's key to an instance of the final AMI: its sshd trusts what the
    # image's /root/.ssh/authorized_keys holds (as a real sshd does), plus nothing else.
    trusted = [line for line in lines if line.strip() and not line.startswith("#")]
    with SshdRoot(fake.standin.images[final], tmp_path / "final-upper", trusted) as server:
        assert not login(server.port, old_key)
    # control: the same sshd, trusting that key, lets it in (the key and the path work)
    with SshdRoot(fake.standin.images[final], tmp_path / "control-upper",
                  [f"ssh-ed25519 {old_blob}"]) as server:
        assert login(server.port, old_key)


# -- 6. one build per key at a time --------------------------------------------------------

def created_per_key(fake, action: str) -> dict[str, int]:
    """How many ``action`` calls created something of each layer key (once per call: a
    CreateImage tags its image and its snapshots with the same key; a refused call, e.g.
    SnapshotCreationPerVolumeRateExceeded, made nothing)."""
    counts: dict[str, int] = {}
    for params in fake.proxy.calls_of(action, answered=True):
        keys = {params[k[:-len(".Key")] + ".Value"] for k, v in params.items()
                if k.startswith("TagSpecification.") and k.endswith(".Key") and v == "amic:key"}
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
    return counts


def test_two_concurrent_builds_make_each_layer_once(team):
    fake = team.fake
    # a fresh chain: nothing of it is cached
    team.write(AMIFILE.replace("echo '{\"layer\": \"base\"}'", "echo '{\"layer\": \"base\"}' && sleep 2"))
    fake.proxy.reset()
    try:
        one, seen1 = team.start()
        wait_for(seen1, r"base: init: begin", one)
        two, seen2 = team.start()
        wait_for(seen2, r"waiting for build \S+ \(lease amic-lease-", two)
        rc1, rc2 = one.wait(600), two.wait(600)
        out1, out2 = one.stdout.read(), two.stdout.read()
    finally:
        team.write(AMIFILE)
    assert rc1 == 0, "".join(seen1)
    assert rc2 == 0, "".join(seen2)
    ami1, ami2 = out1.strip().splitlines()[-1], out2.strip().splitlines()[-1]
    assert ami1 == ami2 and ami1.startswith("ami-"), "".join(seen1) + "\n----\n" + "".join(seen2)
    assert "unchanged" in "".join(seen2)
    snaps = created_per_key(fake, "CreateSnapshot")
    images = created_per_key(fake, "CreateImage")
    assert len(snaps) == 3 and set(snaps.values()) == {1}, snaps
    assert len(images) == 1 and set(images.values()) == {1}, images
    assert fake.proxy.count("RunInstances") == 1
    # the leases were key pairs, taken atomically and gone afterwards
    assert fake.proxy.count("CreateKeyPair") >= 4
    assert_clean(fake)


# -- 7. crash leftovers found at once -----------------------------------------------------

def test_kill_9_leftovers_listed_by_gc_at_once(team):
    fake = team.fake
    team.write(AMIFILE.replace('echo "$GREETING app" > /etc/amic-app', "echo sleeping; sleep 120"))
    fake.proxy.reset()
    try:
        proc, seen = team.start()
        wait_for(seen, r"app: init: begin", proc)
        # alive: its heartbeat is fresh, so gc leaves it alone (its amic:expires is hours away)
        alive = team.gc("--dry-run", "--json")
        assert alive.returncode == 0 and json.loads(alive.stdout or "[]") == [], alive
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        time.sleep(HEARTBEAT * 3 + 1.5)
        listed = team.gc("--dry-run", "--json")
    finally:
        team.write(AMIFILE)
    assert listed.returncode == 0, listed.stderr
    leaks = json.loads(listed.stdout)
    kinds = sorted(leak["kind"] for leak in leaks)
    names = [leak["name"] or leak["id"] for leak in leaks if leak["kind"] == "key-pair"]
    assert kinds.count("instance") == 1 and kinds.count("security-group") == 1, leaks
    assert sum(n.startswith("amic-lease-") for n in names) == 2, leaks   # app and the final key
    assert sum(not n.startswith("amic-lease-") for n in names) == 1, leaks
    # its owner ran on this host: known dead at once (tests/e2e/test_ec2_owner.py)
    assert all(leak["why"].startswith("owner pid") for leak in leaks), leaks
    removed = team.gc()
    assert removed.returncode == 0, removed.stderr
    assert_clean(fake)
    assert team.fake.client().describe_key_pairs()["KeyPairs"] == []


# -- 9. no reversible digest of an input value ---------------------------------------------

def all_tags(fake) -> list[str]:
    ec2 = fake.client()
    values = []
    for img in ec2.describe_images(Owners=["self"])["Images"]:
        values += [f"{t['Key']}={t['Value']}" for t in img.get("Tags", [])]
    for snap in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]:
        values += [f"{t['Key']}={t['Value']}" for t in snap.get("Tags", [])]
    for r in ec2.describe_instances()["Reservations"]:
        for inst in r["Instances"]:
            values += [f"{t['Key']}={t['Value']}" for t in inst.get("Tags", [])]
    for vol in ec2.describe_volumes()["Volumes"]:
        values += [f"{t['Key']}={t['Value']}" for t in vol.get("Tags", [])]
    return values


def test_no_digest_of_an_arg_value_in_tags_or_memo(team):
    fake = team.fake
    team.write(AMIFILE)
    b = team.build()
    assert b.rc == 0, b
    name = "DEPLOY_TOKEN"
    guesses = [TOKEN, f"{name}={TOKEN}", f"{name}\0{TOKEN}", f"amic-arg\0{name}\0{TOKEN}",
               f"amic-memo-arg\0{name}\0{TOKEN}"]
    digests = {hashlib.sha256(g.encode()).hexdigest() for g in guesses}
    digests |= {d[:16] for d in digests} | {hashlib.md5(TOKEN.encode()).hexdigest()}
    tags = all_tags(fake)
    assert any(t.startswith("amic:in:args=") for t in tags), tags   # the tag is still there
    memos = list((team.home / "cache" / "memo").glob("*.json"))
    assert memos, "no memo written"
    memo = json.loads(memos[0].read_text())
    assert set(memo["args"]) == {name}
    text = "\n".join(tags) + "\n" + "\n".join(m.read_text() for m in memos)
    assert TOKEN not in text
    for digest in digests:
        assert digest not in text
    secret = team.home / "xdg" / "amic" / "memo.key"
    assert secret.exists() and oct(secret.stat().st_mode & 0o777) == "0o600"
    # the memo still answers an unchanged rebuild, and a changed value is noticed
    again = team.build()
    assert again.rc == 0 and again.ami == b.ami and again.boto3 == [], again
    env = {**team.env(), "DEPLOY_TOKEN": TOKEN + "-2"}
    from amic.engine import memo as memomod

    saved = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "AMIC_CACHE_DIR")}
    os.environ.update({k: env[k] for k in saved})
    try:
        amifile = str(team.project / "Amifile")
        assert memomod.lookup(amifile, {}, "ec2", environ=team.env()) is not None
        assert memomod.lookup(amifile, {}, "ec2", environ=env) is None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- the lease itself, against moto server through the proxy --------------------------------

def test_lease_waits_for_a_live_holder_and_takes_over_a_dead_one(team, monkeypatch):
    from amic.targets.ec2 import lease as leases
    from amic.targets.ec2 import session as aws

    monkeypatch.setenv("AMIC_EC2_HEARTBEAT", "0.5")
    ec2 = team.fake.client(direct=False)
    key = hashlib.sha256(b"lease-test").hexdigest()
    name = leases.lease_name(key)
    notes: list[str] = []
    order: list[str] = []
    # a live holder (heartbeat refreshed by its lease) makes the second wait
    with leases.lease(ec2, key, "holder-1", log=notes.append, poll=0.1):
        def second():
            with leases.lease(ec2, key, "holder-2", log=notes.append, poll=0.1):
                order.append("second")
        t = threading.Thread(target=second)
        t.start()
        time.sleep(2.0)      # four heartbeats: the holder stays fresh, the waiter waits
        assert order == [] and any("waiting for build holder-1" in n for n in notes), notes
        order.append("first done")
    t.join(30)
    assert order == ["first done", "second"]
    assert leases.describe(ec2, name) is None
    # a dead holder: a lease whose heartbeat is old, as a kill -9 on another host leaves it
    old = aws.iso(aws.now() - __import__("datetime").timedelta(seconds=30))
    tags = {**aws.resource_tags("dead-1", ttl=leases.TTL, role=leases.ROLE),
            "amic:heartbeat": old, "amic:heartbeat-every": "0.5"}
    tags.pop("amic:owner")      # (this process would be its owner: alive, not stale)
    dead = ec2.create_key_pair(KeyName=name, TagSpecifications=aws.tag_specs(tags, "key-pair"))
    notes.clear()
    with leases.lease(ec2, key, "taker-1", log=notes.append, poll=0.1):
        seen = leases.describe(ec2, name)
        assert seen["KeyPairId"] != dead["KeyPairId"] and seen["tags"]["amic:build-id"] == "taker-1"
        assert seen["tags"]["amic:key"] == key and seen["tags"]["amic:role"] == "lease"
    assert any("heartbeat stopped" in n and "taking it over" in n for n in notes), notes
    assert leases.describe(ec2, name) is None

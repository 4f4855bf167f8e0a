"""A fake EC2 that is real HTTP: moto in server mode, a counting proxy, and instance stand-ins.

Nothing in boto3 is patched. Clients reach the proxy through
``AWS_ENDPOINT_URL_EC2``; the proxy forwards every call to a moto server
(a subprocess on a random loopback port), counts operations, can answer
with injected errors (throttling), and watches the calls that change an
instance's life to drive a *stand-in*:

- RunInstances: a fresh upper directory for each instance over the layers
  of the AMI it was launched from (a registered base AMI: the debootstrap
  base; an AMI made by CreateImage: the layers of its instance), served by a
  real sshd on loopback whose sessions run inside that overlay root
  (``tests/harness/sshd.py``), authorizing the public key moto stored for the key
  pair, with its own host key;
- StopInstances / StartInstances: the sshd goes away / comes back (same
  files, same host key, like a real stop/start);
- CreateImage: the instance's upper directory is frozen (moved, the
  instance being stopped) as a new layer on top of its layers; started
  again, the instance gets a fresh upper over that chain. So an instance
  launched from a layer AMI has the earlier layers' files and packages;
- TerminateInstances: the sshd stops and the root is deleted; the instance shows
  ``shutting-down`` for a second, and its security groups cannot be deleted until
  then (``terminate.py``: EC2's behaviour, which moto skips);
- GetConsoleOutput: cloud-init's ``SSH HOST KEY FINGERPRINTS`` block with the
  stand-in's real host key is added (moto prints none), then what the boot
  units wrote (``StandardOutput=journal+console``).

**Boot: the one stand-in for systemd and the instance metadata service.**
When an instance's root has amic's boot hook enabled (the units the stage2
ships in ``/var/lib/amic/stage2/boot/*.service`` that ``amic
install-boot-hook`` linked into ``/etc/systemd/system/multi-user.target.wants``),
every boot runs them as systemd would, from the unit files in the root
(``ExecStart``, ``Environment``, the ``Condition*`` lines; nothing hard-coded):
units ordered ``Before=ssh.service``/``sshd.service`` (the host key
regeneration) before the stand-in's sshd starts, the others (``amic.service``,
``After=network-online.target``) in a thread right after it is up. Their
environment adds ``AMIC_EC2=1 AMIC_IMDS_URL=http://127.0.0.1:PORT``: a tiny
IMDSv2 on loopback (``Imds``) for that instance, answering ``PUT
/latest/api/token``, ``GET /latest/meta-data/instance-id`` and ``GET
/latest/meta-data/tags/instance[/KEY]`` from moto (tags only when the instance
was launched with ``MetadataOptions.InstanceMetadataTags=enabled``, as on EC2),
404 for everything else. That environment is the only difference from a real
boot as far as amic is concerned. Host keys stay consistent: sshd serves the
root's own ``/etc/ssh/ssh_host_ed25519_key`` when the image has one after the
early units ran (an image with openssh-server); otherwise (the debootstrap
base has no sshd, so the regeneration unit's conditions skip it) the
stand-in's key, generated at first boot and kept over stop/start. The console
fingerprints are always those of the key served.

The instance's sshd is reached the way a port-forwarded setup would reach
it: a relay on one fixed loopback port (``StandIn.relay_port``) forwards to
the sshd of the most recently started instance; builds pass it as
``--ssh-host 127.0.0.1 --ssh-port PORT``.

moto's account id is set to Debian's image owner, so ``FROM debian:12``
resolves through the same owner + name filter as on real AWS.

One module per concern: ``api`` (moto and the proxy), ``standin`` (the hooks above),
``boot`` (relay, IMDSv2, unit files), ``units`` (running them; the dpkg lock holder),
``plain_sshd``, ``terminate``, ``capacity`` (capacity refusals, spot prices and
interruptions), ``ebs`` and ``ebs_model`` (the EBS direct APIs, at
``AWS_ENDPOINT_URL_EBS``), ``strict`` (EC2's documented strictness), ``iam`` and
``iam_policy`` (IAM enforced with docs/ec2.md's policy, on EC2 and on EBS), ``iam_cli``
(amic run as that IAM user), ``amis`` (block devices and AMI attributes where moto
differs from EC2). This module puts them together
(``FakeEc2``, ``fake_ec2``, ``standin_ec2``) with the helpers the tests share.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from pathlib import Path

from tests.harness.cli import AMIC
from tests.harness.ec2.api import (DEBIAN_OWNER, REGION, ApiError, Ec2Proxy,  # noqa: F401
                                    MotoServer, free_port, numbered, xml_values)
from tests.harness.ec2.capacity import Capacity
from tests.harness.ec2.ebs import EbsStandIn
from tests.harness.ec2.plain_sshd import PlainSshd  # noqa: F401
from tests.harness.ec2.standin import StandIn
from tests.harness.ec2.strict import Strict, Strictness


class FakeEc2:
    """moto + proxy + stand-in, with the environment a build needs to reach them."""

    def __init__(self, moto: MotoServer, proxy: Ec2Proxy, workdir: Path,
                 base_root: Path | None) -> None:
        self.moto = moto
        self.proxy = proxy
        self.workdir = workdir
        self.base_root = base_root
        self.standin = StandIn(proxy, workdir / "standin", base_root)
        self.capacity = Capacity(proxy)
        """Capacity refusals (off until a test asks), spot prices and interruptions."""
        self.ebs = EbsStandIn(proxy, workdir / "ebs")
        """The EBS direct APIs (``ebs.py``), at ``AWS_ENDPOINT_URL_EBS``."""
        self.strict: Strict | None = None
        """EC2's documented strictness (``strict.py``) when ``make_strict`` was called."""

    def make_strict(self, settings: Strictness | None = None) -> Strict:
        """Throttling, eventual consistency, snapshot and ENI refusals, the first-boot dpkg
        lock: as EC2 does them (kept over ``reset``)."""
        self.strict = Strict(self.proxy, self.standin, settings)
        born = self.strict.consistency.born
        self.ebs.on_created[:] = [lambda snap: born.__setitem__(snap, time.monotonic())]
        self.standin.dpkg_lock_seconds = self.strict.settings.dpkg_lock_seconds
        self.standin.relay_idle_timeout = self.strict.settings.relay_idle_timeout
        self.standin.relay.idle_timeout = self.strict.settings.relay_idle_timeout
        return self.strict

    @property
    def env(self) -> dict[str, str]:
        # AWS_ENDPOINT_URL sends every other service (autoscaling, sts, ...) to moto too: no
        # test can reach real AWS, whatever it calls.
        return {"AWS_ENDPOINT_URL_EC2": self.proxy.url, "AWS_ENDPOINT_URL": self.moto.url,
                "AWS_ENDPOINT_URL_EBS": self.ebs.url,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION, "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}

    def ssh_args(self) -> list[str]:
        return ["--ssh-host", "127.0.0.1", "--ssh-port", str(self.standin.relay_port),
                "--ssh-cidr", "127.0.0.1/32"]

    def client(self, direct: bool = True):
        """A boto3 client for assertions (``direct``: straight to moto, not counted)."""
        import boto3

        key, secret = self.proxy.credentials
        return boto3.client("ec2", region_name=REGION, aws_access_key_id=key,
                            aws_secret_access_key=secret,
                            endpoint_url=self.moto.url if direct else self.proxy.url)

    def register_debian12(self) -> str:
        return self.standin.register_base(self.client(), "debian-12-amd64-20240717-1811")

    def reset(self) -> None:
        self.standin.close()
        self.moto.reset()
        self.proxy.reset()
        self.proxy.before.clear()
        self.proxy.after.clear()
        self.proxy.forward.clear()
        self.proxy.gates.clear()
        shutil.rmtree(self.workdir / "standin", ignore_errors=True)
        self.standin = StandIn(self.proxy, self.workdir / "standin", self.base_root)
        self.capacity = Capacity(self.proxy)
        self.ebs.reset(self.proxy)
        if self.strict is not None:
            self.make_strict(self.strict.settings)

    # assertions ---------------------------------------------------------------

    def leftovers(self, build_id: str | None = None) -> dict[str, list]:
        """Instances not terminated, key pairs and security groups amic created (by tag)."""
        ec2 = self.client()
        filt = [{"Name": "tag-key", "Values": ["amic:tool"]}]
        if build_id:
            filt = [{"Name": "tag:amic:build-id", "Values": [build_id]}]
        running = [i["InstanceId"]
                   for r in ec2.describe_instances(Filters=filt)["Reservations"]
                   for i in r["Instances"] if i["State"]["Name"] not in ("terminated", "shutting-down")]
        keys = [k["KeyName"] for k in ec2.describe_key_pairs(Filters=filt)["KeyPairs"]]
        groups = [g["GroupId"] for g in ec2.describe_security_groups(Filters=filt)["SecurityGroups"]]
        return {"instances": running, "key_pairs": keys, "security_groups": groups}

    def all_leftovers(self) -> dict[str, list]:
        """Like ``leftovers`` but without relying on tags (catches untagged resources too)."""
        ec2 = self.client()
        running = [i["InstanceId"] for r in ec2.describe_instances()["Reservations"]
                   for i in r["Instances"] if i["State"]["Name"] not in ("terminated", "shutting-down")]
        keys = [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]]
        groups = [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]
                  if g["GroupName"] != "default"]
        return {"instances": running, "key_pairs": keys, "security_groups": groups}

    def created_untagged(self) -> list[str]:
        """Every creating call seen by the proxy that did not carry amic's tags."""
        bad = []
        for action, params in self.proxy.log:
            if action in ("RunInstances", "ImportKeyPair", "CreateKeyPair", "CreateSecurityGroup",
                          "CreateImage", "CreateSnapshot", "RegisterImage"):
                keys = {v for k, v in params.items()
                        if k.startswith("TagSpecification.") and k.endswith(".Key")}
                if "amic:tool" not in keys or "amic:build-id" not in keys:
                    bad.append(action)
        return bad


@contextlib.contextmanager
def fake_ec2(workdir: Path, base_root: Path | None = None, moto_env: dict | None = None, *,
             strict: bool = False):
    moto = MotoServer(env=moto_env).start()
    proxy = Ec2Proxy(moto.port).start()
    fake = FakeEc2(moto, proxy, workdir, base_root)
    if strict:
        fake.make_strict()
    try:
        yield fake
    finally:
        fake.standin.close()
        fake.ebs.close()
        proxy.stop()
        moto.stop()


@contextlib.contextmanager
def standin_ec2(tmp_path_factory, moto_env: dict | None = None, *, strict: bool = True):
    """moto + proxy + instance stand-in over the cached Debian base, keeping instance disks
    for inspection: what the end-to-end ec2 test modules share (they pass ``strict=True``)."""
    from amic.targets.local import rootfs

    from tests.harness.sshd import require_sshd_root

    require_sshd_root()
    base = rootfs.ensure_base()
    os.makedirs("/run/sshd", exist_ok=True)
    with fake_ec2(tmp_path_factory.mktemp("ec2"), base, moto_env, strict=strict) as fake:
        fake.standin.keep_disks = True    # tests search and inspect the instances' disks
        yield fake


# -- helpers the end-to-end modules share ----------------------------------------------------

def amic_exe() -> str:
    """The ``amic`` the tests run (``tests/harness/cli.py``), for a test that must hold the
    process itself (``Popen``); otherwise ``run_amic``."""
    return AMIC


def assert_clean(fake) -> None:
    """Through the EC2 API: nothing of any build is left, and every create call carried tags."""
    left = fake.leftovers()
    assert left == {"instances": [], "key_pairs": [], "security_groups": []}, left
    left = fake.all_leftovers()
    assert left == {"instances": [], "key_pairs": [], "security_groups": []}, left
    assert fake.created_untagged() == []
    # and the stand-in agrees: no instance's sshd is still up
    assert not any(i.sshd for i in fake.standin.instances.values())


def image_file(fake, ami: str, path: str) -> Path | None:
    """A file as an instance launched from ``ami`` sees it (top-most layer wins)."""
    return _layered_file(fake.standin.images[ami], path)


def disk_file(fake, snapshot_id: str, path: str) -> Path | None:
    """A file as snapshot ``snapshot_id`` captured it."""
    return _layered_file(fake.standin.snapshots[snapshot_id], path)


def _layered_file(layers: list[Path], path: str) -> Path | None:
    for layer in layers:
        candidate = layer / path.lstrip("/")
        if candidate.exists() or candidate.is_symlink():
            st = candidate.lstat()
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return None      # an overlayfs whiteout: deleted in this layer
            return candidate
    return None

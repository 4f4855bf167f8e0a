"""The ``ec2`` target: AMIs baked over SSH, every temporary resource tagged and cleaned up.

One build launches (at most) one instance:

1. ``resolve_base``: ``FROM ami-…``, an AMI filter (``owner=… name=… arch=…``,
   newest wins), or a portable name (``debian:12``) resolved to the
   distribution's own account and image names.
2. ``launch``: a key pair generated here (ed25519; rsa on request) and
   imported, a security group open only to SSH from the caller (or given
   CIDRs, or the user's own group), the instance (IMDSv2 required, encrypted
   root volume on request). Each cleanup is registered on an ``ExitStack``
   *before* the resource is created and finds it by its deterministic name or
   by the build tag, so an interrupt that lands mid-call still removes it.
   Cleanup failures are logged, never raised (Packer's multistep).
3. SSH: wait for the instance, read its host key fingerprints from the
   console (cloud-init prints them) and refuse any other key; trust on first
   use only when asked.
4. ``snapshot``: stop, CreateImage, wait (configurable waiter), tag the image
   and, separately, its snapshots; the instance is started again lazily if the
   engine runs more commands on it.

Everything created carries ``amic:tool``, ``amic:build-id``, and temporary
things ``amic:expires``; ``amic gc`` (see ``amic.cli.ec2``) removes what a
crashed build left behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import ipaddress
import logging
import math
import os
import re
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import attrs

from amic import __version__

from amic.targets.ec2 import session as aws
from amic.errors import BuildError, UsageError
from amic.contract import TAG_AMIFILE, TAG_BUILD, TAG_KEY, TAG_KIND, TAG_SERVICE
from amic.targets.base import Image, Target

log = logging.getLogger("amic.ec2")

TAG_SSH_USER = "amic:ssh-user"
"""Login user of the image, inherited by every image baked from it."""

# -- base images -------------------------------------------------------------

_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "arm64": "arm64", "aarch64": "arm64"}


@attrs.frozen
class Distro:
    owner: str
    """The distribution's own AWS account (only its images are trusted for the name)."""
    names: Mapping[str, str]
    """Version -> image name pattern; ``{arch}`` is the distribution's spelling."""
    user: str
    """Default login user of its images."""
    arch_names: Mapping[str, str] = attrs.field(factory=lambda: {"x86_64": "amd64",
                                                                 "arm64": "arm64"})
    aliases: Mapping[str, str] = attrs.field(factory=dict)


DISTROS: dict[str, Distro] = {
    "debian": Distro(
        owner="136693071363", user="admin",
        names={"11": "debian-11-{arch}-*", "12": "debian-12-{arch}-*", "13": "debian-13-{arch}-*"},
        aliases={"bullseye": "11", "bookworm": "12", "trixie": "13", "latest": "12"}),
    "ubuntu": Distro(
        owner="099720109477", user="ubuntu",
        names={"20.04": "ubuntu/images/hvm-ssd/ubuntu-focal-20.04-{arch}-server-*",
               "22.04": "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-{arch}-server-*",
               "24.04": "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-*"},
        aliases={"focal": "20.04", "jammy": "22.04", "noble": "24.04", "latest": "24.04"}),
    "amazonlinux": Distro(
        owner="137112412989", user="ec2-user",
        names={"2023": "al2023-ami-2023.*-kernel-*-{arch}", "2": "amzn2-ami-kernel-5.10-hvm-*-{arch}-gp2"},
        arch_names={"x86_64": "x86_64", "arm64": "arm64"},
        aliases={"latest": "2023"}),
}
DEFAULT_BASE = "debian:12"

_OWNER_ALIASES = {"debian": "136693071363", "canonical": "099720109477", "ubuntu": "099720109477"}
_FILTER_KEYS = {"owner", "owners", "name", "arch", "architecture", "user", "id"}


def portable_names() -> list[str]:
    return sorted(f"{d}:{v}" for d, distro in DISTROS.items() for v in distro.names)


def arch_for_instance_type(instance_type: str) -> str:
    """Graviton families (``t4g``, ``m7g``, ``c6gn``, ``a1``) are arm64; the rest x86_64."""
    family = instance_type.split(".")[0]
    if family == "a1" or re.fullmatch(r"[a-z]+\d+g[a-z]*", family):
        return "arm64"
    return "x86_64"


def guess_user(name: str) -> str:
    lowered = name.lower()
    for word, user in (("debian", "admin"), ("ubuntu", "ubuntu"), ("al2023", "ec2-user"),
                       ("amzn", "ec2-user"), ("rhel", "ec2-user"), ("fedora", "fedora"),
                       ("centos", "centos"), ("rocky", "rocky")):
        if word in lowered:
            return user
    return "ec2-user"


@attrs.frozen
class BaseQuery:
    """What ``FROM`` asks for, as a DescribeImages call."""

    ref: str
    image_ids: tuple[str, ...] = ()
    owners: tuple[str, ...] = ()
    filters: tuple[tuple[str, str], ...] = ()
    user: str | None = None

    def call_args(self) -> dict:
        args: dict = {}
        if self.image_ids:
            args["ImageIds"] = list(self.image_ids)
        if self.owners:
            args["Owners"] = list(self.owners)
        filters = [{"Name": k, "Values": [v]} for k, v in self.filters]
        if not self.image_ids:
            filters.append({"Name": "state", "Values": ["available"]})
        if filters:
            args["Filters"] = filters
        return args


def parse_base(ref: str | None, *, arch: str) -> BaseQuery:
    """``FROM`` text to a query. Raises UsageError for a name amic does not know."""
    ref = (ref or DEFAULT_BASE).strip()
    if re.fullmatch(r"ami-[0-9a-f]{8,17}", ref):
        return BaseQuery(ref, image_ids=(ref,))
    if "=" in ref:
        owners: list[str] = []
        filters: list[tuple[str, str]] = []
        user = None
        image_ids: list[str] = []
        has_arch = False
        for token in ref.split():
            key, eq, value = token.partition("=")
            if not eq or not value:
                raise UsageError(f"AMI filter {ref!r}: expected KEY=VALUE words, got {token!r}")
            key = key.lower()
            if key in ("owner", "owners"):
                owners += [_OWNER_ALIASES.get(o, o) for o in value.split(",")]
            elif key == "name":
                filters.append(("name", value))
            elif key in ("arch", "architecture"):
                filters.append(("architecture", _ARCH.get(value, value)))
                has_arch = True
            elif key == "user":
                user = value
            elif key == "id":
                image_ids.append(value)
            else:
                filters.append((key, value))
        if not has_arch and not image_ids:
            filters.append(("architecture", arch))
        return BaseQuery(ref, image_ids=tuple(image_ids), owners=tuple(owners),
                         filters=tuple(filters), user=user)
    name, _, version = ref.partition(":")
    distro = DISTROS.get(name.lower())
    if distro is None:
        raise UsageError(f"base image {ref!r}: not an ami-… id, an AMI filter "
                         f"(owner=… name=…) or a known name ({', '.join(portable_names())})")
    version = distro.aliases.get(version or "latest", version or "latest")
    pattern = distro.names.get(version)
    if pattern is None:
        raise UsageError(f"base image {ref!r}: unknown {name} version; known: "
                         f"{', '.join(sorted(distro.names))}")
    # The name pattern already pins the architecture (and moto keeps none to filter on).
    return BaseQuery(ref, owners=(distro.owner,),
                     filters=(("name", pattern.format(arch=distro.arch_names[arch])),),
                     user=distro.user)


# -- host keys from the console -------------------------------------------------

@attrs.frozen
class HostKeyFingerprint:
    bits: int
    fingerprint: str
    """``SHA256:<base64 without padding>`` or ``MD5:aa:bb:…``."""
    kind: str
    """``ED25519``, ``ECDSA``, ``RSA``, ``DSA``."""


_FP_LINE = re.compile(r"(?P<bits>\d+)\s+(?P<fp>SHA256:[A-Za-z0-9+/]+=*|MD5:(?:[0-9a-f]{2}:){15}[0-9a-f]{2}"
                      r"|(?:[0-9a-f]{2}:){15}[0-9a-f]{2})\s+.*?\((?P<kind>[A-Z0-9-]+)\)\s*$")


def parse_console_fingerprints(text: str) -> list[HostKeyFingerprint]:
    """Host key fingerprints from cloud-init's block in the console output.

    Lines may carry prefixes (``ec2: ``, ``[  12.3] cloud-init[42]: ``); only
    lines between ``-----BEGIN SSH HOST KEY FINGERPRINTS-----`` and the END
    marker count, so a fingerprint printed elsewhere cannot be slipped in.
    """
    found: list[HostKeyFingerprint] = []
    inside = False
    for line in text.splitlines():
        if "-----BEGIN SSH HOST KEY FINGERPRINTS-----" in line:
            inside = True
            continue
        if "-----END SSH HOST KEY FINGERPRINTS-----" in line:
            inside = False
            continue
        if inside:
            m = _FP_LINE.search(line)
            if m:
                fp = m["fp"]
                if not fp.startswith(("SHA256:", "MD5:")):
                    fp = "MD5:" + fp
                found.append(HostKeyFingerprint(int(m["bits"]), fp.rstrip("="), m["kind"]))
    return found


# -- options -----------------------------------------------------------------------

ON_ERROR = ("cleanup", "abort")


@attrs.define
class Ec2Options:
    """Everything ``--target ec2`` can be told (see ``add_ec2_build_options``)."""

    aws: aws.AwsOptions = attrs.field(factory=aws.AwsOptions)
    instance_type: str = "t3.micro"
    arch: str | None = None
    """``x86_64`` or ``arm64``; by default from the instance type."""
    volume_size: int | None = None
    """Root volume GiB (default: the image's)."""
    volume_type: str = "gp3"
    subnet_id: str | None = None
    vpc_id: str | None = None
    security_group_ids: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    ssh_cidrs: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    """Who may reach port 22; empty: the caller's public address, looked up once."""
    associate_public_ip: bool | None = None
    iam_instance_profile: str | None = None
    ssh_user: str | None = None
    ssh_host: str | None = None
    ssh_port: int = 22
    ssh_interface: str = "public-ip"
    """Address used without ``ssh_host``: public-ip, private-ip, public-dns, private-dns."""
    ssh_timeout: float = 600.0
    console_timeout: float = 600.0
    """How long to wait for the host key fingerprints on the console."""
    trust_on_first_use: bool = False
    host_key_fingerprints: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    """Expected host key fingerprints given by the user (skip the console)."""
    jump_host: str | None = None
    """``[user@]host[:port]`` of a bastion, reached with the SSH agent / ``jump_key``."""
    jump_key: str | None = None
    key_type: str = "ed25519"
    ttl: dt.timedelta = dt.timedelta(hours=4)
    """How long temporary resources live before ``amic gc`` may remove them."""
    image_name: str = "{amifile}-{timestamp}"
    """Final AMI name template: {amifile} {key} {build_id} {timestamp} {date} and labels {label[x]}."""
    image_description: str = "built by amic from {amifile} (key {key})"
    image_tags: Mapping[str, str] = attrs.field(factory=dict)
    copy_regions: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    encrypt: bool = False
    kms_key_id: str | None = None
    share_accounts: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    force_deregister: bool = False
    poll_interval: float = 5.0
    instance_timeout: float = 900.0
    image_timeout: float = 3600.0
    on_error: str = "cleanup"


# -- the machine -------------------------------------------------------------------

class Ec2Machine:
    """An instance reached over SSH; reconnects (and starts it again) after a snapshot."""

    def __init__(self, target: Ec2Target, instance_id: str, user: str, pkey, key_name: str,
                 build_id: str) -> None:
        self.target = target
        self.instance_id = instance_id
        self.user = user
        self.pkey = pkey
        self.key_name = key_name
        self.build_id = build_id
        self.host: str | None = None
        self.port: int = target.opts.ssh_port
        self.expected_keys: set[str] = set()
        self.keys_source = "expected"
        """Where ``expected_keys`` came from, for a mismatch message."""
        self.conn = None
        self.stopped = False
        self.key_file: Path | None = None
        self.build_public_key: str | None = None
        """The key pair's public line (cloud-init installs it; the engine has it removed)."""

    # Machine protocol ------------------------------------------------------------
    def run(self, command, *, env=None, on_output=None, timeout=None) -> int:
        from amic.targets.local.rootfs import terminal_line

        # progress redrawn with carriage returns (apt, dpkg) shows as its last state
        out = (lambda line: on_output(terminal_line(line))) if on_output else None
        with self._ssh_errors(f"running a command on {self.instance_id}"):
            return self._connection().run(command, env=env, on_output=out, timeout=timeout)

    def put(self, local, remote, *, mode=0o600) -> None:
        with self._ssh_errors(f"uploading {remote} to {self.instance_id}"):
            self._connection().put(local, remote, mode=mode)

    @contextlib.contextmanager
    def _ssh_errors(self, doing: str):
        import paramiko

        from amic.targets.ssh.errors import SshError

        try:
            yield
        except SshError as exc:
            self.disconnect()
            raise BuildError(f"{doing}: {exc}") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.disconnect()
            raise BuildError(f"{doing}: SSH failed: {exc or type(exc).__name__}") from None

    def describe(self) -> str:
        where = f"{self.user}@{self.host or '?'}"
        key = f"-i {self.key_file} " if self.key_file else ""
        port = f"-p {self.port} " if self.port != 22 else ""
        jump = f"-J {self.target.opts.jump_host} " if self.target.opts.jump_host else ""
        return (f"instance {self.instance_id} ({self.target.region}); reach it with: "
                f"ssh {key}{port}{jump}{where}\n"
                f"remove it when done: amic gc --build-id {self.build_id} --force")

    # ---------------------------------------------------------------------------
    def _connection(self):
        if self.stopped:
            self.target._start_instance(self)
        if self.conn is None:
            self.conn = self.target._connect(self)
        return self.conn

    def disconnect(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


# -- the target ---------------------------------------------------------------------

class Ec2Target(Target):
    """AMIs on EC2. See the module docstring and docs/ec2.md."""

    name = "ec2"
    keeps_images = True
    default_checkpoint = "auto"
    """AMIs cost minutes and money: by default a layer is kept as a checkpoint only when the
    init time it would save (since the previous checkpoint) exceeds what an AMI costs
    (``snapshot_seconds``), and the last layer always (so an UPDATE-only change runs no init)."""
    snapshot_seconds = 300.0
    fast_rebuild = True
    """An unchanged rebuild is answered from the build memo once EC2 confirms it (``confirm_memo``)."""

    def __init__(self, spec: str = "", *, options: Ec2Options | None = None, log_fn=None) -> None:
        if spec:
            raise UsageError(f"--target ec2 takes no address (got ec2://{spec}); "
                             "use --region and --subnet")
        self.opts = options or Ec2Options()
        self.log = log_fn or _stderr_log
        self._ec2 = None
        self._session = None
        self._clients: dict[str, object] = {}
        self._caller_cidrs: tuple[str, ...] | None = None

    @classmethod
    def from_args(cls, args, **kwargs) -> Ec2Target:
        """Build from the options ``add_ec2_build_options`` added to a parser."""
        from amic.cli.ec2 import options_from_args

        target = cls(options=options_from_args(args), **kwargs)
        target.keep_on_error = target.opts.on_error == "abort"
        return target

    # clients -------------------------------------------------------------------
    @property
    def ec2(self):
        if self._ec2 is None:
            self._session = aws.session(self.opts.aws)
            self._ec2 = aws.client(self.opts.aws, "ec2", sess=self._session)
        return self._ec2

    @property
    def region(self) -> str:
        return self.ec2.meta.region_name

    def client_for(self, region: str):
        if region == self.region:
            return self.ec2
        if region not in self._clients:
            self._clients[region] = aws.client(self.opts.aws, "ec2", region=region,
                                               sess=self._session)
        return self._clients[region]

    def _call(self, doing: str, fn, **kwargs):
        import botocore.exceptions

        try:
            return fn(**kwargs)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise aws.explain(exc, doing) from None

    @property
    def arch(self) -> str:
        if self.opts.arch:
            return _ARCH.get(self.opts.arch, self.opts.arch)
        return arch_for_instance_type(self.opts.instance_type)

    # images --------------------------------------------------------------------
    def resolve_base(self, base_ref: str | None) -> Image:
        query = parse_base(base_ref, arch=self.arch)
        images = self._call(f"looking up base image {query.ref!r}", self.ec2.describe_images,
                            **query.call_args())["Images"]
        if not images:
            raise BuildError(f"base image {query.ref!r}: no image matches in {self.region} "
                             f"({query.call_args()})")
        best = max(images, key=lambda i: i.get("CreationDate", ""))
        tags = aws.tag_dict(best.get("Tags"))
        user = query.user or tags.get(TAG_SSH_USER) or guess_user(best.get("Name", ""))
        tags.update({TAG_SSH_USER: user, "Name": best.get("Name", "")})
        return Image(id=best["ImageId"], tags=tags, created=best.get("CreationDate"))

    def _image(self, raw: dict) -> Image:
        tags = aws.tag_dict(raw.get("Tags"))
        return Image(id=raw["ImageId"], key=tags.get(TAG_KEY), tags=tags,
                     created=raw.get("CreationDate"))

    @staticmethod
    def _final_query(key: str) -> dict:
        return {"Owners": ["self"], "Filters": [{"Name": f"tag:{TAG_KEY}", "Values": [key]},
                                                {"Name": "state", "Values": ["available"]}]}

    def find_image(self, key: str) -> Image | None:
        images = self._call("looking up cached images", self.ec2.describe_images,
                            **self._final_query(key))["Images"]
        if not images:
            return None
        return self._image(max(images, key=lambda i: i.get("CreationDate", "")))

    # the build memo --------------------------------------------------------------
    def memo_facts(self, base_ref: str | None, base: Image, image: Image) -> dict:
        return {"base_ref": base_ref}

    def confirm_memo(self, result: dict, facts: dict) -> bool:
        """Ask EC2 what ``resolve_base`` and ``find_image`` would: both must give the recorded ids.

        The two DescribeImages calls are the full path's own (same arguments, same
        choice of the newest image), run concurrently and sent by ``amic.targets.ec2.query``
        instead of boto3 (whose import and client cost ~220 ms, most of an unchanged
        rebuild). The base is asked with today's options (``--arch``,
        ``--instance-type``, region). AMI ids are unique, so asking the wrong account
        or region can only fail to confirm. Any error, throttling included, or
        anything unexpected means False: the full path then runs, with boto3's retries.
        """
        from amic.targets.ec2 import query as ec2query

        try:
            if "base_ref" not in facts:
                return False
            base_args = parse_base(facts["base_ref"], arch=self.arch).call_args()
            o = self.opts.aws
            access = ec2query.resolve(profile=o.profile, region=o.region,
                                      endpoint_url=o.endpoint_url)
            agent = f"amic/{__version__} confirm-memo"
            found: dict[str, object] = {}

            def newest(what: str, args: dict) -> None:
                try:
                    images = ec2query.describe_images(access, user_agent=agent, **args)
                    found[what] = max(images, key=lambda i: i["CreationDate"])["ImageId"]
                except Exception as exc:  # noqa: BLE001 - any doubt declines
                    found[what] = exc

            worker = threading.Thread(target=newest, args=("base", base_args), daemon=True)
            worker.start()
            newest("final", self._final_query(result["final_key"]))
            worker.join(ec2query.TIMEOUT + 5)
            for what in ("base", "final"):
                if not isinstance(found.get(what), str):   # an error, or still waiting
                    log.debug("memo not confirmed: %s lookup: %r", what, found.get(what))
                    return False
            return (found["base"] == result["base_image_id"]
                    and found["final"] == result["image_id"])
        except Exception as exc:  # noqa: BLE001
            log.debug("memo not confirmed: %r", exc)
            return False

    def list_images(self) -> Iterator[Image]:
        images = self._call("listing cached images", self.ec2.describe_images, Owners=["self"],
                            Filters=[{"Name": "tag-key", "Values": [TAG_KEY]}])["Images"]
        images.sort(key=lambda i: i.get("CreationDate", ""), reverse=True)
        return iter([self._image(i) for i in images])

    def images_for_service(self, service: str) -> list[Image]:
        images = self._call("listing layer checkpoints", self.ec2.describe_images, Owners=["self"],
                            Filters=[{"Name": f"tag:{TAG_KIND}", "Values": ["layer"]},
                                     {"Name": f"tag:{TAG_SERVICE}", "Values": [service]}])["Images"]
        images.sort(key=lambda i: i.get("CreationDate", ""), reverse=True)
        return [self._image(i) for i in images]

    def remove_image(self, image: Image) -> None:
        self.deregister(image.id)

    def deregister(self, image_id: str, *, region: str | None = None) -> list[str]:
        """Deregister an AMI and delete its EBS snapshots; returns the snapshot ids."""
        ec2 = self.client_for(region or self.region)
        found = self._call(f"describing {image_id}", ec2.describe_images,
                           ImageIds=[image_id])["Images"]
        snaps = [bdm["Ebs"]["SnapshotId"] for img in found for bdm in img.get("BlockDeviceMappings", [])
                 if bdm.get("Ebs", {}).get("SnapshotId")]
        self._call(f"deregistering {image_id}", ec2.deregister_image, ImageId=image_id)
        for snap in snaps:
            self._call(f"deleting snapshot {snap} of {image_id}", ec2.delete_snapshot,
                       SnapshotId=snap)
        return snaps

    # launch ----------------------------------------------------------------------
    @contextlib.contextmanager
    def launch(self, image: Image, *, build_id: str, role: str = "build",
               instance_tags: Mapping[str, str] | None = None) -> Iterator[Ec2Machine]:
        """Key pair, security group, instance; all removed on leaving (see the module doc).

        ``role`` and ``instance_tags`` serve ``amic launch`` (``amic:services`` is read
        by the boot hook through IMDS tags). Setting ``machine.keep`` before leaving
        keeps everything, like ``--on-error=abort`` does on failure.
        """
        opts = self.opts
        tags = aws.resource_tags(build_id, ttl=opts.ttl, role=role)
        name = f"amic-{build_id}"
        stack = contextlib.ExitStack()
        machine: Ec2Machine | None = None
        kept = False
        try:
            # Key pair: made here, only the public half leaves this machine.
            pkey, public = generate_key(opts.key_type)
            stack.callback(self._cleanup, "key pair", name, self._delete_key_pair, name)
            self._call("importing the temporary key pair", self.ec2.import_key_pair,
                       KeyName=name, PublicKeyMaterial=public.encode(),
                       TagSpecifications=aws.tag_specs(tags, "key-pair"))
            self.log(f"key pair {name} ({opts.key_type})")

            # Security group (unless the user brought one).
            group_ids = list(opts.security_group_ids)
            if not group_ids:
                vpc = self._vpc_id()
                stack.callback(self._cleanup, "security group", name, self._delete_group, name, vpc)
                gid = self._call("creating the temporary security group",
                                 self.ec2.create_security_group, GroupName=name, VpcId=vpc,
                                 Description=f"amic build {build_id}: SSH from the builder only",
                                 TagSpecifications=aws.tag_specs(tags, "security-group"))["GroupId"]
                cidrs = self.ssh_cidrs()
                self._call("opening SSH in the temporary security group",
                           self.ec2.authorize_security_group_ingress, GroupId=gid,
                           IpPermissions=[_ssh_permission(cidrs, opts)])
                self.log(f"security group {gid}: port {22} from {', '.join(cidrs)}")
                group_ids = [gid]

            # The instance.
            stack.callback(self._cleanup, "instance", build_id, self._terminate, build_id)
            iid = self._run_instance(image, name, group_ids, {**tags, **(instance_tags or {})},
                                     build_id, metadata_tags=bool(instance_tags))
            user = opts.ssh_user or image.tags.get(TAG_SSH_USER) or "ec2-user"
            machine = Ec2Machine(self, iid, user, pkey, name, build_id)
            machine.build_public_key = public   # prepare-image removes it before the final AMI
            self._wait_running(machine)
            self._prepare_host_keys(machine)
            machine._connection()
            yield machine
            if getattr(machine, "keep", False):
                machine.key_file = save_private_key(pkey, name)
                machine.disconnect()
                stack.pop_all()
                kept = True
                self.log("keeping the instance\n  " + machine.describe())
        except BaseException as exc:
            keep = (self.keep_on_error and machine is not None
                    and not isinstance(exc, (KeyboardInterrupt, SystemExit)))
            if keep:
                assert machine is not None
                machine.key_file = save_private_key(pkey, name)
                machine.disconnect()
                stack.pop_all()   # keep everything; it still expires and `amic gc` finds it
                kept = True
                self.log("--on-error=abort: keeping the build instance for debugging\n  "
                         + machine.describe())
            raise
        finally:
            if not kept:
                if machine is not None:
                    machine.disconnect()
                with _shielded(self.log):
                    stack.close()

    def _run_instance(self, image: Image, name: str, group_ids: list[str],
                      tags: Mapping[str, str], build_id: str, *, metadata_tags: bool = False) -> str:
        opts = self.opts
        args: dict = {
            "ImageId": image.id, "InstanceType": opts.instance_type, "MinCount": 1, "MaxCount": 1,
            "KeyName": name,
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled",
                                "HttpPutResponseHopLimit": 1,
                                "InstanceMetadataTags": "enabled" if metadata_tags else "disabled"},
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": aws.tag_specs(tags, "instance", "volume"),
            # Idempotent: botocore may retry a RunInstances whose answer it never saw.
            "ClientToken": f"amic-{build_id}"[:64],
        }
        if opts.subnet_id or opts.associate_public_ip is not None:
            nic: dict = {"DeviceIndex": 0, "Groups": group_ids, "DeleteOnTermination": True}
            if opts.subnet_id:
                nic["SubnetId"] = opts.subnet_id
            if opts.associate_public_ip is not None:
                nic["AssociatePublicIpAddress"] = opts.associate_public_ip
            args["NetworkInterfaces"] = [nic]
        else:
            args["SecurityGroupIds"] = group_ids
        if opts.iam_instance_profile:
            key = "Arn" if opts.iam_instance_profile.startswith("arn:") else "Name"
            args["IamInstanceProfile"] = {key: opts.iam_instance_profile}
        if opts.volume_size or opts.encrypt or opts.kms_key_id:
            root = self._root_device(image.id)
            ebs: dict = {"VolumeType": opts.volume_type, "DeleteOnTermination": True}
            if opts.volume_size:
                ebs["VolumeSize"] = opts.volume_size
            if opts.encrypt or opts.kms_key_id:
                ebs["Encrypted"] = True
                if opts.kms_key_id:
                    ebs["KmsKeyId"] = opts.kms_key_id
            args["BlockDeviceMappings"] = [{"DeviceName": root, "Ebs": ebs}]
        reply = self._call(f"launching a {opts.instance_type} from {image.id}",
                           self.ec2.run_instances, **args)
        iid = reply["Instances"][0]["InstanceId"]
        self.log(f"instance {iid} ({opts.instance_type}) from {image.id}")
        return iid

    def _root_device(self, image_id: str) -> str:
        images = self._call(f"describing {image_id}", self.ec2.describe_images,
                            ImageIds=[image_id])["Images"]
        return (images[0].get("RootDeviceName") if images else None) or "/dev/xvda"

    def _vpc_id(self) -> str:
        if self.opts.vpc_id:
            return self.opts.vpc_id
        if self.opts.subnet_id:
            subnets = self._call("describing the subnet", self.ec2.describe_subnets,
                                 SubnetIds=[self.opts.subnet_id])["Subnets"]
            return subnets[0]["VpcId"]
        vpcs = self._call("finding the default VPC", self.ec2.describe_vpcs,
                          Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise BuildError(f"no default VPC in {self.region}: pass --subnet (and --vpc)")
        return vpcs[0]["VpcId"]

    def ssh_cidrs(self) -> tuple[str, ...]:
        if self.opts.ssh_cidrs:
            return self.opts.ssh_cidrs
        if self._caller_cidrs is None:
            self._caller_cidrs = (caller_cidr(),)
        return self._caller_cidrs

    def _wait(self, waiter_name: str, timeout: float, doing: str, ec2=None, **kwargs) -> None:
        import botocore.exceptions

        delay = max(self.opts.poll_interval, 0.1)
        waiter = (ec2 or self.ec2).get_waiter(waiter_name)
        try:
            waiter.wait(WaiterConfig={"Delay": delay,
                                      "MaxAttempts": max(1, math.ceil(timeout / delay))}, **kwargs)
        except botocore.exceptions.WaiterError as exc:
            raise BuildError(f"{doing}: {exc}") from None

    def _wait_running(self, machine: Ec2Machine) -> None:
        self._wait("instance_running", self.opts.instance_timeout,
                   f"waiting for {machine.instance_id} to run", InstanceIds=[machine.instance_id])
        machine.host = self.opts.ssh_host or self._address(machine.instance_id)

    def _address(self, instance_id: str) -> str:
        reply = self._call("describing the instance", self.ec2.describe_instances,
                           InstanceIds=[instance_id])
        inst = reply["Reservations"][0]["Instances"][0]
        field = {"public-ip": "PublicIpAddress", "private-ip": "PrivateIpAddress",
                 "public-dns": "PublicDnsName", "private-dns": "PrivateDnsName"}[self.opts.ssh_interface]
        value = inst.get(field) or (inst.get("PrivateIpAddress") if self.opts.jump_host else None)
        if not value:
            raise BuildError(f"instance {instance_id} has no {self.opts.ssh_interface}: use "
                             "--ssh-interface private-ip with --ssh-jump-host, a subnet that "
                             "assigns public addresses, or --ssh-host")
        return value

    def _prepare_host_keys(self, machine: Ec2Machine) -> None:
        """Decide which host keys the SSH connection accepts."""
        opts = self.opts
        if opts.host_key_fingerprints:
            machine.expected_keys = {_norm_fp(f) for f in opts.host_key_fingerprints}
            machine.keys_source = "given with --ssh-host-key-fingerprint"
            return
        if opts.trust_on_first_use:
            return
        fps = self._console_fingerprints(machine.instance_id)
        machine.expected_keys = {f.fingerprint for f in fps}
        machine.keys_source = f"printed on the console of {machine.instance_id}"
        self.log(f"host keys from the console of {machine.instance_id}: "
                 + ", ".join(f"{f.kind} {f.fingerprint}" for f in fps))

    def _console_fingerprints(self, instance_id: str) -> list[HostKeyFingerprint]:
        import botocore.exceptions

        deadline = time.monotonic() + self.opts.console_timeout
        delay = max(self.opts.poll_interval, 0.1)
        latest = True
        while True:
            try:
                kwargs = {"InstanceId": instance_id}
                if latest:
                    kwargs["Latest"] = True
                out = self.ec2.get_console_output(**kwargs).get("Output") or ""
            except botocore.exceptions.ClientError as exc:
                if latest and aws.error_code(exc) in ("UnsupportedOperation", "InvalidParameter",
                                                      "InvalidParameterCombination"):
                    latest = False
                    continue
                raise aws.explain(exc, "reading the console output") from None
            fps = parse_console_fingerprints(out)
            if fps:
                return fps
            if time.monotonic() >= deadline:
                raise BuildError(
                    f"no SSH host key fingerprints on the console of {instance_id} after "
                    f"{self.opts.console_timeout:.0f}s, so its host key cannot be verified. "
                    "Images without cloud-init do not print them: pass "
                    "--ssh-host-key-fingerprint SHA256:… or --ssh-trust-on-first-use")
            time.sleep(delay)

    def _connect(self, machine: Ec2Machine):
        """An ``amic.targets.ssh`` connection; host keys from the console, the user's list, or TOFU."""
        from amic.targets.ssh.conn import wait_for_ssh
        from amic.targets.ssh.endpoint import Endpoint, parse_jump
        from amic.targets.ssh.errors import AuthFailed, HostKeyMismatch, Unreachable
        from amic.targets.ssh.hostkeys import (ExpectedHostKeys, HostKeyPolicy, TrustOnFirstUse,
                                               describe_key, fingerprints)

        opts = self.opts
        if machine.host is None:
            machine.host = opts.ssh_host or self._address(machine.instance_id)
        if machine.expected_keys:
            policy: HostKeyPolicy = ExpectedHostKeys(
                machine.expected_keys, source=f"the host keys {machine.keys_source}")
        else:
            policy = TrustOnFirstUse()   # no file: nothing read or written; pinned below
        jump = (parse_jump(opts.jump_host, key_filename=opts.jump_key)
                if opts.jump_host else None)
        endpoint = Endpoint(machine.host, machine.port, machine.user)
        self.log(f"waiting for SSH on {endpoint}")
        try:
            conn = wait_for_ssh(
                endpoint, pkey=machine.pkey, host_key_policy=policy, jump=jump,
                timeout=opts.ssh_timeout, sudo=machine.user != "root", retry_auth=True,
                # only the build's own key for the instance; the agent only for a bastion
                allow_agent=bool(jump) and not opts.jump_key, look_for_keys=False,
                log=self.log)
        except HostKeyMismatch as exc:
            raise BuildError(f"refusing {machine.instance_id}: {exc} (the console of the instance "
                             "printed other host keys; someone may be in the middle)") from None
        except (Unreachable, AuthFailed) as exc:
            raise BuildError(f"instance {machine.instance_id}: no SSH on {endpoint} after "
                             f"{opts.ssh_timeout:.0f}s: {exc}") from None
        if not machine.expected_keys:
            # pin it: after a stop/start the same key must answer
            machine.expected_keys = fingerprints(conn.host_key)
            machine.keys_source = "pinned on first use"
            self.log(f"trusting host key {describe_key(conn.host_key)} on first use")
        return conn

    def _start_instance(self, machine: Ec2Machine) -> None:
        self._call(f"starting {machine.instance_id}", self.ec2.start_instances,
                   InstanceIds=[machine.instance_id])
        machine.stopped = False
        self._wait_running(machine)

    # snapshot --------------------------------------------------------------------
    def snapshot(self, machine, *, key: str, final: bool, tags: Mapping[str, str]) -> Image:
        assert isinstance(machine, Ec2Machine)
        opts = self.opts
        ec2 = self.ec2
        iid = machine.instance_id
        machine.disconnect()
        if not machine.stopped:
            self.log(f"stopping {iid} for a consistent image")
            self._call(f"stopping {iid}", ec2.stop_instances, InstanceIds=[iid])
            machine.stopped = True
            self._wait("instance_stopped", opts.instance_timeout, f"waiting for {iid} to stop",
                       InstanceIds=[iid])
        when = aws.now()
        fields = _name_fields(tags, key, machine.build_id, when)
        if final:
            name = _ami_name(opts.image_name.format_map(fields))
            description = opts.image_description.format_map(fields)[:255]
        else:
            svc = tags.get(TAG_SERVICE, "layer")
            name = _ami_name(f"amic-layer-{svc}-{key[:12]}-{fields['timestamp']}")
            description = f"amic cache layer {svc} (key {key[:12]}) from {fields['amifile']}"
        all_tags = {**aws.resource_tags(machine.build_id, ttl=None, role="image"), "Name": name,
                    TAG_SSH_USER: machine.user, **tags, TAG_KEY: key,
                    TAG_KIND: tags.get(TAG_KIND, "final" if final else "layer")}
        if final:
            all_tags.update(opts.image_tags)
        all_tags, dropped = aws.fit_tags(all_tags, keep_prefixes=(
            TAG_KEY, TAG_KIND, aws.TAG_TOOL, TAG_BUILD, TAG_SSH_USER, TAG_AMIFILE, "Name"))
        if dropped:
            self.log(f"warning: EC2 allows {aws.MAX_TAGS} tags per image; left out: "
                     + ", ".join(dropped))
        if final and opts.force_deregister:
            self._deregister_named(name)
        self.log(f"creating image {name}")
        image_id = self._call(f"creating an image of {iid}", ec2.create_image, InstanceId=iid,
                              Name=name, Description=description,
                              TagSpecifications=aws.tag_specs(all_tags, "image"))["ImageId"]
        try:
            self._wait("image_available", opts.image_timeout, f"waiting for image {image_id}",
                       ImageIds=[image_id])
        except BuildError:
            # A failed image is no cache entry; one still pending is (it will finish).
            state = self._image_state(image_id)
            if state in ("failed", "error", "invalid"):
                with contextlib.suppress(BuildError):
                    self.deregister(image_id)
            raise
        raw = ec2.describe_images(ImageIds=[image_id])["Images"][0]
        snaps = self._tag_snapshots(raw, all_tags, image_id)
        self.log(f"image {image_id} available ({'final' if final else 'layer'}; "
                 f"snapshots {', '.join(snaps) or '-'})")
        if final:
            self._share(image_id, snaps)
            self._copy(image_id, name, description, all_tags)
        return self._image(raw)

    def _image_state(self, image_id: str) -> str | None:
        with contextlib.suppress(Exception):
            return self.ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"]
        return None

    def _tag_snapshots(self, raw: dict, tags: Mapping[str, str], image_id: str, ec2=None) -> list[str]:
        snaps = [bdm["Ebs"]["SnapshotId"] for bdm in raw.get("BlockDeviceMappings", [])
                 if bdm.get("Ebs", {}).get("SnapshotId")]
        if snaps:
            snap_tags = {**tags, "amic:image-id": image_id}
            snap_tags, _ = aws.fit_tags(snap_tags, keep_prefixes=("amic:image-id", TAG_KEY,
                                                                  aws.TAG_TOOL, TAG_BUILD))
            self._call("tagging the image's snapshots", (ec2 or self.ec2).create_tags,
                       Resources=snaps, Tags=aws.tag_list(snap_tags))
        return snaps

    def _deregister_named(self, name: str) -> None:
        old = self._call("looking for an image of the same name", self.ec2.describe_images,
                         Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]
        for img in old:
            self.log(f"--force-deregister: removing {img['ImageId']} ({name})")
            self.deregister(img["ImageId"])

    def _share(self, image_id: str, snaps: list[str], ec2=None) -> None:
        accounts = self.opts.share_accounts
        if not accounts:
            return
        ec2 = ec2 or self.ec2
        perms = [{"UserId": a} for a in accounts]
        self._call(f"sharing {image_id}", ec2.modify_image_attribute, ImageId=image_id,
                   LaunchPermission={"Add": perms})
        for snap in snaps:
            self._call(f"sharing snapshot {snap}", ec2.modify_snapshot_attribute, SnapshotId=snap,
                       Attribute="createVolumePermission", OperationType="add",
                       UserIds=list(accounts))
        self.log(f"shared {image_id} with {', '.join(accounts)}")

    def _copy(self, image_id: str, name: str, description: str, tags: Mapping[str, str]) -> None:
        for region in self.opts.copy_regions:
            if region == self.region:
                continue
            dest = self.client_for(region)
            args = {"SourceImageId": image_id, "SourceRegion": self.region, "Name": name,
                    "Description": description}
            if self.opts.encrypt or self.opts.kms_key_id:
                args["Encrypted"] = True
            copy_id = self._call(f"copying {image_id} to {region}", dest.copy_image, **args)["ImageId"]
            self._wait("image_available", self.opts.image_timeout,
                       f"waiting for the copy {copy_id} in {region}", ec2=dest, ImageIds=[copy_id])
            self._call(f"tagging {copy_id} in {region}", dest.create_tags, Resources=[copy_id],
                       Tags=aws.tag_list({**tags, "amic:source-image": f"{self.region}/{image_id}"}))
            raw = dest.describe_images(ImageIds=[copy_id])["Images"][0]
            snaps = self._tag_snapshots(raw, tags, copy_id, ec2=dest)
            self._share(copy_id, snaps, ec2=dest)
            self.log(f"copied {image_id} to {region}: {copy_id}")

    # cleanup -----------------------------------------------------------------------
    def _cleanup(self, what: str, name: str, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - cleanup logs, never raises (multistep)
            self.log(f"warning: could not remove {what} {name}: {exc} "
                     "(it is tagged; `amic gc` removes it after it expires)")

    def _delete_key_pair(self, name: str) -> None:
        self.ec2.delete_key_pair(KeyName=name)
        self.log(f"deleted key pair {name}")

    def _terminate(self, build_id: str) -> None:
        """Terminate every instance of this build (found by tag: works after an interrupt)."""
        reply = self.ec2.describe_instances(Filters=[
            {"Name": f"tag:{TAG_BUILD}", "Values": [build_id]},
            {"Name": f"tag:{aws.TAG_ROLE}", "Values": ["build", "launch"]},
            {"Name": "instance-state-name",
             "Values": ["pending", "running", "stopping", "stopped"]}])
        ids = [i["InstanceId"] for r in reply["Reservations"] for i in r["Instances"]]
        if not ids:
            return
        self.ec2.terminate_instances(InstanceIds=ids)
        self.log(f"terminating {', '.join(ids)}")
        self._wait("instance_terminated", self.opts.instance_timeout,
                   f"waiting for {', '.join(ids)} to terminate", InstanceIds=ids)

    def _delete_group(self, name: str, vpc: str) -> None:
        import botocore.exceptions

        groups = self.ec2.describe_security_groups(Filters=[
            {"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc]}])
        for group in groups["SecurityGroups"]:
            deadline = time.monotonic() + 120
            while True:
                try:
                    self.ec2.delete_security_group(GroupId=group["GroupId"])
                    self.log(f"deleted security group {group['GroupId']}")
                    break
                except botocore.exceptions.ClientError as exc:
                    # The instance's network interface can outlive "terminated" briefly.
                    if aws.error_code(exc) != "DependencyViolation" or time.monotonic() > deadline:
                        raise
                    time.sleep(max(self.opts.poll_interval, 0.5))


# -- helpers --------------------------------------------------------------------------

def _stderr_log(message: str) -> None:
    print(f"amic: ec2: {message}", file=sys.stderr, flush=True)


def _ssh_permission(cidrs: Sequence[str], opts: Ec2Options) -> dict:
    v4 = [{"CidrIp": c, "Description": "amic build SSH"} for c in cidrs if ":" not in c]
    v6 = [{"CidrIpv6": c, "Description": "amic build SSH"} for c in cidrs if ":" in c]
    perm: dict = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22}
    if v4:
        perm["IpRanges"] = v4
    if v6:
        perm["Ipv6Ranges"] = v6
    return perm


CHECKIP_URL = "https://checkip.amazonaws.com"


def caller_cidr(url: str | None = None) -> str:
    """The caller's public address as a /32 (or /128), as AWS sees it."""
    url = url or os.environ.get("AMIC_CHECKIP_URL") or CHECKIP_URL
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read(100).decode().strip()
        addr = ipaddress.ip_address(text)
    except (OSError, ValueError) as exc:
        raise BuildError(f"could not find this machine's public address ({url}: {exc}); "
                         "pass --ssh-cidr CIDR (who may reach port 22 of the build instance)") from None
    return f"{addr}/{32 if addr.version == 4 else 128}"


def generate_key(key_type: str = "ed25519"):
    """A fresh key pair: (paramiko key, OpenSSH public key line)."""
    import paramiko
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if key_type == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    elif key_type == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise UsageError(f"--key-type {key_type!r}: expected ed25519 or rsa")
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    cls = paramiko.Ed25519Key if key_type == "ed25519" else paramiko.RSAKey
    pkey = cls.from_private_key(io.StringIO(pem))
    pkey._amic_pem = pem  # kept for --on-error=abort
    public = f"{pkey.get_name()} {pkey.get_base64()} amic"
    return pkey, public


def save_private_key(pkey, name: str) -> Path:
    """Write a kept build's private key where the user can find it (mode 0600)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "amic" / "keys"
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = base / f"{name}.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(getattr(pkey, "_amic_pem", ""))
    return path


def _norm_fp(text: str) -> str:
    text = text.strip()
    if text.startswith(("SHA256:", "MD5:")):
        return text.rstrip("=")
    if re.fullmatch(r"(?:[0-9a-f]{2}:){15}[0-9a-f]{2}", text):
        return "MD5:" + text
    return "SHA256:" + text.rstrip("=")


class _Fields(dict):
    def __missing__(self, key):
        return "{" + key + "}"


def _name_fields(tags: Mapping[str, str], key: str, build_id: str, when: dt.datetime) -> dict:
    amifile = tags.get(TAG_AMIFILE) or "amic"
    stem = re.sub(r"(?i)^amifile[._-]?|[._-]?amifile$", "", amifile) or "amic"
    return _Fields(amifile=stem, key=key[:12], build_id=build_id,
                   timestamp=when.strftime("%Y%m%d-%H%M%S"), date=when.strftime("%Y-%m-%d"),
                   label=_Fields({k: v for k, v in tags.items() if ":" not in k}))


def _ami_name(text: str) -> str:
    """EC2 AMI names: 3-128 of letters, digits and ( ) [ ] space . / - ' @ _."""
    clean = re.sub(r"[^A-Za-z0-9()\[\] ./'@_-]", "-", text).strip()[:128]
    return clean if len(clean) >= 3 else f"amic-{clean}"


@contextlib.contextmanager
def _shielded(log_fn):
    """Run cleanup with one Ctrl-C ignored (a second one abandons it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hits = []

    def handler(signum, frame):
        hits.append(signum)
        if len(hits) == 1:
            log_fn("cleaning up; interrupt again to abandon (then run `amic gc`)")
            return
        raise KeyboardInterrupt

    old_int = signal.signal(signal.SIGINT, handler)
    old_term = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)

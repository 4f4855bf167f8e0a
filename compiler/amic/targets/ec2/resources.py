"""A build's temporary resources: key pair, security group, instance; each made with its cleanup.

Every ``add_*`` step registers its cleanup on the build's ``ExitStack`` *before*
the create call, and the cleanup finds the resource by its deterministic name
or by the build tag: an interrupt that lands while the call is on the wire
still removes what it made. Cleanups log, never raise (Packer's multistep);
what one could not remove is tagged, and ``amic gc`` (which deletes with the
same functions) removes it after it expires.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from amic.contract import TAG_BUILD
from amic.errors import BuildError, UsageError
from amic.targets.base import Image
from amic.targets.ec2 import owner
from amic.targets.ec2 import placement
from amic.targets.ec2 import session as aws
from amic.targets.ec2 import volumes, waiters
from amic.targets.ec2.options import Ec2Options

Log = Callable[[str], None]

LIVE_STATES = ["pending", "running", "stopping", "stopped"]
"""Instance states that still cost money (and hold a security group)."""
GROUP_PATIENCE = 300.0
"""Seconds a security group may stay in use after TerminateInstances of its instance (EC2:
``shutting-down`` for about half a minute, the interface a little longer)."""
GROUP_MAX_PAUSE = 5.0
"""The longest pause between two DeleteSecurityGroup attempts while an instance holds it."""
CHECKIP_URL = "https://checkip.amazonaws.com"

TAG_HEARTBEAT = "amic:heartbeat"
"""UTC time a live build last touched the resource; ``amic gc`` takes a resource whose
heartbeat is older than ``STALE_BEATS`` intervals as leaked, whatever its expiry says."""
TAG_HEARTBEAT_EVERY = "amic:heartbeat-every"
"""Seconds between heartbeats of the build that owns the resource."""
HEARTBEAT_ENV = "AMIC_EC2_HEARTBEAT"
"""Seconds between heartbeats (default ``DEFAULT_HEARTBEAT``; tests make it short)."""
DEFAULT_HEARTBEAT = 30.0
STALE_BEATS = 3


def heartbeat_seconds() -> float:
    try:
        value = float(os.environ.get(HEARTBEAT_ENV) or DEFAULT_HEARTBEAT)
    except ValueError:
        raise UsageError(f"{HEARTBEAT_ENV}={os.environ[HEARTBEAT_ENV]!r}: expected seconds") from None
    return max(value, 0.1)


def heartbeat_tags(interval: float | None = None) -> dict[str, str]:
    """The heartbeat tags as a resource carries them at creation."""
    every = interval or heartbeat_seconds()
    return {TAG_HEARTBEAT: aws.iso(aws.now()), TAG_HEARTBEAT_EVERY: f"{every:g}"}


def heartbeat_stopped(tags: Mapping[str, str], at) -> str | None:
    """None while the owner's heartbeat is fresh (or there is none); else since when it stopped."""
    last = aws.parse_iso(tags.get(TAG_HEARTBEAT))
    if last is None:
        return None
    try:
        every = float(tags.get(TAG_HEARTBEAT_EVERY) or heartbeat_seconds())
    except ValueError:
        every = heartbeat_seconds()
    if (at - last).total_seconds() > STALE_BEATS * every:
        return aws.iso(last)
    return None


def build_alive(tags: Mapping[str, str], at) -> tuple[bool | None, str]:
    """Whether the build that owns a resource runs: (False, why) dead, (True, how) alive,
    (None, "") without a heartbeat (a kept resource, or not a build's).

    An owner on this host is asked directly (``owner.on_this_host``): dead at once when its
    process is gone. Owners elsewhere are judged by their heartbeat (``STALE_BEATS``).
    """
    alive, how = owner.on_this_host(tags)
    if alive is not None:
        return alive, how
    stopped = heartbeat_stopped(tags, at)
    if stopped:
        return False, f"heartbeat stopped {stopped}"
    if TAG_HEARTBEAT in tags:
        return True, f"heartbeat {tags[TAG_HEARTBEAT]}"
    return None, ""


class Heartbeat:
    """Refreshes ``amic:heartbeat`` (and, with ``ttl``, ``amic:expires``) on resources, in a
    daemon thread, every ``interval`` seconds until ``stop``. A failed refresh is logged;
    the next one tries again."""

    def __init__(self, ec2, log: Log, *, interval: float | None = None, ttl=None) -> None:
        self.ec2, self.log, self.ttl = ec2, log, ttl
        self.interval = interval or heartbeat_seconds()
        self.ids: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, *ids: str) -> None:
        self.ids.extend(i for i in ids if i and i not in self.ids)

    def beat(self) -> None:
        if not self.ids:
            return
        tags = heartbeat_tags(self.interval)
        if self.ttl is not None:
            tags[aws.TAG_EXPIRES] = aws.iso(aws.now() + self.ttl)
        self.ec2.create_tags(Resources=list(self.ids), Tags=aws.tag_list(tags))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                self.log(f"warning: heartbeat on {', '.join(self.ids)} failed: {exc}")

    def start(self) -> Heartbeat:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="amic-heartbeat", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def forget(self) -> None:
        """Stop, and remove the heartbeat and owner tags: a kept resource then lives until it
        expires (not until this process exits)."""
        self.stop()
        if self.ids:
            self.ec2.delete_tags(Resources=list(self.ids),
                                 Tags=[{"Key": TAG_HEARTBEAT}, {"Key": TAG_HEARTBEAT_EVERY},
                                       {"Key": owner.TAG_OWNER}])


LEFT_FOR_GC = "it is tagged; `amic gc` removes it after it expires"


def cleanup_quietly(log: Log, what: str, name: str, fn: Callable, *args,
                    left: str = LEFT_FOR_GC) -> None:
    """Run one cleanup; a failure is logged with what becomes of the resource (``left``: by
    default, a temporary resource tagged for ``amic gc``)."""
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - cleanup logs, never raises (multistep)
        log(f"warning: could not remove {what} {name}: {exc} ({left})")


# -- key pair ----------------------------------------------------------------------------

_PEMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""The OpenSSH private key text of each key ``generate_key`` made (to save a kept build's)."""


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
    _PEMS[pkey] = pem  # kept for --on-error=abort
    public = f"{pkey.get_name()} {pkey.get_base64()} amic"
    return pkey, public


def keys_dir() -> Path:
    """Where kept builds' private keys go (``~/.cache/amic/keys``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "amic" / "keys"


def private_key_file(name: str) -> Path:
    return keys_dir() / f"{name}.pem"


def save_private_key(pkey, name: str) -> Path:
    """Write a kept build's private key where the user can find it (mode 0600)."""
    base = keys_dir()
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = private_key_file(name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(_PEMS.get(pkey, ""))
    return path


def add_key_pair(stack: contextlib.ExitStack, ec2, name: str, tags: Mapping[str, str],
                 key_type: str, log: Log, *, heartbeat: Heartbeat | None = None):
    """Key pair made here (only the public half leaves this machine); (pkey, public line)."""
    pkey, public = generate_key(key_type)
    stack.callback(cleanup_quietly, log, "key pair", name, delete_key_pair, ec2, name, log)
    reply = aws.call("importing the temporary key pair", ec2.import_key_pair, KeyName=name,
                     PublicKeyMaterial=public.encode(),
                     TagSpecifications=aws.tag_specs(tags, "key-pair"))
    if heartbeat is not None:
        heartbeat.add(reply.get("KeyPairId", ""))
    log(f"key pair {name} ({key_type})")
    return pkey, public


def delete_key_pair(ec2, name: str, log: Log | None = None) -> None:
    """Delete the key pair and the private key file a kept build saved for it."""
    ec2.delete_key_pair(KeyName=name)
    private_key_file(name).unlink(missing_ok=True)
    if log:
        log(f"deleted key pair {name}")


# -- security group ----------------------------------------------------------------------

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


def ssh_permission(cidrs: Sequence[str]) -> dict:
    """Port 22 from ``cidrs`` only, IPv4 and IPv6 alike."""
    v4 = [{"CidrIp": c, "Description": "amic build SSH"} for c in cidrs if ":" not in c]
    v6 = [{"CidrIpv6": c, "Description": "amic build SSH"} for c in cidrs if ":" in c]
    perm: dict = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22}
    if v4:
        perm["IpRanges"] = v4
    if v6:
        perm["Ipv6Ranges"] = v6
    return perm


def group_vpc(ec2, opts: Ec2Options) -> str:
    """Where the temporary group goes: ``--vpc``, the subnet's VPC, or the default VPC."""
    if opts.vpc_id:
        return opts.vpc_id
    if opts.subnet_id:
        subnets = aws.call("describing the subnet", ec2.describe_subnets,
                           SubnetIds=[opts.subnet_id])["Subnets"]
        return subnets[0]["VpcId"]
    vpcs = aws.call("finding the default VPC", ec2.describe_vpcs,
                    Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise BuildError(f"no default VPC in {ec2.meta.region_name}: pass --subnet (and --vpc)")
    return vpcs[0]["VpcId"]


def add_security_group(stack: contextlib.ExitStack, ec2, name: str, build_id: str,
                       tags: Mapping[str, str], cidrs: Callable[[], Sequence[str]],
                       opts: Ec2Options, log: Log) -> str:
    """A group open only to SSH from ``cidrs()``; its id."""
    vpc = group_vpc(ec2, opts)
    made: list[str] = []        # its id once CreateSecurityGroup answered: deleted by id
    stack.callback(cleanup_quietly, log, "security group", name, delete_groups_named, ec2, name,
                   vpc, opts.poll_interval, log, made)
    gid = aws.call("creating the temporary security group", ec2.create_security_group,
                   GroupName=name, VpcId=vpc,
                   Description=f"amic build {build_id}: SSH from the builder only",
                   TagSpecifications=aws.tag_specs(tags, "security-group"))["GroupId"]
    made.append(gid)
    allowed = cidrs()
    aws.call("opening SSH in the temporary security group",
             ec2.authorize_security_group_ingress, GroupId=gid,
             IpPermissions=[ssh_permission(allowed)])
    log(f"security group {gid}: port {22} from {', '.join(allowed)}")
    return gid


def delete_security_group(ec2, group_id: str, *, poll_interval: float,
                          patience: float = GROUP_PATIENCE) -> None:
    """Delete a group, retried while a terminating instance (or its interface) holds it.

    DependencyViolation is the wait: no DescribeInstances polls for ``terminated`` (the
    interface can outlive that state anyway). Pauses grow to ``GROUP_MAX_PAUSE``: half a
    minute of shutting-down costs about ten attempts on the mutating bucket."""
    import botocore.exceptions

    deadline = time.monotonic() + patience
    pause = max(poll_interval, 0.5)
    while True:
        try:
            ec2.delete_security_group(GroupId=group_id)
            return
        except botocore.exceptions.ClientError as exc:
            if aws.error_code(exc) != "DependencyViolation" or time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 1.5, GROUP_MAX_PAUSE)


def delete_groups_named(ec2, name: str, vpc: str, poll_interval: float, log: Log,
                        known: Sequence[str] = ()) -> None:
    """The build's group: by id when CreateSecurityGroup answered (``known``), else found by
    name (an interrupt mid-call: its id was never seen)."""
    ids = list(known) or [group["GroupId"] for group in ec2.describe_security_groups(Filters=[
        {"Name": "group-name", "Values": [name]},
        {"Name": "vpc-id", "Values": [vpc]}])["SecurityGroups"]]
    for gid in ids:
        delete_security_group(ec2, gid, poll_interval=poll_interval)
        log(f"deleted security group {gid}")


# -- instance ------------------------------------------------------------------------------

def run_instances_args(image: Image, name: str, group_ids: Sequence[str],
                       tags: Mapping[str, str], build_id: str, opts: Ec2Options, *,
                       metadata_tags: bool, root_device: Callable[[], str]) -> dict:
    """RunInstances arguments: IMDSv2 only, tagged at launch, idempotent under retries."""
    args: dict = {
        "ImageId": image.id, "InstanceType": opts.instance_types[0], "MinCount": 1, "MaxCount": 1,
        "KeyName": name,
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled",
                            "HttpPutResponseHopLimit": 1,
                            "InstanceMetadataTags": "enabled" if metadata_tags else "disabled"},
        "InstanceInitiatedShutdownBehavior": opts.shutdown_behavior,
        # --run-tag / --run-volume-tag beside amic's own (which win: gc finds by them)
        "TagSpecifications": (aws.tag_specs({**opts.run_tags, **tags}, "instance")
                              + aws.tag_specs({**opts.run_volume_tags, **tags}, "volume")),
        # Idempotent: botocore may retry a RunInstances whose answer it never saw.
        "ClientToken": f"amic-{build_id}"[:64],
        **placement.placement_args(opts),
    }
    if opts.subnet_id or opts.associate_public_ip is not None:
        nic: dict = {"DeviceIndex": 0, "Groups": list(group_ids), "DeleteOnTermination": True}
        if opts.subnet_id:
            nic["SubnetId"] = opts.subnet_id
        if opts.associate_public_ip is not None:
            nic["AssociatePublicIpAddress"] = opts.associate_public_ip
        args["NetworkInterfaces"] = [nic]
    else:
        args["SecurityGroupIds"] = list(group_ids)
    if opts.iam_instance_profile:
        key = "Arn" if opts.iam_instance_profile.startswith("arn:") else "Name"
        args["IamInstanceProfile"] = {key: opts.iam_instance_profile}
    mappings = [vol.mapping() for vol in opts.launch_volumes]
    root = opts.root_volume
    if root is not None:
        mappings.insert(0, {"DeviceName": root_device(), "Ebs": volumes.ebs(root)})
    if mappings:
        args["BlockDeviceMappings"] = mappings
    return args


def root_device(ec2, image_id: str) -> str:
    images = aws.call(f"describing {image_id}", ec2.describe_images, ImageIds=[image_id])["Images"]
    return (images[0].get("RootDeviceName") if images else None) or "/dev/xvda"


def add_instance(stack: contextlib.ExitStack, ec2, image: Image, name: str,
                 group_ids: Sequence[str], tags: Mapping[str, str], build_id: str,
                 opts: Ec2Options, log: Log, *, metadata_tags: bool = False,
                 launch: int = 1) -> str:
    """The build instance; its id. ``launch``: the how-manieth launch of the build (a launch
    retried under ``--on-error ask`` needs its own client token, or EC2 would answer with
    the instance the first one made)."""
    launched: list[dict] = []   # RunInstances' answer, once it came: the cleanup needs no Describe
    stack.callback(cleanup_quietly, log, "instance", build_id, retire_build, ec2, build_id,
                   opts, log, not opts.security_group_ids, launched)
    args = run_instances_args(image, name, group_ids, tags, build_id, opts,
                              metadata_tags=metadata_tags,
                              root_device=lambda: root_device(ec2, image.id))
    if launch > 1:
        args["ClientToken"] = f"{args['ClientToken'][:56]}-l{launch}"
    instance, attempt = placement.run_instance(ec2, args, opts, log)
    iid = instance["InstanceId"]
    launched.append(instance)
    log(f"instance {iid} ({attempt}) from {image.id}")
    return iid


def terminate_instances(ec2, ids: Sequence[str], *, timeout: float, poll_interval: float,
                        doing: str, log: Log | None = None) -> None:
    """Terminate ``ids`` and wait until they are gone (BuildError on timeout)."""
    ec2.terminate_instances(InstanceIds=list(ids))
    if log:
        log(f"terminating {', '.join(ids)}")
    waiters.instance_state(ec2, list(ids), "terminated", timeout=timeout,
                           poll_interval=poll_interval, doing=doing)


def build_instances(ec2, build_id: str) -> list[dict]:
    """The build's live instances, found by its build tag: only for an instance whose
    RunInstances answer never came (an interrupt mid-call; ``retire_build`` has the
    answer otherwise). A tag filter lags behind RunInstances on EC2 (eventual
    consistency); if it still lags, the instance is tagged and ``amic gc`` finds it."""
    reply = ec2.describe_instances(Filters=[
        {"Name": f"tag:{TAG_BUILD}", "Values": [build_id]},
        {"Name": f"tag:{aws.TAG_ROLE}", "Values": ["build", "launch"]},
        {"Name": "instance-state-name", "Values": LIVE_STATES}])
    return [i for r in reply["Reservations"] for i in r["Instances"]]


def retire_build(ec2, build_id: str, opts: Ec2Options, log: Log,
                 own_groups: bool = True, known: Sequence[Mapping] = ()) -> None:
    """Terminate every instance of this build: ``known``, RunInstances' answer (its ids and
    VPC: no Describe), or found by tag after an interrupt.

    TerminateInstances is never waited for (``terminated`` is ~30 s on EC2; Packer
    waits): the instance is tagged, shutting down, and gone by itself. Only the build's
    own security group needs it gone, so each instance is moved to its VPC's ``default``
    group first (ModifyInstanceAttribute ``Groups``) and the group is free at once. Where
    the swap fails (several network interfaces), the group's deletion, which comes next,
    is retried until EC2 lets go of it (``delete_security_group``).
    """
    instances = list(known) or build_instances(ec2, build_id)
    if not instances:
        return
    ids = [i["InstanceId"] for i in instances]
    freed = not own_groups or all(release_groups(ec2, inst, log) for inst in instances)
    ec2.terminate_instances(InstanceIds=ids)
    log(f"terminating {', '.join(ids)} (not waited for: "
        + ("nothing of the build depends on it)" if freed
           else "the security group is deleted once EC2 lets go of it)"))


def release_groups(ec2, instance: Mapping, log: Log) -> bool:
    """Move ``instance`` to its VPC's default security group; False where EC2 will not (the
    instance is ``pending``/``stopping``, no permission, no VPC), and the caller waits."""
    import botocore.exceptions

    iid, vpc = instance["InstanceId"], instance.get("VpcId")
    if not vpc:
        return False
    try:
        groups = ec2.describe_security_groups(Filters=[
            {"Name": "group-name", "Values": ["default"]},
            {"Name": "vpc-id", "Values": [vpc]}])["SecurityGroups"]
        if not groups:
            return False
        ec2.modify_instance_attribute(InstanceId=iid, Groups=[groups[0]["GroupId"]])
    except botocore.exceptions.ClientError as exc:
        log(f"could not move {iid} off the build's security group "
            f"({aws.error_code(exc)}): the group goes once the instance is gone")
        return False
    return True


def instance_address(ec2, instance_id: str, opts: Ec2Options,
                     described: Mapping | None = None) -> str:
    """Where to reach the instance: ``--ssh-host``, else its ``--ssh-interface`` address
    (from ``described``, its DescribeInstances entry, when the caller has it)."""
    if opts.ssh_host:
        return opts.ssh_host
    inst = described
    if inst is None:
        reply = aws.call("describing the instance", ec2.describe_instances,
                         InstanceIds=[instance_id])
        inst = reply["Reservations"][0]["Instances"][0]
    field = {"public-ip": "PublicIpAddress", "private-ip": "PrivateIpAddress",
             "public-dns": "PublicDnsName", "private-dns": "PrivateDnsName"}[opts.ssh_interface]
    value = inst.get(field) or (inst.get("PrivateIpAddress") if opts.jump_host else None)
    if not value:
        raise BuildError(f"instance {instance_id} has no {opts.ssh_interface}: use "
                         "--ssh-interface private-ip with --ssh-jump-host, a subnet that "
                         "assigns public addresses, or --ssh-host")
    return value


def wait_running(ec2, instance_id: str, opts: Ec2Options) -> tuple[str, dict]:
    """Wait until the instance runs; its address and its DescribeInstances entry (the
    answer that said ``running``: address, root volume and VPC without another call)."""
    found = waiters.instance_state(ec2, [instance_id], "running",
                                   timeout=opts.instance_timeout,
                                   poll_interval=opts.poll_interval,
                                   doing=f"waiting for {instance_id} to run")
    inst = found[instance_id]
    return instance_address(ec2, instance_id, opts, inst), inst

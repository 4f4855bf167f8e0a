"""What ``--target ec2`` can be told: :class:`Ec2Options`, made from option values.

The flags are the table in :mod:`amic.targets.ec2.flags`; :func:`options_from_values`
turns the values given through it (``{dest: value}``, None for not given) into
options. The defaults are the table's (:data:`DEFAULTS`), written there once.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Mapping

import attrs

from amic.errors import UsageError
from amic.targets import defaults, given
from amic.targets.ec2 import session as aws
from amic.targets.ec2 import volumes
from amic.targets.ec2.flags import AWS_OPTIONS, EC2_OPTIONS, type_list

ON_ERROR = ("cleanup", "abort")

DEFAULTS = defaults(EC2_OPTIONS)
"""``{attribute: default}`` of the flags that have one (``--instance-type``: t3.micro)."""


@attrs.define
class Ec2Options:
    """Everything ``--target ec2`` can be told (flags: ``amic.targets.ec2.flags``)."""

    aws: aws.AwsOptions = attrs.field(factory=aws.AwsOptions)
    bake: str = DEFAULTS["bake"]
    """``instance`` (over SSH) or ``local`` (``local_bake``: no instance, EBS direct APIs)."""
    instance_type: str = DEFAULTS["instance_type"]
    """One type or a comma list tried in order (:attr:`instance_types`)."""
    spot_price: str | None = None
    """``auto`` or a price: spot first (:mod:`amic.targets.ec2.placement`); None: on-demand."""
    spot_instance_types: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    subnet_filter: Mapping[str, str] = attrs.field(factory=dict)
    availability_zone: str | None = None
    arch: str | None = None
    """``x86_64`` or ``arm64``; by default from the instance type."""
    volume_size: int | None = None
    """Root volume GiB (default: the image's)."""
    volume_type: str | None = None
    """Root volume type; None: the image's (``volumes.DEFAULT_TYPE`` once the root is changed)."""
    iops: int | None = None
    throughput: int | None = None
    launch_volumes: tuple[volumes.Volume, ...] = attrs.field(default=(), converter=tuple)
    """``--launch-volume``: extra volumes of the build instance (CreateImage keeps them)."""
    ami_volumes: tuple[volumes.Volume, ...] = attrs.field(default=(), converter=tuple)
    """``--ami-volume``: CreateImage's BlockDeviceMappings."""
    run_tags: Mapping[str, str] = attrs.field(factory=dict)
    run_volume_tags: Mapping[str, str] = attrs.field(factory=dict)
    shutdown_behavior: str = DEFAULTS["shutdown_behavior"]
    subnet_id: str | None = None
    vpc_id: str | None = None
    security_group_ids: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    ssh_cidrs: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    """Who may reach port 22; empty: the caller's public address, looked up once."""
    associate_public_ip: bool | None = None
    iam_instance_profile: str | None = None
    temporary_iam_policy: str | None = None
    """A policy document (JSON text): the build's own role and profile (:mod:`.iamprofile`)."""
    ssh_user: str | None = None
    ssh_host: str | None = None
    ssh_port: int = DEFAULTS["ssh_port"]
    ssh_interface: str = DEFAULTS["ssh_interface"]
    """Address used without ``ssh_host``: public-ip, private-ip, public-dns, private-dns."""
    ssh_timeout: float = DEFAULTS["ssh_timeout"]
    console_timeout: float = DEFAULTS["console_timeout"]
    """How long to wait for the host key fingerprints on the console."""
    trust_on_first_use: bool = False
    host_key_fingerprints: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    """Expected host key fingerprints given by the user (skip the console)."""
    jump_host: str | None = None
    """``[user@]host[:port]`` of a bastion, reached with the SSH agent / ``jump_key``."""
    jump_key: str | None = None
    key_type: str = DEFAULTS["key_type"]
    ttl: dt.timedelta = DEFAULTS["ttl"]
    """How long temporary resources live before ``amic gc`` may remove them."""
    image_name: str = DEFAULTS["image_name"]
    """Final AMI name template: {amifile} {key} {build_id} {timestamp} {date} and labels {label[x]}."""
    image_description: str = DEFAULTS["image_description"]
    image_tags: Mapping[str, str] = attrs.field(factory=dict)
    snapshot_tags: Mapping[str, str] = attrs.field(factory=dict)
    """On the final AMI's snapshots, over ``image_tags`` (Packer's ``snapshot_tags``)."""
    ena_support: bool = False
    sriov_support: bool = False
    boot_mode: str | None = None
    tpm_support: str | None = None
    imds_support: str | None = None
    deprecate_at: str | None = None
    """ISO UTC time (``--deprecate-at``, a duration already added to now)."""
    copy_regions: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    """``REGION`` or ``REGION:KMS`` words as given; ``copies`` reads them."""
    region_kms_keys: Mapping[str, str] = attrs.field(factory=dict)
    encrypt: bool = False
    kms_key_id: str | None = None
    share_accounts: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    ami_users: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    snapshot_users: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    ami_groups: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    ami_org_arns: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    ami_ou_arns: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    force_deregister: bool = False
    force_delete_snapshot: bool = False
    skip_create_ami: bool = False
    poll_interval: float = DEFAULTS["poll_interval"]
    instance_timeout: float = DEFAULTS["instance_timeout"]
    image_timeout: float = DEFAULTS["image_timeout"]
    on_error: str = "cleanup"

    @property
    def root_volume(self) -> volumes.Volume | None:
        """The root volume the flags ask for (its device is the image's); None: the image's."""
        return volumes.root(attrs.asdict(self, recurse=False))

    @property
    def launch_permission(self) -> list[dict]:
        """ModifyImageAttribute LaunchPermission.Add: users, groups, organizations, OUs."""
        return ([{"UserId": a} for a in dict.fromkeys(self.share_accounts + self.ami_users)]
                + [{"Group": g} for g in dict.fromkeys(self.ami_groups)]
                + [{"OrganizationArn": a} for a in self.ami_org_arns]
                + [{"OrganizationalUnitArn": a} for a in self.ami_ou_arns])

    @property
    def volume_users(self) -> list[str]:
        """Accounts given create-volume permission on the snapshots."""
        return list(dict.fromkeys(self.share_accounts + self.snapshot_users))

    def copies(self, source: str) -> dict[str, str | None]:
        """``{region: KMS key or None}`` of ``--copy-to-region`` (the source region left out)."""
        out: dict[str, str | None] = {}
        for word in self.copy_regions:
            region, _, key = word.partition(":")
            if region != source:
                out[region] = key or self.region_kms_keys.get(region) or out.get(region)
        return out


    @property
    def instance_types(self) -> tuple[str, ...]:
        return type_list(self.instance_type, "--instance-type")


def aws_options_from_values(values: Mapping[str, object]) -> aws.AwsOptions:
    return aws.options_from_env(**given(values, AWS_OPTIONS))


def options_from_values(values: Mapping[str, object]) -> Ec2Options:
    """``Ec2Options`` from ``{dest: value}`` of both tables (absent or None: the default).

    Values are already typed (``--ssh-port`` an int); what the table converts
    (``--expire-after``, ``--ami-tag``) and the combinations are checked here.
    """
    fields = given(values, EC2_OPTIONS)
    if values.get("on_error") is not None:
        fields["on_error"] = values["on_error"]
    for name, flag in (("launch_volumes", "--launch-volume"), ("ami_volumes", "--ami-volume")):
        if name in fields:
            fields[name] = tuple(volumes.parse(str(text), flag) for text in fields[name])
    if "deprecate_at" in fields:
        fields["deprecate_at"] = deprecation_time(str(fields["deprecate_at"]))
    opts = Ec2Options(aws=aws_options_from_values(values), **fields)
    opts.root_volume        # noqa: B018 - checked now, not at RunInstances
    check_sharing(opts)
    for region in opts.region_kms_keys:
        if region not in {w.partition(":")[0] for w in opts.copy_regions}:
            raise UsageError(f"--region-kms-key {region}=…: {region} is no --copy-to-region")
    if opts.trust_on_first_use and opts.host_key_fingerprints:
        raise UsageError("--ssh-trust-on-first-use and --ssh-host-key-fingerprint exclude each other")
    if opts.bake == "instance":     # a local bake launches nothing (local_bake checks --arch)
        check_types(opts)
    if opts.skip_create_ami and opts.bake == "local":
        raise UsageError("--skip-create-ami provisions an instance and makes no image; "
                         "--bake local makes an image without an instance: drop one of them")
    if opts.spot_instance_types and not opts.spot_price:
        raise UsageError("--spot-instance-type needs --spot-price (auto or a price)")
    if opts.iam_instance_profile and opts.temporary_iam_policy:
        raise UsageError("--iam-instance-profile and --temporary-iam-instance-profile "
                         "exclude each other")
    if opts.subnet_id and opts.subnet_filter:
        raise UsageError("--subnet and --subnet-filter exclude each other")
    for cidr in opts.ssh_cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise UsageError(f"--ssh-cidr {cidr!r}: not a CIDR") from None
    return opts


def check_types(opts: Ec2Options) -> None:
    """Every type tried must run the image built for one architecture (``--arch``, else the
    first type's): a fallback to another architecture would boot nothing."""
    from amic.targets.ec2.bases import arch_for_instance_type, build_arch

    types = opts.instance_types + opts.spot_instance_types
    want = build_arch(opts.arch, types[0])
    other = [t for t in types if arch_for_instance_type(t) != want]
    if other:
        raise UsageError(f"instance types {', '.join(other)} are not {want} (the architecture "
                         f"of {'--arch' if opts.arch else types[0]}): every instance type tried "
                         "must boot the same image")


def deprecation_time(text: str) -> str:
    """``--deprecate-at``: an ISO time or a duration from now, as EC2's UTC ``DeprecateAt``."""
    from amic.targets.ec2.flags import parse_duration

    now = dt.datetime.now(dt.timezone.utc)
    try:
        when = now + parse_duration(text)
    except UsageError:
        try:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(f"--deprecate-at {text!r}: expected a UTC time "
                             "(2027-01-31T00:00:00Z) or a duration (90d)") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
    if when <= now:
        raise UsageError(f"--deprecate-at {text!r}: in the past (EC2 refuses it)")
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_sharing(opts: Ec2Options) -> None:
    """Account ids and organization ARNs as EC2 takes them."""
    for flag, accounts in (("--share-with", opts.share_accounts), ("--ami-user", opts.ami_users),
                           ("--snapshot-user", opts.snapshot_users)):
        for account in accounts:
            if not (len(account) == 12 and account.isdigit()):
                raise UsageError(f"{flag} {account!r}: expected a 12-digit AWS account id")
    for flag, arns, kind in (("--ami-org-arn", opts.ami_org_arns, ":organization/o-"),
                             ("--ami-ou-arn", opts.ami_ou_arns, ":ou/o-")):
        for arn in arns:
            if not arn.startswith("arn:") or kind not in arn:
                raise UsageError(f"{flag} {arn!r}: expected arn:aws:organizations::ACCOUNT"
                                 f"{kind}…")

"""``FROM`` on ec2: portable names (``debian:12``), AMI filters and ids, as DescribeImages calls.

A portable name is looked up only in the distribution's own account, so an
image of the same name published by anyone else is never picked; the newest
match wins (``Ec2Target.resolve_base``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import attrs

from amic.errors import BaseRefError

ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "arm64": "arm64", "aarch64": "arm64"}
"""Architecture spellings users write, to EC2's."""


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

OWNER_ALIASES = {"debian": "136693071363", "canonical": "099720109477", "ubuntu": "099720109477"}


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
                raise BaseRefError(f"AMI filter {ref!r}: expected KEY=VALUE words, got {token!r}")
            key = key.lower()
            if key in ("owner", "owners"):
                owners += [OWNER_ALIASES.get(o, o) for o in value.split(",")]
            elif key == "name":
                filters.append(("name", value))
            elif key in ("arch", "architecture"):
                filters.append(("architecture", ARCH_ALIASES.get(value, value)))
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
        raise BaseRefError(f"base image {ref!r}: not an ami-… id, an AMI filter "
                         f"(owner=… name=…) or a known name ({', '.join(portable_names())})")
    version = distro.aliases.get(version or "latest", version or "latest")
    pattern = distro.names.get(version)
    if pattern is None:
        raise BaseRefError(f"base image {ref!r}: unknown {name} version; known: "
                         f"{', '.join(sorted(distro.names))}")
    # The name pattern already pins the architecture (and moto keeps none to filter on).
    return BaseQuery(ref, owners=(distro.owner,),
                     filters=(("name", pattern.format(arch=distro.arch_names[arch])),),
                     user=distro.user)



def build_arch(arch: str | None, instance_type: str) -> str:
    """The architecture to build for: ``arch`` if given (any spelling), else the instance type's."""
    if arch:
        return ARCH_ALIASES.get(arch, arch)
    return arch_for_instance_type(instance_type.split(",")[0].strip())

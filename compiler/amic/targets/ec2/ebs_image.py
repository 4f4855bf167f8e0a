"""An AMI from a raw disk with no instance: upload (``ebs_upload``), then RegisterImage.

:func:`publish` finds the project's previous uploaded snapshot whose block manifest is
kept here (the parent: only changed blocks go; or takes the snapshot ``ebs_early`` started
over it beside the disk step), uploads, and registers the completed snapshot as an HVM
image: architecture, ENA, boot mode (``uefi-preferred``: the disk boots by BIOS and UEFI),
root device ``/dev/xvda``, ``ImdsSupport v2.0`` (the boot units speak IMDSv2 only), and
what the ec2 options add (:class:`Registration`: another boot mode, NitroTPM, SR-IOV, the
root volume's size and type, further mappings), tagged at creation with the same identity
tags an SSH-baked AMI has (``engine.tags.final_tags``), so cache look-ups, ``ami ls``,
prune and ``launch`` treat both alike. Once registered, the snapshot loses its temporary tags (``amic:role=upload``,
owner, expiry, heartbeat) and gets ``amic:image-id`` like any AMI's snapshot (``amic gc``
removes it with its AMI); until then it is a temporary resource of the build, deleted on
any failure or Ctrl-C, found by ``amic gc`` after a kill.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import attrs

from amic.contract import TAG_NAME, TAG_PROJECT
from amic.errors import BuildError
from amic.targets.ec2 import block_manifest as bm
from amic.targets.ec2 import ebs_upload as up
from amic.targets.ec2 import owner, resources
from amic.targets.ec2 import session as aws
from amic.targets.ec2.images import TAG_IMAGE_ID

ROOT_DEVICE = "/dev/xvda"
BOOT_MODE = "uefi-preferred"
ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
"""``uname -m`` or Debian's name -> EC2's ``Architecture``."""
UPLOAD_TTL = dt.timedelta(hours=6)
TEMPORARY_TAGS = (aws.TAG_ROLE, aws.TAG_EXPIRES, owner.TAG_OWNER, resources.TAG_HEARTBEAT,
                  resources.TAG_HEARTBEAT_EVERY)
"""What a snapshot carries only while it is being uploaded."""

Log = Callable[[str], None]


class Early(Protocol):
    """A snapshot started before the disk was made: ``ebs_early.Early`` (which uses this
    module: named here by what publish asks of it, not imported)."""

    def take(self, volume_gib: int, log: Log | None = None
             ) -> tuple[bm.Manifest | None, contextlib.AbstractContextManager[str]] | None: ...


@attrs.frozen
class Registration:
    """What RegisterImage is given beyond the snapshot, name and tags: by default the bake's
    own choices; ``local_publish.registration`` makes one from the ec2 options."""

    boot_mode: str = BOOT_MODE
    tpm_support: str | None = None
    sriov_support: bool = False
    root: Mapping[str, object] = attrs.field(factory=dict, converter=dict)
    """The root mapping's ``Ebs`` fields over the bake's (gp3, deleted on termination); a
    ``VolumeSize`` below the snapshot's is the snapshot's (:meth:`volume_gib`)."""
    mappings: tuple[Mapping, ...] = attrs.field(default=(), converter=tuple)
    """Further block device mappings, as given."""

    def volume_gib(self, snapshot_gib: int) -> int:
        """The root volume's size: the one asked for, but never below the snapshot's."""
        return max(int(self.root.get("VolumeSize") or 0), snapshot_gib)

    def args(self, snapshot_id: str, snapshot_gib: int) -> dict:
        """RegisterImage's ``BlockDeviceMappings``, ``BootMode`` and the optional flags."""
        root = {"VolumeType": "gp3", "DeleteOnTermination": True, **self.root,
                "SnapshotId": snapshot_id, "VolumeSize": self.volume_gib(snapshot_gib)}
        out: dict = {"BootMode": self.boot_mode, "BlockDeviceMappings": [
            {"DeviceName": ROOT_DEVICE, "Ebs": root}, *map(dict, self.mappings)]}
        if self.tpm_support:
            out["TpmSupport"] = self.tpm_support
        if self.sriov_support:
            out["SriovNetSupport"] = "simple"
        return out


@attrs.frozen
class Published:
    image_id: str
    upload: up.Uploaded
    tags: Mapping[str, str] = attrs.field(factory=dict, converter=dict)
    """The image's tags as registered (:func:`image_tags`)."""


def ec2_arch(arch: str) -> str:
    try:
        return ARCHES[arch]
    except KeyError:
        raise BuildError(f"EC2 has no architecture {arch!r} (x86_64 or arm64)") from None


def lineage(tags: Mapping[str, str]) -> tuple[str, str] | None:
    """The tag whose value makes images one line of succession: the project identity, or
    for a project without one (warned about at build time) its name. The parent snapshot of
    an upload and the kept previous disk are both found by it, so they always agree."""
    for tag in (TAG_PROJECT, TAG_NAME):
        if tags.get(tag):
            return tag, tags[tag]
    return None


def previous(ec2, line: tuple[str, str] | None, volume_gib: int) -> bm.Manifest | None:
    """The newest completed snapshot of the ``line`` (see :func:`lineage`) registered as an
    AMI whose manifest is kept here and which fits the new disk: the parent of the next
    upload. Any parent is correct (only blocks whose hash differs from the parent's
    manifest are sent); the closest one sends the fewest."""
    if line is None:
        return None
    tag, value = line
    found = []
    for page in ec2.get_paginator("describe_snapshots").paginate(
            OwnerIds=["self"], Filters=[{"Name": f"tag:{tag}", "Values": [value]},
                                        {"Name": "tag-key", "Values": [TAG_IMAGE_ID]},
                                        {"Name": "status", "Values": ["completed"]}]):
        found += page["Snapshots"]
    for snap in sorted(found, key=lambda s: s["StartTime"], reverse=True):
        manifest = bm.load(snap["SnapshotId"])
        if manifest is not None and manifest.volume_gib <= max(volume_gib, 1):
            return manifest
    return None


def upload_tags(tags: Mapping[str, str], build_id: str) -> dict[str, str]:
    """The image's tags plus what makes the snapshot a temporary resource of the build."""
    return {**tags, **aws.resource_tags(build_id, ttl=UPLOAD_TTL, role=up.ROLE_UPLOAD),
            "Name": tags.get("Name") or f"amic-upload-{build_id}"}


def image_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """What of ``tags`` an image is tagged with at creation (EC2's limit; ``amic:`` kept)."""
    return aws.fit_tags(tags, keep_prefixes=("amic:",))[0]


def register(ec2, snapshot_id: str, *, name: str, description: str, arch: str,
             volume_gib: int, tags: Mapping[str, str],
             how: Registration = Registration()) -> str:
    kept = image_tags(tags)
    return aws.call(f"registering an image of {snapshot_id}", ec2.register_image,
                    Name=name, Description=description, Architecture=ec2_arch(arch),
                    RootDeviceName=ROOT_DEVICE, VirtualizationType="hvm", EnaSupport=True,
                    ImdsSupport="v2.0", **how.args(snapshot_id, volume_gib),
                    TagSpecifications=aws.tag_specs(kept, "image"))["ImageId"]


def adopt(ec2, snapshot_id: str, image_id: str, tags: Mapping[str, str]) -> None:
    """The registered image's snapshot: its tags as any AMI's snapshot, no temporary ones."""
    aws.call("untagging the uploaded snapshot", ec2.delete_tags, Resources=[snapshot_id],
             Tags=[{"Key": k} for k in TEMPORARY_TAGS])
    kept, _ = aws.fit_tags({**tags, TAG_IMAGE_ID: image_id}, keep_prefixes=("amic:",))
    aws.call("tagging the uploaded snapshot", ec2.create_tags, Resources=[snapshot_id],
             Tags=aws.tag_list(kept))


def publish(ebs, ec2, disk: Path, *, name: str, description: str, arch: str,
            tags: Mapping[str, str], build_id: str, incremental: bool = True,
            workers: int = up.WORKERS, progress: up.Progress | None = None,
            log: Log | None = None, on_started: Callable[[str], None] | None = None,
            early: Early | None = None,
            seal_poll: float = up.SEAL_POLL, seal_timeout: float = up.SEAL_TIMEOUT,
            snapshot_tags: Mapping[str, str] | None = None,
            how: Registration = Registration(),
            then: Callable[[str, str], None] | None = None) -> Published:
    """Upload ``disk`` and register it as the AMI ``name`` tagged ``tags`` (its snapshot
    ``snapshot_tags``, by default the same), as ``how`` says. ``early``: a snapshot started
    for it beside the disk step (``ebs_early``), used, with the parent it was started over,
    if the disk is the size it was started for. ``then(image id, snapshot id)``: what the
    image needs once registered (its attributes, its sharing); should it fail, the image
    and its snapshot are removed like one whose registration failed, so no AMI is left that
    lacks what the build asked for (a later build would take it from the cache as it is)."""
    ec2_arch(arch)
    snapshot_tags = tags if snapshot_tags is None else snapshot_tags
    gib = bm.volume_gib(disk.stat().st_size)
    taken = early.take(gib, log) if early is not None else None
    if taken is None:
        taken = (previous(ec2, lineage(tags), gib) if incremental else None), None
    parent, started = taken
    if log is not None:
        log(f"uploading {disk.name} ({gib} GiB volume)"
            + (f" over {parent.snapshot_id}" if parent else ""))
    done = up.upload(ebs, ec2, disk, tags=upload_tags(snapshot_tags, build_id),
                     description=description,
                     parent=parent, workers=workers, progress=progress, log=log,
                     on_started=on_started, started=started, seal_poll=seal_poll,
                     seal_timeout=seal_timeout)
    gib = done.manifest.volume_gib
    if log is not None and how.volume_gib(gib) > int(how.root.get("VolumeSize") or gib):
        log(f"root volume: {gib} GiB, the snapshot's size (the {how.root['VolumeSize']} GiB "
            "asked would not hold it)")
    image_id = None
    try:
        image_id = register(ec2, done.snapshot_id, name=name, description=description,
                            arch=arch, volume_gib=gib, tags=tags, how=how)
        adopt(ec2, done.snapshot_id, image_id, snapshot_tags)
        if then is not None:
            then(image_id, done.snapshot_id)
    except BaseException:
        if image_id is not None:
            resources.cleanup_quietly(
                log or (lambda _: None), "image", image_id,
                lambda i: ec2.deregister_image(ImageId=i), image_id,
                left="it stays registered, a final image of its key: the next build takes "
                     "it from the cache and gives it the sharing asked; `amic ami prune` or "
                     "`aws ec2 deregister-image` removes it")
        up.delete_quietly(ec2, done.snapshot_id, log)
        bm.forget(done.snapshot_id)
        raise
    if log is not None:
        log(f"registered {image_id}: {done.blocks_sent} of {done.blocks_total} blocks sent "
            f"in {done.seconds:.1f}s")
    return Published(image_id, done, image_tags(tags))

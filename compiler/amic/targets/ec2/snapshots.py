"""Layer checkpoints as EBS snapshots of the live root volume, made into AMIs only when needed.

A layer checkpoint is a CreateSnapshot of the running build instance's root
volume after ``sync`` (crash-consistent: what a power cut would leave, which
ext4/xfs journals recover; the build has no writer running between layers).
CreateSnapshot returns at once; the snapshot completes in the background while
the build goes on. The snapshot is tagged at creation with the layer's tags and
with what RegisterImage needs to make it an AMI later (root device name,
architecture, ENA, boot mode, the source image). The engine sees it as an
``Image`` whose id is the ``snap-…`` id.

Only when a later build starts from a layer is an AMI registered from its
snapshot (``ami_for_layer``, after waiting for ``completed``); that AMI is tagged
with the layer's key and ``amic:from-snapshot``, so the next build finds it
(``images.find_image``) and launches it directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from amic.contract import KIND_LAYER, TAG_BUILD, TAG_KEY, TAG_KIND, TAG_SERVICE
from amic.errors import BuildError
from amic.targets.base import Image
from amic.targets.ec2 import session as aws
from amic.targets.ec2 import waiters
from amic.targets.ec2.naming import TAG_SSH_USER

TAG_CHECKPOINT = "amic:checkpoint"
"""``snapshot`` on a layer snapshot (what ``find_layer`` looks for)."""
TAG_FROM_SNAPSHOT = "amic:from-snapshot"
"""On an AMI registered from a layer snapshot: that snapshot."""
TAG_ROOT_DEVICE = "amic:root-device"
TAG_ARCH = "amic:arch"
TAG_ENA = "amic:ena"
TAG_BOOT_MODE = "amic:boot-mode"
TAG_SOURCE_IMAGE = "amic:source-image"

PER_VOLUME_PATIENCE = 120.0
"""Seconds a layer checkpoint waits out SnapshotCreationPerVolumeRateExceeded."""
RELEASE_PATIENCE = 300.0
"""Seconds to wait for the AMIs just deregistered to release a layer snapshot."""

Log = Callable[[str], None]
_KEEP = (TAG_KEY, TAG_KIND, aws.TAG_TOOL, TAG_BUILD, TAG_CHECKPOINT, TAG_ROOT_DEVICE,
         TAG_ARCH, TAG_ENA, TAG_BOOT_MODE, TAG_SSH_USER, TAG_SERVICE, "Name")


def is_snapshot(image: Image) -> bool:
    return image.id.startswith("snap-")


def image_facts(ec2, image_id: str, raw: dict | None = None) -> dict[str, str]:
    """What an AMI registered from a snapshot of an instance of ``image_id`` must repeat
    (from ``raw``, its DescribeImages entry, when the build has it already)."""
    if raw is None:
        found = aws.call(f"describing {image_id}", ec2.describe_images,
                         ImageIds=[image_id])["Images"]
        raw = found[0] if found else {}
    facts = {TAG_SOURCE_IMAGE: image_id,
             TAG_ROOT_DEVICE: raw.get("RootDeviceName") or "/dev/xvda",
             TAG_ARCH: raw.get("Architecture") or "x86_64",
             TAG_ENA: "true" if raw.get("EnaSupport", True) else "false"}
    if raw.get("BootMode"):
        facts[TAG_BOOT_MODE] = raw["BootMode"]
    return facts


def root_volume(ec2, instance_id: str, described: Mapping | None = None) -> tuple[str, str]:
    """(volume id, device name) of the instance's root volume (from ``described``, its
    DescribeInstances entry, when the caller has it: the root volume never changes)."""
    inst = described
    if inst is None:
        reply = aws.call(f"describing {instance_id}", ec2.describe_instances,
                         InstanceIds=[instance_id])
        inst = reply["Reservations"][0]["Instances"][0]
    device = inst.get("RootDeviceName") or "/dev/xvda"
    mappings = inst.get("BlockDeviceMappings", [])
    for bdm in mappings:
        if bdm.get("DeviceName") == device and bdm.get("Ebs", {}).get("VolumeId"):
            return bdm["Ebs"]["VolumeId"], device
    if described is not None:   # an entry without its volumes yet: EC2's own answer decides
        return root_volume(ec2, instance_id)
    raise BuildError(f"instance {instance_id}: no EBS volume on its root device {device} "
                     f"({[b.get('DeviceName') for b in mappings]})")


def snapshot_tags(tags: Mapping[str, str], facts: Mapping[str, str], log: Log) -> dict[str, str]:
    merged = {**tags, **facts, TAG_CHECKPOINT: "snapshot", TAG_KIND: KIND_LAYER}
    fitted, dropped = aws.fit_tags(merged, keep_prefixes=_KEEP)
    if dropped:
        log("warning: EC2 allows 50 tags per snapshot; left out: " + ", ".join(dropped))
    return fitted


def create_layer_snapshot(ec2, volume_id: str, tags: Mapping[str, str],
                          description: str) -> dict:
    """CreateSnapshot, tagged at creation; returns at once (the snapshot is ``pending``)."""
    # EC2 refuses a snapshot of a volume whose last one was taken moments ago
    # (SnapshotCreationPerVolumeRateExceeded: "wait at least 15 seconds"): two quick layers.
    return aws.call_patiently(f"snapshotting {volume_id}", ec2.create_snapshot,
                              codes=("SnapshotCreationPerVolumeRateExceeded",),
                              patience=PER_VOLUME_PATIENCE, VolumeId=volume_id,
                              Description=description[:255],
                              TagSpecifications=aws.tag_specs(tags, "snapshot"))


def snapshot_image(raw: dict) -> Image:
    tags = aws.tag_dict(raw.get("Tags"))
    start = raw.get("StartTime")
    created = start.isoformat() if hasattr(start, "isoformat") else start
    return Image(id=raw["SnapshotId"], key=tags.get(TAG_KEY), tags=tags, created=created)


def find_layer(ec2, key: str) -> Image | None:
    """The newest layer snapshot recorded under ``key`` (pending or completed)."""
    snaps = aws.call("looking up layer snapshots", ec2.describe_snapshots, OwnerIds=["self"],
                     Filters=[{"Name": f"tag:{TAG_KEY}", "Values": [key]},
                              {"Name": f"tag:{TAG_CHECKPOINT}", "Values": ["snapshot"]},
                              {"Name": "status", "Values": ["pending", "completed"]}])["Snapshots"]
    if not snaps:
        return None
    return snapshot_image(max(snaps, key=lambda s: str(s.get("StartTime", ""))))


def layers_of_service(ec2, service: str) -> list[Image]:
    snaps = aws.call("listing layer snapshots", ec2.describe_snapshots, OwnerIds=["self"],
                     Filters=[{"Name": f"tag:{TAG_CHECKPOINT}", "Values": ["snapshot"]},
                              {"Name": "tag:amic:service", "Values": [service]}])
    return [snapshot_image(s) for s in snaps["Snapshots"]]


def list_layers(ec2) -> list[Image]:
    snaps = aws.call("listing layer snapshots", ec2.describe_snapshots, OwnerIds=["self"],
                     Filters=[{"Name": f"tag:{TAG_CHECKPOINT}", "Values": ["snapshot"]}])
    return [snapshot_image(s) for s in snaps["Snapshots"]]


def amis_of_layer(ec2, snapshot_id: str) -> list[str]:
    """Every AMI registered from a layer snapshot, in any state (prune removes them with it)."""
    found = aws.call("looking for AMIs of the layer", ec2.describe_images, Owners=["self"],
                     Filters=[{"Name": f"tag:{TAG_FROM_SNAPSHOT}", "Values": [snapshot_id]}])
    return [img["ImageId"] for img in found["Images"]]


def remove_layer(ec2, snapshot_id: str) -> list[str]:
    """Deregister the AMIs registered from a layer snapshot, then delete the snapshot;
    returns those AMIs' ids (what went with it: the snapshot itself is the caller's id)."""
    amis = amis_of_layer(ec2, snapshot_id)
    for ami in amis:
        aws.call(f"deregistering {ami} (of layer {snapshot_id})", ec2.deregister_image,
                 ImageId=ami)
    aws.call_patiently(f"deleting layer snapshot {snapshot_id}", ec2.delete_snapshot,
                       codes=("InvalidSnapshot.InUse",), patience=RELEASE_PATIENCE,
                       SnapshotId=snapshot_id)
    return list(amis)


def registered_ami(ec2, snapshot_id: str) -> str | None:
    """An AMI registered earlier from ``snapshot_id`` (available or still pending)."""
    found = aws.call("looking for an AMI of the layer", ec2.describe_images, Owners=["self"],
                     Filters=[{"Name": f"tag:{TAG_FROM_SNAPSHOT}", "Values": [snapshot_id]},
                              {"Name": "state", "Values": ["available", "pending"]}])["Images"]
    return max(found, key=lambda i: i.get("CreationDate", ""))["ImageId"] if found else None


def ami_for_layer(ec2, layer: Image, *, name: str, timeout: float, poll_interval: float,
                  log: Log) -> str:
    """The AMI to launch a layer snapshot from: the one registered before, or a new one
    (RegisterImage once the snapshot is ``completed``), waited for ``available``."""
    snap = layer.id
    ami = registered_ami(ec2, snap)
    if ami is None:
        waiters.snapshot_completed(ec2, [snap], timeout=timeout, poll_interval=poll_interval,
                                   doing=f"waiting for layer snapshot {snap}")
        tags = layer.tags
        device = tags.get(TAG_ROOT_DEVICE, "/dev/xvda")
        image_tags = {k: v for k, v in tags.items() if not k.startswith("aws:")}
        image_tags.pop(TAG_CHECKPOINT, None)
        image_tags.update({TAG_FROM_SNAPSHOT: snap, "Name": name})
        image_tags, _ = aws.fit_tags(image_tags, keep_prefixes=(*_KEEP, TAG_FROM_SNAPSHOT))
        args = {"Name": name, "Description": f"amic cache layer from {snap}",
                "Architecture": tags.get(TAG_ARCH, "x86_64"), "RootDeviceName": device,
                "VirtualizationType": "hvm", "EnaSupport": tags.get(TAG_ENA, "true") == "true",
                "BlockDeviceMappings": [{"DeviceName": device, "Ebs": {
                    "SnapshotId": snap, "DeleteOnTermination": True}}],
                "TagSpecifications": aws.tag_specs(image_tags, "image")}
        if tags.get(TAG_BOOT_MODE):
            args["BootMode"] = tags[TAG_BOOT_MODE]
        ami = aws.call(f"registering an AMI from {snap}", ec2.register_image, **args)["ImageId"]
        log(f"registered {ami} from layer snapshot {snap} (kept for the next build)")
    waiters.image_available(ec2, [ami], timeout=timeout, poll_interval=poll_interval,
                            doing=f"waiting for {ami} (from {snap})")
    return ami

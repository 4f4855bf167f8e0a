"""amic's AMIs: finding them by cache key, making new ones (named in naming.py), sharing, copying, removing.

An AMI is a cache entry when it carries ``amic:key``; layer checkpoints and
final images differ only in ``amic:kind``. Snapshots are tagged separately
(EC2 does not copy an image's tags to them) with ``amic:image-id``, which is
how ``amic gc`` finds the snapshots of an image that is gone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping

from amic.contract import KIND_FINAL, KIND_LAYER, TAG_BUILD, TAG_KEY, TAG_KIND, TAG_SERVICE
from amic.errors import BuildError
from amic.targets.base import Image
from amic.targets.ec2 import session as aws
from amic.targets.ec2 import waiters
from amic.targets.ec2.naming import NewImage
from amic.targets.ec2.options import Ec2Options

TAG_IMAGE_ID = "amic:image-id"
"""On a snapshot: the AMI it belongs to (``amic gc`` removes it once that AMI is gone)."""

Log = Callable[[str], None]


def image_from_raw(raw: dict) -> Image:
    """An ``Image`` from one DescribeImages entry."""
    tags = aws.tag_dict(raw.get("Tags"))
    return Image(id=raw["ImageId"], key=tags.get(TAG_KEY), tags=tags,
                 created=raw.get("CreationDate"))


def newest(raws: Iterable[dict]) -> dict:
    return max(raws, key=lambda i: i.get("CreationDate", ""))


def final_image_query(key: str) -> dict:
    """DescribeImages arguments for the available images recorded under ``key``."""
    return {"Owners": ["self"], "Filters": [{"Name": f"tag:{TAG_KEY}", "Values": [key]},
                                            {"Name": "state", "Values": ["available"]}]}


def find_image(ec2, key: str) -> Image | None:
    images = aws.call("looking up cached images", ec2.describe_images,
                      **final_image_query(key))["Images"]
    return image_from_raw(newest(images)) if images else None


def final_by_id(ec2, key: str, image_id: str) -> Image | None:
    """The final AMI ``image_id`` if it is ours, available and tagged ``key``: what the tag
    look-up finds once EC2's tag index has caught up with the build that made it (eventual
    consistency); None if it is gone or is not that (boto3's retries on throttling)."""
    import botocore.exceptions

    try:
        raws = ec2.describe_images(Owners=["self"], ImageIds=[image_id])["Images"]
    except botocore.exceptions.ClientError as exc:
        if aws.error_code(exc) in ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"):
            return None
        raise aws.explain(exc, "looking up the image the build memo recorded") from None
    found = [image_from_raw(r) for r in raws
             if r.get("ImageId") == image_id and r.get("State") == "available"]
    return found[0] if found and found[0].key == key else None


def recorded_final(access, agent: str, result: dict) -> str | Exception:
    """The memo's final image by id, if EC2 has it available and tagged with the memo's key
    (what the tag look-up would find once EC2's index caught up); else why not."""
    from amic.targets.ec2 import query as ec2query

    try:
        images = ec2query.describe_images(access, user_agent=agent, Owners=["self"],
                                          ImageIds=[result["image_id"]])
    except Exception as exc:  # noqa: BLE001 - any doubt declines
        return exc
    for image in images:
        if (image["ImageId"] == result["image_id"] and image["State"] == "available"
                and image["Tags"].get(TAG_KEY) == result["final_key"]):
            return image["ImageId"]
    return LookupError(f"{result['image_id']}: not available under the memo's key")


def image_by_id(ec2, image_id: str) -> Image | None:
    found = ec2.describe_images(ImageIds=[image_id])["Images"]
    return image_from_raw(found[0]) if found else None


def list_images(ec2) -> list[Image]:
    """amic's AMIs, newest first."""
    images = aws.call("listing cached images", ec2.describe_images, Owners=["self"],
                      Filters=[{"Name": "tag-key", "Values": [TAG_KEY]}])["Images"]
    images.sort(key=lambda i: i.get("CreationDate", ""), reverse=True)
    return [image_from_raw(i) for i in images]


def has_final(ec2, match: Mapping[str, str | None]) -> bool:
    """Whether one of our final AMIs carries the tags ``match`` (None: the tag is absent,
    which no filter says: checked here). One DescribeImages, filtered by the tags given."""
    filters = [{"Name": f"tag:{TAG_KIND}", "Values": [KIND_FINAL]}]
    filters += [{"Name": f"tag:{name}", "Values": [value]} for name, value in match.items()
                if value is not None]
    images = aws.call("looking for an earlier build", ec2.describe_images, Owners=["self"],
                      Filters=filters)["Images"]
    return any(all(aws.tag_dict(i.get("Tags")).get(name) == value
                   for name, value in match.items()) for i in images)


def layers_of_service(ec2, service: str) -> list[Image]:
    images = aws.call("listing layer checkpoints", ec2.describe_images, Owners=["self"],
                      Filters=[{"Name": f"tag:{TAG_KIND}", "Values": [KIND_LAYER]},
                               {"Name": f"tag:{TAG_SERVICE}", "Values": [service]}])["Images"]
    images.sort(key=lambda i: i.get("CreationDate", ""), reverse=True)
    return [image_from_raw(i) for i in images]


def snapshot_ids(raw: dict) -> list[str]:
    return [bdm["Ebs"]["SnapshotId"] for bdm in raw.get("BlockDeviceMappings", [])
            if bdm.get("Ebs", {}).get("SnapshotId")]


def deregister(ec2, image_id: str, *, delete_snapshots: bool = True) -> list[str]:
    """Deregister an AMI and (``delete_snapshots``) delete its EBS snapshots; the snapshot ids.

    Snapshots kept carry ``amic:image-id`` of an image that is gone: ``amic gc`` takes them."""
    found = aws.call(f"describing {image_id}", ec2.describe_images, ImageIds=[image_id])["Images"]
    # one snapshot may back several of the image's devices: delete (and name) it once
    snaps = list(dict.fromkeys(snap for img in found for snap in snapshot_ids(img)))
    aws.call(f"deregistering {image_id}", ec2.deregister_image, ImageId=image_id)
    for snap in snaps if delete_snapshots else ():
        delete_released_snapshot(ec2, snap, f"deleting snapshot {snap} of {image_id}")
    return snaps


def remove_older_finals(ec2, key: str, *, keep: str) -> tuple[list[str], list[str]]:
    """Deregister the final AMIs under ``key`` other than ``keep`` (their snapshots deleted):
    the ids removed, and those that could not be (left for ``amic ami prune``)."""
    found = aws.call("looking up older images of the key", ec2.describe_images,
                     **final_image_query(key))["Images"]
    removed: list[str] = []
    failed: list[str] = []
    for raw in found:
        tags = aws.tag_dict(raw.get("Tags"))
        if raw["ImageId"] == keep or tags.get(TAG_KIND, KIND_FINAL) != KIND_FINAL:
            continue
        try:
            deregister(ec2, raw["ImageId"])
            removed.append(raw["ImageId"])
        except BuildError:
            failed.append(raw["ImageId"])
    return removed, failed


SNAPSHOT_RELEASE_PATIENCE = 300.0
"""Seconds to wait for EC2 to release a deregistered AMI's snapshot: DeleteSnapshot answers
``InvalidSnapshot.InUse`` for a while after DeregisterImage."""


def delete_released_snapshot(ec2, snap: str, doing: str) -> None:
    """DeleteSnapshot, waiting (with backoff) while the AMI just deregistered still holds it."""
    aws.call_patiently(doing, ec2.delete_snapshot, codes=("InvalidSnapshot.InUse",),
                       patience=SNAPSHOT_RELEASE_PATIENCE, SnapshotId=snap)


def deregister_named(ec2, name: str, log: Log, *, delete_snapshots: bool = True) -> None:
    """``--force-deregister``: remove our images that already carry ``name`` (their snapshots
    too with ``delete_snapshots``, ``--force-delete-snapshot``)."""
    old = aws.call("looking for an image of the same name", ec2.describe_images,
                   Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]
    for img in old:
        snaps = deregister(ec2, img["ImageId"], delete_snapshots=delete_snapshots)
        kept = "" if delete_snapshots or not snaps else (
            f"; snapshots {', '.join(snaps)} kept until `amic gc`")
        log(f"--force-deregister: removed {img['ImageId']} ({name}){kept}")


# -- making one ---------------------------------------------------------------------------

def request_image(ec2, instance_id: str, new: NewImage, opts: Ec2Options, log: Log) -> str:
    """CreateImage of a stopped instance, not waited for (``wait_image``): the new AMI's id."""
    log(f"creating image {new.name}")
    extra = {"BlockDeviceMappings": [v.mapping() for v in opts.ami_volumes]} \
        if opts.ami_volumes and new.final else {}
    image_id = aws.call(f"creating an image of {instance_id}", ec2.create_image,
                        InstanceId=instance_id, Name=new.name, Description=new.description,
                        # the snapshots tagged at creation too: an interrupt while the
                        # image is pending leaves nothing `amic gc` cannot attribute
                        TagSpecifications=(aws.tag_specs(new.tags, "image")
                                           + aws.tag_specs(new.snapshot_tags, "snapshot")),
                        **extra)["ImageId"]
    return image_id


def wait_image(ec2, image_id: str, opts: Ec2Options) -> dict:
    """The DescribeImages entry of ``image_id`` once it is available; a failed one is
    deregistered (no cache entry), one still pending is left (it will finish)."""
    try:
        found = waiters.image_available(ec2, [image_id], timeout=opts.image_timeout,
                                        poll_interval=opts.poll_interval,
                                        doing=f"waiting for image {image_id}")
    except BuildError:
        # A failed image is no cache entry; one still pending is (it will finish).
        if image_state(ec2, image_id) in ("failed", "error", "invalid"):
            with contextlib.suppress(BuildError):
                deregister(ec2, image_id)
        raise
    return found[image_id]     # the answer that said "available" (no second Describe)


def image_state(ec2, image_id: str) -> str | None:
    with contextlib.suppress(Exception):
        return ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"]
    return None


def tag_snapshots(ec2, raw: dict, tags: Mapping[str, str]) -> list[str]:
    """Tag the snapshots of image ``raw`` (EC2 gives them none of the image's tags)."""
    snaps = snapshot_ids(raw)
    if snaps:
        snap_tags, _ = aws.fit_tags({**tags, TAG_IMAGE_ID: raw["ImageId"]}, keep_prefixes=(
            TAG_IMAGE_ID, TAG_KEY, aws.TAG_TOOL, TAG_BUILD))
        aws.call("tagging the image's snapshots", ec2.create_tags, Resources=snaps,
                 Tags=aws.tag_list(snap_tags))
    return snaps


def share(ec2, image_id: str, snaps: list[str], opts: Ec2Options, log: Log) -> None:
    """Launch permission on the image (``--ami-user``, ``--ami-group``, ``--ami-org-arn``,
    ``--ami-ou-arn``), create-volume permission on its snapshots (``--snapshot-user``);
    ``--share-with`` is both."""
    perms, users = opts.launch_permission, opts.volume_users
    if perms:
        aws.call(f"sharing {image_id}", ec2.modify_image_attribute, ImageId=image_id,
                 LaunchPermission={"Add": perms})
        log(f"shared {image_id} with " + ", ".join(next(iter(p.values())) for p in perms))
    for snap in snaps if users else ():
        aws.call(f"sharing snapshot {snap}", ec2.modify_snapshot_attribute, SnapshotId=snap,
                 Attribute="createVolumePermission", OperationType="add", UserIds=users)
    if users and snaps:
        log(f"shared snapshots {', '.join(snaps)} with {', '.join(users)}")


# -- attributes ----------------------------------------------------------------------------

def mark_instance(ec2, instance_id: str, opts: Ec2Options, log: Log) -> None:
    """``--ena-support``, ``--sriov-support`` on the stopped instance: CreateImage carries them
    (EC2 changes neither on an AMI afterwards)."""
    if opts.ena_support:
        aws.call(f"enabling ENA on {instance_id}", ec2.modify_instance_attribute,
                 InstanceId=instance_id, EnaSupport={"Value": True})
    if opts.sriov_support:
        aws.call(f"enabling SR-IOV on {instance_id}", ec2.modify_instance_attribute,
                 InstanceId=instance_id, SriovNetSupport={"Value": "simple"})
    if opts.ena_support or opts.sriov_support:
        log(f"{instance_id}: " + ", ".join(n for n, on in (("ENA", opts.ena_support),
                                                          ("SR-IOV", opts.sriov_support)) if on))


def set_attributes(ec2, image_id: str, opts: Ec2Options, log: Log) -> None:
    """What EC2 sets on an existing AMI: ``--imds-support`` (ModifyImageAttribute) and
    ``--deprecate-at`` (EnableImageDeprecation)."""
    if opts.imds_support:
        aws.call(f"setting IMDS support of {image_id}", ec2.modify_image_attribute,
                 ImageId=image_id, ImdsSupport={"Value": opts.imds_support})
        log(f"{image_id}: IMDS {opts.imds_support} only")
    if opts.deprecate_at:
        aws.call(f"deprecating {image_id}", ec2.enable_image_deprecation, ImageId=image_id,
                 DeprecateAt=opts.deprecate_at)
        log(f"{image_id}: deprecated from {opts.deprecate_at}")


def reregister(ec2, raw: dict, new: NewImage, opts: Ec2Options, log: Log) -> dict:
    """``--boot-mode``, ``--tpm-support``: EC2 takes them only at RegisterImage, so the image
    CreateImage made is registered again from its snapshots with them (same name: the first
    is deregistered before, its snapshots kept and retagged for the new one). Its entry."""
    old = raw["ImageId"]
    mappings = []
    for bdm in raw.get("BlockDeviceMappings", []):
        entry = {k: v for k, v in bdm.items() if k in ("DeviceName", "VirtualName", "NoDevice")}
        if "Ebs" in bdm:
            entry["Ebs"] = {k: v for k, v in bdm["Ebs"].items() if k in (
                "SnapshotId", "VolumeSize", "VolumeType", "DeleteOnTermination", "Iops",
                "Throughput")}
        mappings.append(entry)
    args: dict = {"Name": new.name, "Description": new.description,
                  "Architecture": raw.get("Architecture") or "x86_64",
                  "RootDeviceName": raw.get("RootDeviceName") or "/dev/xvda",
                  "VirtualizationType": "hvm", "BlockDeviceMappings": mappings,
                  "EnaSupport": bool(raw.get("EnaSupport") or opts.ena_support),
                  "TagSpecifications": aws.tag_specs(new.tags, "image")}
    if opts.sriov_support or raw.get("SriovNetSupport"):
        args["SriovNetSupport"] = "simple"
    for key, value in (("BootMode", opts.boot_mode or raw.get("BootMode")),
                       ("TpmSupport", opts.tpm_support or raw.get("TpmSupport"))):
        if value:
            args[key] = value
    deregister(ec2, old, delete_snapshots=False)
    image_id = aws.call("registering the image with its boot mode", ec2.register_image,
                        **args)["ImageId"]
    found = waiters.image_available(ec2, [image_id], timeout=opts.image_timeout,
                                    poll_interval=opts.poll_interval,
                                    doing=f"waiting for image {image_id}")
    log(f"image {image_id} replaces {old}: boot mode {args.get('BootMode', '-')}, "
        f"TPM {args.get('TpmSupport', '-')}")
    return found[image_id]

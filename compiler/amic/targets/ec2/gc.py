"""Finding what amic left on EC2: leaked build resources (``amic gc``) and old AMIs (``amic ami prune``).

A build removes its temporary resources itself, on success, failure and
Ctrl-C. Only a process killed outright (SIGKILL, a lost machine, a network
cut during cleanup) leaves some behind; they carry ``amic:tool``,
``amic:build-id``, ``amic:expires``, ``amic:heartbeat`` and ``amic:owner``, and
this module finds them by those tags: a build whose owner on this host is gone
is dead at once, one elsewhere once its heartbeat stopped
(``resources.build_alive``); the builds still running are listed too
(``survey``). Nothing without amic's tags is ever touched.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Iterable, Sequence

import attrs

from amic import contract
from amic.targets import base as tb
from amic.targets.ec2 import block_manifest, iamprofile, owner, resources
from amic.targets.ec2 import session as aws
from amic.targets.ec2 import snapshots
from amic.targets.ec2.ebs_upload import ROLE_UPLOAD
from amic.targets.ec2.images import TAG_IMAGE_ID


@attrs.frozen
class Leak:
    kind: str
    """instance, security-group, key-pair (a lease too), volume, snapshot or key-file."""
    id: str
    build_id: str | None
    why: str
    name: str | None = None

    def to_json(self) -> dict:
        return attrs.asdict(self)


TEMPORARY_ROLES = ("build", "launch", "lease", ROLE_UPLOAD)
"""``upload``: a snapshot written with the EBS direct APIs, until its AMI is registered."""


@attrs.frozen
class LiveBuild:
    """A build whose resources ``amic gc`` leaves alone because it still runs."""

    build_id: str
    owner: str
    """Who runs it (``pid N on this host`` or ``pid N on HOST``)."""
    how: str
    """Why it counts as running (its owner runs here, or its heartbeat is fresh)."""
    heartbeat: str | None
    """The newest ``amic:heartbeat`` of its resources (UTC), None if none has one."""
    resources: tuple[str, ...]
    """``kind id`` of each of its resources."""

    def to_json(self) -> dict:
        return attrs.asdict(self)


@attrs.frozen
class Survey:
    leaks: list[Leak]
    live: list[LiveBuild]


def _judge(tags: dict, build_id: str | None, ignore_expiry: bool,
           at: dt.datetime) -> tuple[bool | None, str]:
    """(True, why) for a resource that may go, (False, how) for one of a running build,
    (None, "") for one to leave alone silently (not amic's, not a build's, not expired)."""
    if aws.TAG_TOOL not in tags or tags.get(aws.TAG_ROLE, "build") not in TEMPORARY_ROLES:
        return None, ""
    if build_id is not None and tags.get(contract.TAG_BUILD) != build_id:
        return None, ""
    if ignore_expiry:
        return True, "forced"
    # An owner on this host that no longer runs died (kill -9): at once. Elsewhere a live
    # build refreshes amic:heartbeat, and one that stopped beating died, whatever
    # amic:expires says. While it runs the build lives.
    alive, how = resources.build_alive(tags, at)
    if alive is not None:
        return (False, how) if alive else (True, how)
    expires = aws.parse_iso(tags.get(aws.TAG_EXPIRES))
    if expires is not None and expires <= at:
        return True, f"expired {aws.iso(expires)}"
    return None, ""


def _live_builds(seen: dict[str, list[tuple[str, dict, str]]]) -> list[LiveBuild]:
    found = []
    for build, items in sorted(seen.items()):
        beats = sorted(t[resources.TAG_HEARTBEAT] for _, t, _ in items
                       if t.get(resources.TAG_HEARTBEAT))
        found.append(LiveBuild(build, owner.describe(items[0][1]), items[0][2],
                               beats[-1] if beats else None,
                               tuple(label for label, _, _ in items)))
    return found


def survey(target, *, build_id: str | None = None, ignore_expiry: bool = False,
           at: dt.datetime | None = None) -> Survey:
    """Temporary resources of amic builds that died or expired (or of ``build_id``), and the
    builds that still run."""
    ec2 = target.ec2
    at = at or aws.now()
    found_roles: list[tuple[str, dict]] = []   # IAM (another endpoint) asked meanwhile
    iam = target.clients.iam    # made here: a boto3 session makes clients in one thread
    roles = threading.Thread(target=lambda: found_roles.extend(_temporary_roles(iam)),
                             daemon=True)
    roles.start()
    tagged = [{"Name": "tag-key", "Values": [aws.TAG_TOOL]}]
    found: list[Leak] = []
    running: dict[str, list[tuple[str, dict, str]]] = {}

    def consider(kind: str, rid: str, tags: dict, name: str | None = None) -> None:
        leaked, why = _judge(tags, build_id, ignore_expiry, at)
        if leaked:
            found.append(Leak(kind, rid, tags.get(contract.TAG_BUILD), why, name))
        elif leaked is False:
            running.setdefault(tags.get(contract.TAG_BUILD, "?"), []).append(
                (f"{kind} {name or rid}", tags, why))

    for page in ec2.get_paginator("describe_instances").paginate(
            Filters=[*tagged, {"Name": "instance-state-name", "Values": resources.LIVE_STATES}]):
        for res in page["Reservations"]:
            for inst in res["Instances"]:
                consider("instance", inst["InstanceId"], aws.tag_dict(inst.get("Tags")))
    for group in ec2.describe_security_groups(Filters=tagged)["SecurityGroups"]:
        consider("security-group", group["GroupId"], aws.tag_dict(group.get("Tags")),
                 group.get("GroupName"))
    pairs = ec2.describe_key_pairs()["KeyPairs"]
    for key in pairs:
        if aws.TAG_TOOL in aws.tag_dict(key.get("Tags")):
            consider("key-pair", key["KeyName"], aws.tag_dict(key.get("Tags")), key["KeyName"])
    found += stale_key_files({key["KeyName"] for key in pairs}, build_id)
    for page in ec2.get_paginator("describe_volumes").paginate(
            Filters=[*tagged, {"Name": "status", "Values": ["available"]}]):
        for vol in page["Volumes"]:
            consider("volume", vol["VolumeId"], aws.tag_dict(vol.get("Tags")))
    # Snapshots an upload started and never registered (pending, error or completed).
    for page in ec2.get_paginator("describe_snapshots").paginate(
            OwnerIds=["self"],
            Filters=[{"Name": f"tag:{aws.TAG_ROLE}", "Values": [ROLE_UPLOAD]}]):
        for snap in page["Snapshots"]:
            consider("snapshot", snap["SnapshotId"], aws.tag_dict(snap.get("Tags")))
    roles.join()
    for name, tags in found_roles:
        consider("iam-role", name, tags, name)
    # Snapshots of deregistered images (a prune or gc interrupted between the two calls).
    if build_id is None:
        found += orphan_snapshots(ec2)
    return Survey(found, _live_builds(running))


def _temporary_roles(iam) -> list[tuple[str, dict]]:
    """``--temporary-iam-instance-profile`` roles (and their profiles): none where the caller
    may not list IAM roles (the policy's optional ``TemporaryInstanceProfile``)."""
    import botocore.exceptions

    try:
        return iamprofile.leftovers(iam)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
        return []


def find_leaks(target, *, build_id: str | None = None, ignore_expiry: bool = False,
               at: dt.datetime | None = None) -> list[Leak]:
    """Temporary resources of amic builds that died or expired (or of ``build_id``)."""
    return survey(target, build_id=build_id, ignore_expiry=ignore_expiry, at=at).leaks


def orphan_snapshots(ec2) -> list[Leak]:
    """Snapshots tagged with an image that is gone."""
    found = []
    images = {img["ImageId"] for img in ec2.describe_images(
        Owners=["self"], Filters=[{"Name": "tag-key", "Values": [contract.TAG_KEY]}])["Images"]}
    for page in ec2.get_paginator("describe_snapshots").paginate(
            OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": [TAG_IMAGE_ID]}]):
        for snap in page["Snapshots"]:
            tags = aws.tag_dict(snap.get("Tags"))
            if tags.get(TAG_IMAGE_ID) not in images:
                found.append(Leak("snapshot", snap["SnapshotId"], tags.get(contract.TAG_BUILD),
                                  f"image {tags.get(TAG_IMAGE_ID)} is gone"))
    return found


def stale_key_files(key_pairs: set[str], build_id: str | None) -> list[Leak]:
    """Private keys kept builds saved (``~/.cache/amic/keys/amic-*.pem``) whose key pair is
    gone: the build is over, nothing can use them."""
    found = []
    for path in sorted(resources.keys_dir().glob("amic-*.pem")):
        name = path.name[:-len(".pem")]
        owner = name[len("amic-"):]
        if name in key_pairs or (build_id is not None and owner != build_id):
            continue
        found.append(Leak("key-file", str(path), owner, f"no key pair {name} any more", name))
    return found


def remove(target, leaks: Sequence[Leak]) -> list[tuple[Leak, Exception]]:
    """Remove leaks in dependency order; returns the failures (the rest went)."""
    import botocore.exceptions

    ec2 = target.ec2
    opts = target.opts
    failures: list[tuple[Leak, Exception]] = []
    by_kind = {kind: [leak for leak in leaks if leak.kind == kind]
               for kind in ("instance", "security-group", "key-pair", "volume", "snapshot",
                            "key-file", "iam-role")}
    instances = [leak.id for leak in by_kind["instance"]]
    if instances:
        try:
            resources.terminate_instances(ec2, instances, timeout=opts.instance_timeout,
                                          poll_interval=opts.poll_interval,
                                          doing="waiting for leaked instances to terminate")
        except Exception as exc:  # noqa: BLE001 - reported per resource
            failures += [(leak, exc) for leak in by_kind["instance"]]
    for kind, call in (
            ("security-group", lambda i: resources.delete_security_group(
                ec2, i, poll_interval=opts.poll_interval)),
            ("key-pair", lambda i: resources.delete_key_pair(ec2, i)),
            ("volume", lambda i: ec2.delete_volume(VolumeId=i)),
            ("snapshot", lambda i: (ec2.delete_snapshot(SnapshotId=i), block_manifest.forget(i))),
            ("key-file", lambda i: os.unlink(i)),
            ("iam-role", lambda i: iamprofile.delete(target.clients.iam, i))):
        for leak in by_kind[kind]:
            try:
                call(leak.id)
            except (botocore.exceptions.ClientError, OSError) as exc:
                failures.append((leak, exc))
    return failures


def prune_plan(images: Iterable[tb.Image], *, keep: int, project: str, label: str = "",
               legacy_name: str | None = None, older_than: dt.timedelta | None = None,
               everything: bool = False, at: dt.datetime | None = None
               ) -> list[tuple[tb.Image, str]]:
    """Which AMIs of project ``project`` (``amic:project``) ``amic ami prune`` removes, and why.

    Only images tagged ``amic:project`` = ``project`` are ever in the plan, and with
    ``legacy_name`` (``--force``) images without ``amic:project`` (built before it, or
    without an identity) whose ``amic:name`` is ``legacy_name``. Of several images of
    one key the newest stays and the others go (duplicates of concurrent builds). Kept:
    the ``keep`` newest final keys, and every layer checkpoint that a kept final, or any
    final of another project, was built from (``amic:layer:*`` tags; layers are shared by
    key). With ``older_than``, nothing younger goes. Whether an image is in use is
    :func:`in_use`'s question, asked of this plan. ``label`` names the project in reasons.
    """
    name = label or project

    def selected(img: tb.Image) -> bool:
        tags = img.tags
        if contract.TAG_PROJECT in tags:
            return tags[contract.TAG_PROJECT] == project
        return legacy_name is not None and tags.get(contract.TAG_NAME) == legacy_name

    at = at or aws.now()
    images = sorted(images, key=lambda i: i.created or "", reverse=True)

    def old_enough(img: tb.Image) -> bool:
        if older_than is None:
            return True
        created = aws.parse_iso(img.created)
        return created is not None and at - created >= older_than

    def kind(img: tb.Image) -> str:
        return img.tags.get(contract.TAG_KIND, contract.KIND_FINAL)

    def layer_keys(img: tb.Image) -> set[str]:
        return {v for k, v in img.tags.items() if k.startswith(contract.TAG_LAYER_PREFIX)}

    mine = [i for i in images if selected(i)]
    if everything:
        return [(img, f"--all of {name}") for img in mine]
    doomed: list[tuple[tb.Image, str]] = []
    newest: dict[str, tb.Image] = {}
    for img in mine:
        if img.key in newest and old_enough(img):
            doomed.append((img, f"duplicate of {newest[img.key].id} (key {img.key[:12]})"))
        elif img.key not in newest:
            newest[img.key or img.id] = img
    kept_keys: set[str] = set()
    for img in images:
        if not selected(img) and kind(img) == contract.KIND_FINAL:
            kept_keys |= layer_keys(img)
    finals = [i for i in newest.values() if kind(i) == contract.KIND_FINAL]
    for n, img in enumerate(finals):
        if n < keep or not old_enough(img):
            kept_keys |= layer_keys(img)
        else:
            doomed.append((img, f"older final of {name} (keeping {keep})"))
    for img in newest.values():
        if kind(img) == contract.KIND_LAYER and img.key not in kept_keys and old_enough(img):
            doomed.append((img, f"layer {img.tags.get(contract.TAG_SERVICE, '?')} no kept image uses"))
    return doomed


LIVE = ["pending", "running", "stopping", "stopped"]


def in_use(target, image_ids: Sequence[str]) -> dict[str, str]:
    """Of ``image_ids``: those an instance (pending to stopped), a launch template version or
    an Auto Scaling launch configuration refers to, or that are shared with other accounts,
    each with the reason. An API that cannot be asked is an error: prune keeps what it
    cannot check (``--force`` skips this)."""
    ec2 = target.ec2
    # a layer snapshot is in use through the AMIs registered from it
    via = {ami: snap for snap in image_ids if snap.startswith("snap-")
           for ami in snapshots.amis_of_layer(ec2, snap)}
    wanted = {i for i in image_ids if not i.startswith("snap-")} | set(via)
    used: dict[str, str] = {}

    def mark(image_id: str | None, why: str) -> None:
        if image_id in wanted:
            used.setdefault(via.get(image_id, image_id),
                            why if image_id not in via else f"{why}, through {image_id}")

    ids = sorted(wanted)
    for start in range(0, len(ids), 200):
        for page in ec2.get_paginator("describe_instances").paginate(Filters=[
                {"Name": "image-id", "Values": ids[start:start + 200]},
                {"Name": "instance-state-name", "Values": LIVE}]):
            for res in page["Reservations"]:
                for inst in res["Instances"]:
                    mark(inst.get("ImageId"), f"instance {inst['InstanceId']} "
                         f"({inst.get('State', {}).get('Name', '?')})")
    for page in ec2.get_paginator("describe_launch_templates").paginate():
        for lt in page["LaunchTemplates"]:
            for vpage in ec2.get_paginator("describe_launch_template_versions").paginate(
                    LaunchTemplateId=lt["LaunchTemplateId"]):
                for v in vpage["LaunchTemplateVersions"]:
                    mark(v.get("LaunchTemplateData", {}).get("ImageId"),
                         f"launch template {lt['LaunchTemplateName']} version {v['VersionNumber']}")
    autoscaling = aws.client(target.opts.aws, "autoscaling", region=target.region)
    for page in autoscaling.get_paginator("describe_launch_configurations").paginate():
        for lc in page["LaunchConfigurations"]:
            mark(lc.get("ImageId"), f"launch configuration {lc['LaunchConfigurationName']}")
    for image_id in ids:
        perms = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")
        shared = [p.get("UserId") or p.get("Group") or p.get("OrganizationArn")
                  or p.get("OrganizationalUnitArn") for p in perms.get("LaunchPermissions", [])]
        if shared:
            mark(image_id, "shared with " + ", ".join(str(x) for x in shared))
    return used

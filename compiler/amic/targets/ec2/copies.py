"""``--copy-to-region``: the final AMI copied to other regions, all at once, tagged at creation.

Each CopyImage carries ``TagSpecifications`` (EC2 API Reference, CopyImage: "The tags to
apply to the new AMI and new snapshots"): the copy has the final image's tags and
``amic:source-image`` from its first DescribeImages on, and its snapshots the snapshot tags,
so a copy an interrupt or a crash leaves is attributable to its build. Every CopyImage is
asked for first (each answers at once; EC2 copies in the background), then the copies are
waited for together, each in a daemon thread: the main thread only joins them, a moment at
a time, so Ctrl-C stops the wait at once (``cancel`` then removes the copies). A finished
copy gets the image's attributes, its snapshots ``amic:image-id`` and the image's sharing.

``made`` and ``done`` (``{region: copy id}``) are the caller's: ``made`` fills as each
CopyImage answers (what ``cancel`` removes), ``done`` as each copy is ready; a retry
(``--on-error ask``) copies only the regions not done and waits again for a copy still
pending instead of making a second one.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, MutableMapping

from amic.contract import TAG_BUILD
from amic.errors import BuildError
from amic.targets.ec2 import images as amis
from amic.targets.ec2 import session as aws
from amic.targets.ec2 import waiters
from amic.targets.ec2.naming import NewImage
from amic.targets.ec2.options import Ec2Options

Log = Callable[[str], None]
TAG_SOURCE_IMAGE = "amic:source-image"
"""On a copy: ``<region>/<AMI id>`` of the image it was copied from."""
JOIN_SLICE = 0.2
"""Seconds the main thread waits on a copy at a time (Ctrl-C lands between two)."""


def copy_to_regions(clients: aws.Clients, image_id: str, new: NewImage, opts: Ec2Options,
                    log: Log, *, made: MutableMapping[str, str],
                    done: MutableMapping[str, str]) -> dict[str, str]:
    """Copy ``image_id`` to every ``--copy-to-region`` not in ``done``, each with its region's
    KMS key; ``{region: copy id}`` of all the copies once every one is ready. A failed copy
    fails the step once the others finished (``done`` keeps those)."""
    source = clients.region
    wanted = {r: k for r, k in opts.copies(source).items() if r not in done}
    # clients made here, in one thread: a boto3 session is not thread-safe, its clients are
    dests = {region: clients.for_region(region) for region in wanted}
    errors: dict[str, str] = {}
    for region, key in wanted.items():
        if region in made:      # a retry: the copy asked for before is waited for again
            continue
        try:
            made[region] = _start(dests[region], source, region, key, image_id, new, opts)
        except BuildError as exc:
            errors[region] = str(exc)
    workers = []
    for region in (r for r in wanted if r in made):
        worker = threading.Thread(target=_finish, daemon=True, name=f"copy-{region}", args=(
            dests[region], region, made, done, errors, image_id, new, opts, log,
            wanted[region]))
        worker.start()
        workers.append(worker)
    for worker in workers:      # not one long join: Ctrl-C must not wait for a copy
        while worker.is_alive():
            worker.join(JOIN_SLICE)
    if errors:
        raise BuildError("copying the image failed in "
                         + "; ".join(f"{r}: {e}" for r, e in sorted(errors.items())))
    return dict(done)


def existing(clients: aws.Clients, image_id: str, regions) -> dict[str, tuple[str, str]]:
    """``{region: (copy id, state)}`` of the copies of ``image_id`` (by ``amic:source-image``)
    that are available or still pending in ``regions``: what an earlier build of the same
    image made, or left copying when it was killed."""
    source = f"{clients.region}/{image_id}"
    found: dict[str, tuple[str, str]] = {}
    for region in regions:
        images = aws.call(f"looking for the copy of {image_id} in {region}",
                          clients.for_region(region).describe_images, Owners=["self"],
                          Filters=[{"Name": f"tag:{TAG_SOURCE_IMAGE}", "Values": [source]},
                                   {"Name": "state", "Values": ["available", "pending"]}]
                          )["Images"]
        if images:
            best = max(images, key=lambda i: (i["State"] == "available", i["CreationDate"]))
            found[region] = (best["ImageId"], best["State"])
    return found


def _start(dest, source: str, region: str, kms_key: str | None, image_id: str,
           new: NewImage, opts: Ec2Options) -> str:
    """CopyImage, tagged at creation; the copy's id (it is pending)."""
    tags, _ = aws.fit_tags({**new.tags, TAG_SOURCE_IMAGE: f"{source}/{image_id}"},
                           keep_prefixes=("amic:",))
    args = {"SourceImageId": image_id, "SourceRegion": source, "Name": new.name,
            "Description": new.description,
            "TagSpecifications": (aws.tag_specs(tags, "image")
                                  + aws.tag_specs(new.snapshot_tags, "snapshot"))}
    if opts.encrypt or opts.kms_key_id or kms_key:
        args["Encrypted"] = True
        if kms_key:
            args["KmsKeyId"] = kms_key
    return aws.call(f"copying {image_id} to {region}", dest.copy_image, **args)["ImageId"]


def _finish(dest, region: str, made: MutableMapping[str, str], done: MutableMapping[str, str],
            errors: dict[str, str], image_id: str, new: NewImage, opts: Ec2Options, log: Log,
            kms_key: str | None) -> None:
    """Wait for one copy, then its snapshots' tags, attributes and sharing (a thread)."""
    copy_id = made[region]
    try:
        found = waiters.image_available(dest, [copy_id], timeout=opts.image_timeout,
                                        poll_interval=opts.poll_interval,
                                        doing=f"waiting for the copy {copy_id} in {region}")
    except BuildError as exc:
        if amis.image_state(dest, copy_id) in ("failed", "error", "invalid"):
            with contextlib.suppress(BuildError):     # failed: a retry copies again
                amis.deregister(dest, copy_id)
            made.pop(region, None)
        errors[region] = str(exc)
        return
    try:
        snaps = amis.tag_snapshots(dest, found[copy_id], new.snapshot_tags)
        amis.set_attributes(dest, copy_id, opts, log)
        amis.share(dest, copy_id, snaps, opts, log)
    except BuildError as exc:
        errors[region] = str(exc)
        return
    done[region] = copy_id
    log(f"copied {image_id} to {region}: {copy_id}" + (f" (KMS {kms_key})" if kms_key else ""))


def cancel(clients: aws.Clients, made: MutableMapping[str, str], regions, build_id: str,
           log: Log) -> None:
    """After an interrupt: deregister every copy this build made (EC2 stops a pending copy
    whose AMI is deregistered: "Stop a pending AMI copy operation", EC2 User Guide) and
    delete its snapshots. Copies whose CopyImage answer was lost are found by their build
    tag (they are tagged at creation). What cannot be removed is said, with how to find it."""
    for region in regions:
        ec2 = clients.for_region(region)
        ids = {made[region]} if region in made else set()
        with contextlib.suppress(Exception):
            ids |= {i["ImageId"] for i in ec2.describe_images(Owners=["self"], Filters=[
                {"Name": f"tag:{TAG_BUILD}", "Values": [build_id]}])["Images"]}
        for copy_id in sorted(ids):
            try:
                snaps = amis.deregister(ec2, copy_id)
            except BuildError as exc:
                log(f"could not cancel the copy {copy_id} in {region}: {exc}; it stays, tagged "
                    f"{TAG_BUILD}={build_id} (`amic ami ls --region {region} --all` lists it; "
                    f"`amic ami prune --region {region}` removes it)")
                continue
            log(f"interrupted: cancelled the copy {copy_id} in {region} (deregistered"
                + (f"; snapshots {', '.join(snaps)} deleted)" if snaps else ")"))

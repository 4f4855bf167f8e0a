"""The final AMI of an ec2 build: stop, CreateImage, wait, attributes, sharing, region copies.

Each part is one step the user may retry under ``--on-error ask`` (``Target.step``):

- creating the image: the instance stopped, CreateImage, waited for. A retry after
  CreateImage failed makes it again; after the wait failed, it waits again for the same
  image while EC2 still has it pending (a second CreateImage would have its name), or
  makes a new one where EC2 failed the first (deregistered);
- registering it again (``--boot-mode``, ``--tpm-support``): no retry is offered, as the
  image CreateImage made is deregistered by then;
- its snapshots' tags, its attributes and sharing: all may be set again;
- the region copies (:mod:`.copies`): a retry copies only the regions not done yet. An
  interrupt while copying stops the wait at once and cancels every copy the build made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs

from amic.errors import BuildError
from amic.targets.base import Image
from amic.targets.ec2 import copies
from amic.targets.ec2 import images as amis
from amic.targets.ec2 import naming
from amic.targets.ec2 import session as aws
from amic.targets.ec2.interrupts import shielded


def make_final(target, machine, *, key: str, tags: Mapping[str, str]) -> Image:
    """The final AMI of ``machine`` under ``key`` (``target``: the ``Ec2Target``)."""
    opts, ec2, log = target.opts, target.ec2, target.log
    new = naming.new_image(opts, key=key, final=True, tags=tags, build_id=machine.build_id,
                           user=machine.user, log=log)
    raw = target.step("creating the image", lambda: _create(target, machine, new, key))
    if opts.boot_mode or opts.tpm_support:
        raw = target.step("registering the image again with its boot mode",
                          lambda made=raw: amis.reregister(ec2, made, new, opts, log),
                          retry="the image CreateImage made is deregistered already")
    image_id = raw["ImageId"]
    target.made_final = (key, image_id)
    snaps = target.step(f"tagging, setting attributes of and sharing {image_id}",
                        lambda: _publish(target, raw, new))
    log(f"image {image_id} available (final; snapshots {', '.join(snaps) or '-'})")
    copy_new(target, image_id, new, machine.build_id)
    return amis.image_from_raw(raw)


def copy_new(target, image_id: str, new: naming.NewImage, build_id: str) -> None:
    """``--copy-to-region`` of a final image just made, however (``target``: the
    ``Ec2Target``; ``--bake local`` calls this too)."""
    if target.opts.copies(target.region):
        target.copies = {}      # a new image: none of its copies exists yet
        _copy(target, image_id, new, build_id)


def _create(target, machine, new: naming.NewImage, key: str) -> dict:
    """Stop, CreateImage, wait (see the module doc for a retry)."""
    ec2, opts = target.ec2, target.opts
    if target.pending_image is None:
        machine.stop()
        if opts.force_deregister:
            amis.deregister_named(ec2, new.name, target.log,
                                  delete_snapshots=opts.force_delete_snapshot)
        amis.mark_instance(ec2, machine.instance_id, opts, target.log)
        target.pending_image = amis.request_image(ec2, machine.instance_id, new, opts,
                                                  target.log)
        target.made_final = (key, target.pending_image)
    try:
        raw = amis.wait_image(ec2, target.pending_image, opts)
    except BuildError:
        if amis.image_state(ec2, target.pending_image) is None:   # failed, deregistered
            target.pending_image = None
        raise
    target.pending_image = None
    return raw


def _publish(target, raw: dict, new: naming.NewImage) -> list[str]:
    """The snapshots' tags, the image's attributes and sharing; the snapshot ids."""
    ec2, opts = target.ec2, target.opts
    snaps = amis.tag_snapshots(ec2, raw, new.snapshot_tags)
    amis.set_attributes(ec2, raw["ImageId"], opts, target.log)
    amis.share(ec2, raw["ImageId"], snaps, opts, target.log)
    return snaps


def publish_cached(target, image: Image, build_id: str) -> None:
    """A cached final image given what this build asks of it and it lacks: the sharing
    (:func:`_share_cached`), and its ``--copy-to-region`` copies found, and the missing ones
    made (an earlier build was interrupted while copying, or asked for fewer regions); a
    copy still pending (its build was killed) is waited for instead of copied again."""
    described = _described(target, image)
    _share_cached(target, image, described)
    regions = list(target.opts.copies(target.region))
    if not regions:
        return
    found = copies.existing(target.clients, image.id, regions)
    target.copies = {r: i for r, (i, state) in found.items() if state == "available"}
    if len(target.copies) == len(regions):
        return
    raw = described()
    tags = aws.tag_dict(raw.get("Tags"))
    new = naming.NewImage(name=raw["Name"], description=raw.get("Description", ""),
                          tags=tags, final=True)
    pending = {r: i for r, (i, state) in found.items() if state == "pending"}
    target.log("copying the cached image to the regions it is missing from: "
               + ", ".join(r for r in regions if r not in target.copies))
    _copy(target, image.id, new, build_id, made=pending)


def _described(target, image: Image) -> Callable[[], dict]:
    """The cached image's DescribeImages entry, asked for once, and only if needed."""
    kept: list[dict] = []

    def get() -> dict:
        if not kept:
            found = aws.call(f"describing {image.id}", target.ec2.describe_images,
                             ImageIds=[image.id])["Images"]
            if not found:
                raise BuildError(f"the cached image {image.id} is gone: build again")
            kept.append(found[0])
        return kept[0]
    return get


def _share_cached(target, image: Image, described: Callable[[], dict]) -> None:
    """The sharing this build asks for, made sure on a cached image: one made by a build
    whose sharing failed (a missing permission, fixed since), or by a build that asked for
    none, answers this one only once shared as asked (adding a permission it has is a
    no-op). ``--imds-support`` too where the image says otherwise, and ``--deprecate-at``
    where it has no deprecation time (a relative one is not moved on by every rebuild)."""
    opts, ec2 = target.opts, target.ec2
    imds = opts.imds_support
    if not (opts.launch_permission or opts.volume_users or imds or opts.deprecate_at):
        return
    raw = described()
    amis.set_attributes(ec2, image.id, attrs.evolve(
        opts, imds_support=imds if imds and raw.get("ImdsSupport") != imds else None,
        deprecate_at=None if raw.get("DeprecationTime") else opts.deprecate_at), target.log)
    amis.share(ec2, image.id, amis.snapshot_ids(raw), opts, target.log)


def _copy(target, image_id: str, new: naming.NewImage, build_id: str,
          made: dict[str, str] | None = None) -> None:
    """``--copy-to-region`` into ``target.copies``; an interrupt cancels the copies made
    (``made``: copies already asked for, waited for instead of asked again)."""
    opts, log = target.opts, target.log
    regions = list(opts.copies(target.region))
    made = {} if made is None else made
    try:
        target.step(f"copying {image_id} to {', '.join(regions)}",
                    lambda: copies.copy_to_regions(target.clients, image_id, new, opts, log,
                                                   made=made, done=target.copies))
    except (KeyboardInterrupt, SystemExit):
        log("interrupted while copying: cancelling the copies")
        with shielded(log):
            copies.cancel(target.clients, made, regions, build_id, log)
        target.copies = {}
        raise

"""The final AMI's options under ``--bake local``: honoured as the SSH path does, or refused.

The SSH path (``final``) makes the AMI with CreateImage and then sets what the options ask;
a locally baked AMI is registered from its uploaded snapshot (``ebs_image``). The options
that shape the AMI go to it through the SSH path's own functions:

- to RegisterImage (:func:`registration`): ``--boot-mode`` (default ``uefi-preferred``: the
  disk boots by BIOS and UEFI; ``uefi`` with ``--tpm-support``, as NitroTPM is there only
  when the instance boots UEFI), ``--tpm-support``, ``--sriov-support``, the root volume
  (``--volume-size``, never below the snapshot's; ``--volume-type``, ``--iops``,
  ``--throughput``: ``Ec2Options.root_volume`` as ``volumes.ebs`` renders it for
  RunInstances) and ``--ami-volume`` (``volumes.Volume.mapping``, as for CreateImage).
  ``--ena-support`` and ``--imds-support v2.0`` are what RegisterImage always says: ENA, and
  IMDSv2 only, the one the disk's boot units speak.
- to the registered image (:func:`finish`, inside the upload's clean-up: an image that cannot
  be given them is removed rather than left in the cache without them): ``--deprecate-at``
  (``images.set_attributes``), launch permission and the snapshot's create-volume permission
  (``images.share``, with the uploaded snapshot).
- after it: ``--copy-to-region`` (``final.copy_new``; a cached image's missing copies,
  ``final.publish_cached``), each copy given the attributes and sharing as on the SSH path.
- to the snapshot: ``--snapshot-tag`` (at StartSnapshot and once registered).

Refused before anything is made (:func:`check`): ``--encrypt`` and ``--kms-key-id`` (the upload
asks StartSnapshot for no encryption, and the EBS stand-in it is tested against models
none), ``--launch-volume`` (a volume of the build instance: there is none), ``--ami-volume``
on the root device (the root is the uploaded disk), ``--tpm-support`` with ``--boot-mode
legacy-bios`` (NitroTPM needs UEFI) and any ``--imds-support`` but ``v2.0``.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from amic.errors import UsageError
from amic.targets.ec2 import ebs_image, ebs_upload, volumes, waiters
from amic.targets.ec2 import images as amis
from amic.targets.ec2.options import Ec2Options

SSH_PATH = "build it on an instance instead (--bake instance, the default)"
ENCRYPTION = ("the upload writes an unencrypted snapshot (amic does not ask the EBS direct "
              "APIs for encryption)")
REFUSED = (
    ("encrypt", "--encrypt", ENCRYPTION),
    ("kms_key_id", "--kms-key-id", ENCRYPTION),
    ("launch_volumes", "--launch-volume", "it adds a volume to the build instance, and a "
     "local bake has none (--ami-volume adds a block device mapping to the AMI)"),
)
"""``(Ec2Options field, flag, why)`` of what a local bake cannot do."""

Log = Callable[[str], None]


def check(opts: Ec2Options) -> None:
    """UsageError for an option a local bake would otherwise leave out of the AMI."""
    for field, flag, why in REFUSED:
        if getattr(opts, field):
            raise UsageError(f"--bake local cannot take {flag}: {why}; {SSH_PATH}")
    if opts.tpm_support and opts.boot_mode == "legacy-bios":
        raise UsageError("--tpm-support needs UEFI (NitroTPM is there only when the instance "
                         "boots UEFI): not with --boot-mode legacy-bios")
    if opts.imds_support not in (None, "v2.0"):
        raise UsageError(f"--bake local: --imds-support {opts.imds_support}: its images are "
                         "IMDSv2 only (v2.0), the one their boot units speak")
    for vol in opts.ami_volumes:
        if vol.device == ebs_image.ROOT_DEVICE:
            raise UsageError(f"--ami-volume device={vol.device}: that is the root device, the "
                             "uploaded disk; --volume-size, --volume-type, --iops and "
                             "--throughput change it")


def registration(opts: Ec2Options) -> ebs_image.Registration:
    """What RegisterImage is given for ``opts`` (:func:`check` passed)."""
    root = opts.root_volume
    return ebs_image.Registration(
        boot_mode=opts.boot_mode or ("uefi" if opts.tpm_support else ebs_image.BOOT_MODE),
        tpm_support=opts.tpm_support, sriov_support=opts.sriov_support,
        root=volumes.ebs(root) if root is not None else {},
        mappings=[vol.mapping() for vol in opts.ami_volumes])


def asks_more(opts: Ec2Options, region: str) -> bool:
    """Whether anything is done with the image once registered (attributes, sharing,
    copies), so it must be available first."""
    return bool(opts.deprecate_at or opts.launch_permission or opts.volume_users
                or opts.copies(region))


def finish(ec2, opts: Ec2Options, region: str, log: Log) -> Callable[[str, str], None]:
    """``ebs_image.publish``'s ``then``: the image waited for when anything is to be done with
    it (EC2 deprecates, shares and copies an available image, as the SSH path's CreateImage
    is waited for), then ``--deprecate-at`` and the sharing, the uploaded snapshot shared
    with the image. Nothing asked: no call at all (the build needs only the image's id)."""
    def then(image_id: str, snapshot_id: str) -> None:
        if not asks_more(opts, region):
            return
        waiters.image_available(ec2, [image_id], timeout=opts.image_timeout,
                                poll_interval=min(opts.poll_interval, ebs_upload.SEAL_POLL),
                                doing=f"waiting for image {image_id}")
        # IMDSv2 only is RegisterImage's already (ImdsSupport v2.0): not set a second time;
        # the copies get it as on the SSH path (copies._finish, with the options as given)
        amis.set_attributes(ec2, image_id, attrs.evolve(opts, imds_support=None), log)
        amis.share(ec2, image_id, [snapshot_id], opts, log)
    return then

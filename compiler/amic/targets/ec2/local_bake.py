"""``amic build --target ec2 --bake local``: layers built and cached on this machine, the final
image uploaded as an EBS snapshot (EBS direct APIs) and registered: no instance, key pair,
security group or SSH.

The local target does the layers (its store, its layer cache, its leases), over a cloud-like
base: the debootstrap base plus the VM and EC2 layers (``local.ec2disk.cloud_base``: the
cloud kernel, GRUB, the IMDSv2 key and hostname unit, DHCP on any NIC; what ``amic export
--for ec2`` adds), made once per base, as the SSH path starts from an AMI that has its
kernel. The final image's look-up and its making are EC2's: an AMI with the final key,
made either way, answers the build (so an SSH-baked AMI and a locally baked one are one
cache entry), and a new final image, booting as an instance with its key pair as it is,
is written as a raw disk over the project's previous one (``disk_reuse``: an rsync of the
changed files), uploaded and registered (``ebs_image``) with the names and tags the SSH
path gives (``naming.new_image``); over the previous disk, whose size it keeps, the
snapshot is started beside the disk step (``ebs_early``). The final AMI's options (boot
mode, volumes, sharing, deprecation, region copies, snapshot tags) are honoured as on the
SSH path, through its functions (``local_publish``).

What cannot work this way is refused before anything runs, pointing at the SSH path
(``--bake instance``): a ``FROM`` the local target cannot bootstrap (an AMI id or
filter), an ``--arch`` other than this machine's, an AMI option a local bake cannot
honour (``local_publish.check``: encryption, build-instance volumes).
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Iterator, Mapping

from amic.contract import TAG_BUILD
from amic.errors import UsageError
from amic.targets.base import Image
from amic.targets.ec2 import disk_reuse, ebs_early, ebs_image, ebs_upload, local_publish, naming
from amic.targets.ec2 import final as finals
from amic.targets.ec2 import images as amis
from amic.targets.ec2.local_publish import SSH_PATH
from amic.targets.local import ec2disk
from amic.targets.local.target import LocalTarget


def host_arch() -> str:
    """This machine's architecture as EC2 names it: x86_64, the only one the bake makes (the
    VM and EC2 layers install Debian's amd64 cloud kernel and GRUB's i386-pc and x86_64-efi
    loaders); anything else is refused before anything is made."""
    machine = platform.machine()
    try:
        arch = ebs_image.ec2_arch(machine)
    except Exception:
        raise UsageError(f"--bake local: EC2 has no image for this machine's architecture "
                         f"{machine!r}; {SSH_PATH}") from None
    if arch != "x86_64":
        raise UsageError(f"--bake local makes x86_64 images only (the disk's kernel and boot "
                         f"loaders are Debian's amd64 ones), and this machine is {machine}; "
                         f"{SSH_PATH}")
    return arch


class LocalBake(LocalTarget):
    name = "ec2"
    fast_rebuild = False

    def __init__(self, ec2_target) -> None:
        super().__init__()
        self.ec2t = ec2_target
        self.arch = host_arch()
        wanted = ec2_target.opts.arch
        if wanted and wanted != self.arch:
            raise UsageError(f"--bake local builds on this machine ({self.arch}) and cannot "
                             f"make an {wanted} image; {SSH_PATH}")
        local_publish.check(ec2_target.opts)
        self.final_key: str | None = None
        self.log = ec2_target.log
        self.ebs: ebs_early.Warm | None = None
        """The EBS client, made while the layers run (from the first launch)."""

    def resolve_base(self, base_ref: str | None) -> Image:
        """The debootstrap base plus the VM and EC2 layers (``ec2disk.cloud_base``), made once
        per base: the services' layers sit on a kernel as on a cloud AMI, their packages'
        kernel hooks (initramfs, modules) run as they install, and a new final image is
        a disk at once, with no kernel layer made over each one."""
        try:
            base = super().resolve_base(base_ref)
            return ec2disk.cloud_base(self, base, log=self.log)
        except UsageError as exc:
            raise UsageError(f"--bake local: {exc}; {SSH_PATH}") from None

    def peek_base(self, base_ref: str | None) -> Image | None:
        try:
            base = super().peek_base(base_ref)
        except UsageError as exc:
            raise UsageError(f"--bake local: {exc}; {SSH_PATH}") from None
        return None if base is None else ec2disk.peek_cloud_base(self, base)

    @property
    def region(self) -> str:
        return self.ec2t.region

    @property
    def copies(self) -> dict[str, str]:
        """``--copy-to-region``'s ``{region: AMI id}`` (the build's result lists them)."""
        return self.ec2t.copies

    def _ec2(self):
        """The Ec2Target that copies run on, logging to this build's log and asking its
        ``--on-error`` question (the engine sets both on this target, the one it builds with)."""
        self.ec2t.log, self.ec2t.step = self.log, self.step
        return self.ec2t

    def remove_superseded(self) -> list[str]:
        """After a ``--no-cache`` build: the local images it replaced, and the older final
        AMIs of its key (as on the SSH path: one key names one final AMI)."""
        return [*super().remove_superseded(), *self.ec2t.remove_superseded()]

    def publish_cached(self, image: Image, build_id: str) -> None:
        """A cached final AMI (made either way): the sharing asked, and its missing region
        copies, as on the SSH path."""
        finals.publish_cached(self._ec2(), image, build_id)

    def check_final(self, key: str, tags: Mapping[str, str]) -> None:
        self.final_key = key
        self.ec2t.check_final(key, tags)

    def find_image(self, key: str) -> Image | None:
        if key == self.final_key:        # the AMI, however it was baked
            return amis.find_image(self.ec2t.ec2, key)
        return super().find_image(key)

    @contextlib.contextmanager
    def launch(self, image: Image, *, build_id: str) -> Iterator:
        # something will be built, so uploaded: the EBS client is made meanwhile
        if self.ebs is None:
            self.ebs = ebs_early.Warm(lambda: ebs_upload.ebs_client(self.ec2t.opts.aws))
        with super().launch(image, build_id=build_id) as machine:
            yield machine

    def snapshot(self, machine, *, key: str, final: bool, tags: Mapping[str, str]) -> Image:
        image = super().snapshot(machine, key=key, final=final, tags=tags)
        return self.publish(image, key, tags) if final else image

    def publish(self, image: Image, key: str, tags: Mapping[str, str]) -> Image:
        """The local final image as a registered AMI (its id is the build's result)."""
        opts, ec2 = self.ec2t.opts, self.ec2t.ec2
        make_ebs = self.ebs or (lambda: ebs_upload.ebs_client(opts.aws))
        build_id = tags.get(TAG_BUILD) or "local"
        new = naming.new_image(opts, key=key, final=True, tags=tags, build_id=build_id,
                               user="root", log=self.log)
        if opts.force_deregister:
            amis.deregister_named(ec2, new.name, self.log,
                                  delete_snapshots=opts.force_delete_snapshot)
        line = ebs_image.lineage(tags)
        project = line[1] if line else key
        with contextlib.ExitStack() as stack:
            raw = stack.enter_context(self.store.scratch("ec2-disk-")) / "disk.raw"
            stack.enter_context(self.store.use(image.id))
            # over the kept disk the volume's size is known before the disk is made: its
            # snapshot starts in a thread meanwhile (deleted on any failure, or if the disk
            # comes out another size)
            early = stack.enter_context(ebs_early.beside(
                make_ebs, ec2,
                volume_gib=ebs_early.kept_volume_gib(self.store, project), tags=new.tags,
                snapshot_tags=new.snapshot_tags, build_id=build_id,
                description=new.description, log=self.log))
            # the image is EC2-fit already (its base has the cloud kernel, the IMDSv2 key
            # and hostname unit, DHCP on any NIC): its disk boots as an instance
            t0 = time.monotonic()
            _, reused = stack.enter_context(
                disk_reuse.project_disk(self, image, project, raw, log=self.log))
            self.log(("disk: the previous disk of this project, changed in place"
                      if reused else "disk: made afresh") + f" ({time.monotonic() - t0:.2f}s)")
            ebs = early.wait(self.log) if early is not None else None
            done = ebs_image.publish(
                ebs or make_ebs(), ec2, raw, name=new.name,
                description=new.description, arch=self.arch, tags=new.tags, build_id=build_id,
                progress=lambda p: self.log(p.line()), log=self.log, early=early,
                seal_poll=min(opts.poll_interval, ebs_upload.SEAL_POLL),
                seal_timeout=opts.image_timeout, snapshot_tags=new.snapshot_tags,
                how=local_publish.registration(opts),
                then=local_publish.finish(ec2, opts, self.region, self.log))
        finals.copy_new(self._ec2(), done.image_id, new, build_id)
        self.ec2t.made_final = (key, done.image_id)     # for --no-cache: remove_superseded
        # the image as registered, from what amic gave RegisterImage: no DescribeImages (the
        # build's result needs its id; EC2 may not list a new image at once anyway)
        return Image(id=done.image_id, key=key, tags=done.tags)

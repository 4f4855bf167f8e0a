"""The ``ec2`` target: AMIs baked over SSH, every temporary resource tagged and cleaned up.

One build launches (at most) one instance:

1. ``resolve_base``: ``FROM ami-…``, an AMI filter (``owner=… name=… arch=…``,
   newest wins), or a portable name (``debian:12``) resolved to the
   distribution's own account and image names (:mod:`.bases`).
2. ``launch``: a key pair generated here (ed25519; rsa on request) and
   imported, a security group open only to SSH from the caller (or given
   CIDRs, or the user's own group), the instance (IMDSv2 required, encrypted
   root volume on request) (:mod:`.resources`). Each cleanup is registered on
   an ``ExitStack`` *before* the resource is created and finds it by its
   deterministic name or by the build tag, so an interrupt that lands mid-call
   still removes it. Cleanup failures are logged, never raised (Packer's multistep).
3. SSH: wait for the instance, read its host key fingerprints from the
   console (cloud-init prints them) and refuse any other key; trust on first
   use only when asked (:mod:`.machine`, :mod:`.hostkeys`).
4. ``snapshot`` of a layer: ``sync`` with the build keys removed, CreateSnapshot
   of the live root volume, tagged at creation, not waited for; the build goes
   on at once (:mod:`.snapshots`). An AMI is registered from a layer snapshot
   only when a later build launches from it, and kept. The final image: stop,
   CreateImage, wait (:mod:`.waiters`), tag its snapshots (:mod:`.images`).

Everything created carries ``amic:tool``, ``amic:build-id``, and temporary
things ``amic:expires``; ``amic gc`` (:mod:`.gc`) removes what a crashed build
left behind.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator, Mapping


from amic import __version__
from amic.contract import TAG_NAME, TAG_SERVICE
from amic.errors import BuildError, UsageError
from amic.targets import config_values, option_values
from amic.targets.base import Image, Target
from amic.targets.ec2 import final as finals
from amic.targets.ec2 import images as amis
from amic.targets.ec2 import lookups
from amic.targets.ec2 import naming
from amic.targets.ec2 import iamprofile, placement
from amic.targets.ec2 import resources
from amic.targets.ec2 import session as aws
from amic.targets.ec2 import snapshots
from amic.targets.ec2.bases import build_arch, guess_user, parse_base
from amic.targets.ec2.machine import Ec2Machine
from amic.targets.ec2.interrupts import shielded
from amic.targets.ec2.flags import AWS_OPTIONS, EC2_OPTIONS, VALUE_NAMES
from amic.targets.ec2.options import Ec2Options, options_from_values

log = logging.getLogger("amic.ec2")


SKIPPED = "none (--skip-create-ami)"
"""The final image id of a build that made none."""


class Ec2Target(Target):
    """AMIs on EC2. See the module docstring and docs/ec2.md."""

    name = "ec2"
    keeps_images = True
    default_checkpoint = "auto"
    """A layer checkpoint is a live EBS snapshot (seconds, not the minutes of an AMI): by
    default a layer is kept when the init time it would save (since the previous checkpoint)
    reaches ``snapshot_seconds``, and the last layer always (an UPDATE-only change runs no
    init). docs/ec2.md "Checkpoints" has the figures."""
    snapshot_seconds = 10.0
    """What a layer checkpoint costs a build: sync + build-key remove/add over the open SSH
    session + CreateSnapshot (~2-5 s on the build's path), plus, once per layer and only
    when a later build starts from it, RegisterImage of the completed snapshot (~5 s)."""
    fast_rebuild = True
    """An unchanged rebuild is answered from the build memo once EC2 confirms it (``confirm_memo``)."""

    def __init__(self, spec: str = "", *, options: Ec2Options | None = None, log_fn=None) -> None:
        if spec:
            raise UsageError(f"--target ec2 takes no address (got ec2://{spec}); "
                             "use --region and --subnet")
        self.opts = options or Ec2Options()
        self.log = log_fn or _stderr_log
        self._clients: aws.Clients | None = None
        self._caller_cidrs: tuple[str, ...] | None = None
        self._lookups = lookups.Lookups()
        self._unconfirmed: dict[str, str] = {}
        """Leases taken at the first try and not read back yet: name -> KeyPairId."""
        self._lease_keys: dict[str, str] = {}
        """Lease name -> its key (asked again when another build turned out to hold it)."""
        self.memo_final: tuple[str, str] | None = None
        """(key, AMI id) of the final AMI the build memo recorded: the full path asks for it
        by id when the tag filter does not show it yet (``find_image``)."""
        self.made_final: tuple[str, str] | None = None
        """(key, AMI id) of the final AMI this target made: see remove_superseded."""
        self._launches = 0
        """Launches so far (a retried one gets its own RunInstances client token)."""
        self.pending_image: str | None = None
        """The final AMI CreateImage made and not yet seen available (a retry waits for it)."""
        self.copies: dict[str, str] = {}
        """``{region: AMI id}`` of the final image's ``--copy-to-region`` copies."""
        if self.opts.skip_create_ami:   # Packer's skip_create_ami: always provisions
            self.fast_rebuild = False   # no image: nothing for the build memo to answer with
            self.provision_only = True

    @classmethod
    def from_values(cls, values: Mapping[str, object], **kwargs) -> Ec2Target:
        """From ``{dest: value}`` of the option table (``amic.targets.ec2.options``)."""
        target = cls(options=options_from_values(values), **kwargs)
        target.keep_on_error = target.opts.on_error == "abort"
        if target.opts.bake == "local":     # no instance: the local target and EBS uploads
            from amic.targets.ec2.local_bake import LocalBake

            return LocalBake(target)
        return target

    @classmethod
    def from_args(cls, args, **kwargs) -> Ec2Target:
        """From parsed arguments carrying the table's options (missing ones: the defaults)."""
        given = option_values(args, AWS_OPTIONS + EC2_OPTIONS, *VALUE_NAMES)
        kept = config_values(getattr(args, "amifile", None), "ec2", EC2_OPTIONS)  # amic.toml
        return cls.from_values({**given, **{k: v for k, v in kept.items() if given.get(k) is None}},
                               **kwargs)

    # clients -------------------------------------------------------------------
    @property
    def clients(self) -> aws.Clients:
        # made on first use, from the options as they are then
        if self._clients is None:
            self._clients = aws.Clients(self.opts.aws)
        return self._clients

    @property
    def ec2(self):
        return self.clients.ec2

    @property
    def region(self) -> str:
        return self.clients.region

    def client_for(self, region: str):
        return self.clients.for_region(region)

    @property
    def arch(self) -> str:
        return build_arch(self.opts.arch, self.opts.instance_type)

    def ssh_cidrs(self) -> tuple[str, ...]:
        """Who may reach port 22: ``--ssh-cidr``, else this machine's address (asked once)."""
        if self.opts.ssh_cidrs:
            return self.opts.ssh_cidrs
        if self._caller_cidrs is None:
            self._caller_cidrs = (resources.caller_cidr(),)
        return self._caller_cidrs

    # images --------------------------------------------------------------------
    def resolve_base(self, base_ref: str | None) -> Image:
        query = parse_base(base_ref, arch=self.arch)
        images = aws.call(f"looking up base image {query.ref!r}", self.ec2.describe_images,
                          **query.call_args())["Images"]
        if not images:
            raise BuildError(f"base image {query.ref!r}: no image matches in {self.region} "
                             f"({query.call_args()})")
        best = amis.newest(images)
        self._lookups.described[best["ImageId"]] = best
        tags = aws.tag_dict(best.get("Tags"))
        user = query.user or tags.get(naming.TAG_SSH_USER) or guess_user(best.get("Name", ""))
        tags.update({naming.TAG_SSH_USER: user, "Name": best.get("Name", "")})
        return Image(id=best["ImageId"], tags=tags, created=best.get("CreationDate"))

    def check_final(self, key: str, tags: Mapping[str, str]) -> None:
        """An ``--ami-name`` without a per-build field names one AMI per key: one that has it
        already fails the build now, not at CreateImage after the whole build."""
        opts = self.opts
        if opts.force_deregister:
            return          # replacing it on purpose
        name = naming.fixed_name(opts.image_name, tags, key)
        if name is not None:    # None: unique by construction
            naming.check_name_free(self.ec2, name, key)

    def plan_lookups(self, keys, services, *, project=None) -> None:
        """One DescribeImages and one DescribeSnapshots for all of a build's keys (:mod:`.lookups`)."""
        self._lookups.plan(keys, services, project)

    def publish_cached(self, image: Image, build_id: str) -> None:
        finals.publish_cached(self, image, build_id)

    def find_image(self, key: str) -> Image | None:
        """A final AMI or a layer under ``key``. A layer's id is always its snapshot's
        (``snap-…``), registered as an AMI or not (``launch`` registers it once, then finds
        that AMI); an AMI without ``amic:from-snapshot`` (a final) is its own id."""
        found = self._lookups.find(self.ec2, key) if self._lookups.knows(key) else None
        if not self._lookups.knows(key):
            found = amis.find_image(self.ec2, key)
            snap = found.tags.get(snapshots.TAG_FROM_SNAPSHOT) if found else None
            if snap:
                return Image(id=snap, key=found.key, tags=found.tags, created=found.created)
            found = found or snapshots.find_layer(self.ec2, key)
        if found is None and self.memo_final is not None and self.memo_final[0] == key:
            # a rebuild within EC2's tag-filter lag of the build that made it (the memo's
            # quick check declined: throttled, say): the same image, not a second one
            found = amis.final_by_id(self.ec2, *self.memo_final)
        return found

    def recall_final(self, key: str, image_id: str) -> None:
        self.memo_final = (key, image_id)

    def lease(self, key: str, *, build_id: str = "?"):
        """One build per key at a time, across machines: a key pair lease (:mod:`.lease`)."""
        from amic.targets.ec2 import lease as leases

        self._lease_keys[leases.lease_name(key)] = key
        return leases.lease(self.ec2, key, build_id, log=self.log,
                            poll=max(self.opts.poll_interval, 0.5),
                            on_contention=lambda: self._lookups.recheck(key),
                            pending=self._unconfirmed)

    def confirm_leases(self) -> list[str]:
        """Read back every lease taken since the last call, in one DescribeKeyPairs; the keys
        whose lease another build turned out to hold (asked again at their next look-up)."""
        from amic.targets.ec2 import lease as leases

        if not self._unconfirmed:
            return []
        held = dict(self._unconfirmed)
        lost = leases.confirm(self.ec2, held)
        for name in held:
            self._unconfirmed.pop(name, None)
        keys = [self._lease_keys[name] for name in sorted(lost)]
        for key in keys:
            self.log(f"lease {leases.lease_name(key)}: another build holds it (read back)")
            self._lookups.recheck(key)
        return keys

    def image_by_id(self, image_id: str) -> Image | None:
        """The AMI ``image_id`` (any owner's), or None."""
        return amis.image_by_id(self.ec2, image_id)

    def list_images(self) -> Iterator[Image]:
        """Final AMIs and layers, newest first; a layer is listed once, as its snapshot (the
        AMI registered from it goes with it), so prune sees snapshot-only layers too."""
        found = [img for img in amis.list_images(self.ec2)
                 if not img.tags.get(snapshots.TAG_FROM_SNAPSHOT)]
        found += snapshots.list_layers(self.ec2)
        found.sort(key=lambda img: img.created or "", reverse=True)
        return iter(found)

    def images_for_service(self, service: str) -> list[Image]:
        """Layer checkpoints of ``service``, newest first: layer snapshots and older layer AMIs
        (one entry per layer: a registered snapshot is listed once, as the snapshot)."""
        if service in self._lookups.services:
            return self._lookups.history(self.ec2, service)
        found = snapshots.layers_of_service(self.ec2, service)
        seen = {img.id for img in found}
        found += [img for img in amis.layers_of_service(self.ec2, service)
                  if img.tags.get(snapshots.TAG_FROM_SNAPSHOT) not in seen]
        found.sort(key=lambda img: img.created or "", reverse=True)
        return found

    def has_final(self, match) -> bool:
        known = self._lookups.has_final(match)
        return amis.has_final(self.ec2, match) if known is None else known

    def remove_superseded(self) -> list[str]:
        """After a ``--no-cache`` build: the older final AMIs of its key are deregistered (and
        their snapshots deleted), so one key names one final AMI, as on the local target.
        Older layer snapshots stay for ``ami prune``: a build elsewhere may be launching
        from one right now, and ``find_image`` takes the newest."""
        made, self.made_final = self.made_final, None
        if made is None:
            return []
        key, image_id = made
        try:
            removed, failed = amis.remove_older_finals(self.ec2, key, keep=image_id)
        except BuildError as exc:   # the build succeeded: say so, leave the rest to prune
            return [f"--no-cache: could not look for older final AMIs of key {key[:12]}: {exc}"]
        if not removed and not failed:
            return []
        return [f"--no-cache replaced the final AMI of key {key[:12]}: deregistered "
                f"{', '.join(removed) or 'none'}"
                + (f" (could not: {', '.join(failed)}; amic ami prune)" if failed else "")]

    def remove_image(self, image: Image) -> None:
        self.deregister(image.id)

    def deregister(self, image_id: str, *, region: str | None = None) -> list[str]:
        """Deregister an AMI and delete its EBS snapshots, or remove a layer snapshot and the
        AMIs registered from it; returns the ids of what went with ``image_id`` (each once,
        never ``image_id`` itself)."""
        ec2 = self.client_for(region or self.region)
        if image_id.startswith("snap-"):
            return snapshots.remove_layer(ec2, image_id)
        return amis.deregister(ec2, image_id)

    # the build memo --------------------------------------------------------------
    def memo_facts(self, base_ref: str | None, base: Image, image: Image) -> dict:
        return {"base_ref": base_ref}

    def confirm_memo(self, result: dict, facts: dict) -> bool:
        """Ask EC2 what ``resolve_base`` and ``find_image`` would: both must give the recorded ids.

        The two DescribeImages calls are the full path's own (same arguments, same
        choice of the newest image), run concurrently and sent by ``amic.targets.ec2.query``
        instead of boto3 (whose import and client cost ~220 ms, most of an unchanged
        rebuild). The base is asked with today's options (``--arch``,
        ``--instance-type``, region). AMI ids are unique, so asking the wrong account
        or region can only fail to confirm. Any error, throttling included, or
        anything unexpected means False: the full path then runs, with boto3's retries.
        A rebuild started moments after the build that made the image finds none by its
        tag (EC2's tag filters are eventually consistent), and the full path would make the
        same image again: the recorded image is then asked for by id (``recorded_final``).
        """
        from amic.targets.ec2 import query as ec2query

        try:
            if "base_ref" not in facts:
                return False
            if set(self.opts.copies(self.region)) - set(result.get("regions") or {}):
                return False    # a region asked for now that the recorded build had no copy in
            base_args = parse_base(facts["base_ref"], arch=self.arch).call_args()
            o = self.opts.aws
            access = ec2query.resolve(profile=o.profile, region=o.region,
                                      endpoint_url=o.endpoint_url)
            agent = f"amic/{__version__} confirm-memo"
            found: dict[str, object] = {}

            def newest(what: str, args: dict) -> None:
                try:
                    images = ec2query.describe_images(access, user_agent=agent, **args)
                    found[what] = max(images, key=lambda i: i["CreationDate"])["ImageId"]
                except Exception as exc:  # noqa: BLE001 - any doubt declines
                    found[what] = exc

            worker = threading.Thread(target=newest, args=("base", base_args), daemon=True)
            worker.start()
            newest("final", amis.final_image_query(result["final_key"]))
            if isinstance(found["final"], ValueError):      # no image carries the key's tag
                found["final"] = amis.recorded_final(access, agent, result)
            worker.join(ec2query.TIMEOUT + 5)
            for what in ("base", "final"):
                if not isinstance(found.get(what), str):   # an error, or still waiting
                    log.debug("memo not confirmed: %s lookup: %r", what, found.get(what))
                    return False
            return (found["base"] == result["base_image_id"]
                    and found["final"] == result["image_id"])
        except Exception as exc:  # noqa: BLE001
            log.debug("memo not confirmed: %r", exc)
            return False

    # launch ----------------------------------------------------------------------
    @contextlib.contextmanager
    def launch(self, image: Image, *, build_id: str, role: str = "build",
               instance_tags: Mapping[str, str] | None = None) -> Iterator[Ec2Machine]:
        """Key pair, security group, instance; all removed on leaving (see the module doc).

        ``role`` and ``instance_tags`` serve ``amic launch`` (``amic:services`` is read
        by the boot hook through IMDS tags). Setting ``machine.keep`` before leaving
        keeps everything, like ``--on-error=abort`` does on failure.
        """
        if snapshots.is_snapshot(image):
            image = self._layer_ami(image)
        stack = contextlib.ExitStack()
        machine: Ec2Machine | None = None
        kept = False
        try:
            machine = self._new_machine(stack, image, build_id, role, instance_tags)
            self.step(f"waiting for {machine.instance_id} and SSH",
                      lambda: _reach(machine))  # noqa: B023
            yield machine
            if machine.keep:
                kept = self._keep(stack, machine, "keeping the instance")
        except BaseException as exc:
            taken = (placement.interrupted_error(self.ec2, machine.instance_id, exc)
                     if machine and self.opts.spot_price and isinstance(exc, BuildError) else None)
            if (self.keep_on_error and machine is not None
                    and not isinstance(exc, (KeyboardInterrupt, SystemExit))):
                # keep everything; it still expires and `amic gc` finds it
                kept = self._keep(stack, machine,
                                  "--on-error=abort: keeping the build instance for debugging")
            if taken is not None:   # EC2 took the spot instance back: say that, not "SSH failed"
                raise taken from None
            raise
        finally:
            if not kept:
                if machine is not None:
                    machine.disconnect()
                with shielded(self.log):
                    stack.close()

    def _new_machine(self, stack: contextlib.ExitStack, image: Image, build_id: str,
                     role: str, instance_tags: Mapping[str, str] | None) -> Ec2Machine:
        """The resources in order, each with its cleanup on ``stack``; the (launched) machine."""
        ec2 = self.ec2
        opts = self.opts = placement.placed(ec2, self.opts, self.log)   # --subnet-filter, once
        beat = resources.Heartbeat(ec2, self.log)   # so `amic gc` sees at once if we die
        tags = aws.resource_tags(build_id, ttl=opts.ttl, role=role,
                                 extra=resources.heartbeat_tags(beat.interval))
        name = f"amic-{build_id}"
        pkey, public = resources.add_key_pair(stack, ec2, name, tags, opts.key_type, self.log,
                                              heartbeat=beat)
        group_ids = list(opts.security_group_ids) or [resources.add_security_group(
            stack, ec2, name, build_id, tags, self.ssh_cidrs, opts, self.log)]
        if not opts.security_group_ids:
            beat.add(*group_ids)
        opts = iamprofile.with_profile(stack, self.clients, opts, name, tags, self.log)
        self._launches += 1
        iid = resources.add_instance(stack, ec2, image, name, group_ids,
                                     {**tags, **(instance_tags or {})}, build_id, opts, self.log,
                                     metadata_tags=bool(instance_tags), launch=self._launches)
        beat.add(iid)
        beat.start()
        stack.callback(beat.stop)       # first thing on the way out: no beat on a deleted group
        user = opts.ssh_user or image.tags.get(naming.TAG_SSH_USER) or "ec2-user"
        machine = Ec2Machine(ec2, opts, self.log, iid, user, pkey, name, build_id)
        machine.build_public_key = public   # prepare-image removes it before the final AMI
        machine.heartbeat = beat
        machine.source_image = image.id
        return machine

    def _keep(self, stack: contextlib.ExitStack, machine: Ec2Machine, why: str) -> bool:
        machine.key_file = resources.save_private_key(machine.pkey, machine.key_name)
        beat = machine.heartbeat
        if beat is not None:     # kept on purpose: it lives until it expires, not 3 beats
            resources.cleanup_quietly(self.log, "heartbeat tags", machine.build_id, beat.forget)
        machine.disconnect()
        stack.pop_all()
        self.log(f"{why}\n  " + machine.describe())
        return True

    # snapshot --------------------------------------------------------------------
    def snapshot(self, machine, *, key: str, final: bool, tags: Mapping[str, str]) -> Image:
        assert isinstance(machine, Ec2Machine)
        opts = self.opts
        if not final:
            return self._layer_snapshot(machine, key=key, tags=tags)
        if opts.skip_create_ami:    # Packer's skip_create_ami: provisioned and tested only
            self.log("--skip-create-ami: no image made")
            return Image(id=SKIPPED, key=key, tags=tags)
        return finals.make_final(self, machine, key=key, tags=tags)

    def _layer_snapshot(self, machine: Ec2Machine, *, key: str, tags: Mapping[str, str]) -> Image:
        """A layer checkpoint in seconds: sync, build keys off the disk, CreateSnapshot of the
        live root volume (tagged at creation) with / frozen around it where the machine
        allows (``Ec2Machine.while_frozen``), the builder's key back; not waited for."""
        ec2 = self.ec2
        new = naming.new_image(self.opts, key=key, final=False, tags=tags,
                               build_id=machine.build_id, user=machine.user, log=self.log)
        if not machine.source_facts and machine.source_image:
            machine.source_facts = snapshots.image_facts(
                ec2, machine.source_image, self._lookups.described.get(machine.source_image))
        if machine.root_volume is None:     # the same volume for the instance's whole life
            machine.root_volume = snapshots.root_volume(ec2, machine.instance_id,
                                                          machine.described)
        volume, device = machine.root_volume
        stags = snapshots.snapshot_tags(
            new.tags, {**machine.source_facts, snapshots.TAG_ROOT_DEVICE: device}, self.log)
        doing = f"layer checkpoint {key[:12]}"
        machine.without_build_keys(doing)
        try:    # / frozen around the call: EBS takes the point in time at CreateSnapshot
            raw, unfrozen = machine.while_frozen(lambda: snapshots.create_layer_snapshot(
                ec2, volume, stags, new.description))
        finally:
            machine.restore_build_key(doing)
        how = f"not frozen: {unfrozen}; after sync" if unfrozen else "frozen"
        self.log(f"layer snapshot {raw['SnapshotId']} of {volume} ({how}; "
                 f"{raw.get('State', 'pending')}; completes in the background)")
        return snapshots.snapshot_image({**raw, "Tags": aws.tag_list(stags)})

    def _layer_ami(self, layer: Image) -> Image:
        """The AMI of a layer snapshot: registered once (after it completed), then reused."""
        svc = layer.tags.get(TAG_SERVICE, "layer")
        project = layer.tags.get(TAG_NAME) or "amic"
        name = naming.ami_name(f"{project[:32]}-layer-{svc[:24]}-{(layer.key or '')[:12]}"
                               f"-{layer.id}")
        ami = snapshots.ami_for_layer(self.ec2, layer, name=name, timeout=self.opts.image_timeout,
                                      poll_interval=self.opts.poll_interval, log=self.log)
        return Image(id=ami, key=layer.key, tags=layer.tags, created=layer.created)


def _reach(machine: Ec2Machine) -> None:
    """The instance running, its host keys known, an SSH session open (again, on a retry)."""
    machine.wait_running()
    machine.prepare_host_keys()
    machine.connection()


def _stderr_log(message: str) -> None:
    print(f"amic: ec2: {message}", file=sys.stderr, flush=True)

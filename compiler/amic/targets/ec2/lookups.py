"""One build's look-ups of its cache keys: a Describe per kind for all of them, kept for the build.

EC2 throttles per account and Region, shared by every CI runner of a team
("Request throttling for the Amazon EC2 API"), and a Describe that filters on
tags accepts up to 200 values. So a build that knows its keys (the engine says
them with ``Target.plan_lookups``) asks once:

- DescribeImages ``tag:amic:key`` = every layer key and the final key: the
  final image, the AMIs registered from layer snapshots, older layer AMIs;
- DescribeSnapshots ``tag:amic:service`` = every service of the build (with
  ``amic:checkpoint=snapshot``): the layer snapshots of these keys *and* the
  earlier checkpoints a missed layer is compared with (``images_for_service``);
- once, only when a layer misses, DescribeImages of older layer AMIs of these services;
  with the tags that name the build's project known (``amic:project``, or for a project
  without identity its ``amic:name``), of this project's layer *and final* AMIs instead, so a build that finds no checkpoint of its project learns
  from the same answer whether the project ever kept a final image (``has_final``: how a
  first build is told from one that kept no checkpoint) without another call.

The answers are kept for the build. A key is asked again, alone, only after its
lease was held by another build (``recheck``): that build may have made it
meanwhile; when it did, everything is asked again (``forget``). That other build
let go of the lease moments after making the image, which a tag filter may not
show yet (eventual consistency): a miss is asked again for ``SETTLE_SECONDS``
before this build makes the image itself (a waiter whose holder failed pays that).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence

import attrs

from amic.contract import KIND_FINAL, KIND_LAYER, TAG_KEY, TAG_KIND, TAG_SERVICE
from amic.targets.base import Image
from amic.targets.ec2 import images as amis
from amic.targets.ec2 import session as aws
from amic.targets.ec2 import snapshots

SETTLE_SECONDS = 3.0
"""How long a key whose lease another build just let go of is asked again while missing."""
MAX_VALUES = 200
"""EC2's limit of values in one filter."""
LIVE_SNAPSHOT = ("pending", "completed")


def chunks(values: Sequence[str], size: int = MAX_VALUES) -> Iterable[list[str]]:
    for i in range(0, len(values), size):
        yield list(values[i:i + size])


def by_key(raws: Iterable[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for raw in raws:
        key = aws.tag_dict(raw.get("Tags")).get(TAG_KEY)
        if key:
            out.setdefault(key, []).append(raw)
    return out


def choose(images: list[dict], snaps: list[dict]) -> Image | None:
    """What ``find_image`` answers for one key: an AMI (a layer AMI registered from a snapshot
    is named by that snapshot), else the newest live layer snapshot."""
    if images:
        found = amis.image_from_raw(amis.newest(images))
        snap = found.tags.get(snapshots.TAG_FROM_SNAPSHOT)
        if snap:
            return Image(id=snap, key=found.key, tags=found.tags, created=found.created)
        return found
    live = [s for s in snaps if s.get("State") in LIVE_SNAPSHOT]
    if not live:
        return None
    return snapshots.snapshot_image(max(live, key=lambda s: str(s.get("StartTime", ""))))


@attrs.define
class Lookups:
    """The build's keys and services, and what EC2 answered for them."""

    keys: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    images: dict[str, list[dict]] | None = None
    """key -> available AMIs tagged with it (None: not asked yet)."""
    layer_snaps: list[dict] | None = None
    """Layer snapshots of ``services``."""
    project: Mapping[str, str | None] | None = None
    """The tags this project's images carry (None: a tag they lack): ``engine.explain``'s
    ``project_match``; None: not said."""
    layer_amis: list[Image] | None = None
    """Older layer AMIs of ``services`` (asked only when a layer misses); with ``project``,
    only this project's."""
    finals: list[Image] | None = None
    """This project's final AMIs, asked with ``layer_amis`` when ``project`` is known."""
    contended: bool = False
    """Another build held one of this build's leases: it is on the same chain and may make
    the final image moments before this build looks (while a tag filter does not show it
    yet), so every look-up of the final key from then on is asked through the lag."""
    rechecks: set[str] = attrs.field(factory=set)
    """Keys to ask again, alone, at their next look-up."""
    described: dict[str, dict] = attrs.field(factory=dict)
    """DescribeImages entries the build already has, by id (the base's: its facts)."""

    def plan(self, keys: Sequence[str], services: Sequence[str],
             project: Mapping[str, str | None] | None = None) -> None:
        self.keys, self.services = tuple(dict.fromkeys(keys)), tuple(dict.fromkeys(services))
        self.project = dict(project) if project else None
        self.contended = False
        self.forget()

    def forget(self) -> None:
        self.images = self.layer_snaps = self.layer_amis = self.finals = None
        self.rechecks.clear()

    def recheck(self, key: str) -> None:
        """Another build held ``key``'s lease: ask for it again before trusting the answer
        (and the final key from now on: see ``contended``)."""
        self.rechecks.add(key)
        self.contended = True

    def knows(self, key: str) -> bool:
        return key in self.keys

    def find(self, ec2, key: str) -> Image | None:
        if key in self.rechecks or (self.contended and self.keys and key == self.keys[-1]):
            self.rechecks.discard(key)
            found = self._settled(ec2, key)
            if found is not None:
                self.forget()       # made meanwhile: whatever comes next is asked afresh
            return found
        self._fetch(ec2)
        snaps = [s for s in self.layer_snaps or ()
                 if aws.tag_dict(s.get("Tags")).get(TAG_KEY) == key]
        return choose((self.images or {}).get(key, []), snaps)

    def history(self, ec2, service: str) -> list[Image]:
        """Layer checkpoints of ``service``, newest first (snapshots, then older layer AMIs
        not registered from one of them)."""
        self._fetch(ec2)
        named = {k: v for k, v in (self.project or {}).items() if v is not None}
        if self.layer_amis is None and named:
            reply = aws.call("listing this project's images", ec2.describe_images,
                             Owners=["self"],
                             Filters=[{"Name": f"tag:{TAG_KIND}",
                                       "Values": [KIND_LAYER, KIND_FINAL]}]
                             + [{"Name": f"tag:{k}", "Values": [v]} for k, v in named.items()])
            found = [img for img in map(amis.image_from_raw, reply["Images"])
                     if all(img.tags.get(k) == v for k, v in self.project.items())]
            self.finals = [img for img in found if img.tags.get(TAG_KIND) == KIND_FINAL]
            self.layer_amis = [img for img in found if img.tags.get(TAG_KIND) == KIND_LAYER
                               and img.tags.get(TAG_SERVICE) in self.services]
        if self.layer_amis is None:
            self.layer_amis = []
            for part in chunks(self.services):
                reply = aws.call("listing layer checkpoints", ec2.describe_images,
                                 Owners=["self"],
                                 Filters=[{"Name": f"tag:{TAG_KIND}", "Values": [KIND_LAYER]},
                                          {"Name": f"tag:{TAG_SERVICE}", "Values": part}])
                self.layer_amis += [amis.image_from_raw(i) for i in reply["Images"]]
        found = [snapshots.snapshot_image(s) for s in self.layer_snaps or ()
                 if aws.tag_dict(s.get("Tags")).get(TAG_SERVICE) == service]
        seen = {img.id for img in found}
        found += [img for img in self.layer_amis if img.tags.get(TAG_SERVICE) == service
                  and img.tags.get(snapshots.TAG_FROM_SNAPSHOT) not in seen]
        found.sort(key=lambda img: img.created or "", reverse=True)
        return found

    def has_final(self, match) -> bool | None:
        """Whether this project kept a final AMI, from ``history``'s answer; None when that
        answer cannot tell (another match asked, not asked yet)."""
        if self.finals is None or dict(match) != self.project:
            return None
        return bool(self.finals)

    def _fetch(self, ec2) -> None:
        if self.images is None:
            raws: list[dict] = []
            for part in chunks(self.keys):
                raws += aws.call("looking up cached images", ec2.describe_images,
                                 Owners=["self"],
                                 Filters=[{"Name": f"tag:{TAG_KEY}", "Values": part},
                                          {"Name": "state", "Values": ["available"]}])["Images"]
            self.images = by_key(raws)
        if self.layer_snaps is None:
            self.layer_snaps = []
            for part in chunks(self.services):
                self.layer_snaps += aws.call(
                    "looking up layer snapshots", ec2.describe_snapshots, OwnerIds=["self"],
                    Filters=[{"Name": f"tag:{snapshots.TAG_CHECKPOINT}", "Values": ["snapshot"]},
                             {"Name": f"tag:{TAG_SERVICE}", "Values": part}])["Snapshots"]

    def _settled(self, ec2, key: str) -> Image | None:
        deadline = time.monotonic() + SETTLE_SECONDS
        attempt = 0
        while True:
            found = self._one(ec2, key)
            left = deadline - time.monotonic()
            if found is not None or left <= 0:
                return found
            attempt += 1
            time.sleep(min(left, 0.5 * attempt))

    def _one(self, ec2, key: str) -> Image | None:
        """One key, asked now: the final key is an AMI; a layer key a snapshot (or an AMI
        registered from one, which names that snapshot: the snapshot answers as well)."""
        if key == self.keys[-1]:
            found = amis.find_image(ec2, key)
            snap = found.tags.get(snapshots.TAG_FROM_SNAPSHOT) if found else None
            return Image(id=snap, key=found.key, tags=found.tags,
                         created=found.created) if snap else found
        return snapshots.find_layer(ec2, key)

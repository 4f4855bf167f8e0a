"""EC2 as strict as EC2 documents it: what moto (and so the plain stand-in) is kinder about.

Part of the fake EC2 ``tests/harness/ec2/``. Opt-in per test (``FakeEc2.make_strict``,
``fake_ec2(..., strict=True)``), on by default in the end-to-end suite. Each behaviour is
one small class hooked on the proxy, each with its own knob (a ``Strictness`` field):

- ``Consistency``: a Describe* call that filters on tags (``tag:K``, ``tag-key``,
  ``tag-value``) does not see a resource created less than ``delay`` seconds ago ("Eventual
  consistency", Amazon EC2 API Reference: "the results of an API command you run that
  affects your Amazon EC2 resources might not be immediately visible to all subsequent
  commands"). Look-ups by id are answered at once (the proxy's ``not_found_after`` injects
  the by-id lag where a test wants it).
- ``Throttle``: a token bucket per API action, as "Request throttling for the Amazon EC2
  API" (docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html) describes:
  non-mutating actions 100 tokens refilled at 20/s, unfiltered and unpaginated
  non-mutating actions 50 at 10/s, mutating (and resource-intensive) actions 50 at 5/s.
  Bucket sizes are multiplied by ``bucket_scale`` and refill rates by ``refill_scale``
  (tests cram minutes of builds into seconds; the defaults keep bursts ten times smaller
  than EC2's). An empty bucket answers HTTP 503 ``RequestLimitExceeded``; the throttled
  call costs no token, as on EC2.
- ``SnapshotRules``: ``InvalidSnapshot.InUse`` on DeleteSnapshot for ``in_use_seconds``
  after DeregisterImage of an AMI that used the snapshot (EC2 releases the snapshot a
  while after the image goes); ``SnapshotCreationPerVolumeRateExceeded`` on a
  CreateSnapshot less than ``snapshot_interval`` after the last one of the same volume
  (EC2: "Wait at least 15 seconds between concurrent volume snapshots", scaled).
- ``MultiEni``: ModifyInstanceAttribute ``Groups`` refused with ``InvalidInstanceID``
  ("There are multiple interfaces attached to instance ...") for an instance marked as
  having several network interfaces (moto models one; ``mark(iid)`` or ``every=True``).

The first-boot dpkg lock holder (unattended-upgrades) is the instance stand-in's
(``StandIn.dpkg_lock_seconds``); the relay keeps idle sessions open (``boot.Relay``).
"""

from __future__ import annotations

import collections
import threading
import time
import xml.etree.ElementTree as ET

import attrs

from tests.harness.ec2.api import ApiError, numbered, xml_values


@attrs.frozen
class Strictness:
    """The knobs; ``Strictness()`` is what the end-to-end suite runs with."""

    delay: float = 1.5
    """Seconds a new resource stays invisible to tag-filtered Describe* calls."""
    bucket_scale: float = 0.1
    """EC2's bucket sizes times this (100 -> 10 tokens for Describe*)."""
    refill_scale: float = 0.5
    """EC2's refill rates times this (20/s -> 10/s for Describe*)."""
    in_use_seconds: float = 2.0
    """How long a deregistered AMI's snapshots answer InvalidSnapshot.InUse."""
    snapshot_interval: float = 1.5
    """Least seconds between two CreateSnapshot of one volume (EC2: 15)."""
    multi_eni: bool = False
    """Every instance counts as having several network interfaces."""
    relay_idle_timeout: float = 40.0
    """An SSH connection silent both ways this long is cut (an AWS NAT gateway: 350 s; amic
    keeps sessions alive every 30 s)."""
    dpkg_lock_seconds: float = 4.0
    """At an instance's first boot a process holds dpkg's locks this long (the stand-in's
    ``dpkg_lock_seconds``)."""


ID_FIELD = {"DescribeImages": "imageId", "DescribeSnapshots": "snapshotId",
            "DescribeInstances": "instanceId", "DescribeKeyPairs": "keyPairId",
            "DescribeSecurityGroups": "groupId", "DescribeVolumes": "volumeId"}
"""The field naming the resource an item of each Describe* answer is about."""
CREATED_FIELD = {"RunInstances": "instanceId", "CreateImage": "imageId",
                 "RegisterImage": "imageId", "CopyImage": "imageId",
                 "CreateSnapshot": "snapshotId", "CreateKeyPair": "keyPairId",
                 "ImportKeyPair": "keyPairId", "CreateSecurityGroup": "groupId",
                 "CreateVolume": "volumeId"}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def tag_filtered(params: dict[str, str]) -> bool:
    """Whether a Describe* call filters on tags."""
    return any(k.startswith("Filter.") and k.endswith(".Name")
               and (v.startswith("tag:") or v in ("tag-key", "tag-value"))
               for k, v in params.items())


class Consistency:
    def __init__(self, proxy, delay: float) -> None:
        self.proxy, self.delay = proxy, delay
        self.born: dict[str, float] = {}
        """Resource id -> monotonic time it was created."""
        self.hidden = 0
        """Items left out of tag-filtered answers so far."""
        self._lock = threading.Lock()
        for action in CREATED_FIELD:
            proxy.after[action].append(self._created(action))
        for action in ID_FIELD:
            proxy.after[action].append(self._describe(action))

    def _created(self, action: str):
        def hook(params, text):
            now = time.monotonic()
            ids = xml_values(text, CREATED_FIELD[action])
            if action == "CreateImage":     # its snapshots are born with it
                ids += self._image_snapshots(ids)
            with self._lock:
                self.born.update({i: now for i in ids if i})
        return hook

    def _image_snapshots(self, amis: list[str]) -> list[str]:
        try:
            images = self.proxy.moto_client().describe_images(ImageIds=amis)["Images"]
        except Exception:  # noqa: BLE001 - moto answers the caller's DescribeImages itself
            return []
        return [b["Ebs"]["SnapshotId"] for i in images for b in i.get("BlockDeviceMappings", [])
                if b.get("Ebs", {}).get("SnapshotId")]

    def settle(self) -> float:
        """Sleep until every resource made so far shows in tag-filtered answers (as a user's
        next command, a moment after the last, finds it); return the seconds slept."""
        with self._lock:
            newest = max(self.born.values(), default=None)
        wait = 0.0 if newest is None else max(0.0, newest + self.delay - time.monotonic())
        time.sleep(wait)
        return wait

    def fresh(self, rid: str) -> bool:
        with self._lock:
            born = self.born.get(rid)
        return born is not None and time.monotonic() - born < self.delay

    def _describe(self, action: str):
        field = ID_FIELD[action]

        def hook(params, text):
            if not tag_filtered(params):
                return None
            root = ET.fromstring(text)
            if root.tag.startswith("{"):
                ET.register_namespace("", root.tag[1:].split("}", 1)[0])
            dropped = 0
            for parent in list(root.iter()):
                for item in [c for c in parent if _local(c.tag) == "item"]:
                    ident = next((c.text for c in item if _local(c.tag) == field), None)
                    if ident and self.fresh(ident):
                        parent.remove(item)
                        dropped += 1
            if not dropped:
                return None
            if action == "DescribeInstances":   # a reservation whose instances all went
                for rset in [e for e in root.iter() if _local(e.tag) == "reservationSet"]:
                    for res in list(rset):
                        insts = [e for e in res if _local(e.tag) == "instancesSet"]
                        if insts and not list(insts[0]):
                            rset.remove(res)
            with self._lock:
                self.hidden += dropped
            return ET.tostring(root, encoding="unicode")
        return hook


# -- throttling ---------------------------------------------------------------------------

BUCKETS = {"non-mutating": (100, 20.0), "unfiltered": (50, 10.0), "mutating": (50, 5.0)}
"""EC2's request token buckets: (size, refill per second), per category."""


def category(action: str, params: dict[str, str]) -> str:
    """The bucket an action draws on: a Describe* with no ids, filters or paging is
    "unfiltered and unpaginated"."""
    if action.startswith(("Describe", "Get", "List")):
        narrowed = any(k not in ("Action", "Version", "DryRun") for k in params)
        return "non-mutating" if narrowed else "unfiltered"
    return "mutating"


class Throttle:
    def __init__(self, proxy, bucket_scale: float, refill_scale: float) -> None:
        self.bucket_scale, self.refill_scale = bucket_scale, refill_scale
        self.buckets: dict[str, list[float]] = {}
        """Action -> [tokens, last refill time]."""
        self.throttled: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        proxy.gates.append(self.gate)

    def limits(self, kind: str) -> tuple[float, float]:
        size, rate = BUCKETS[kind]
        return max(1.0, round(size * self.bucket_scale)), rate * self.refill_scale

    def gate(self, action: str, params: dict[str, str]) -> None:
        size, rate = self.limits(category(action, params))
        now = time.monotonic()
        with self._lock:
            bucket = self.buckets.setdefault(action, [size, now])
            bucket[0] = min(size, bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
            if bucket[0] >= 1.0:
                bucket[0] -= 1.0
                return
            self.throttled[action] += 1
        raise ApiError("RequestLimitExceeded", "Request limit exceeded.", 503)


# -- snapshots ------------------------------------------------------------------------------

class SnapshotRules:
    def __init__(self, proxy, standin, in_use_seconds: float, interval: float) -> None:
        self.proxy, self.standin = proxy, standin
        self.in_use_seconds, self.interval = in_use_seconds, interval
        self.released: dict[str, tuple[float, str]] = {}
        """Snapshot id -> (monotonic time its AMI was deregistered, that AMI)."""
        self.last_create: dict[str, float] = {}
        """Volume id -> monotonic time of its last CreateSnapshot that succeeded."""
        self.refused: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        proxy.before["DeregisterImage"].append(self._deregistering)
        proxy.before["DeleteSnapshot"].append(self._delete)
        proxy.before["CreateSnapshot"].append(self._create)
        proxy.after["CreateSnapshot"].append(self._created)

    def _deregistering(self, params) -> None:
        ami = params.get("ImageId", "")
        try:
            images = self.proxy.moto_client().describe_images(ImageIds=[ami])["Images"]
        except Exception:  # noqa: BLE001 - moto answers an unknown id itself
            return
        real = getattr(self.standin, "real_snapshot", lambda s: s)
        now = time.monotonic()
        with self._lock:
            for image in images:
                for bdm in image.get("BlockDeviceMappings", []):
                    snap = bdm.get("Ebs", {}).get("SnapshotId")
                    if snap:
                        self.released[real(snap)] = (now, ami)

    def _delete(self, params) -> None:
        snap = params.get("SnapshotId", "")
        with self._lock:
            at, ami = self.released.get(snap, (None, ""))
            if at is None or time.monotonic() - at >= self.in_use_seconds:
                return
            self.refused["InvalidSnapshot.InUse"] += 1
        raise ApiError("InvalidSnapshot.InUse", f"The snapshot {snap} is currently in use by {ami}")

    def _create(self, params) -> None:
        volume = params.get("VolumeId", "")
        with self._lock:
            last = self.last_create.get(volume)
            if last is None or time.monotonic() - last >= self.interval:
                return
            self.refused["SnapshotCreationPerVolumeRateExceeded"] += 1
        raise ApiError("SnapshotCreationPerVolumeRateExceeded",
                       "The maximum per volume CreateSnapshot request rate has been exceeded. "
                       "Use an increasing or variable sleep interval between requests.")

    def _created(self, params, text):
        with self._lock:
            self.last_create[params.get("VolumeId", "")] = time.monotonic()


class MultiEni:
    def __init__(self, proxy, every: bool) -> None:
        self.every = every
        self.marked: set[str] = set()
        self.refused = 0
        proxy.before["ModifyInstanceAttribute"].append(self._modify)

    def mark(self, instance_id: str) -> None:
        self.marked.add(instance_id)

    def _modify(self, params) -> None:
        iid = params.get("InstanceId", "")
        if not numbered(params, "GroupId") or not (self.every or iid in self.marked):
            return
        self.refused += 1
        raise ApiError("InvalidInstanceID",
                       f"There are multiple interfaces attached to instance '{iid}'. "
                       "Please specify an interface ID for the operation instead.")


class Strict:
    """Every strictness of this module, installed on one proxy (and its stand-in)."""

    def __init__(self, proxy, standin, settings: Strictness | None = None) -> None:
        self.settings = s = settings or Strictness()
        self.consistency = Consistency(proxy, s.delay)
        self.throttle = Throttle(proxy, s.bucket_scale, s.refill_scale)
        self.snapshots = SnapshotRules(proxy, standin, s.in_use_seconds, s.snapshot_interval)
        self.multi_eni = MultiEni(proxy, s.multi_eni)

    def summary(self) -> dict[str, int]:
        """What the strictness refused or hid so far (a test shows it was exercised)."""
        return {"throttled": sum(self.throttle.throttled.values()),
                "hidden": self.consistency.hidden,
                "in_use": self.snapshots.refused["InvalidSnapshot.InUse"],
                "per_volume_rate": self.snapshots.refused["SnapshotCreationPerVolumeRateExceeded"],
                "multi_eni": self.multi_eni.refused}

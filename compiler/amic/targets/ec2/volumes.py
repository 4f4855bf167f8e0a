"""EBS volumes as the flags spell them, checked the way EC2 checks them, as block device mappings.

``--volume-type``/``--iops``/``--throughput`` (the root volume), ``--launch-volume``
(Packer's ``launch_block_device_mappings``) and ``--ami-volume``
(``ami_block_device_mappings``) all become one :class:`Volume`; :func:`check` refuses
at once what RunInstances or CreateImage would refuse at the end of a build.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from amic.errors import UsageError

IOPS = {"gp3": (3000, 80000), "io1": (100, 64000), "io2": (100, 256000)}
"""Provisioned IOPS per volume type (EC2's documented range; gp3 since September 2025)."""
THROUGHPUT = {"gp3": (125, 2000)}
"""MiB/s a volume type takes as ``Throughput`` (only gp3)."""
TYPES = ("gp3", "gp2", "io1", "io2", "st1", "sc1", "standard")
DEFAULT_TYPE = "gp3"
"""The type of a volume amic describes without one (EC2's own default is gp2)."""

_KEYS = {"device": "device", "size": "size", "type": "type", "iops": "iops",
         "throughput": "throughput", "encrypted": "encrypted", "kms-key-id": "kms_key_id",
         "snapshot-id": "snapshot_id", "delete-on-termination": "delete_on_termination",
         "virtual-name": "virtual_name", "no-device": "no_device"}


@attrs.frozen
class Volume:
    """One block device: EBS (size, type, ...), an instance store (``virtual_name``) or none."""

    device: str
    size: int | None = None
    type: str | None = None
    iops: int | None = None
    throughput: int | None = None
    encrypted: bool = False
    kms_key_id: str | None = None
    snapshot_id: str | None = None
    delete_on_termination: bool = True
    virtual_name: str | None = None
    no_device: bool = False

    def mapping(self) -> dict:
        """The BlockDeviceMappings entry (RunInstances, CreateImage, RegisterImage)."""
        if self.no_device:
            return {"DeviceName": self.device, "NoDevice": ""}
        if self.virtual_name:
            return {"DeviceName": self.device, "VirtualName": self.virtual_name}
        return {"DeviceName": self.device, "Ebs": ebs(self)}


def ebs(vol: Volume) -> dict:
    out: dict = {"VolumeType": vol.type or DEFAULT_TYPE,
                 "DeleteOnTermination": vol.delete_on_termination}
    for key, value in (("VolumeSize", vol.size), ("Iops", vol.iops),
                       ("Throughput", vol.throughput), ("SnapshotId", vol.snapshot_id)):
        if value is not None:
            out[key] = value
    if vol.encrypted or vol.kms_key_id:
        out["Encrypted"] = True
        if vol.kms_key_id:
            out["KmsKeyId"] = vol.kms_key_id
    return out


def check(vol: Volume, flag: str) -> Volume:
    """``vol`` when EC2 would take it; a UsageError naming ``flag`` otherwise."""
    kind = vol.type or DEFAULT_TYPE
    if kind not in TYPES:
        raise UsageError(f"{flag}: volume type {kind!r}: expected one of {', '.join(TYPES)}")
    if vol.size is not None and vol.size < 1:
        raise UsageError(f"{flag}: size {vol.size}: expected GiB, at least 1")
    for field, ranges, unit in (("iops", IOPS, ""), ("throughput", THROUGHPUT, " MiB/s")):
        value = getattr(vol, field)
        if value is None:
            continue
        if kind not in ranges:
            raise UsageError(f"{flag}: {field} is for {', '.join(ranges)} volumes, not {kind}")
        low, high = ranges[kind]
        if not low <= value <= high:
            raise UsageError(f"{flag}: {field} {value}{unit}: {kind} takes {low} to {high}")
    if vol.iops is None and kind in ("io1", "io2"):
        raise UsageError(f"{flag}: a {kind} volume needs iops ({IOPS[kind][0]} to {IOPS[kind][1]})")
    return vol


def parse(text: str, flag: str) -> Volume:
    """``device=/dev/sdf,size=20,type=gp3,...`` as a checked Volume."""
    fields: dict[str, object] = {}
    for word in text.split(","):
        key, eq, value = word.strip().partition("=")
        if key not in _KEYS:
            raise UsageError(f"{flag} {text!r}: unknown key {key!r} (expected "
                             f"{', '.join(_KEYS)})")
        if key == "no-device":
            fields["no_device"] = True
            continue
        if not eq or not value:
            raise UsageError(f"{flag} {text!r}: {key} needs a value ({key}=…)")
        fields[_KEYS[key]] = value
    if "device" not in fields:
        raise UsageError(f"{flag} {text!r}: needs device=/dev/… ")
    for key in ("size", "iops", "throughput"):
        if key in fields:
            try:
                fields[key] = int(str(fields[key]))
            except ValueError:
                raise UsageError(f"{flag} {text!r}: {key} {fields[key]!r}: expected a "
                                 "whole number") from None
    for key in ("encrypted", "delete_on_termination"):
        if key in fields:
            fields[key] = _boolean(str(fields[key]), flag, text)
    return check(Volume(**fields), flag)  # type: ignore[arg-type]


def _boolean(value: str, flag: str, text: str) -> bool:
    if value.lower() in ("true", "yes", "1"):
        return True
    if value.lower() in ("false", "no", "0"):
        return False
    raise UsageError(f"{flag} {text!r}: {value!r}: expected true or false")


def root(opts_fields: Mapping[str, object]) -> Volume | None:
    """The root volume the flags ask for (``device`` filled in at launch); None: the image's."""
    keys = ("volume_size", "volume_type", "iops", "throughput", "encrypt", "kms_key_id")
    if not any(opts_fields.get(k) for k in keys):
        return None
    return check(Volume(device="", size=opts_fields.get("volume_size"),   # type: ignore[arg-type]
                        type=opts_fields.get("volume_type"),              # type: ignore[arg-type]
                        iops=opts_fields.get("iops"),                     # type: ignore[arg-type]
                        throughput=opts_fields.get("throughput"),         # type: ignore[arg-type]
                        encrypted=bool(opts_fields.get("encrypt")),
                        kms_key_id=opts_fields.get("kms_key_id")),        # type: ignore[arg-type]
                 "--volume-type/--iops/--throughput")

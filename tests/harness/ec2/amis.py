"""Block devices and AMI attributes as EC2 takes them, where moto differs (issue 21).

- RunInstances/CreateImage/RegisterImage mappings: IOPS and throughput checked by EC2's rules
  (moto checks them on CreateVolume only, and drops a RunInstances mapping's IOPS, then
  refuses its io1/io2 volume: moto is asked for gp3, the proxy's log keeps what the client
  sent; its RegisterImage keeps no mapping at all); a RegisterImage mapping of a snapshot
  with a ``VolumeSize`` below the snapshot's is refused, as EC2 refuses it; a root mapping
  with a type but no size or snapshot (``--volume-type`` alone) takes the image's size, as
  on EC2 (moto wants one of the two).
- EnableImageDeprecation, which moto lacks, answered here (``Ec2Proxy.answer``) with EC2's
  refusals; ``deprecations`` keeps what was accepted.
"""

from __future__ import annotations

import datetime as dt

from tests.harness.ec2.api import ApiError

PROVISIONED = {"io1": (100, 64000), "io2": (100, 256000), "gp3": (3000, 80000)}


def _mappings(params) -> list[str]:
    n, out = 1, []
    while f"BlockDeviceMapping.{n}.DeviceName" in params:
        out.append(f"BlockDeviceMapping.{n}")
        n += 1
    return out


def refuse_bad_volumes(params) -> None:
    """EC2's rules for a mapping's IOPS and throughput (moto checks them on CreateVolume only,
    and drops them from RunInstances)."""
    for pre in _mappings(params):
        kind = params.get(f"{pre}.Ebs.VolumeType", "gp2")
        iops, throughput = params.get(f"{pre}.Ebs.Iops"), params.get(f"{pre}.Ebs.Throughput")
        if kind in ("io1", "io2") and not iops:
            raise ApiError("InvalidParameterCombination",
                           f"The parameter iops must be specified for {kind} volumes.")
        if iops and (kind not in PROVISIONED
                     or not PROVISIONED[kind][0] <= int(iops) <= PROVISIONED[kind][1]):
            raise ApiError("InvalidParameterValue", f"Volume iops of '{iops}' is invalid "
                           f"for a volume of type '{kind}'.")
        if throughput and (kind != "gp3" or not 125 <= int(throughput) <= 2000):
            raise ApiError("InvalidParameterValue", f"Throughput of '{throughput}' is invalid "
                           f"for a volume of type '{kind}'.")


def provisioned_as_gp3(params):
    """moto drops a RunInstances mapping's Iops, then refuses its io1/io2 volume for lacking
    it: moto is asked for gp3 (the log and the checks above keep what the client sent)."""
    out = dict(params)
    for pre in _mappings(params):
        if out.get(f"{pre}.Ebs.VolumeType") in ("io1", "io2"):
            out[f"{pre}.Ebs.VolumeType"] = "gp3"
            out.pop(f"{pre}.Ebs.Iops", None)
    return out


class AmiRules:
    """The hooks above, installed on one proxy."""

    def __init__(self, proxy) -> None:
        self.proxy = proxy
        self.deprecations: dict[str, str] = {}
        """AMI id -> DeprecateAt of the EnableImageDeprecation calls EC2 accepted."""
        proxy.answer["EnableImageDeprecation"] = self._deprecate
        proxy.forward["RunInstances"].append(self._root_mapping_from_image)
        proxy.before["RunInstances"].append(refuse_bad_volumes)
        proxy.before["CreateImage"].append(refuse_bad_volumes)
        proxy.before["RegisterImage"].append(refuse_bad_volumes)
        proxy.before["RegisterImage"].append(self._refuse_volumes_below_snapshots)
        proxy.forward["RunInstances"].append(provisioned_as_gp3)

    def _refuse_volumes_below_snapshots(self, params) -> None:
        moto = self.proxy.moto_client()
        for pre in _mappings(params):
            snap, size = params.get(f"{pre}.Ebs.SnapshotId"), params.get(f"{pre}.Ebs.VolumeSize")
            if not (snap and size):
                continue
            found = moto.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": [snap]}])
            least = max([s["VolumeSize"] for s in found["Snapshots"]], default=0)
            if int(size) < least:
                raise ApiError("InvalidBlockDeviceMapping", f"Volume of size {size}GB is "
                               f"smaller than snapshot '{snap}', expect size >= {least}GB")

    def _root_mapping_from_image(self, params):
        """A mapping of the image's root device without size or snapshot (``--volume-type``
        alone) takes the image's root volume size, as on EC2 (moto wants one of the two; its
        RegisterImage keeps no mappings of its own, so the root is found by name or is the
        image's first EBS mapping)."""
        for pre in _mappings(params):
            if (f"{pre}.Ebs.VolumeSize" in params or f"{pre}.Ebs.SnapshotId" in params
                    or f"{pre}.VirtualName" in params or f"{pre}.NoDevice" in params):
                continue
            image = self.proxy.moto_client().describe_images(
                ImageIds=[params.get("ImageId", "")])["Images"][0]
            if params[f"{pre}.DeviceName"] != image.get("RootDeviceName"):
                continue       # not the root: EC2 refuses it too (moto's MissingParameter)
            sizes = [b["Ebs"]["VolumeSize"] for b in image.get("BlockDeviceMappings", [])
                     if b.get("Ebs", {}).get("VolumeSize")]
            named = [b["Ebs"]["VolumeSize"] for b in image.get("BlockDeviceMappings", [])
                     if b["DeviceName"] == image.get("RootDeviceName")
                     and b.get("Ebs", {}).get("VolumeSize")]
            size = (named or sizes or [8])[0]
            params = {**params, f"{pre}.Ebs.VolumeSize": str(size)}
        return params

    def _deprecate(self, params, region: str) -> str:
        """EnableImageDeprecation (moto has none), refusing what EC2 refuses: an unknown or
        foreign image, a time that is not ISO 8601 UTC, in the past, or more than 10 years on."""
        ami, when = params.get("ImageId", ""), params.get("DeprecateAt", "")
        moto = self.proxy.moto_client()
        if region != moto.meta.region_name:
            import boto3

            moto = boto3.client("ec2", region_name=region, endpoint_url=moto.meta.endpoint_url,
                                aws_access_key_id=self.proxy.credentials[0],
                                aws_secret_access_key=self.proxy.credentials[1])
        images = moto.describe_images(
            Owners=["self"], Filters=[{"Name": "image-id", "Values": [ami]}])["Images"]
        if not images:
            raise ApiError("InvalidAMIID.NotFound", f"The image id '[{ami}]' does not exist")
        try:
            at = dt.datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            raise ApiError("InvalidParameterValue", f"Invalid DeprecateAt: {when!r}") from None
        now = dt.datetime.now(dt.timezone.utc)
        if at <= now or at > now + dt.timedelta(days=3653):
            raise ApiError("InvalidParameterValue",
                           "DeprecateAt must be in the future and within 10 years")
        self.deprecations[ami] = when
        return ('<EnableImageDeprecationResponse xmlns="http://ec2.amazonaws.com/doc/'
                '2016-11-15/"><requestId>deprecate</requestId><return>true</return>'
                '</EnableImageDeprecationResponse>')

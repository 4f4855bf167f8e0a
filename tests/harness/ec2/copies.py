"""CopyImage as EC2 documents it, where moto differs (answered here: ``Ec2Proxy.answer``).

- ``TagSpecifications``: "The tags to apply to the new AMI and new snapshots. You can tag
  the AMI, the snapshots, or both. To tag the new AMI, the value for ResourceType must be
  image. To tag the new snapshots, the value for ResourceType must be snapshot. The same
  tag is applied to all the new snapshots. If you specify other values for ResourceType,
  the request fails." (EC2 API Reference, CopyImage). moto drops them; here they are on the
  copy and its snapshots before CopyImage answers, so the first DescribeImages shows them.
  ``CopyImageTags=true`` copies the source AMI's own tags too.
- Time: a copy stays ``pending`` in DescribeImages for ``seconds`` (moto: ``available`` at
  once; on EC2 minutes to hours). Deregistering it while pending stops it, as on EC2
  ("Stop a pending AMI copy operation", EC2 User Guide): it is gone at once.

``made`` keeps ``(region, copy id)`` of every copy, in order.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

from tests.harness.ec2.api import ApiError, tag_specs

RESOURCE_TYPES = ("image", "snapshot")


class ImageCopies:
    def __init__(self, proxy) -> None:
        self.proxy = proxy
        self.seconds = 0.0
        """How long a new copy stays ``pending``."""
        self.made: list[tuple[str, str]] = []
        self._ready: dict[str, float] = {}
        proxy.answer["CopyImage"] = self._copy
        proxy.after["DescribeImages"].append(self._states)

    def _client(self, region: str):
        import boto3

        moto = self.proxy.moto_client()
        return boto3.client("ec2", region_name=region, endpoint_url=moto.meta.endpoint_url,
                            aws_access_key_id=self.proxy.credentials[0],
                            aws_secret_access_key=self.proxy.credentials[1])

    def _copy(self, params, region: str) -> str:
        kinds = {v for k, v in params.items()
                 if k.startswith("TagSpecification.") and k.endswith(".ResourceType")}
        if kinds - set(RESOURCE_TYPES):
            raise ApiError("InvalidParameterValue", f"'{sorted(kinds)[0]}' is not a valid "
                           "taggable resource type for this operation.")
        source = params.get("SourceRegion") or region
        src = self._client(source)
        dest = self._client(region)
        args = {"SourceImageId": params.get("SourceImageId", ""), "SourceRegion": source,
                "Name": params.get("Name", "")}
        if params.get("Description"):
            args["Description"] = params["Description"]
        try:
            copy_id = dest.copy_image(**args)["ImageId"]
        except Exception as exc:  # noqa: BLE001 - moto's refusal, as EC2's
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "InvalidRequest")
            raise ApiError(code, str(exc)) from None
        image_tags = {}
        if params.get("CopyImageTags") == "true":
            found = src.describe_images(ImageIds=[args["SourceImageId"]])["Images"]
            image_tags = {t["Key"]: t["Value"] for t in (found[0].get("Tags", []) if found else [])}
        image_tags.update(tag_specs(params, "image"))
        if image_tags:
            dest.create_tags(Resources=[copy_id], Tags=[{"Key": k, "Value": v}
                                                         for k, v in image_tags.items()])
        snap_tags = tag_specs(params, "snapshot")
        snaps = [b["Ebs"]["SnapshotId"]
                 for i in dest.describe_images(ImageIds=[copy_id])["Images"]
                 for b in i.get("BlockDeviceMappings", []) if b.get("Ebs", {}).get("SnapshotId")]
        if snap_tags and snaps:
            dest.create_tags(Resources=snaps, Tags=[{"Key": k, "Value": v}
                                                    for k, v in snap_tags.items()])
        self._ready[copy_id] = time.monotonic() + self.seconds
        self.made.append((region, copy_id))
        return ('<CopyImageResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
                f'<requestId>copy</requestId><imageId>{copy_id}</imageId></CopyImageResponse>')

    def _states(self, params, text):
        if not self._ready:
            return text
        root = ET.fromstring(text)
        now = time.monotonic()
        for item in root.iter():
            if item.tag.split("}")[-1] != "item":
                continue
            fields = {el.tag.split("}")[-1]: el for el in item}
            if ("imageId" in fields and "imageState" in fields
                    and now < self._ready.get(fields["imageId"].text or "", 0)):
                fields["imageState"].text = "pending"
        return ET.tostring(root, encoding="unicode")
